"""Error mitigation with mitiq, the mitigation circuits sent as one distributed batch.

:class:`ClusterExecutor` is a *batched* mitiq executor (its ``run`` is
annotated ``-> Sequence[MeasurementResult]``, which is how mitiq recognises
one): mitiq hands it every circuit a technique needs at once, and it runs them
with one ``Sampler.run_batch`` on the cluster. With ``readout=True`` the same
batch also holds the readout calibration circuits (every qubit prepared in 0,
then in 1); the per-qubit confusion matrices they give undo readout errors
(``mitiq.rem``) on every result before mitiq sees it.

:func:`execute_with_zne` is zero-noise extrapolation (mitiq's folding and
Richardson/linear factories, ``mitiq.zne.execute_with_zne``) plus, by
default, readout-error mitigation: one batch of ``2 + len(scale_factors) x
measurement groups`` circuits. The noise being mitigated comes from where the
circuits run: an emulated device (``noise=``, applied in the client, so a
seeded ``qdask.Sampler`` gives the samples a seeded serial simulator would)
or noisy workers (:mod:`qdask.hybrid.noise`).

mitiq must be installed next to ``cirq-core~=1.7``: every mitiq release up to
1.1.0 declares ``cirq-core<1.7`` (and 0.49+ ``numpy<2.3``), so pip cannot
resolve it with qdask; mitiq 1.1.0's ZNE and REM work with cirq 1.7 and numpy
2.4, so install it without its pins (``docs/hybrid.md``)::

    pip install 'qdask[mitigation]' && pip install --no-deps mitiq==1.1.0
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cirq
import numpy as np

try:
    import mitiq
    from mitiq import MeasurementResult
    from mitiq.rem import generate_tensored_inverse_confusion_matrix, mitigate_measurements
    from mitiq.zne.inference import Factory, RichardsonFactory
    from mitiq.zne.scaling import fold_gates_at_random
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "qdask.hybrid.mitigation needs mitiq. Fix: pip install 'qdask[mitigation]' && "
        "pip install --no-deps mitiq==1.1.0 (mitiq pins cirq-core<1.7; see docs/hybrid.md)."
    ) from e

#: mitiq releases whose ZNE and REM qdask is tested with (``mitiq 0.0.0`` on PyPI is an empty placeholder).
TESTED_MITIQ = "1.1.0"
if mitiq.__version__ == "0.0.0":  # pragma: no cover - depends on the environment
    raise ImportError(
        f"mitiq {mitiq.__version__} is the empty placeholder release. "
        f"Fix: pip install --no-deps mitiq=={TESTED_MITIQ}."
    )


def to_measurement_result(result: cirq.Result) -> MeasurementResult:
    """A cirq result as mitiq's ``MeasurementResult``.

    Bits and qubit indices are read as mitiq's own cirq executor
    (``mitiq.interface.mitiq_cirq.sample_bitstrings``) reads them: keys like
    ``"q(0),q(2)"``, which is what ``mitiq.Observable.measure_in`` produces.
    """
    return MeasurementResult(
        result=np.column_stack(list(result.measurements.values())).tolist(),
        qubit_indices=tuple(int(q[2:-1]) for k in result.measurements for q in k.split(",")),
    )


def calibration_circuits(qubits: Sequence[cirq.Qid]) -> list[cirq.Circuit]:
    """Readout calibration: ``qubits`` prepared in all-0, then all-1, and measured.

    The measurement key names qubit ``i`` ``q(i)``, as ``mitiq.Observable.measure_in``
    does for the ``i``-th of a circuit's sorted qubits.
    """
    measure = cirq.measure(*qubits, key=",".join(f"q({i})" for i in range(len(qubits))))
    return [cirq.Circuit(cirq.I.on_each(*qubits), measure), cirq.Circuit(cirq.X.on_each(*qubits), measure)]


def confusion_matrices(zeros: MeasurementResult, ones: MeasurementResult) -> list[np.ndarray]:
    """Per-qubit 2x2 confusion matrices ``[[P(0|0), P(0|1)], [P(1|0), P(1|1)]]`` from calibration results."""
    p10 = np.mean(np.asarray(zeros.result, dtype=float), axis=0)  # read 1, prepared 0
    p01 = 1 - np.mean(np.asarray(ones.result, dtype=float), axis=0)  # read 0, prepared 1
    return [np.array([[1 - a, b], [a, 1 - b]]) for a, b in zip(p10, p01)]


def inverse_confusion_matrix(matrices: Sequence[np.ndarray], qubit_indices: Sequence[int]) -> np.ndarray:
    """mitiq's tensored inverse confusion matrix for a result measuring ``qubit_indices``."""
    return generate_tensored_inverse_confusion_matrix(len(qubit_indices), [matrices[i] for i in qubit_indices])


