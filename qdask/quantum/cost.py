"""Cost model: estimated run time of a circuit per backend and thread count.

The model is calibrated by a short measurement (:meth:`CostModel.calibrate`,
~0.1 s), never guessed: by each quantum worker at its start, or once by the
process that starts local workers (:func:`measured_here`), which hands it to
them. qsim's time is

``per_circuit + per_op * ops + (per_amp_op * ops + per_amp_term * terms) * 2**n / speedup(threads)``

where the first two terms are the Python-side translation of the circuit
(which dominates small circuits) and the last the state-vector kernel, with
each Pauli term of the observables of an expectation value (qsim copies the
state, applies the term and takes an inner product: measured at 14 gates'
worth at 18 qubits).
Circuits whose every repetition needs its own simulation (noise channels,
mid-circuit measurements) pay that once per repetition. Estimates travel with
each circuit task (the ``qdask`` annotation) so balancing, elastic scaling
and monitoring read the same numbers.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from qdask.quantum.analysis import CircuitInfo, analyze

#: Width above which qsim's threads pay off (below it the vector fits in cache
#: and thread start-up dominates).
PARALLEL_MIN_QUBITS = 16


@dataclass(frozen=True)
class CostModel:
    """Seconds per unit of work, measured on one worker (one thread).

    Attributes
    ----------
    per_circuit : float
        Fixed cost of one simulator call.
    per_op : float
        Translation cost per operation.
    per_amp_op : float
        Kernel cost per amplitude per operation.
    per_amp_term : float
        Cost per amplitude of each Pauli term of an expectation value.
    """

    per_circuit: float
    per_op: float
    per_amp_op: float
    per_amp_term: float = 0.0

    def estimate(
        self, info: CircuitInfo, backend: str = "qsim", *, threads: int = 1, repetitions: int = 1, terms: int = 0
    ) -> float:
        """Estimated seconds to run ``info`` on ``backend`` with ``threads`` qsim threads.

        ``terms``: Pauli terms of the observables, for an expectation value.
        """
        ops = max(info.num_ops, 1)
        if backend == "stim":
            # Tableau simulation: polynomial; translation dominates.
            return self.per_circuit + self.per_op * ops * 2 + 1e-7 * repetitions * info.num_qubits
        amplitudes = 4.0**info.num_qubits if backend == "density-matrix" else 2.0**info.num_qubits
        per_amp = self.per_amp_op * ops + self.per_amp_term * terms
        kernel = per_amp * amplitudes / self.speedup(info.num_qubits, threads)
        one = self.per_op * ops + kernel
        if info.per_repetition and backend != "density-matrix":
            return self.per_circuit + one * max(repetitions, 1)
        return self.per_circuit + one

    @staticmethod
    def speedup(num_qubits: int, threads: int) -> float:
        if threads <= 1 or num_qubits < PARALLEL_MIN_QUBITS:
            return 1.0
        return float(threads) ** 0.85

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostModel:
        return cls(**{k: float(v) for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def median(cls, models: list[CostModel]) -> CostModel:
        """The typical worker's model (robust to one slow or busy worker)."""
        return cls(
            per_circuit=statistics.median(m.per_circuit for m in models),
            per_op=statistics.median(m.per_op for m in models),
            per_amp_op=statistics.median(m.per_amp_op for m in models),
            per_amp_term=statistics.median(m.per_amp_term for m in models),
        )

    @classmethod
    def calibrate(cls, repeats: int = 3) -> CostModel:
        """Measure this process's qsim speed on small circuits (about 0.1 s).

        A 1-qubit circuit gives the fixed cost, a 6-qubit one (translation
        dominated) the per-operation cost, a 16-qubit one the kernel cost, and
        its expectation values of 1 and 9 ZZ terms the cost of a term.
        """
        import cirq
        import qsimcirq

        sim = qsimcirq.QSimSimulator(qsimcirq.QSimOptions(cpu_threads=1))

        def best(circuit: cirq.Circuit) -> float:
            # Sampling with terminal measurements: the commonest work.
            circuit = circuit + cirq.measure(*sorted(circuit.all_qubits()), key="m")
            return min(_seconds(lambda: sim.run(circuit, repetitions=1)) for _ in range(repeats))

        tiny = cirq.Circuit(cirq.X(cirq.LineQubit(0)))
        small = _random(6, 20, seed=1)
        large = _random(PARALLEL_MIN_QUBITS, 10, seed=2)
        best(small)  # warm up imports and qsim's module
        per_circuit = best(tiny)
        ops_small = analyze(small).num_ops
        per_op = max((best(small) - per_circuit) / ops_small, 1e-7)
        ops_large = analyze(large).num_ops
        kernel = best(large) - per_circuit - per_op * ops_large
        per_amp_op = max(kernel / (ops_large * 2.0**PARALLEL_MIN_QUBITS), 1e-12)
        q = sorted(large.all_qubits())
        zz = [cirq.Z(q[i]) * cirq.Z(q[i + 1]) for i in range(9)]

        def expectation(terms: int) -> float:
            observable = cirq.PauliSum.from_pauli_strings(zz[:terms])
            return min(_seconds(lambda: sim.simulate_expectation_values(large, observable)) for _ in range(repeats))

        per_term = (expectation(9) - expectation(1)) / 8
        per_amp_term = max(per_term / 2.0**PARALLEL_MIN_QUBITS, 1e-12)
        return cls(per_circuit=per_circuit, per_op=per_op, per_amp_op=per_amp_op, per_amp_term=per_amp_term)


@functools.cache
def measured_here() -> CostModel:
    """:meth:`CostModel.calibrate` once per process.

    The workers a process starts on its own host run the same qsim on the same
    cores: :class:`~qdask.deploy.cluster.QuantumCluster` measures once and gives
    each local worker the model, so that no worker start (a restart after a
    failure, an elastic scale-up) waits for its own measurement.
    """
    return CostModel.calibrate()


def _seconds(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _random(n: int, depth: int, seed: int) -> Any:
    import cirq

    q = cirq.LineQubit.range(n)
    return cirq.testing.random_circuit(q, n_moments=depth, op_density=0.8, random_state=seed)
