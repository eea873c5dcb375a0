"""``qdask.Simulator``: cirq's simulator interfaces, computed across a Dask cluster."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import cirq
import numpy as np

from qdask.quantum.engine import Submission, metadata
from qdask.quantum.sampler import Sampler
from qdask.quantum.task import TaskResult


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
    ``SimulatesExpectationValues`` and ``SimulatesAmplitudes``, and qsimcirq's
    own ``simulate_into_1d_array`` and ``simulate_moment_expectation_values``.
    Every parameter point of a sweep is a separate circuit job; cheap ones are
    packed together.

    As in qsimcirq, a noisy circuit's ``simulate`` / ``compute_amplitudes``
    give one sampled trajectory (seeded), and its expectation values average
    ``qsim_options["ev_noisy_repetitions"]`` trajectories, which qdask spreads
    over the workers. The exact density matrix comes with
    ``simulator="density-matrix"``. ``simulate`` of a circuit that measures
    runs on cirq's simulator and returns the measurement values, as
    ``cirq.Simulator`` does (``docs/from-qsimcirq.md``).

    Parameters are those of :class:`qdask.Sampler`.

    Examples
    --------
    >>> sim = qdask.Simulator(client, noise=cirq.depolarize(0.01), seed=1)  # doctest: +SKIP
    >>> sim.simulate(circuit).final_state_vector  # doctest: +SKIP
    """

    def _run(
        self, circuit: cirq.AbstractCircuit, param_resolver: cirq.ParamResolver, repetitions: int
    ) -> dict[str, np.ndarray]:
        return dict(self.run_sweep(circuit, param_resolver, repetitions)[0].records)

    # -- SimulatesFinalState ---------------------------------------------------------
    def simulate_sweep(
        self,
        program: cirq.AbstractCircuit,
        params: cirq.Sweepable = None,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
        initial_state: Any = None,
    ) -> list[cirq.SimulationTrialResult]:
        """The final state of ``program`` at every point of ``params``, computed across the cluster.

        Parameters
        ----------
        program : cirq.AbstractCircuit
            The circuit; one with measurements runs on cirq's simulator.
        params : cirq.Sweepable, optional
            Parameter points; every point is a separate circuit job.
        qubit_order : cirq.QubitOrderOrList, default cirq.QubitOrder.DEFAULT
            Order of the qubits in the state, as in cirq.
        initial_state : int or array-like, optional
            A computational basis state or a state vector.

        Returns
        -------
        list of cirq.SimulationTrialResult
            One per point, in order: a ``cirq.StateVectorTrialResult``, or a
            ``cirq.DensityMatrixTrialResult`` with ``simulator="density-matrix"``.
            Each carries ``metadata`` as :class:`qdask.quantum.engine.Result`
            does (``backend``, ``workers``, ``seconds``, ``bytes``). ``simulate``
            returns the first.

        Examples
        --------
        >>> sim = qdask.Simulator(client)  # doctest: +SKIP
        >>> trials = sim.simulate_sweep(circuit, cirq.Linspace("t", 0, 1, 5))  # doctest: +SKIP
        >>> trials[0].final_state_vector.shape, trials[0].metadata["backend"]  # doctest: +SKIP
        ((16,), 'qsim')
        """
        out = []
        for resolver, data, order, results in self._states(program, params, qubit_order, initial_state):
            measurements: dict[str, np.ndarray] = {}
            if isinstance(data, tuple):  # cirq's simulator: the state and the measurement values
                data, measurements = data
            if data.ndim == 2:  # density matrix (exact noisy state)
                state: Any = cirq.DensityMatrixSimulationState(initial_state=data, qubits=order)
                trial: cirq.SimulationTrialResult = cirq.DensityMatrixTrialResult(
                    params=resolver, measurements=measurements, final_simulator_state=state
                )
            else:
                state = cirq.StateVectorSimulationState(initial_state=data, qubits=order)
                trial = cirq.StateVectorTrialResult(
                    params=resolver, measurements=measurements, final_simulator_state=state
                )
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
        """:meth:`simulate_sweep` as an iterator (every point is computed before the first is yielded).

        Examples
        --------
        >>> for trial in sim.simulate_sweep_iter(circuit, sweep):  # doctest: +SKIP
        ...     print(trial.params, trial.final_state_vector[:2])
        """
        yield from self.simulate_sweep(program, params, qubit_order, initial_state)

    def simulate_into_1d_array(
        self,
        program: cirq.AbstractCircuit,
        param_resolver: cirq.ParamResolverOrSimilarType = None,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
        initial_state: Any = None,
    ) -> tuple[cirq.ParamResolver, np.ndarray, tuple[cirq.Qid, ...]]:
        """``simulate`` without the result object: (resolver, final state, qubit order), as qsimcirq returns them.

        Examples
        --------
        >>> resolver, state, order = sim.simulate_into_1d_array(circuit)  # doctest: +SKIP
        >>> state.shape  # doctest: +SKIP
        (16,)
        """
        states = self._states(program, cirq.ParamResolver(param_resolver), qubit_order, initial_state)
        resolver, data, order, _ = states[0]
        return resolver, data[0] if isinstance(data, tuple) else data, tuple(order)

    def _states(
        self,
        program: cirq.AbstractCircuit,
        params: cirq.Sweepable,
        qubit_order: cirq.QubitOrderOrList,
        initial_state: Any,
    ) -> list[tuple[cirq.ParamResolver, Any, list[cirq.Qid], list[TaskResult]]]:
        program = self._noisy(program)
        order = _order(program, qubit_order)
        extra = {"qubit_order": order, "initial_state": _initial_state(initial_state, order)}
        sub, by_index = self._compute(program, params, "state", extra)
        return [(job.resolver, by_index[job.index][0].payload, order, by_index[job.index]) for job in sub.jobs]

    # -- SimulatesExpectationValues --------------------------------------------------
    def simulate_expectation_values_sweep(
        self,
        program: cirq.AbstractCircuit,
        observables: cirq.PauliSumLike | list[cirq.PauliSumLike],
        params: cirq.Sweepable,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
        initial_state: Any = None,
        permit_terminal_measurements: bool = False,
    ) -> list[list[float]]:
        """The expectation values of ``observables`` at every point of ``params``.

        Parameters
        ----------
        program : cirq.AbstractCircuit
            The circuit; measurements collapse the state (seeded), as in cirq.
        observables : cirq.PauliSumLike or list of them
            What to measure.
        params : cirq.Sweepable
            Parameter points; every point is a separate circuit job.
        qubit_order : cirq.QubitOrderOrList, default cirq.QubitOrder.DEFAULT
        initial_state : int or array-like, optional
        permit_terminal_measurements : bool, default False
            As in cirq: refuse a circuit ending in measurements unless True.

        Returns
        -------
        list of list of float
            ``values[point][observable]``; a noisy circuit averages
            ``qsim_options["ev_noisy_repetitions"]`` trajectories spread over the workers.

        Examples
        --------
        >>> sim = qdask.Simulator(client)  # doctest: +SKIP
        >>> sweep = cirq.Linspace("t", 0, 1, 25)  # doctest: +SKIP
        >>> values = sim.simulate_expectation_values_sweep(circuit, [cirq.Z(q[0])], sweep)  # doctest: +SKIP
        """
        if not permit_terminal_measurements and program.are_any_measurements_terminal():
            raise ValueError(  # cirq's wording (SimulatesExpectationValues), then qdask's fix
                "Provided circuit has terminal measurements, which may skew expectation values. "
                "If this is intentional, set permit_terminal_measurements=True. "
                "Fix: pass permit_terminal_measurements=True, or remove the measurements."
            )
        # Measurements stay in the circuit: as in cirq and qsim, each one
        # collapses the state (seeded) before the observables are measured.
        program = self._noisy(program)
        obs = observables if isinstance(observables, list) else [observables]
        order = _order(program, qubit_order)
        extra = {
            "qubit_order": order,
            "observables": [cirq.PauliSum.wrap(o) for o in obs],
            "initial_state": _initial_state(initial_state, order),
        }
        sub, by_index = self._compute(program, params, "expectation", extra)
        # cirq annotates expectation values as float; they are complex, as qsimcirq's are.
        return [_average_trajectories(job.repetitions, by_index[job.index]) for job in sub.jobs]  # type: ignore[misc]

    def simulate_expectation_values_sweep_iter(
        self,
        program: cirq.AbstractCircuit,
        observables: cirq.PauliSumLike | list[cirq.PauliSumLike],
        params: cirq.Sweepable,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
        initial_state: Any = None,
        permit_terminal_measurements: bool = False,
    ) -> Iterator[list[float]]:
        """:meth:`simulate_expectation_values_sweep` as an iterator.

        Examples
        --------
        >>> for values in sim.simulate_expectation_values_sweep_iter(circuit, [obs], sweep):  # doctest: +SKIP
        ...     print(values)
        """
        yield from self.simulate_expectation_values_sweep(
            program, observables, params, qubit_order, initial_state, permit_terminal_measurements
        )

    def simulate_moment_expectation_values(
        self,
        program: cirq.AbstractCircuit,
        indexed_observables: (
            dict[int, cirq.PauliSumLike | list[cirq.PauliSumLike]] | cirq.PauliSumLike | list[cirq.PauliSumLike]
        ),
        param_resolver: cirq.ParamResolverOrSimilarType = None,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
        initial_state: Any = None,
    ) -> list[list[complex]]:
        """Expectation values after moments of ``program``, as qsimcirq's method of the same name.

        ``indexed_observables`` maps a moment index to an observable or a list
        of them; one observable or a list applies after every moment. Returns
        one list of values per moment asked for, in moment order. Each moment
        is the circuit up to it, a separate job, so the moments run in parallel.

        Examples
        --------
        >>> observables = {0: cirq.Z(q[0]), 2: [cirq.X(q[1])]}  # doctest: +SKIP
        >>> values = sim.simulate_moment_expectation_values(circuit, observables)  # doctest: +SKIP
        >>> len(values)  # moments 0 and 2  # doctest: +SKIP
        2
        """
        if isinstance(indexed_observables, dict):
            pairs = sorted((m, obs if isinstance(obs, list) else [obs]) for m, obs in indexed_observables.items())
        else:
            obs = indexed_observables if isinstance(indexed_observables, list) else [indexed_observables]
            pairs = [(m, obs) for m in range(len(program))]
        for m, _ in pairs:
            if not 0 <= m < len(program):
                raise IndexError(
                    f"moment {m} is not in the circuit (moments 0 to {len(program) - 1}). "
                    "Fix: key indexed_observables by moment indices of the circuit."
                )
        program = self._noisy(program)
        order = _order(program, qubit_order)
        state = _initial_state(initial_state, order)
        resolver = cirq.ParamResolver(param_resolver)
        prefixes = [program[: m + 1] for m, _ in pairs]
        extra = [
            {"qubit_order": order, "observables": [cirq.PauliSum.wrap(o) for o in obs], "initial_state": state}
            for _, obs in pairs
        ]
        sub = self.engine.submit(
            prefixes,
            [resolver] * len(prefixes),
            [1] * len(prefixes),
            work="expectation",
            extra=self._with_options(extra),
        )
        by_index = self.engine.collect(sub)
        return [_average_trajectories(job.repetitions, by_index[job.index]) for job in sub.jobs]

    # -- SimulatesAmplitudes ---------------------------------------------------------
    def compute_amplitudes_sweep(
        self,
        program: cirq.AbstractCircuit,
        bitstrings: Sequence[int],
        params: cirq.Sweepable,
        qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
    ) -> list[list[complex]]:
        """The amplitudes of ``bitstrings`` at every point of ``params``.

        Parameters
        ----------
        program : cirq.AbstractCircuit
        bitstrings : sequence of int
            Basis states, as integers in ``qubit_order`` (big-endian, as cirq).
        params : cirq.Sweepable
        qubit_order : cirq.QubitOrderOrList, default cirq.QubitOrder.DEFAULT

        Returns
        -------
        list of list of complex
            ``amplitudes[point][bitstring]``.

        Examples
        --------
        >>> sim = qdask.Simulator(client)  # doctest: +SKIP
        >>> sim.compute_amplitudes(bell, bitstrings=[0b00, 0b11])  # doctest: +SKIP
        [(0.7071+0j), (0.7071+0j)]
        """
        program = self._noisy(program)
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
        """:meth:`compute_amplitudes_sweep` as an iterator.

        Examples
        --------
        >>> for amplitudes in sim.compute_amplitudes_sweep_iter(circuit, [0, 3], sweep):  # doctest: +SKIP
        ...     print(amplitudes)
        """
        yield from self.compute_amplitudes_sweep(program, bitstrings, params, qubit_order)

    # -- shared --------------------------------------------------------------------------
    def _compute(
        self, program: cirq.AbstractCircuit, params: cirq.Sweepable, work: str, extra: dict[str, Any]
    ) -> tuple[Submission, dict[int, list[TaskResult]]]:
        sub = self.engine.submit([program], [params], [1], work=work, extra=self._with_options([extra]))
        return sub, self.engine.collect(sub)


