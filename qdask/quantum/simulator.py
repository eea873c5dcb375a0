"""``qdask.Simulator``: cirq's simulator interfaces, computed across a Dask cluster."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import cirq
import numpy as np
from distributed import Client

from qdask.quantum.engine import Submission, metadata
from qdask.quantum.execute import TaskResult
from qdask.quantum.sampler import Sampler


class Simulator(
    Sampler,
    cirq.SimulatesSamples,
    cirq.SimulatesFinalState,
    cirq.SimulatesExpectationValues,
    cirq.SimulatesAmplitudes,
):
    """A drop-in for ``qsimcirq.QSimSimulator`` whose sweeps run across the cluster.

    Implements ``SimulatesSamples`` (``run*``, as :class:`qdask.Sampler`),
    ``SimulatesFinalState`` (``simulate``, ``simulate_sweep``),
    ``SimulatesExpectationValues`` and ``SimulatesAmplitudes``. Every parameter
    point of a sweep is a separate circuit job; cheap ones are packed together.

    Parameters are those of :class:`qdask.Sampler`.

    Examples
    --------
    >>> sim = qdask.Simulator(client)  # doctest: +SKIP
    >>> sim.simulate(circuit).final_state_vector  # doctest: +SKIP
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        seed: int | np.random.RandomState | None = None,
        simulator: str = "auto",
        priority: int | str = "normal",
        progress: bool = False,
    ) -> None:
        Sampler.__init__(self, client, seed=seed, simulator=simulator, priority=priority, progress=progress)

    def _run(
        self, circuit: cirq.AbstractCircuit, param_resolver: cirq.ParamResolver, repetitions: int
    ) -> dict[str, np.ndarray]:
        return dict(self.run_sweep(circuit, param_resolver, repetitions)[0].records)

    # -- SimulatesFinalState ---------------------------------------------------------
    def simulate_sweep(  # type: ignore[override]
        self,
        program: cirq.AbstractCircuit,
        params: cirq.Sweepable = None,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
        initial_state: Any = None,
    ) -> list[cirq.SimulationTrialResult]:
        order = _order(program, qubit_order)
        extra = {"qubit_order": order, "initial_state": _initial_state(initial_state, len(order))}
        sub, by_index = self._compute(program, params, "state", extra)
        out = []
        for job in sub.jobs:
            results = by_index[job.index]
            data = results[0].payload
            if data.ndim == 2:  # density matrix (exact noisy state)
                state: Any = cirq.DensityMatrixSimulationState(initial_state=data, qubits=order)
                trial: cirq.SimulationTrialResult = cirq.DensityMatrixTrialResult(
                    params=job.resolver, measurements={}, final_simulator_state=state
                )
            else:
                state = cirq.StateVectorSimulationState(initial_state=data, qubits=order)
                trial = cirq.StateVectorTrialResult(params=job.resolver, measurements={}, final_simulator_state=state)
            trial.metadata = metadata(results)  # type: ignore[attr-defined]
            out.append(trial)
        return out

    def simulate_sweep_iter(
        self,
        program: cirq.AbstractCircuit,
        params: cirq.Sweepable,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
        initial_state: Any = None,
    ) -> Iterator[cirq.SimulationTrialResult]:
        yield from self.simulate_sweep(program, params, qubit_order, initial_state)

    # -- SimulatesExpectationValues --------------------------------------------------
    def simulate_expectation_values_sweep(  # type: ignore[override]
        self,
        program: cirq.AbstractCircuit,
        observables: cirq.PauliSumLike | list[cirq.PauliSumLike],
        params: cirq.Sweepable,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
        initial_state: Any = None,
        permit_terminal_measurements: bool = False,
    ) -> list[list[float]]:
        if program.has_measurements():
            if not permit_terminal_measurements:
                raise ValueError(
                    "the circuit has measurements; expectation values are computed on the state before them. "
                    "Fix: pass permit_terminal_measurements=True, or remove the measurements."
                )
            if not program.are_all_measurements_terminal():
                raise ValueError("mid-circuit measurements are not supported for expectation values; remove them.")
            program = cirq.drop_terminal_measurements(program)
        obs = observables if isinstance(observables, list) else [observables]
        extra = {
            "qubit_order": _order(program, qubit_order),
            "observables": [cirq.PauliSum.wrap(o) for o in obs],
            "initial_state": _initial_state(initial_state, len(program.all_qubits())),
        }
        sub, by_index = self._compute(program, params, "expectation", extra)
        return [list(by_index[job.index][0].payload) for job in sub.jobs]

    def simulate_expectation_values_sweep_iter(
        self,
        program: cirq.AbstractCircuit,
        observables: cirq.PauliSumLike | list[cirq.PauliSumLike],
        params: cirq.Sweepable,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
        initial_state: Any = None,
        permit_terminal_measurements: bool = False,
    ) -> Iterator[list[float]]:
        yield from self.simulate_expectation_values_sweep(
            program, observables, params, qubit_order, initial_state, permit_terminal_measurements
        )

    # -- SimulatesAmplitudes ---------------------------------------------------------
    def compute_amplitudes_sweep(  # type: ignore[override]
        self,
        program: cirq.AbstractCircuit,
        bitstrings: Sequence[int],
        params: cirq.Sweepable,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
    ) -> list[list[complex]]:
        extra = {"qubit_order": _order(program, qubit_order), "bitstrings": [int(b) for b in bitstrings]}
        sub, by_index = self._compute(program, params, "amplitudes", extra)
        return [list(by_index[job.index][0].payload) for job in sub.jobs]

    def compute_amplitudes_sweep_iter(
        self,
        program: cirq.AbstractCircuit,
        bitstrings: Sequence[int],
        params: cirq.Sweepable,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
    ) -> Iterator[Sequence[complex]]:
        yield from self.compute_amplitudes_sweep(program, bitstrings, params, qubit_order)

    # -- shared --------------------------------------------------------------------------
    def _compute(
        self, program: cirq.AbstractCircuit, params: cirq.Sweepable, work: str, extra: dict[str, Any]
    ) -> tuple[Submission, dict[int, list[TaskResult]]]:
        sub = self.engine.submit([program], [params], [1], work=work, extra=[extra])
        return sub, self.engine.collect(sub)


def _order(program: cirq.AbstractCircuit, qubit_order: cirq.QubitOrderOrList) -> list[cirq.Qid]:
    return list(cirq.QubitOrder.as_qubit_order(qubit_order).order_for(program.all_qubits()))


def _initial_state(initial_state: Any, num_qubits: int) -> int:
    """qdask sends basis-state initial states only (an int); a vector would cost a state per task."""
    if initial_state is None:
        return 0
    if isinstance(initial_state, (int, np.integer)) and 0 <= int(initial_state) < 2**num_qubits:
        return int(initial_state)
    raise ValueError(
        f"initial_state={initial_state!r} is not supported: qdask accepts a computational basis state as an int "
        f"in [0, 2**{num_qubits}). Fix: prepend gates that prepare the state to the circuit."
    )
