"""Fault tolerance without a cluster: events, checkpoint keys, file format, store and flusher.

The checkpoint tests write real files (local directories and fsspec's
in-memory filesystem) and corrupt them the ways disks and crashes do.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading

import cirq
import numpy as np
import pytest
import sympy
from _polling import wait_for

from qdask.fault.checkpoint import (
    CheckpointStore,
    CorruptCheckpoint,
    content_keys,
    decode,
    encode,
    seeds_matter,
)
from qdask.fault.events import (
    NetworkError,
    NodeFailure,
    PoisonCircuitError,
    QuantumError,
    RecoveryEvent,
    RecoveryPlan,
    classify_quantum_error,
    from_message,
    is_network_error,
)
from qdask.quantum import backends as bk
from qdask.quantum.cost import CostModel
from qdask.quantum.execute import TaskResult, pack_records, unpack_records
from qdask.quantum.plan import ClusterView, SeedSource, build_jobs

COST = CostModel(per_circuit=2e-4, per_op=3e-5, per_amp_op=4e-10)
VIEW = ClusterView(slots=2, max_statevector_bytes=2**30, backends=frozenset(bk.backend_names()), cost=COST,
                   big_threads=1)


def circuit(n=4, seed=0, measure=True):
    q = cirq.LineQubit.range(n)
    c = cirq.testing.random_circuit(q, n_moments=6, op_density=0.8, random_state=seed)
    return c + cirq.measure(*q, key="m") if measure else c


def jobs_for(programs, sweeps=None, reps=10, seed=1, work="sample", simulator="qsim", extra=None):
    return build_jobs(programs, sweeps or [None] * len(programs), [reps] * len(programs), work=work,
                      simulator=simulator, view=VIEW, seeds=SeedSource(seed), extra=extra)


def sample_result(index=0, start=0, reps=5, seed=0) -> TaskResult:
    rng = np.random.default_rng(seed)
    records = {"m": rng.integers(0, 2, (reps, 1, 9)).astype(np.int8),
               "k": rng.integers(0, 2, (reps, 1, 2)).astype(np.int8)}
    payload = pack_records(records)
    return TaskResult(index, start, "qsim", 0.01, "tcp://127.0.0.1:1", payload, 42)


# -- events -------------------------------------------------------------------------
def test_every_event_survives_the_topic_round_trip():
    plan = RecoveryPlan(mode="manual", rescheduled=("a", "d"), interrupted=("a",), held=("a", "b", "d"),
                        lost_results=("b",), isolated=("a",), failed=("c",))
    sent = [
        NodeFailure("tcp://127.0.0.1:1", 1.5, "died", ("a", "c"), "handle-worker-cleanup-1", recovery=plan),
        NetworkError("tcp://127.0.0.1:2", 2.0, "transfer-failed", ("x",), "no route", peers=("tcp://127.0.0.1:3",)),
        QuantumError("tcp://127.0.0.1:2", 3.0, "oom", ("k",), "MemoryError", circuit=7, backend="qsim"),
        RecoveryEvent("tcp://127.0.0.1:1", 4.0, "died", ("a",), duration=0.25),
    ]
    for event in sent:
        msg = event.to_message()
        # What Dask's event topic carries: msgpack turns tuples into lists.
        wire = {k: (list(v) if isinstance(v, tuple) else v) for k, v in msg.items()}
        wire["recovery"] = {k: list(v) if isinstance(v, tuple) else v for k, v in msg.get("recovery", {}).items()}
        if "recovery" not in msg:
            del wire["recovery"]
        assert from_message(wire) == event
        assert msg["kind"] == type(event).kind


def test_quantum_errors_are_classified_and_network_errors_recognized():
    assert classify_quantum_error(MemoryError()) == "oom"
    assert classify_quantum_error(RuntimeError("CUDA error: out of memory")) == "oom"
    assert classify_quantum_error(ValueError("qubit count mismatch")) == "validation"
    assert classify_quantum_error(RuntimeError("segment table corrupt")) == "backend"
    assert is_network_error("CommClosedError('in <TCP ...>: Stream is closed')")
    assert is_network_error("OSError('Timed out trying to connect to tcp://127.0.0.1:1 after 1 s')")
    assert is_network_error("ConnectionRefusedError(111, 'Connection refused')")
    assert not is_network_error("FileNotFoundError(2, 'No such file or directory')")
    assert not is_network_error("QuantumTaskError('circuit 3 failed on backend qsim: OSError: x')")


def test_poison_error_names_the_circuits_and_keeps_the_rest():
    err = PoisonCircuitError({17: "program 17, 3 qubits"}, 3, {0: ["r0"], 1: ["r1"]})
    text = str(err)
    assert "circuit 17: program 17, 3 qubits" in text and "3 attempt(s)" in text and "other 2 circuit(s)" in text
    assert err.circuits == {17: "program 17, 3 qubits"} and set(err.results) == {0, 1}


# -- content keys -----------------------------------------------------------------
def test_content_key_is_stable_and_changes_with_everything_that_changes_the_result():
    c = circuit()
    base = content_keys(jobs_for([c]))[0]
    assert content_keys(jobs_for([circuit()]))[0] == base  # an equal circuit built again
    assert content_keys(jobs_for([c], seed=2))[0] != base  # other seeds
    assert content_keys(jobs_for([c], reps=11))[0] != base  # other repetitions
    assert content_keys(jobs_for([circuit(seed=1)]))[0] != base  # another circuit
    assert content_keys(jobs_for([c], simulator="density-matrix"))[0] != base  # another backend


def test_content_key_of_a_sweep_covers_the_resolved_parameters():
    q = cirq.LineQubit.range(2)
    t = sympy.Symbol("t")
    c = cirq.Circuit(cirq.rx(t).on(q[0]), cirq.CNOT(*q), cirq.measure(*q, key="m"))
    keys = content_keys(jobs_for([c], sweeps=[cirq.Linspace("t", 0, 1, 3)]))
    assert len(set(keys.values())) == 3


def test_seeds_stay_out_of_the_key_of_deterministic_work_only():
    c = circuit(measure=False)
    extra = [{"qubit_order": cirq.LineQubit.range(4), "initial_state": 0}]
    one = jobs_for([c], work="state", seed=1, extra=extra)
    two = jobs_for([c], work="state", seed=2, extra=extra)
    assert not seeds_matter(one[0])
    assert content_keys(one) == content_keys(two)
    other_start = jobs_for([c], work="state", seed=1, extra=[{**extra[0], "initial_state": 1}])
    assert content_keys(other_start) != content_keys(one)  # the work's options are part of the key
    assert seeds_matter(jobs_for([circuit()])[0])


class _Opaque(cirq.Gate):
    """A gate without a JSON form: its circuits cannot be keyed."""

    def _num_qubits_(self):
        return 1

    def _unitary_(self):
        return np.eye(2)


def test_a_circuit_without_a_json_form_is_not_checkpointed():
    q = cirq.LineQubit(0)
    odd = cirq.Circuit(_Opaque().on(q), cirq.measure(q, key="m"))
    keys = content_keys(jobs_for([circuit(), odd]))
    assert list(keys) == [0]


# -- file format ------------------------------------------------------------------
def test_encode_decode_round_trip_records_and_arrays():
    blocks = [sample_result(3, 0, 5, seed=1), sample_result(3, 5, 7, seed=2)]
    got = decode("k1", encode("k1", blocks), index=9)
    assert [(r.index, r.start) for r in got] == [(9, 0), (9, 5)]
    for a, b in zip(got, blocks):
        assert {k: v.tolist() for k, v in unpack_records(a.payload).items()} == {
            k: v.tolist() for k, v in unpack_records(b.payload).items()}
    state = TaskResult(0, 0, "qsim", 0.5, "w", (np.arange(8) / 8).astype(np.complex64), 64)
    again = decode("k2", encode("k2", [state]), index=0)[0]
    assert again.payload.dtype == np.complex64 and np.array_equal(again.payload, state.payload)


def _corruptions(data: bytes, array: np.ndarray) -> dict[str, bytes]:
    def flip(at: int) -> bytes:
        return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]

    # np.savez stores members uncompressed: the array's bytes and the JSON header are in the file as is.
    return {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "garbage": b"not a checkpoint at all" * 10,
        "header byte flipped": flip(data.index(b'"seconds"') + 3),
        "array byte flipped": flip(data.index(array.tobytes()) + 5),
    }


def test_every_corruption_is_detected():
    result = sample_result(reps=64)
    data = encode("k", [result])
    for name, bad in _corruptions(data, result.payload["m"][0]).items():
        with pytest.raises(CorruptCheckpoint):
            decode("k", bad, 0)
        assert bad != data, name
    with pytest.raises(CorruptCheckpoint, match="holds key"):
        decode("other", data, 0)  # a file renamed or copied under another key


# -- the store --------------------------------------------------------------------
def test_store_writes_atomically_and_reads_back(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    store.put("ab" + "0" * 62, [sample_result()])
    assert list((tmp_path / "ckpt").rglob("*.npz")) == []  # buffered until a flush
    assert store.flush() == 1
    files = list((tmp_path / "ckpt").rglob("*"))
    assert [f.name for f in files if f.is_file()] == ["ab" + "0" * 62 + ".npz"]  # no temporary file left
    assert store.keys() == ["ab" + "0" * 62]
    assert store.get("ab" + "0" * 62, index=4)[0].index == 4
    assert store.get("cd" + "0" * 62, index=0) is None
    assert (store.stats["hits"], store.stats["misses"], store.stats["written"]) == (1, 1, 1)
    store.close()


def test_store_rejects_a_corrupt_file_and_logs_it(tmp_path, caplog):
    store = CheckpointStore(f"file://{tmp_path}")
    key = "ef" + "1" * 62
    store.put(key, [sample_result()])
    store.flush()
    path = tmp_path / key[:2] / f"{key}.npz"
    path.write_bytes(path.read_bytes()[:-40])
    with caplog.at_level(logging.WARNING, logger="qdask.fault.checkpoint"):
        assert store.get(key, 0) is None
    assert store.stats["corrupt"] == 1 and "is corrupt" in caplog.text
    store.put(key, [sample_result()])  # the recomputed result replaces it
    store.flush()
    assert store.get(key, 0) is not None
    store.close()


def test_background_flusher_writes_without_being_asked_and_stops_on_close():
    store = CheckpointStore("memory://qdask-test-flusher", interval=0.05)
    flusher = [t for t in threading.enumerate() if t.name == "qdask-checkpoint-flusher"]
    assert flusher
    store.put("aa" + "2" * 62, [sample_result()])
    wait_for(store.keys, timeout=30, what="a background flush")
    assert store.keys() == ["aa" + "2" * 62]
    store.put("bb" + "2" * 62, [sample_result()])
    store.close()  # flushes what is left
    assert store.keys() == ["aa" + "2" * 62, "bb" + "2" * 62]
    assert not any(t.is_alive() for t in flusher)


def test_buffered_results_count_as_hits_before_they_are_written():
    store = CheckpointStore("memory://qdask-test-buffer")
    store.put("cc" + "3" * 62, [sample_result(index=0)])
    assert store.get("cc" + "3" * 62, index=5)[0].index == 5
    store.close()


# -- shared by the cluster tests (test_fault.py, test_fault_recovery.py) -----------
#: Restarting a killed worker takes 10-20 s on a loaded 2-core box; meanwhile Dask would fail
#: tasks that have no worker (no-worker-timeout) and give up on the worker (lost-worker-timeout,
#: 15 s: LocalCluster then closes its Nanny for good).
PATIENT = {"qdask.scheduler.no-worker-timeout": "600s", "distributed.deploy.lost-worker-timeout": "600s"}


def on_worker() -> bool:
    """Whether this code runs inside a task on a Dask worker."""
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


class _XUnlessOnWorker(cirq.Gate):
    """An X gate whose unitary calls ``on_worker_hook`` when a worker simulates it."""

    def _num_qubits_(self):
        return 1

    def _has_unitary_(self):
        return True

    def _unitary_(self):
        if on_worker():
            self.on_worker_hook()
        return np.array([[0, 1], [1, 0]], dtype=complex)

    def on_worker_hook(self) -> None:
        raise NotImplementedError


class PoisonGate(_XUnlessOnWorker):
    """An X gate that kills the worker process that simulates it (SIGKILL), nowhere else."""

    def on_worker_hook(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def __repr__(self):
        return "PoisonGate()"


class FailingGate(_XUnlessOnWorker):
    """An X gate whose unitary raises ``error`` on workers (a backend failure), nowhere else."""

    def __init__(self, error: Exception):
        self.error = error

    def on_worker_hook(self) -> None:
        raise self.error




def worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def kill_worker(client, address: str | None = None) -> str:
    """SIGKILL a worker process (a random one by default); its Nanny restarts it. Returns its address."""
    pids = worker_pids(client)
    address = address or random.choice(sorted(pids))
    os.kill(pids[address], signal.SIGKILL)
    return address