class ClusterExecutor:
    """A batched mitiq executor that samples every circuit of a call in one ``run_batch``.

    Parameters
    ----------
    sampler : cirq.Sampler
        ``qdask.Sampler`` (distributed) or any cirq sampler.
    repetitions : int
        Shots per circuit.
    noise : cirq.NOISE_MODEL_LIKE, optional
        Emulated device noise added to every circuit before it is sent
        (e.g. :class:`qdask.hybrid.noise.DeviceNoise`).
    readout : bool, default False
        Prepend the readout calibration circuits to every batch and return
        readout-mitigated results (``mitiq.rem.mitigate_measurements``).

    Attributes
    ----------
    batches, circuits : int
        ``run_batch`` calls and circuits sent so far.
    raw : dict
        Unmitigated result of each circuit run (frozen circuit -> MeasurementResult).
    matrices : list of numpy.ndarray
        Per-qubit confusion matrices of the last calibration.

    Examples
    --------
    >>> ex = ClusterExecutor(qdask.Sampler(client, seed=1), repetitions=4000, readout=True)  # doctest: +SKIP
    >>> mitiq.zne.execute_with_zne(circuit, ex.executor(), observable)  # doctest: +SKIP
    """

    def __init__(self, sampler: cirq.Sampler, repetitions: int, *, noise: Any = None, readout: bool = False) -> None:
        self.sampler = sampler
        self.repetitions = int(repetitions)
        self.noise = noise
        self.readout = readout
        self.batches = 0
        self.circuits = 0
        self.raw: dict[cirq.FrozenCircuit, MeasurementResult] = {}
        self.matrices: list[np.ndarray] = []

    def run(self, circuits: Sequence[cirq.Circuit]) -> Sequence[MeasurementResult]:
        """Sample ``circuits`` (plus calibration circuits) in one batch; the mitiq executor function."""
        circuits = list(circuits)
        extra = calibration_circuits(sorted(set().union(*(c.all_qubits() for c in circuits)))) if self.readout else []
        batch = [c.with_noise(self.noise) if self.noise is not None else c for c in extra + circuits]
        results = [to_measurement_result(r[0]) for r in self.sampler.run_batch(batch, repetitions=self.repetitions)]
        self.batches += 1
        self.circuits += len(batch)
        if self.readout:
            self.matrices = confusion_matrices(results[0], results[1])
            results = results[2:]
        out = []
        for circuit, result in zip(circuits, results):
            self.raw[cirq.FrozenCircuit(circuit)] = result
            if self.readout:
                result = mitigate_measurements(result, inverse_confusion_matrix(self.matrices, result.qubit_indices))
            out.append(result)
        return out

    def executor(self) -> mitiq.Executor:
        """This executor as a ``mitiq.Executor`` that never splits a call into several batches."""
        return mitiq.Executor(self.run, max_batch_size=sys.maxsize)

    def replay(self, circuits: Sequence[cirq.Circuit]) -> Sequence[MeasurementResult]:
        """The recorded unmitigated results of circuits already run (no new sampling)."""
        return [self.raw[cirq.FrozenCircuit(c)] for c in circuits]


def to_mitiq_observable(
    observable: cirq.PauliSumLike | mitiq.Observable, qubits: Sequence[cirq.Qid]
) -> mitiq.Observable:
    """A ``mitiq.Observable`` from a cirq Pauli sum on ``qubits`` (mitiq indexes them by position)."""
    if isinstance(observable, mitiq.Observable):
        return observable
    position = {q: i for i, q in enumerate(qubits)}
    terms = []
    for term in cirq.PauliSum.wrap(observable):
        items = sorted(term.items(), key=lambda qp: position[qp[0]])
        spec = "".join(str(p) for _, p in items)
        terms.append(mitiq.PauliString(spec, complex(term.coefficient), [position[q] for q, _ in items]))
    return mitiq.Observable(*terms)


@dataclass
class MitigationResult:
    """Outcome of :func:`execute_with_zne`.

    Attributes
    ----------
    value : float
        Mitigated expectation value.
    unmitigated : float or None
        Expectation value from the raw samples at scale factor 1 (None when
        the factory has no scale factor 1).
    scale_factors, noisy_values : list of float
        What the factory extrapolated from (after readout mitigation, if on).
    confusion_matrices : list of numpy.ndarray
        Per-qubit readout confusion matrices (empty without readout mitigation).
    circuits, batches : int
        Circuits sent, and the batches they went in (1).
    """

    value: float
    unmitigated: float | None
    scale_factors: list[float]
    noisy_values: list[float]
    confusion_matrices: list[np.ndarray] = field(default_factory=list)
    circuits: int = 0
    batches: int = 0


