"""Admission, validation and partial results (issue 24 points 2-4, issue 20 point 4).

Against real multi-process clusters where workers matter (shot splitting,
circuits failing on workers, checkpointed reruns); client-side checks compare
exception types with what qsimcirq / cirq raise for the same call.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import threading
import time

import cirq
import dask
import numpy as np
import pytest
import qsimcirq
import sympy
from _polling import wait_for
from test_fault_units import FailingGate

import qdask
from qdask import FaultToleranceConfig
from qdask.quantum import backends as bk
from qdask.quantum.cost import CostModel
from qdask.quantum.errors import BatchError, TaskFailure
from qdask.quantum.plan import (
    LAZY_SEEDS,
    ClusterView,
    SeedRange,
    SeedSource,
    build_jobs,
    make_chunks,
    max_result_bytes,
    shot_block_seeds,
    target_chunk_seconds,
)
from qdask.quantum.validate import ShotsTooLargeError

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(10)


def small_circuits(n: int, qubits: int = 3) -> list[cirq.Circuit]:
    return [
        cirq.testing.random_circuit(qubits, 4, 0.8, random_state=s)
        + cirq.measure(*cirq.LineQubit.range(qubits), key="m")
        for s in range(n)
    ]


def with_measure(*ops: cirq.Operation) -> cirq.Circuit:
    """``ops`` measured mid-circuit and at the end.

    The mid-circuit measurement makes workers simulate the cirq circuit itself
    (not a compact form whose gates the client translated), so a gate failing
    on workers fails there.
    """
    qubits = sorted({q for op in ops for q in op.qubits})
    return cirq.Circuit(cirq.measure(*qubits, key="pre"), *ops, cirq.measure(*qubits, key="m"))


class KeyedFailingGate(FailingGate):
    """A :class:`FailingGate` with a JSON form, so its circuit has a checkpoint key like any other."""

    @classmethod
    def _json_namespace_(cls):
        return "qdask.tests"

    def _json_dict_(self):
        return {"error": repr(self.error)}


class RaisesEverywhere(cirq.Gate):
    """A gate whose unitary raises ``ValueError`` in any process: what qsimcirq raises for it."""

    def _num_qubits_(self):
        return 1

    def _unitary_(self):
        raise ValueError("bad unitary")


# -- partial results -------------------------------------------------------------------
def test_batch_error_keeps_the_20_good_results_and_the_failures_type(cluster2):
    circuits = small_circuits(21)
    q = cirq.LineQubit(0)
    circuits[13] = with_measure(cirq.H(q), FailingGate(ValueError("unitary refused on a worker")).on(q))
    ref = qsimcirq.QSimSimulator(seed=5).run_batch(circuits, repetitions=30)  # off workers the gate is an X
    with pytest.raises(ValueError) as info:
        qdask.Sampler(cluster2.get_client(), seed=5, simulator="qsim").run_batch(circuits, repetitions=30)
    err = info.value
    assert isinstance(err, qdask.BatchError) and isinstance(err, BatchError)
    # qsimcirq lets a gate's own error through unchanged: the same type reaches qdask's caller.
    with pytest.raises(Exception) as serial:
        qsimcirq.QSimSimulator().run(with_measure(RaisesEverywhere().on(q)), repetitions=3)
    assert isinstance(err, type(serial.value))
    assert sorted(err.errors) == [13] and type(err.errors[13]) is ValueError
    assert any("circuit 13 failed on backend 'qsim'" in n for n in err.errors[13].__notes__)
    assert "1 of 21 circuit(s) failed" in str(err) and "circuit 13: ValueError: unitary refused" in str(err)
    assert "Fix:" in str(err)
    assert sorted(err.results) == [i for i in range(21) if i != 13]
    for i, result in err.results.items():  # cirq Results, bit-identical to the serial run
        assert np.array_equal(result.records["m"], ref[i][0].records["m"]), i
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, ValueError) and sorted(again.results) == sorted(err.results)
    # The error is still held (its traceback holds the collecting frames): the results are on the
    # client, so the cluster has forgotten the batch's tasks and freed their memory all the same.
    scheduler = cluster2.cluster.scheduler
    wait_for(lambda: not [k for k in scheduler.tasks if str(k).startswith("qdask_sample")], timeout=30)


def test_failures_of_different_types_are_one_plain_batch_error(cluster2):
    circuits = small_circuits(6)
    q = cirq.LineQubit(0)
    circuits[1] = with_measure(FailingGate(ValueError("a")).on(q))
    circuits[4] = with_measure(FailingGate(KeyError("b")).on(q))
    with pytest.raises(BatchError) as info:
        qdask.Sampler(cluster2.get_client(), seed=1).run_batch(circuits, repetitions=5)
    assert type(info.value) is BatchError and not isinstance(info.value, ValueError)
    assert {i: type(e) for i, e in info.value.errors.items()} == {1: ValueError, 4: KeyError}
    assert sorted(info.value.results) == [0, 2, 3, 5]


def test_single_circuit_and_submit_raise_the_circuits_type(cluster2):
    q = cirq.LineQubit(0)
    bad = with_measure(FailingGate(ArithmeticError("overflow in the gate")).on(q))
    sampler = qdask.Sampler(cluster2.get_client(), seed=2)
    with pytest.raises(ArithmeticError, match="circuit 0: ArithmeticError: overflow"):
        sampler.run(bad, repetitions=10)
    with pytest.raises(ArithmeticError, match="overflow"):
        sampler.submit(bad, repetitions=10).result()


def _load_gate_missing_on_workers():
    from test_fault_units import on_worker

    if on_worker():
        raise ModuleNotFoundError("No module named 'lab_gates'")
    return GateMissingOnWorkers()


class GateMissingOnWorkers(cirq.Gate):
    """An X gate whose class workers cannot import (as when it lives in a module only the client has)."""

    def _num_qubits_(self):
        return 1

    def _unitary_(self):
        return np.array([[0, 1], [1, 0]], dtype=complex)

    def __reduce__(self):
        return _load_gate_missing_on_workers, ()


def test_a_chunk_that_fails_whole_is_rerun_circuit_by_circuit(cluster2):
    # The chunk cannot even be loaded on a worker, so no circuit of it ran: each
    # runs as a task of its own, and only the one with the missing gate fails.
    circuits = small_circuits(8)
    circuits[5] = with_measure(GateMissingOnWorkers().on(Q))
    sampler = qdask.Sampler(cluster2.get_client(), seed=6, simulator="qsim")
    with pytest.raises(ModuleNotFoundError, match="lab_gates") as info:
        sampler.run_batch(circuits, repetitions=20)
    assert sorted(info.value.errors) == [5] and sorted(info.value.results) == [0, 1, 2, 3, 4, 6, 7]
    ref = qsimcirq.QSimSimulator(seed=6).run_batch(circuits, repetitions=20)
    for i, result in info.value.results.items():
        assert np.array_equal(result.records["m"], ref[i][0].records["m"]), i
    assert sampler.engine.last.tasks < 8  # the circuits were packed: the chunk did fail whole


def test_simulator_errors_keep_their_type_too(cluster2):
    q = cirq.LineQubit.range(2)
    good = cirq.Circuit(cirq.H(q[0]), cirq.CNOT(*q))
    bad = cirq.Circuit(cirq.H(q[0]), FailingGate(ValueError("no unitary here")).on(q[1]))
    sim = qdask.Simulator(cluster2.get_client())
    with pytest.raises(ValueError, match="circuit 0: ValueError: no unitary here") as info:
        sim.simulate_sweep(good + bad, [{}])  # one program: reaches the gate on the worker
    assert isinstance(info.value, BatchError)
    with pytest.raises(ValueError) as both:
        sim.simulate_expectation_values_sweep(bad, [cirq.Z(q[0])], [{}, {}])
    assert sorted(both.value.errors) == [0, 1] and not both.value.results


def test_unpicklable_worker_error_still_reaches_the_caller():
    class Odd(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}/{b}")

    failure = TaskFailure.of(Odd(1, 2), "qdask: circuit 4 failed")
    back = pickle.loads(pickle.dumps(failure)).error
    assert type(back) is RuntimeError and "Odd: 1/2" in str(back) and "circuit 4" in back.__notes__[0]


def test_rerun_with_fault_tolerance_computes_only_the_failed_circuit(cluster2, tmp_path):
    circuits = small_circuits(21)
    q = cirq.LineQubit(0)
    circuits[20] = with_measure(cirq.H(q), KeyedFailingGate(ValueError("still bad")).on(q))
    ft = cluster2.enable_fault_tolerance(FaultToleranceConfig(checkpoint_url=str(tmp_path / "ck")))
    try:
        with pytest.raises(BatchError) as first:
            qdask.Sampler(cluster2.get_client(), seed=9).run_batch(circuits, repetitions=40)
        assert ft.checkpoints.stats["written"] == 20  # every finished circuit, not 1 of 21
        assert ft.checkpoints.stats["misses"] == 21
        before = dict(ft.checkpoints.stats)
        with pytest.raises(BatchError) as second:
            qdask.Sampler(cluster2.get_client(), seed=9).run_batch(circuits, repetitions=40)
        after = dict(ft.checkpoints.stats)
    finally:
        ft.stop()
    assert after["hits"] - before.get("hits", 0) == 20  # restored, not run
    assert after["misses"] - before.get("misses", 0) == 1  # only circuit 20 was computed again
    assert after["written"] == before["written"]
    assert sorted(second.value.errors) == [20]
    for i in range(20):
        assert second.value.results[i].records["m"].tobytes() == first.value.results[i].records["m"].tobytes()


# -- validation: refused on the client, with the type cirq / qsimcirq raise ------------
class LockedGate(cirq.Gate):
    """An rx(0.3) gate holding a lock: it cannot be pickled to reach a worker."""

    def __init__(self):
        self.lock = threading.Lock()

    def _num_qubits_(self):
        return 1

    def _unitary_(self):
        return cirq.unitary(cirq.rx(0.3))


def _raised(call) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


def _executed(dask_worker) -> int:
    """Tasks this worker has run (it only grows)."""
    return dask_worker.state.executed_count


Q = cirq.LineQubit(0)
A = sympy.Symbol("a")
MEASURED = cirq.Circuit(cirq.X(Q), cirq.measure(Q, key="m"))


@pytest.mark.parametrize(
    "args, reference, match",
    [
        (([MEASURED, cirq.Circuit(cirq.rx(np.nan).on(Q), cirq.measure(Q, key="m"))], None, 5), "cirq",
         r"circuit 1: operation cirq.Rx\(rads=nan\).* has a NaN or infinite rads"),
        (([cirq.Circuit(cirq.rx(A).on(Q), cirq.measure(Q, key="m"))], [{"a": np.inf}], 5), "cirq",
         "circuit 0: the resolver gives a=inf"),
        (([cirq.Circuit(cirq.MatrixGate(np.diag([np.nan, 1]), unitary_check=False).on(Q), cirq.measure(Q, key="m"))],
          None, 5), "cirq", "circuit 0: .* NaN or infinite matrix"),
        (([MEASURED, "H 0; M 0"], None, 5), None, "program 1: expected a cirq.AbstractCircuit, got str 'H 0; M 0'"),
        (([MEASURED], None, "10"), "both", r"repetitions='10' \(str\) is not an integer.*Fix: pass repetitions=10"),
        (([MEASURED], None, 2.5), "both", r"repetitions=2.5 \(float\) is not an integer"),
        (([MEASURED], None, -1), "cirq", "Number of repetitions cannot be negative. Was -1"),
        (([cirq.Circuit(cirq.X(Q))], None, 5), "both", "Circuit has no measurements to sample"),
        (([MEASURED, MEASURED], [None] * 3, 5), "both", "len.programs. and len.params_list. must match. Got 2 and 3"),
        (([MEASURED, MEASURED], None, [5, 5, 5]), "both", "len.programs. and len.repetitions. must match. Got 2 and 3"),
        # Measured mid-circuit: the circuit itself must travel (no compact form stands in for it).
        (([MEASURED, cirq.Circuit(LockedGate().on(Q), cirq.measure(Q, key="a"), LockedGate().on(Q),
                                  cirq.measure(Q, key="m"))], None, 5), None,
         r"circuit 1: operation .*LockedGate.* cannot be pickled .*_thread.lock.*Fix: keep locks"),
    ],
    ids=["nan-gate", "inf-resolver", "nan-matrix", "not-a-circuit", "str-reps", "float-reps", "negative-reps",
         "no-measurements", "params-length", "reps-length", "unpicklable-gate"],
)
def test_refused_on_the_client_with_the_references_type(cluster2, args, reference, match):
    client = cluster2.get_client()
    programs, params, reps = args
    before = client.run(_executed)
    err = _raised(lambda: qdask.Sampler(client, seed=1).run_batch(programs, params, reps))
    assert re.search(match, str(err)), str(err)
    assert "Fix" in str(err)
    # The reference simulators' own error types, on the same call.
    if reference in ("cirq", "both"):
        assert isinstance(err, type(_raised(lambda: cirq.Simulator().run_batch(programs, params, reps))))
    if reference == "both":
        assert isinstance(err, type(_raised(lambda: qsimcirq.QSimSimulator().run_batch(programs, params, reps))))
    if "not-a-circuit" in match or "pickled" in match or reference is None:
        assert isinstance(err, TypeError)
    assert client.run(_executed) == before  # no worker ran anything


def test_nan_would_have_been_sampled_wrong_by_qsim():
    # Why the check exists: qsim returns all ones for rx(nan), cirq refuses it.
    circuit = cirq.Circuit(cirq.rx(np.nan).on(Q), cirq.measure(Q, key="m"))
    assert qsimcirq.QSimSimulator().run(circuit, repetitions=50).records["m"].all()
    with pytest.raises(ValueError):
        cirq.Simulator().run(circuit, repetitions=5)


# -- shot admission --------------------------------------------------------------------
def _view(slots: int = 2, memory: int = 2**30) -> ClusterView:
    return ClusterView(slots=slots, max_statevector_bytes=memory, backends=frozenset(bk.backend_names()),
                       cost=CostModel(per_circuit=2e-4, per_op=3e-5, per_amp_op=4e-10), big_threads=1)


MID = cirq.Circuit(cirq.H(Q), cirq.measure(Q, key="a"), cirq.H(Q), cirq.measure(Q, key="m"))
TERMINAL = cirq.Circuit(cirq.H(Q), cirq.measure(Q, key="m"))


@pytest.mark.parametrize("circuit", [MID, TERMINAL], ids=["mid-circuit", "terminal"])
def test_1e8_repetitions_plan_in_well_under_a_second(circuit):
    view = _view()
    t0 = time.perf_counter()
    jobs = build_jobs([circuit], [None], [10**8], work="sample", simulator="qsim", view=view, seeds=SeedSource(1))
    chunks = make_chunks(jobs, view, target_chunk_seconds(jobs, view))
    seconds = time.perf_counter() - t0
    kind = "mid-circuit" if circuit is MID else "terminal"
    print(f"\n10**8 repetitions ({kind}): planned in {seconds * 1e3:.1f} ms, "
          f"{len(chunks)} tasks of <= {max(c.memory for c in chunks) / 2**20:.0f} MiB")
    assert seconds < 1.0
    assert sum(t.repetitions for c in chunks for t in c.tasks) == 10**8
    assert 2 <= len(chunks) <= 64 * view.slots  # split by memory, at most 64 blocks a slot
    assert all(c.memory <= view.max_statevector_bytes for c in chunks)


def test_seed_ranges_are_the_draws_a_serial_qsim_makes():
    source = SeedSource(3)
    lazy = source.draw(LAZY_SEEDS + 5)
    after = source.draw(4)  # the stream moved past the range
    serial = np.random.RandomState(3)  # what QSimSimulator(seed=3) draws from
    eager = serial.randint(2**31 - 1, size=LAZY_SEEDS + 5)
    assert np.array_equal(np.asarray(lazy), eager) and np.array_equal(after, serial.randint(2**31 - 1, size=4))
    assert np.array_equal(lazy[1000:1100].tolist(), eager[1000:1100]) and lazy[-1] == eager[-1]
    # A draw the legacy randint rejects (31 masked bits all ones, once in 2**31)
    # is skipped as randint skips it: a state whose 11th output is one.
    keys = np.random.RandomState(5).randint(0, 2**32, size=624, dtype=np.uint64).astype(np.uint32)
    keys[10] = _untemper(0xFFFFFFFF)
    crafted = np.random.RandomState()
    crafted.set_state(("MT19937", keys, 0))  # pos 0: the next 624 outputs are the tempered keys
    check = np.random.RandomState()
    check.set_state(crafted.get_state())
    assert int(check._bit_generator.random_raw(11)[10]) == 0xFFFFFFFF  # the state is what we meant
    check.set_state(crafted.get_state())
    draws = check.randint(2**31 - 1, size=40)
    assert 0x7FFFFFFF not in draws  # randint rejected it
    assert np.array_equal(np.asarray(SeedRange(crafted.get_state(), 7, 30)), draws[7:37])
    assert np.array_equal(np.asarray(SeedRange(crafted.get_state(), 12, 5)), draws[12:17])


def _untemper(y: int) -> int:
    """The MT19937 state word whose tempered output is ``y``."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    t = y
    for _ in range(5):
        t = y ^ ((t << 7) & 0x9D2C5680)
    y = t & 0xFFFFFFFF
    t = y
    for _ in range(3):
        t = y ^ (t >> 11)
    return t & 0xFFFFFFFF


