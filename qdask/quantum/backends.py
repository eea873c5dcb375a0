"""Quantum backends: what runs a circuit on a worker, and how one is chosen.

Built-in backends are registered through the ``qdask.backends`` entry-point
group like any third-party one (see ``pyproject.toml``); a broken plugin is
skipped with a warning instead of breaking qdask. ``qdask.backends()`` lists
the names.

Each backend answers, for an analysed circuit and a kind of work ("sample",
"state", "expectation", "amplitudes"), whether it can run it and with how
much memory; ``choose`` picks one automatically:

* Clifford circuits without noise, sampled -> ``stim`` (polynomial, any width);
* exact noisy state (density matrix) small enough -> ``density-matrix``;
* circuits with noise channels -> ``qsim-trajectories``;
* everything else -> ``qsim`` (state vector).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from qdask import config
from qdask.worker.discovery import statevector_bytes

if TYPE_CHECKING:
    import cirq

    from qdask.quantum.analysis import CircuitInfo

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "qdask.backends"
WORKS = ("sample", "state", "expectation", "amplitudes")
#: Widest density matrix cirq's simulator is allowed (16**n bytes of complex64).
DENSITY_MATRIX_MAX_QUBITS = 12


@dataclass(frozen=True)
class RunOptions:
    """Per-call settings a backend receives on the worker."""

    seed: int | None = None
    threads: int = 1
    max_fused_gate_size: int = 2


@runtime_checkable
class Backend(Protocol):
    """What a qdask backend provides.

    Besides these, a backend implements the work it supports, each called only
    after ``unsupported(info, work)`` returned None:

    ``sample(circuit, repetitions, opts) -> {key: int8 array (reps, instances, qubits)}``,
    ``state(circuit, qubit_order, opts) -> complex64 array``,
    ``expectation(circuit, observables, qubit_order, opts) -> complex array``,
    ``amplitudes(circuit, bitstrings, qubit_order, opts) -> complex64 array``.

    Attributes
    ----------
    name : str
        Registry name, e.g. "qsim".
    """

    name: str

    def available(self) -> bool:
        """Its library imports in this process."""

    def unsupported(self, info: CircuitInfo, work: str) -> str | None:
        """Why it cannot run this circuit for ``work`` (None: it can)."""

    def memory_bytes(self, info: CircuitInfo, work: str) -> int:
        """Peak bytes it needs for this circuit."""

    def version(self) -> str:
        """Library version (part of checkpoint keys)."""


def _records(result: cirq.Result) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.int8) for k, v in result.records.items()}


class QSimBackend:
    """qsim state-vector simulation on the CPU (noiseless circuits)."""

    name = "qsim"
    noisy = False

    def available(self) -> bool:
        try:
            import qsimcirq  # noqa: F401
        except ImportError:
            return False
        return True

    def version(self) -> str:
        import qsimcirq

        return str(qsimcirq.__version__)

    def unsupported(self, info: CircuitInfo, work: str) -> str | None:
        if info.has_noise and not self.noisy:
            return "the circuit has noise channels (use 'qsim-trajectories' or 'density-matrix')"
        if self.noisy and not info.has_noise:
            return "the circuit has no noise channels (use 'qsim')"
        if info.unsupported_gates:
            return f"gates without a unitary or channel: {sorted(info.unsupported_gates)}"
        return None

    def memory_bytes(self, info: CircuitInfo, work: str) -> int:
        key = "worker.final-state-workspace" if work == "state" else "worker.sampling-workspace"
        return statevector_bytes(info.num_qubits, config.get(key))

    def _simulator(self, opts: RunOptions) -> Any:
        import qsimcirq

        options = qsimcirq.QSimOptions(cpu_threads=opts.threads, max_fused_gate_size=opts.max_fused_gate_size)
        return qsimcirq.QSimSimulator(options, seed=opts.seed)

    def sample(self, circuit: cirq.AbstractCircuit, repetitions: int, opts: RunOptions) -> dict[str, np.ndarray]:
        return _records(self._simulator(opts).run(circuit, repetitions=repetitions))

    def state(self, circuit: cirq.AbstractCircuit, qubit_order: Any, opts: RunOptions) -> np.ndarray:
        result = self._simulator(opts).simulate(circuit, qubit_order=qubit_order)
        return np.asarray(result.final_state_vector, dtype=np.complex64)

    def expectation(
        self, circuit: cirq.AbstractCircuit, observables: list[Any], qubit_order: Any, opts: RunOptions
    ) -> np.ndarray:
        values = self._simulator(opts).simulate_expectation_values(
            circuit, observables=observables, qubit_order=qubit_order
        )
        return np.asarray(values, dtype=np.complex128)

    def amplitudes(
        self, circuit: cirq.AbstractCircuit, bitstrings: list[int], qubit_order: Any, opts: RunOptions
    ) -> np.ndarray:
        amps = self._simulator(opts).compute_amplitudes(circuit, bitstrings=bitstrings, qubit_order=qubit_order)
        return np.asarray(amps, dtype=np.complex64)


class QSimTrajectoriesBackend(QSimBackend):
    """qsim quantum trajectories for circuits with noise channels (sampling, expectations)."""

    name = "qsim-trajectories"
    noisy = True

    def unsupported(self, info: CircuitInfo, work: str) -> str | None:
        if work in ("state", "amplitudes"):
            return f"trajectories give a random pure state, not an exact noisy {work} (use 'density-matrix')"
        return super().unsupported(info, work)


class StimBackend:
    """stim (through stimcirq) for Clifford circuits: sampling at any width."""

    name = "stim"

    def available(self) -> bool:
        try:
            import stimcirq  # noqa: F401
        except ImportError:
            return False
        return True

    def version(self) -> str:
        import stim

        return str(stim.__version__)

    def unsupported(self, info: CircuitInfo, work: str) -> str | None:
        if work != "sample":
            return f"stim only samples measurements (asked for {work})"
        if not info.is_clifford:
            return "the circuit is not Clifford"
        if info.has_noise:
            return "noise channels are not translated to stim by qdask"
        return None

    def memory_bytes(self, info: CircuitInfo, work: str) -> int:
        # Tableau simulation: O(n^2) bits, negligible next to any state vector.
        return int(info.num_qubits**2 + 1_000_000)

    def sample(self, circuit: cirq.AbstractCircuit, repetitions: int, opts: RunOptions) -> dict[str, np.ndarray]:
        import stimcirq

        return _records(stimcirq.StimSampler(seed=opts.seed).run(circuit, repetitions=repetitions))


class DensityMatrixBackend:
    """cirq's density-matrix simulator: exact noisy states for small circuits."""

    name = "density-matrix"

    def available(self) -> bool:
        return True

    def version(self) -> str:
        import cirq

        return str(cirq.__version__)

    def unsupported(self, info: CircuitInfo, work: str) -> str | None:
        if info.num_qubits > DENSITY_MATRIX_MAX_QUBITS:
            return f"{info.num_qubits} qubits is above the density-matrix limit of {DENSITY_MATRIX_MAX_QUBITS}"
        if work == "amplitudes":
            return "a density matrix has no amplitudes"
        return None

    def memory_bytes(self, info: CircuitInfo, work: str) -> int:
        return int(3 * 8 * 4.0**info.num_qubits)

    def _simulator(self, opts: RunOptions) -> Any:
        import cirq

        return cirq.DensityMatrixSimulator(dtype=np.complex64, seed=opts.seed)

    def sample(self, circuit: cirq.AbstractCircuit, repetitions: int, opts: RunOptions) -> dict[str, np.ndarray]:
        return _records(self._simulator(opts).run(circuit, repetitions=repetitions))

    def state(self, circuit: cirq.AbstractCircuit, qubit_order: Any, opts: RunOptions) -> np.ndarray:
        result = self._simulator(opts).simulate(circuit, qubit_order=qubit_order)
        return np.asarray(result.final_density_matrix, dtype=np.complex64)

    def expectation(
        self, circuit: cirq.AbstractCircuit, observables: list[Any], qubit_order: Any, opts: RunOptions
    ) -> np.ndarray:
        values = self._simulator(opts).simulate_expectation_values(
            circuit, observables=observables, qubit_order=qubit_order
        )
        return np.asarray(values, dtype=np.complex128)