def execute_with_zne(
    circuit: cirq.Circuit,
    observable: cirq.PauliSumLike | mitiq.Observable,
    sampler: cirq.Sampler,
    *,
    repetitions: int,
    factory: Factory | None = None,
    scale_noise: Callable[[cirq.Circuit, float], cirq.Circuit] = fold_gates_at_random,
    readout: bool = True,
    noise: Any = None,
) -> MitigationResult:
    """Zero-noise extrapolation (and readout-error mitigation) of ``<observable>``, in one batch.

    Parameters
    ----------
    circuit : cirq.Circuit
        Unitary circuit without measurements.
    observable : cirq.PauliSumLike or mitiq.Observable
        A cirq observable on ``circuit``'s qubits, or a mitiq one indexed by
        position in ``sorted(circuit.all_qubits())``.
    sampler : cirq.Sampler
        ``qdask.Sampler`` for the cluster; a serial sampler gives the reference.
    repetitions : int
        Shots per circuit.
    factory : mitiq.zne.inference.Factory, optional
        Default ``RichardsonFactory([1, 2, 3])``; ``LinearFactory`` also works.
    scale_noise : callable, default ``mitiq.zne.scaling.fold_gates_at_random``
        Folding (pass ``functools.partial(fold_gates_at_random, seed=...)`` to fix it).
    readout : bool, default True
        Also mitigate readout errors (calibration circuits in the same batch).
    noise : cirq.NOISE_MODEL_LIKE, optional
        Emulated device noise (see :class:`ClusterExecutor`).

    Examples
    --------
    >>> from qdask.hybrid.noise import DeviceNoise  # doctest: +SKIP
    >>> r = execute_with_zne(circuit, cirq.Z(q0) * cirq.Z(q1), qdask.Sampler(client, seed=3),  # doctest: +SKIP
    ...                      repetitions=20_000, noise=DeviceNoise(gate_error=0.01, readout_error=0.03))
    >>> r.unmitigated, r.value  # doctest: +SKIP
    (0.71, 0.97)
    """
    import mitiq.zne

    ex = ClusterExecutor(sampler, repetitions, noise=noise, readout=readout)
    factory = factory if factory is not None else RichardsonFactory([1.0, 2.0, 3.0])
    obs = to_mitiq_observable(observable, sorted(circuit.all_qubits()))
    value = mitiq.zne.execute_with_zne(circuit, ex.executor(), obs, factory=factory, scale_noise=scale_noise)
    try:
        unmitigated: float | None = float(np.real(obs.expectation(circuit, ex.replay)))
    except KeyError:  # no scale factor 1 in the batch
        unmitigated = None
    return MitigationResult(
        value=float(np.real(value)),
        unmitigated=unmitigated,
        scale_factors=[float(s) for s in factory.get_scale_factors()],
        noisy_values=[float(np.real(v)) for v in factory.get_expectation_values()],
        confusion_matrices=list(ex.matrices),
        circuits=ex.circuits,
        batches=ex.batches,
    )


def mitigated_estimator(
    sampler: cirq.Sampler,
    observable: cirq.PauliSumLike,
    *,
    repetitions: int,
    factory: Callable[[], Factory] | None = None,
    scale_noise: Callable[[cirq.Circuit, float], cirq.Circuit] = fold_gates_at_random,
    readout: bool = True,
    noise: Any = None,
) -> Callable[[cirq.AbstractCircuit, list[cirq.ParamResolver]], np.ndarray]:
    """An estimator for :class:`qdask.hybrid.variational.Objective`: ZNE (+ REM) per parameter point.

    Each point is one batch (mitiq extrapolates per circuit); gradient-free
    optimizers (COBYLA, Nelder-Mead) evaluate one point per iteration.

    Parameters
    ----------
    factory : callable, optional
        Makes a fresh factory per point (factories keep state); default
        ``lambda: RichardsonFactory([1, 2, 3])``.
    sampler, observable, repetitions, scale_noise, readout, noise
        As for :func:`execute_with_zne`.
    """
    make = factory if factory is not None else (lambda: RichardsonFactory([1.0, 2.0, 3.0]))

    def estimate(circuit: cirq.AbstractCircuit, resolvers: list[cirq.ParamResolver]) -> np.ndarray:
        return np.array(
            [
                execute_with_zne(
                    cirq.Circuit(cirq.resolve_parameters(circuit, r)),
                    observable,
                    sampler,
                    repetitions=repetitions,
                    factory=make(),
                    scale_noise=scale_noise,
                    readout=readout,
                    noise=noise,
                ).value
                for r in resolvers
            ]
        )

    return estimate