def _average_trajectories(trajectories: int, results: list[TaskResult]) -> list[complex]:
    """One job's expectation values: the blocks of a noisy one's trajectories averaged, weighted by their length."""
    if len(results) == 1:
        return list(results[0].payload)
    # Blocks arrive in trajectory order (sorted by start); the last runs to the end.
    ends = [r.start for r in results[1:]] + [trajectories]
    total = sum(np.asarray(r.payload) * (end - r.start) for r, end in zip(results, ends))
    return list(np.asarray(total) / trajectories)


def _order(program: cirq.AbstractCircuit, qubit_order: cirq.QubitOrderOrList) -> list[cirq.Qid]:
    return list(cirq.QubitOrder.as_qubit_order(qubit_order).order_for(program.all_qubits()))


def _initial_state(initial_state: Any, order: Sequence[cirq.Qid]) -> int | np.ndarray:
    """What qsimcirq accepts as an initial state, checked as qsimcirq checks it; a vector is copied.

    A basis state as an int, or the full state vector as a complex64
    ``numpy`` array of ``2**n`` amplitudes (qubit order ``order``). The copy
    travels to the workers: the caller's array is never modified, and no
    result aliases it.
    """
    size = int(np.prod([q.dimension for q in order], dtype=np.int64))
    if initial_state is None:
        return 0
    if isinstance(initial_state, (int, np.integer)) and not isinstance(initial_state, bool):
        if not 0 <= int(initial_state) < size:
            raise ValueError(
                f"initial_state={initial_state!r} is not a basis state of the {len(order)} qubits "
                f"(an int in [0, {size})). Fix: pass an int in that range, or a state vector."
            )
        return int(initial_state)
    if isinstance(initial_state, np.ndarray):
        if initial_state.dtype != np.complex64:  # qsimcirq's TypeError
            raise TypeError(
                f"initial_state vector must have dtype np.complex64, got {initial_state.dtype}. "
                "Fix: pass initial_state.astype(np.complex64)."
            )
        if initial_state.size != size:  # qsimcirq's ValueError
            raise ValueError(
                f"initial_state vector size must match number of qubits: expected {size} amplitudes "
                f"for {len(order)} qubits, received {initial_state.size}. Fix: pass a vector of {size} amplitudes "
                "in the order of qubit_order."
            )
        return np.array(initial_state, dtype=np.complex64, copy=True).reshape(-1)
    raise TypeError(  # qsimcirq's TypeError
        f"initial_state must be an int or state vector, got {type(initial_state).__name__}. "
        "Fix: pass a basis state as an int or a complex64 numpy array."
    )
