"""Admission, validation and partial results (issue 24 points 2-4, issue 20 point 4).

Against real multi-process clusters where workers matter (shot splitting,
circuits failing on workers, checkpointed reruns); client-side checks compare
exception types with what qsimcirq / cirq raise for the same call.
"""

from __future__ import annotations

import pickle
import re
import threading

import cirq
import numpy as np
import pytest
import qsimcirq
import sympy

import qdask
from qdask import FaultToleranceConfig
from qdask.quantum.errors import BatchError, TaskFailure
from test_fault_units import FailingGate


def small_circuits(n: int, qubits: int = 3) -> list[cirq.Circuit]:
    return [
        cirq.testing.random_circuit(qubits, 4, 0.8, random_state=s) + cirq.measure(*cirq.LineQubit.range(qubits), key="m")
        for s in range(n)
    ]


def with_measure(*ops: cirq.Operation) -> cirq.Circuit:
    qubits = sorted({q for op in ops for q in op.qubits})
    return cirq.Circuit(*ops, cirq.measure(*qubits, key="m"))


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
    before = client.run(lambda dask_worker: len(dask_worker.data) + len(dask_worker.state.tasks))
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
    # Nothing reached a worker.
    assert client.run(lambda dask_worker: len(dask_worker.data) + len(dask_worker.state.tasks)) == before


def test_nan_would_have_been_sampled_wrong_by_qsim():
    # Why the check exists: qsim returns all ones for rx(nan), cirq refuses it.
    circuit = cirq.Circuit(cirq.rx(np.nan).on(Q), cirq.measure(Q, key="m"))
    assert qsimcirq.QSimSimulator().run(circuit, repetitions=50).records["m"].all()
    with pytest.raises(ValueError):
        cirq.Simulator().run(circuit, repetitions=5)
