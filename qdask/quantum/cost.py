"""Cost model: estimated run time of a circuit per backend and thread count.

The model is calibrated by a short measurement on each quantum worker at
start (:meth:`CostModel.calibrate`, ~0.1 s), never guessed: qsim's time is

``per_circuit + per_op * ops + per_amp_op * ops * 2**n / speedup(threads)``

where the first two terms are the Python-side translation of the circuit
(which dominates small circuits) and the last the state-vector kernel.
Circuits whose every repetition needs its own simulation (noise channels,
mid-circuit measurements) pay that once per repetition. Estimates travel with
each circuit task (the ``qdask`` annotation) so balancing, elastic scaling
and monitoring read the same numbers.
"""

from __future__ import annotations

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
    """

    per_circuit: float
    per_op: float
    per_amp_op: float

    def estimate(
        self, info: CircuitInfo, backend: str = "qsim", *, threads: int = 1, repetitions: int = 1
    ) -> float:
        """Estimated seconds to run ``info`` on ``backend`` with ``threads`` qsim threads."""
        ops = max(info.num_ops, 1)
        if backend == "stim":
            # Tableau simulation: polynomial; translation dominates.
            return self.per_circuit + self.per_op * ops * 2 + 1e-7 * repetitions * info.num_qubits
        amplitudes = 4.0**info.num_qubits if backend == "density-matrix" else 2.0**info.num_qubits
        kernel = self.per_amp_op * ops * amplitudes / self.speedup(info.num_qubits, threads)
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
        return cls(**{k: float(d[k]) for k in ("per_circuit", "per_op", "per_amp_op")})

    @classmethod
    def median(cls, models: list[CostModel]) -> CostModel:
        """The typical worker's model (robust to one slow or busy worker)."""
        return cls(
            per_circuit=statistics.median(m.per_circuit for m in models),
            per_op=statistics.median(m.per_op for m in models),
            per_amp_op=statistics.median(m.per_amp_op for m in models),
        )

    @classmethod
    def calibrate(cls, repeats: int = 3) -> CostModel:
        """Measure this process's qsim speed on two small circuits (about 0.1 s).

        A 1-qubit circuit gives the fixed cost, a 6-qubit one (translation
        dominated) the per-operation cost, a 16-qubit one the kernel cost.
        """
        import cirq
        import qsimcirq

        sim = qsimcirq.QSimSimulator(qsimcirq.QSimOptions(cpu_threads=1))

        def best(circuit: cirq.Circuit) -> float:
            # Sampling with terminal measurements: the commonest work.
            circuit = circuit + cirq.measure(*sorted(circuit.all_qubits()), key="m")
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                sim.run(circuit, repetitions=1)
                times.append(time.perf_counter() - t0)
            return min(times)

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
        return cls(per_circuit=per_circuit, per_op=per_op, per_amp_op=per_amp_op)


def _random(n: int, depth: int, seed: int) -> Any:
    import cirq

    q = cirq.LineQubit.range(n)
    return cirq.testing.random_circuit(q, n_moments=depth, op_density=0.8, random_state=seed)