_REGISTRY: dict[str, Backend] | None = None


def registry() -> dict[str, Backend]:
    """Every backend registered in the ``qdask.backends`` entry-point group, by name."""
    global _REGISTRY
    if _REGISTRY is None:
        found: dict[str, Backend] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
                backend = obj() if isinstance(obj, type) else obj
                if not isinstance(backend, Backend):
                    raise TypeError(f"{ep.value} does not implement qdask.quantum.backends.Backend")
            except Exception as e:  # a broken plugin must not break qdask
                warnings.warn(f"qdask backend plugin {ep.name!r} failed to load: {e}", RuntimeWarning, stacklevel=2)
                continue
            found[ep.name] = backend
        _REGISTRY = found
    return _REGISTRY


def backend_names() -> list[str]:
    """Names of the registered backends whose libraries import here."""
    return sorted(name for name, b in registry().items() if b.available())


def get_backend(name: str) -> Backend:
    """The backend called ``name``; the error lists what is installed."""
    reg = registry()
    if name not in reg:
        raise ValueError(
            f"unknown simulator {name!r}: installed backends are {backend_names()}. "
            "Fix: pass simulator='auto' or one of those names."
        )
    return reg[name]


def choose(info: CircuitInfo, work: str, allowed: list[str] | None = None) -> str:
    """Pick the backend for a circuit automatically (see the module docstring).

    ``allowed`` restricts the choice (e.g. to what the cluster's workers offer).
    Raises ``ValueError`` when no backend can run it.
    """
    names = allowed if allowed is not None else backend_names()
    if info.has_noise:
        order = ["density-matrix", "qsim-trajectories"] if work == "state" else ["qsim-trajectories", "density-matrix"]
    elif work == "sample" and info.is_clifford and info.num_qubits >= 4:
        order = ["stim", "qsim"]
    else:
        order = ["qsim"]
    order += [n for n in names if n not in order]
    reasons = []
    for name in order:
        if name not in names:
            continue
        why = get_backend(name).unsupported(info, work)
        if why is None:
            return name
        reasons.append(f"{name}: {why}")
    raise ValueError(f"no backend can {work} this circuit ({'; '.join(reasons) or 'none installed'})")