def test_split_blocks_equal_serial_qsim_runs_of_their_seeds(cluster2):
    # A small block budget splits 5,000 repetitions: each block equals a serial
    # QSimSimulator run with its seed, and the blocks run on both workers.
    circuit = cirq.Circuit(cirq.H.on_each(*cirq.LineQubit.range(3)), cirq.measure(*cirq.LineQubit.range(3), key="m"))
    with dask.config.set({"qdask.quantum.shot-block-bytes": "64KiB"}):
        result = qdask.Sampler(cluster2.get_client(), seed=11, simulator="qsim").run(circuit, repetitions=5000)
    blocks = result.metadata["blocks"]
    assert blocks > 1
    first = int(np.random.RandomState(11).randint(2**31 - 1))  # the one draw qsimcirq makes for this circuit
    seeds = shot_block_seeds(first, blocks)
    edges = np.linspace(0, 5000, blocks + 1).astype(int)
    serial = np.concatenate([
        qsimcirq.QSimSimulator(seed=int(s)).run(circuit, repetitions=int(b - a)).records["m"]
        for s, a, b in zip(seeds, edges[:-1], edges[1:])
    ])
    assert np.array_equal(result.records["m"], serial)


def test_1e7_repetitions_on_2gib_workers_and_1e10_refused_at_once(cluster2):
    client = cluster2.get_client()
    pids = client.run(os.getpid)
    sampler = qdask.Sampler(client, seed=4, simulator="qsim")
    executed = client.run(_executed)
    t0 = time.perf_counter()
    result = sampler.run(TERMINAL, repetitions=10**7)
    seconds = time.perf_counter() - t0
    ones = result.records["m"].reshape(-1)
    assert ones.shape == (10**7,) and abs(ones.mean() - 0.5) < 5 * 0.5 / np.sqrt(10**7)
    assert result.metadata["blocks"] > 1 and len(result.metadata["workers"]) == 2  # split, in parallel
    # The default limit is a quarter of this machine's memory: pinned where that would hold 10**10 bits.
    limit = "auto" if max_result_bytes() < 4 * 10**10 else "16GiB"
    t0 = time.perf_counter()
    with dask.config.set({"qdask.quantum.max-result-bytes": limit}), pytest.raises(ShotsTooLargeError) as info:
        sampler.run(TERMINAL, repetitions=10**10)
    refused = time.perf_counter() - t0
    message = str(info.value)
    assert "10,000,000,000 repetitions x 1 measured bit(s) need about 37.25 GiB on the client" in message
    assert "Fix: sample in calls of at most" in message and isinstance(info.value, ValueError)
    assert refused < 1.0
    assert client.run(os.getpid) == pids  # 0 worker restarts
    assert sum(client.run(_executed).values()) - sum(executed.values()) == result.metadata["blocks"]  # none refused
    print(f"\n10**7 repetitions: {seconds:.1f} s in {result.metadata['blocks']} blocks on "
          f"{len(result.metadata['workers'])} workers; 10**10 refused in {refused * 1e3:.1f} ms; worker restarts: 0")


