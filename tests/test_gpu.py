"""GPU workers and the qsim GPU backend.

On CPU: the config -> ``LocalCUDACluster`` / ``dask cuda worker`` mapping, GPU
selection through a stand-in NVML, a ``QuantumCluster(gpu=...)`` whose dask-cuda
is replaced by real CPU worker processes, the error paths and the CPU fallback.
Under the ``gpu`` marker (skipped unless NVML reports a device; run by
``scripts/gpu_check.sh``): dask-cuda over UCX, CuPy arrays client <-> worker,
qsim on the GPU against the CPU.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import tempfile
import time
import types
from typing import Any

import cirq
import dask.config
import numpy as np
import psutil
import pytest
from _fakes import install_fake_nvml
from _polling import wait_for
from distributed import LocalCluster

import qdask
from qdask import ClusterConfig, ConfigError, HybridConfig, MultiGPUConfig, QuantumCluster, resources
from qdask.deploy import cluster as cluster_module
from qdask.deploy.gpu import CUDAOptions, cuda_options, select_gpus, start_cuda_cluster
from qdask.quantum import backends
from qdask.quantum.analysis import analyze
from qdask.quantum.backends import GPUUnavailableError, QSimBackend, QSimGPUBackend, RunOptions, choose
from qdask.quantum.execute import run_task
from qdask.quantum.task import Task
from qdask.scheduler.plugin import QuantumSchedulerPlugin
from qdask.worker.discovery import GPU, QUANTUM, GPUInfo, detect_gpus
from qdask.worker.plugin import QuantumWorkerPlugin

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(9)

GiB = 2**30
# Asked once, of the real NVML: the gpu tests need a device.
needs_gpu = pytest.mark.skipif(not detect_gpus(), reason="NVML reports no GPU")


def _qsim_has_cuda() -> bool:
    import qsimcirq

    return qsimcirq.qsim_gpu is not None


# A CUDA build of qsim on a host without a GPU ends the process at its first
# simulation: tests that pretend a GPU exists run only against the CPU wheel.
cpu_wheel_only = pytest.mark.skipif(_qsim_has_cuda(), reason="qsimcirq here is a CUDA build")


def _gpus(*free_gib: float, total_gib: float = 140) -> list[GPUInfo]:
    return [
        GPUInfo(index=i, name="H200", total_memory=int(total_gib * GiB), free_memory=int(f * GiB))
        for i, f in enumerate(free_gib)
    ]


def _nvml(monkeypatch: pytest.MonkeyPatch, *free_gib: float, total_gib: float = 140) -> None:
    install_fake_nvml(monkeypatch, [("H200", int(total_gib * GiB), int(f * GiB)) for f in free_gib])


def _random_circuit(num_qubits: int, depth: int, seed: int = 7) -> cirq.Circuit:
    return cirq.testing.random_circuit(
        cirq.LineQubit.range(num_qubits), n_moments=depth, op_density=0.9, random_state=seed
    )


# -- device selection (NVML patched) ---------------------------------------------------
def test_auto_takes_every_visible_gpu_in_visible_order(monkeypatch):
    _nvml(monkeypatch, 10, 90, 50)
    assert cuda_options(ClusterConfig(), MultiGPUConfig(num_gpus="auto")).devices == (0, 1, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert cuda_options(ClusterConfig(), MultiGPUConfig(num_gpus="auto")).devices == (2, 0)


def test_a_count_picks_the_gpus_with_most_free_memory(monkeypatch):
    _nvml(monkeypatch, 10, 90, 50, 90)
    assert cuda_options(ClusterConfig(), MultiGPUConfig(num_gpus=2)).devices == (1, 3)
    assert cuda_options(ClusterConfig(), MultiGPUConfig(num_gpus=3)).devices == (1, 2, 3)
    assert [g.index for g in select_gpus(1, _gpus(5, 5, 6))] == [2]


def test_more_gpus_than_visible_names_the_limit_and_the_fix(monkeypatch):
    _nvml(monkeypatch, 10, 90)
    with pytest.raises(ConfigError) as info:
        cuda_options(ClusterConfig(), MultiGPUConfig(num_gpus=3))
    assert info.value.field == "MultiGPUConfig.num_gpus"
    assert "at most 2" in str(info.value) and "MultiGPUConfig(num_gpus=2)" in str(info.value)


def test_no_gpu_at_all_says_what_to_install(monkeypatch):
    _nvml(monkeypatch)
    with pytest.raises(ConfigError, match=r"NVML reports none.*qdask\[gpu\]"):
        cuda_options(ClusterConfig(), MultiGPUConfig(num_gpus="auto"))


# -- config -> LocalCUDACluster keywords -------------------------------------------
def test_cluster_kwargs_map_every_setting():
    opts = cuda_options(
        ClusterConfig(threads_per_node=1, memory_per_node="8GiB", protocol=None),
        MultiGPUConfig(num_gpus=2, memory_per_gpu="16GiB", enable_nvlink=False, enable_p2p=False),
        gpus=_gpus(10, 90, 50),
    )
    kwargs = opts.cluster_kwargs(local_directory="/tmp/qdask-x")
    scheduler_plugins = kwargs.pop("scheduler_kwargs")["plugins"]
    worker_plugins = kwargs.pop("plugins")
    assert kwargs == {
        "CUDA_VISIBLE_DEVICES": [1, 2],
        "n_workers": 2,
        "threads_per_worker": 1,
        "memory_limit": 8 * GiB,
        "device_memory_limit": 16 * GiB,
        "rmm_pool_size": 16 * GiB,
        "protocol": None,
        "enable_tcp_over_ucx": None,
        "enable_infiniband": None,
        "enable_nvlink": None,
        "enable_rdmacm": None,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
        "local_directory": "/tmp/qdask-x",
        "security": None,
        "resources": {GPU: 1},
    }
    assert [type(p) for p in scheduler_plugins] == [QuantumSchedulerPlugin]
    assert [(type(p), p.role) for p in worker_plugins] == [(QuantumWorkerPlugin, "quantum")]


def test_without_memory_per_gpu_dask_cuda_keeps_its_defaults():
    opts = cuda_options(ClusterConfig(), MultiGPUConfig(num_gpus=1, memory_per_gpu=None), gpus=_gpus(90))
    assert opts.rmm_pool_size is None and opts.device_memory_limit == "default"


@pytest.mark.parametrize("protocol", [None, "ucx"])
@pytest.mark.parametrize("flag", ["enable_nvlink", "enable_p2p"])
def test_nvlink_and_p2p_select_ucx_cuda_ipc(protocol, flag):
    opts = cuda_options(ClusterConfig(protocol=protocol), MultiGPUConfig(num_gpus=1, **{flag: True}), gpus=_gpus(90))
    kwargs = opts.cluster_kwargs()
    assert kwargs["protocol"] == "ucx"
    # dask-cuda's enable_nvlink is UCX's cuda_ipc transport (NVLink or PCIe P2P).
    assert kwargs["enable_nvlink"] is True and kwargs["enable_tcp_over_ucx"] is True
    assert kwargs["enable_infiniband"] is False and kwargs["enable_rdmacm"] is False


def test_plain_ucx_leaves_the_transports_to_ucx():
    opts = cuda_options(ClusterConfig(protocol="ucx"), MultiGPUConfig(num_gpus=1), gpus=_gpus(90))
    assert opts.protocol == "ucx"
    assert (opts.enable_tcp_over_ucx, opts.enable_nvlink, opts.enable_infiniband) == (None, None, None)


BAD = [
    (dict(protocol="tcp"), dict(enable_nvlink=True), "MultiGPUConfig.enable_nvlink", "protocol='ucx'"),
    (dict(protocol="tls"), dict(enable_p2p=True), "MultiGPUConfig.enable_p2p", "protocol='ucx'"),
    (dict(protocol="inproc"), {}, "ClusterConfig.protocol", "one process per GPU"),
    (dict(gpu_per_node=2), {}, "ClusterConfig.gpu_per_node", "one GPU"),
    ({}, dict(memory_per_gpu="200GiB"), "MultiGPUConfig.memory_per_gpu", "at most 140.00 GiB"),
]


@pytest.mark.parametrize("cluster,gpu,field,text", BAD, ids=[b[2] for b in BAD])
def test_bad_combinations_are_config_errors(cluster, gpu, field, text):
    with pytest.raises(ConfigError) as info:
        cuda_options(ClusterConfig(**cluster), MultiGPUConfig(num_gpus=1, **gpu), gpus=_gpus(90))
    assert info.value.field == field
    assert text in str(info.value) and "Fix:" in str(info.value)


# -- the same options for `dask cuda worker` ----------------------------------------
def _nvlink_options() -> CUDAOptions:
    return cuda_options(
        ClusterConfig(protocol="ucx", threads_per_node=2, memory_per_node="8GiB"),
        MultiGPUConfig(num_gpus=2, memory_per_gpu="16GiB", enable_nvlink=True),
        gpus=_gpus(10, 90, 50),
    )


def test_worker_command_carries_the_same_options():
    opts = _nvlink_options()
    argv, env = opts.worker_command("ucx://127.0.0.1:8786")
    assert argv == [
        "dask", "cuda", "worker", "ucx://127.0.0.1:8786",
        "--nthreads", "2",
        "--memory-limit", str(8 * GiB),
        "--device-memory-limit", str(16 * GiB),
        "--resources", "gpu=1",
        "--preload", "qdask.plugins.worker",
        "--rmm-pool-size", str(16 * GiB),
        "--protocol", "ucx",
        "--enable-tcp-over-ucx", "--disable-infiniband", "--enable-nvlink", "--disable-rdmacm",
        "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
    ]  # fmt: skip
    kwargs = opts.cluster_kwargs()
    assert env == {"CUDA_VISIBLE_DEVICES": ",".join(map(str, kwargs["CUDA_VISIBLE_DEVICES"]))}
    for key in ("rmm_pool_size", "device_memory_limit", "protocol", "memory_limit"):
        assert argv[argv.index("--" + key.replace("_", "-")) + 1] == str(kwargs[key])
    assert "--host" not in opts.worker_command("tcp://10.0.0.1:8786", host=None)[0]


def test_worker_command_parses_with_dask_cuda_cli():
    cli = pytest.importorskip("dask_cuda.cli", reason="dask-cuda (qdask[gpu]) not installed")
    argv, _ = _nvlink_options().worker_command("ucx://127.0.0.1:8786")
    params = cli.worker.make_context("worker", argv[3:]).params
    assert params["rmm_pool_size"] == str(16 * GiB) and params["protocol"] == "ucx"
    assert params["enable_nvlink"] is True and params["enable_infiniband"] is False


def test_ucx_config_that_dask_cuda_derives():
    utils = pytest.importorskip("dask_cuda.utils", reason="dask-cuda (qdask[gpu]) not installed")
    pytest.importorskip("distributed_ucxx", reason="distributed-ucxx not installed")
    opts = _nvlink_options()
    # dask.config may spell the keys with "-" or "_" (dask_cuda uses canonical_name).
    ucx = {k.replace("_", "-"): v for k, v in utils.get_ucx_config(**opts.ucx_kwargs()).items()}
    assert ucx["nvlink"] is True and ucx["tcp"] is True and ucx["infiniband"] is False
    assert ucx["cuda-copy"] is True


# -- starting: the missing extra, and QuantumCluster(gpu=...) with CPU workers -------
def test_missing_dask_cuda_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # import dask_cuda -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'qdask\[gpu\]'") as info:
        start_cuda_cluster(ClusterConfig(), MultiGPUConfig(num_gpus=1), gpus=_gpus(90))
    assert isinstance(info.value.__cause__, ImportError)


def test_quantum_cluster_gpu_error_leaves_no_temp_dir(monkeypatch):
    _nvml(monkeypatch, 90)
    monkeypatch.setitem(sys.modules, "dask_cuda", None)
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(**kw: Any) -> str:
        made.append(real_mkdtemp(**kw))
        return made[-1]

    monkeypatch.setattr(cluster_module.tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(ImportError, match="qdask"):
        QuantumCluster(ClusterConfig(), gpu=MultiGPUConfig(num_gpus=1))
    assert made and not os.path.exists(made[0])


def test_gpu_with_address_or_hybrid_is_refused():
    with pytest.raises(ValueError, match="worker_command"):
        QuantumCluster(gpu=MultiGPUConfig(num_gpus=1), address="tcp://127.0.0.1:1")


def test_hybrid_gpu_per_node_without_enough_gpus_fails_before_any_worker_starts(monkeypatch):
    _nvml(monkeypatch, 90)  # one GPU, two quantum workers asking for one each
    children = len(psutil.Process().children(recursive=True))
    hybrid = HybridConfig(classical_nodes=1, quantum_nodes=2, gpu_per_node=1)
    with pytest.raises(ConfigError, match=r"HybridConfig.gpu_per_node.*at most 0 for 2 quantum worker.*0: H200"):
        QuantumCluster(ClusterConfig(memory_per_node="1GiB"), hybrid=hybrid)
    assert len(psutil.Process().children(recursive=True)) <= children


def test_hybrid_gpu_per_node_gives_each_quantum_worker_its_own_gpus(monkeypatch):
    # NVML faked in this process, where the GPUs are assigned: the four with the most
    # free memory (GPU 3 has least), two per quantum worker in index order; the worker
    # processes get them as CUDA_VISIBLE_DEVICES, the classical one none.
    _nvml(monkeypatch, 10, 80, 90, 5, 70)
    hybrid = HybridConfig(classical_nodes=1, quantum_nodes=2, gpu_per_node=2)
    with QuantumCluster(ClusterConfig(memory_per_node="1GiB"), hybrid=hybrid) as qc:
        roles = {r["worker"]: r["role"] for r in qc.resources()}
        visible = qc.get_client().run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(visible[w] for w, role in roles.items() if role == "quantum") == ["0,1", "2,4"]
    assert [visible[w] for w, role in roles.items() if role == "classical"] == [None]


class _CPULocalCUDACluster(LocalCluster):
    """dask-cuda's ``LocalCUDACluster`` as far as qdask relies on it, with CPU workers.

    Same parameters; like dask-cuda's ``new_worker_spec`` it hands each worker a
    deep copy of the spec whose ``plugins`` it replaces with its own set.
    """

    calls: list[dict[str, Any]] = []

    def __init__(
        self,
        CUDA_VISIBLE_DEVICES: list[int],
        n_workers: int,
        threads_per_worker: int = 1,
        memory_limit: Any = "auto",
        device_memory_limit: Any = "default",
        protocol: str | None = None,
        enable_tcp_over_ucx: bool | None = None,
        enable_infiniband: bool | None = None,
        enable_nvlink: bool | None = None,
        enable_rdmacm: bool | None = None,
        rmm_pool_size: Any = None,
        **kwargs: Any,
    ) -> None:
        type(self).calls.append(dict(CUDA_VISIBLE_DEVICES=CUDA_VISIBLE_DEVICES, rmm_pool_size=rmm_pool_size))
        if memory_limit == "auto":
            memory_limit = GiB
        super().__init__(
            n_workers=n_workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit,
            protocol=protocol, processes=True, **kwargs,
        )  # fmt: skip

    def new_worker_spec(self) -> dict[str, Any]:
        spec = copy.deepcopy(super().new_worker_spec())
        for worker in spec.values():
            worker["options"]["plugins"] = set()
        return spec


def test_quantum_cluster_starts_gpu_workers_through_dask_cuda(monkeypatch):
    _nvml(monkeypatch, 30, 90)
    fake = types.ModuleType("dask_cuda")
    fake.LocalCUDACluster = _CPULocalCUDACluster  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    _CPULocalCUDACluster.calls.clear()
    gpu = MultiGPUConfig(num_gpus=1, memory_per_gpu="2GiB")
    with QuantumCluster(ClusterConfig(memory_per_node="1GiB"), gpu=gpu) as qc:
        assert isinstance(qc.cluster, _CPULocalCUDACluster)
        assert _CPULocalCUDACluster.calls == [dict(CUDA_VISIBLE_DEVICES=[1], rmm_pool_size=2 * GiB)]
        (row,) = qc.resources()
        # The qdask worker plugin survived dask-cuda's plugin set and ran.
        assert row["role"] == "quantum" and row["max_qubits"] > 0
        assert row["resources"][GPU] == 1 and row["resources"][QUANTUM] == 1
        assert row["worker"].startswith("tcp://127.0.0.1:")
        tmpdir = qc._tmpdir
        assert tmpdir is not None and os.path.isdir(tmpdir)
    assert qc.cluster is None and not os.path.exists(tmpdir)


# -- the qsim-gpu backend on CPU: availability, errors, fallback, routing ----------
def test_qsim_gpu_is_registered_but_unavailable_without_a_device(monkeypatch):
    _nvml(monkeypatch)
    assert isinstance(backends.registry()["qsim-gpu"], QSimGPUBackend)
    assert not QSimGPUBackend().available()
    assert "qsim-gpu" not in qdask.backends()
    assert QSimGPUBackend().gpu_problem(10) == "NVML reports no GPU in this process"


@cpu_wheel_only
def test_a_gpu_without_a_cuda_build_of_qsim_is_not_enough(monkeypatch):
    _nvml(monkeypatch, 90)
    assert not QSimGPUBackend().available()
    assert "make qsim-gpu" in QSimGPUBackend().gpu_problem(10)


def test_gpu_memory_is_checked_before_qsim_touches_the_gpu(monkeypatch):
    _nvml(monkeypatch, 1)
    monkeypatch.setattr(resources, "qsim_gpu_usable", lambda gpus: True)
    why = QSimGPUBackend().gpu_problem(30)
    assert "30-qubit state vector needs 8.00 GiB" in why and "1.00 GiB free" in why
    assert QSimGPUBackend().gpu_problem(26) is None  # 512 MiB fits


@cpu_wheel_only
def test_use_gpu_on_the_cpu_wheel_is_a_clear_error(monkeypatch):
    _nvml(monkeypatch, 90)
    monkeypatch.setattr(resources, "qsim_gpu_usable", lambda gpus: True)
    with pytest.raises(GPUUnavailableError, match="make qsim-gpu") as info:
        QSimGPUBackend()._simulator(RunOptions())
    assert isinstance(info.value.__cause__, ValueError)
    assert "GPU execution requested" in str(info.value)


def _state_task(circuit: cirq.Circuit, backend: str = "qsim-gpu", index: int = 7) -> Task:
    order = sorted(circuit.all_qubits())
    return Task(index=index, start=0, circuit=circuit, resolver=cirq.ParamResolver(), work="state", backend=backend,
                repetitions=1, seeds=np.array([1]), threads=1, extra={"qubit_order": order})


@cpu_wheel_only
@pytest.mark.parametrize("gpus", [(), (90,)], ids=["no-device", "cpu-wheel"])
def test_qsim_gpu_falls_back_to_the_cpu_with_a_logged_reason(monkeypatch, caplog, gpus):
    _nvml(monkeypatch, *gpus)
    if gpus:  # pretend the build check passed: qsimcirq itself refuses use_gpu=True
        monkeypatch.setattr(resources, "qsim_gpu_usable", lambda g: True)
    circuit = _random_circuit(6, 8)
    with caplog.at_level(logging.WARNING, logger="qdask.quantum.execute"):
        result = run_task(_state_task(circuit))
    assert result.backend == "qsim"  # what ran it
    order = cirq.LineQubit.range(6)
    np.testing.assert_allclose(result.payload, QSimBackend().state(circuit, order, RunOptions()), atol=1e-6)
    (record,) = [r for r in caplog.records if "on the CPU" in r.getMessage()]
    assert ("GPU execution requested" if gpus else "NVML reports no GPU") in record.getMessage()


def _run_on_a_full_gpu(task: Task) -> Any:
    """In a worker process: NVML sees one GPU with 64 KiB free and qsim has a CUDA build."""
    from _fakes import FakeNVML
    from distributed import get_worker

    sys.modules["pynvml"] = FakeNVML([("H200", 140 * GiB, 64 * 1024)])
    resources.qsim_gpu_usable = lambda gpus: True
    return run_task(task, get_worker().address)


def test_a_full_gpu_is_a_quantum_error_and_the_circuit_runs_on_the_cpu():
    circuit = _random_circuit(16, 10)  # 512 KiB of amplitudes: more than the GPU has free
    with QuantumCluster(ClusterConfig(num_nodes=1, memory_per_node="1GiB")) as qc:
        errors: list[Any] = []
        qc.on_quantum_error(errors.append)
        result = qc.get_client().submit(_run_on_a_full_gpu, _state_task(circuit), pure=False).result()
        wait_for(lambda: errors, timeout=30, what="the quantum-error event")
    assert result.backend == "qsim"
    order = cirq.LineQubit.range(16)
    np.testing.assert_allclose(result.payload, QSimBackend().state(circuit, order, RunOptions()), atol=1e-6)
    (error,) = errors
    assert (error.cause, error.circuit, error.backend) == ("oom", 7, "qsim-gpu")
    assert "16-qubit state vector needs 512.00 kiB" in error.detail


def _width(num_qubits: int) -> Any:
    q = cirq.LineQubit.range(num_qubits)
    return analyze(cirq.Circuit(cirq.H.on_each(*q), cirq.T.on_each(*q), cirq.CZ(q[0], q[1])))


def test_choose_routes_wide_circuits_to_qsim_gpu_where_allowed():
    both = ["qsim", "qsim-gpu"]
    assert dask.config.get("qdask.gpu.min-qubits") == 20
    assert choose(_width(24), "state", both) == "qsim-gpu"
    assert choose(_width(10), "state", both) == "qsim"
    assert choose(_width(24), "state", ["qsim"]) == "qsim"
    with dask.config.set({"qdask.gpu.min-qubits": 30}):
        assert choose(_width(24), "state", both) == "qsim"


def test_choose_leaves_circuits_a_gpu_cannot_hold_on_the_cpu(monkeypatch):
    _nvml(monkeypatch, 1)
    assert choose(_width(30), "sample", ["qsim", "qsim-gpu"]) == "qsim"
    with pytest.raises(ValueError, match="qsim-gpu: the 30-qubit state vector needs 8.00 GiB"):
        choose(_width(30), "sample", ["qsim-gpu"])


# -- on a GPU (scripts/gpu_check.sh) ----------------------------------------------
@pytest.mark.gpu
@needs_gpu
def test_hybrid_quantum_worker_gets_a_gpu_of_its_own():
    hybrid = HybridConfig(classical_nodes=1, quantum_nodes=1, gpu_per_node=1)
    with QuantumCluster(ClusterConfig(memory_per_node="8GiB"), hybrid=hybrid) as qc:
        rows = {r["role"]: r for r in qc.resources()}
    assert rows["quantum"]["gpus"] == 1 and rows["quantum"]["resources"][GPU] == 1
    assert GPU not in rows["classical"]["resources"]


@pytest.mark.gpu
@needs_gpu
def test_local_cuda_cluster_over_ucx_moves_cupy_arrays():
    cupy = pytest.importorskip("cupy")

    def ucx_transports() -> dict[str, Any]:  # nested: pickled by value for the worker
        import ucxx

        tls = {k: v for k, v in ucxx.get_config().items() if k.endswith("TLS")}
        try:
            active = sorted(ucxx.get_active_transports())
        except Exception as e:  # context info is best effort: report it, don't fail on it
            active = [f"unavailable: {e}"]
        return {"tls": tls, "active": active}

    gpu = MultiGPUConfig(num_gpus=1, memory_per_gpu="4GiB", enable_nvlink=True)
    with QuantumCluster(ClusterConfig(protocol="ucx"), gpu=gpu) as qc:
        (row,) = qc.resources()
        assert row["worker"].startswith(("ucx://", "ucxx://"))
        assert row["resources"][GPU] == 1 and row["role"] == "quantum"
        assert ("qsim-gpu" in row["backends"]) is _qsim_has_cuda()
        client = qc.get_client()
        x = cupy.arange(2_000_000, dtype=cupy.float32)
        [fx] = client.scatter([x])
        assert client.submit(lambda a: type(a).__module__.split(".")[0], fx).result() == "cupy"
        y = client.submit(lambda a: a * 2, fx).result()
        assert isinstance(y, cupy.ndarray) and bool(cupy.allclose(y, 2 * x))
        (transports,) = client.run(ucx_transports).values()
        print("UCX on the worker:", transports)
        assert any("cuda_ipc" in str(v) for v in transports["tls"].values()), transports


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(not _qsim_has_cuda(), reason="qsimcirq has no CUDA module: make qsim-gpu")
def test_qsim_gpu_state_equals_cpu():
    circuit = _random_circuit(20, 20)
    order = cirq.LineQubit.range(20)
    gpu_state = QSimGPUBackend().state(circuit, order, RunOptions())  # raises GPUUnavailableError if it can't
    cpu_state = QSimBackend().state(circuit, order, RunOptions(threads=os.cpu_count() or 1))
    np.testing.assert_allclose(gpu_state, cpu_state, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(not _qsim_has_cuda(), reason="qsimcirq has no CUDA module: make qsim-gpu")
def test_qsim_gpu_is_faster_than_the_cpu_at_28_qubits():
    circuit = _random_circuit(28, 20) + cirq.measure(*cirq.LineQubit.range(28), key="m")
    QSimGPUBackend().sample(_random_circuit(4, 2) + cirq.measure(cirq.LineQubit(0)), 1, RunOptions())  # CUDA init
    times = {}
    for name, backend, opts in [
        ("gpu", QSimGPUBackend(), RunOptions(max_fused_gate_size=4)),
        ("cpu", QSimBackend(), RunOptions(threads=os.cpu_count() or 1)),
    ]:
        t0 = time.perf_counter()
        records = backend.sample(circuit, 100, opts)
        times[name] = time.perf_counter() - t0
        assert records["m"].shape == (100, 1, 28)
    print(f"28 qubits, depth 20, 100 samples: GPU {times['gpu']:.3f} s, CPU {times['cpu']:.3f} s")
    assert times["gpu"] < times["cpu"]
