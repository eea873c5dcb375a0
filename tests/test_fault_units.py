"""Fault tolerance without a cluster: events, checkpoint keys, file format, store and flusher.

The checkpoint tests write real files (local directories and fsspec's
in-memory filesystem) and corrupt them the ways disks and crashes do.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import signal
import stat
import threading
from pathlib import Path

import cirq
import dask
import numpy as np
import pytest
import sympy
from _polling import wait_for

from qdask.fault.checkpoint import (
    HEADER,
    HEADER_MAC,
    KEY_FILE,
    CheckpointStore,
    CorruptCheckpoint,
    InsecureStoreError,
    _digest,
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
from qdask.quantum.plan import ClusterView, SeedSource, build_jobs
from qdask.quantum.task import TaskResult, pack_records, unpack_records

SECRET = b"0123456789abcdef0123456789abcdef"
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
    got = decode("k1", encode("k1", blocks, SECRET), index=9, secret=SECRET)
    assert [(r.index, r.start) for r in got] == [(9, 0), (9, 5)]
    for a, b in zip(got, blocks):
        assert {k: v.tolist() for k, v in unpack_records(a.payload).items()} == {
            k: v.tolist() for k, v in unpack_records(b.payload).items()}
    state = TaskResult(0, 0, "qsim", 0.5, "w", (np.arange(8) / 8).astype(np.complex64), 64)
    again = decode("k2", encode("k2", [state], SECRET), index=0, secret=SECRET)[0]
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
    data = encode("k", [result], SECRET)
    for name, bad in _corruptions(data, result.payload["m"][0]).items():
        with pytest.raises(CorruptCheckpoint):
            decode("k", bad, 0, SECRET)
        assert bad != data, name
    with pytest.raises(CorruptCheckpoint, match="holds key"):
        decode("other", data, 0, SECRET)  # a file renamed or copied under another key
    with pytest.raises(CorruptCheckpoint, match="HMAC"):
        decode("k", data, 0, b"another store's secret..........")  # written under another secret


# -- the store --------------------------------------------------------------------
def test_store_writes_atomically_and_reads_back(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"))
    store.put("ab" + "0" * 62, [sample_result()])
    assert list((tmp_path / "ckpt").rglob("*.npz")) == []  # buffered until a flush
    assert store.flush() == 1
    files = list((tmp_path / "ckpt").rglob("*"))
    # No temporary file left; the store's HMAC key beside the results.
    assert sorted(f.name for f in files if f.is_file()) == ["ab" + "0" * 62 + ".npz", KEY_FILE]
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


def _forge(data: bytes) -> bytes:
    """What a local user who can write the store does: new samples, every plain SHA-256 recomputed."""
    with np.load(io.BytesIO(data)) as npz:
        arrays = {name: npz[name] for name in npz.files}
    header = json.loads(arrays.pop(HEADER).tobytes())
    arrays.pop(HEADER_MAC)
    for name in header["sha256"]:
        arrays[name] = np.ones_like(arrays[name])  # every sample forged to 1
        header["sha256"][name] = _digest(arrays[name])
    text = json.dumps(header, sort_keys=True).encode()
    buf = io.BytesIO()
    np.savez(buf, **{HEADER: np.frombuffer(text, np.uint8),
                     HEADER_MAC: np.frombuffer(hashlib.sha256(text).hexdigest().encode(), np.uint8)}, **arrays)
    return buf.getvalue()


def test_forged_and_foreign_checkpoints_count_as_corrupt_and_are_recomputed(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path / "ours"))
    other = CheckpointStore(str(tmp_path / "theirs"))  # another store: another secret
    assert store.secret != other.secret and len(store.secret) == 32
    forged_key, foreign_key = "aa" + "4" * 62, "bb" + "4" * 62
    for s in (store, other):
        s.put(forged_key, [sample_result()])
        s.put(foreign_key, [sample_result()])
        s.flush()
    forged = Path(store.path(forged_key))
    forged.write_bytes(_forge(forged.read_bytes()))
    Path(store.path(foreign_key)).write_bytes(Path(other.path(foreign_key)).read_bytes())  # valid, elsewhere
    with caplog.at_level(logging.WARNING, logger="qdask.fault.checkpoint"):
        assert store.get(forged_key, 0) is None and store.get(foreign_key, 0) is None
    assert store.stats["corrupt"] == 2 and store.stats.get("hits", 0) == 0
    assert caplog.text.count("HMAC mismatch") == 2
    assert other.get(foreign_key, 0) is not None  # the file is fine under its own store's secret
    store.put(forged_key, [sample_result()])  # the recomputed result replaces the forgery
    store.flush()
    assert unpack_records(store.get(forged_key, 0)[0].payload)["m"].tolist() == \
        unpack_records(sample_result().payload)["m"].tolist()
    store.close()
    other.close()


def test_a_local_store_is_private_directories_0700_files_0600(tmp_path):
    root = tmp_path / "deep" / "ck"
    store = CheckpointStore(f"file://{root}")
    key = "cd" + "5" * 62
    store.put(key, [sample_result()])
    store.flush()
    modes = {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}
    assert modes == {".": 0o700, KEY_FILE: 0o600, key[:2]: 0o700, f"{key[:2]}/{key}.npz": 0o600}
    store.close()
    again = CheckpointStore(str(root))  # a second store on it reads the same key
    assert again.secret == store.secret and again.get(key, 0) is not None
    again.close()


def _owned_by_another_user(tmp_path):
    if os.getuid() == 0:  # root (CI containers): give a directory away
        path = tmp_path / "foreign"
        path.mkdir(mode=0o700)
        os.chown(path, 65534, 65534)
        return path
    return Path("/")  # root's, not ours


def test_a_store_directory_of_another_user_or_writable_by_others_is_refused(tmp_path):
    foreign = _owned_by_another_user(tmp_path)
    with pytest.raises(InsecureStoreError, match=r"is owned by uid \d+, not by this user .*Fix: use a directory"):
        CheckpointStore(str(foreign))
    for mode in (0o777, 0o770, 0o702):
        shared = tmp_path / f"shared{mode:o}"
        shared.mkdir()
        shared.chmod(mode)
        with pytest.raises(InsecureStoreError, match=f"has mode {mode:04o}: others than its owner can write it.*"
                                                     f"Fix: chmod 700 {shared}"):
            CheckpointStore(str(shared))
    readable = tmp_path / "readable"
    CheckpointStore(str(readable)).close()
    (readable / KEY_FILE).chmod(0o644)  # the key others can read: they could sign forgeries
    with pytest.raises(InsecureStoreError, match="checkpoint key file .* has mode 0644.*Fix: chmod 600"):
        CheckpointStore(str(readable))


def test_the_default_store_is_per_user_and_refused_when_another_user_made_it(tmp_path):
    from qdask.fault.client import default_checkpoint_url

    with dask.config.set({"temporary-directory": str(tmp_path)}):
        url = default_checkpoint_url()
    assert url == str(tmp_path / f"qdask-checkpoints-{os.getuid()}")
    CheckpointStore(url).close()
    assert stat.S_IMODE(os.stat(url).st_mode) == 0o700
    if os.getuid() == 0:
        os.chown(url, 65534, 65534)  # planted by another user before us
        with pytest.raises(InsecureStoreError, match="owned by uid 65534"):
            CheckpointStore(url)


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