def test_per_repetition_seed_ranges_on_workers_equal_serial_qsim(cluster2):
    # 70,000 repetitions measured mid-circuit: 70,000 seeds travel as a range of
    # the stream, made on the workers block by block; results equal qsimcirq's
    # serial run, split over both workers.
    reps = LAZY_SEEDS + 4464
    with dask.config.set({"qdask.quantum.shot-block-bytes": "512KiB"}):
        result = qdask.Sampler(cluster2.get_client(), seed=8, simulator="qsim").run(MID, repetitions=reps)
    serial = qsimcirq.QSimSimulator(seed=8).run(MID, repetitions=reps)
    assert result.metadata["blocks"] > 1 and len(result.metadata["workers"]) == 2
    for key in ("a", "m"):
        assert np.array_equal(result.records[key], serial.records[key]), key



NOT_DEFAULT = """
import sys
import cirq, numpy as np, qsimcirq, qdask
from distributed import Client

q = cirq.LineQubit.range(3)
circuits = [cirq.testing.random_circuit(q, 4, 0.8, random_state=s) + cirq.measure(*q, key="m") for s in range(4)]
if __name__ == "__main__":
    with Client(sys.argv[1], set_as_default=False) as client:
        got = qdask.Sampler(client, seed=9).run_batch(circuits, repetitions=20)
    ref = qsimcirq.QSimSimulator(seed=9).run_batch(circuits, repetitions=20)
    assert all(np.array_equal(g[0].records["m"], r[0].records["m"]) for g, r in zip(got, ref, strict=True))
    print("equal")
"""


def test_a_sampler_on_a_client_that_is_not_the_default(cluster2, tmp_path):
    """Only a Client(set_as_default=False) in the process: the engine never reaches for a default one."""
    script = tmp_path / "not_default.py"
    script.write_text(NOT_DEFAULT)
    done = subprocess.run([sys.executable, str(script), cluster2.scheduler_address],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "equal", done.stderr[-2000:]
