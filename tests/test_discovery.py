"""Hardware discovery: pure logic, NVML handling and real discovery on this machine."""

from __future__ import annotations

import sys

import pytest
from _fakes import FakeNVML, install_fake_nvml

from qdask.worker import discovery
from qdask.worker.discovery import (
    GPU,
    QUANTUM,
    STATEVECTOR_BYTES,
    Capabilities,
    discover,
    max_qubits_for,
    statevector_bytes,
)


def test_statevector_bytes_is_complex64():
    assert statevector_bytes(10) == 8 * 1024
    assert statevector_bytes(20, workspace=2.0) == 2 * 8 * 2**20


@pytest.mark.parametrize(
    "budget,workspace,expected",
    [(8 * 2**20, 1.0, 20), (8 * 2**20 - 1, 1.0, 19), (16 * 2**20, 2.0, 20), (1, 1.0, 0)],
)
def test_max_qubits_for(budget, workspace, expected):
    assert max_qubits_for(budget, workspace) == expected


def test_discover_on_this_machine():
    caps = discover(nthreads=1, memory_limit=2 * 2**30)
    assert caps.role == "quantum"
    assert caps.cores >= 1
    assert caps.memory_limit == 2 * 2**30
    assert caps.statevector_bytes == int(0.75 * 2 * 2**30)
    # 1.5 GiB of complex64 holds 2**27 amplitudes at most
    assert caps.max_qubits == 27
    assert caps.qsim_isa in ("avx512", "avx2", "sse4", "basic")
    assert "qsim" in caps.backends
    res = caps.resources()
    assert res[QUANTUM] == 1 and res[STATEVECTOR_BYTES] == caps.statevector_bytes
    assert GPU not in res or caps.gpus


def test_classical_worker_advertises_no_quantum_resources():
    caps = discover(nthreads=2, memory_limit=2**30, quantum=False)
    assert caps.resources() == {}
    assert caps.max_qubits == 0


def test_capabilities_round_trip():
    caps = discover(nthreads=1, memory_limit=2**30)
    assert Capabilities.from_dict(caps.to_dict()) == caps


def test_detect_gpus_through_nvml(monkeypatch):
    fake = install_fake_nvml(monkeypatch, [("H200", 140 * 2**30, 100 * 2**30), ("H200", 140 * 2**30, 139 * 2**30)])
    gpus = discovery.detect_gpus()
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[1].free_memory == 139 * 2**30 and gpus[0].name == "H200"
    assert fake.shutdowns == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.index for g in discovery.detect_gpus()] == [1]


def test_gpu_resources_and_qsim_gpu_flag(monkeypatch):
    install_fake_nvml(monkeypatch, [("H200", 140 * 2**30, 100 * 2**30)])
    caps = discover(nthreads=1, memory_limit=2**30)
    assert caps.resources()[GPU] == 1
    # PyPI's qsimcirq is CPU-only: a GPU alone must not enable the GPU backend.
    import qsimcirq

    assert caps.qsim_gpu is (qsimcirq.qsim_gpu is not None)


def test_no_nvml_means_no_gpus(monkeypatch):
    class Broken(FakeNVML):
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", Broken([]))
    assert discovery.detect_gpus() == []



def test_heap_reuse_refuses_sizes_out_of_range():
    from qdask.worker.plugin import reuse_freed_memory

    with pytest.raises(ValueError, match="heap-reuse of 2199023255552 bytes is out of range.*Fix"):
        reuse_freed_memory(2**41)
