"""Quantum backends: what runs a circuit on a worker, and how one is chosen.

Built-in backends are registered through the ``qdask.backends`` entry-point
group like any third-party one (see ``pyproject.toml``); a broken plugin is
skipped with a warning instead of breaking qdask. ``qdask.backends()`` lists
the names.

Each backend answers, for an analysed circuit and a kind of work ("sample",
"state", "expectation", "amplitudes"), whether it can run it and with how
much memory; ``choose`` picks one automatically:

* what qsim cannot run (classical control, qudits, confusion maps, gates on
  more than 6 qubits) and final states of circuits that measure (whose
  measurement values ``simulate`` returns) -> ``cirq`` (cirq's own simulator);
* Clifford circuits without noise, sampled -> ``stim`` (polynomial, any width);
* circuits with noise channels -> ``qsim-trajectories`` (states and amplitudes
  are one sampled trajectory, as ``qsimcirq`` gives them); the exact noisy
  state (``density-matrix``) only when asked for by name;
* everything else -> ``qsim`` (state vector), or ``qsim-gpu`` from
  ``qdask.gpu.min-qubits`` qubits on where a worker offers it.

``qsimh`` (Schrödinger-Feynman, amplitudes only) is never chosen by ``choose``:
it is asked for explicitly, or the planner falls back to it for amplitudes too
wide for any worker at ``optimization_level="aggressive"``.

On a worker that emulates a noisy device (:mod:`qdask.hybrid.noise`) every
backend samples with the device's noise applied.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from dask.utils import format_bytes

from qdask import _compat, config, resources
from qdask.quantum.validate import BackendMismatchError
from qdask.resources import statevector_bytes

if TYPE_CHECKING:
    import cirq

    from qdask.quantum.analysis import CircuitInfo
    from qdask.quantum.qsim_fast import CompactCircuit, GateTable
    from qdask.quantum.task import Seeds
    from qdask.resources import GPUInfo

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "qdask.backends"
WORKS = ("sample", "state", "expectation", "amplitudes")
#: Schrödinger-Feynman amplitudes (qdask.hybrid.schrodinger_feynman).
QSIMH = "qsimh"
#: What "auto" may pick without automatic backend choice (optimization_level="none"):
#: the backends a serial ``qsimcirq.QSimSimulator`` uses, and cirq's simulator for
#: what qsim cannot run or return (classical control, qudits, measurement values of simulate).
SERIAL_EQUIVALENT = ("qsim", "qsim-trajectories", "cirq")
#: Widest density matrix cirq's simulator is allowed (16**n bytes of complex64).
DENSITY_MATRIX_MAX_QUBITS = 12
#: qsim's widest gate, and the most targets of a controlled gate (qsimcirq raises NotImplementedError above them).
QSIM_MAX_GATE_QUBITS = 6
QSIM_MAX_CONTROLLED_TARGETS = 4
#: qsim option keys qdask sets from the backend (GPU or not), never from the caller's ``qsim_options``.
_BACKEND_KEYS = ("g", "gmode")


class SeedStream(np.random.RandomState):
    """Hands qsim a prescribed sequence of seeds.

    qsimcirq draws one ``randint(2**31 - 1)`` from its random state per
    simulation (once per circuit when all measurements are terminal, once per
    repetition otherwise). qdask draws those seeds on the client, in the order
    a serial ``QSimSimulator(seed=...)`` would, and replays them on whichever
    worker runs the circuit: results equal the serial run's whatever the
    chunking or number of workers.
    """

    def __init__(self, seeds: Seeds) -> None:
        super().__init__(0)
        self._seeds = iter(seeds.tolist())

    def randint(self, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        return next(self._seeds)


@dataclass(frozen=True)
class RunOptions:
    """Per-call settings a backend receives on the worker.

    ``seeds`` are the prescribed seed draws (see :class:`SeedStream`); None
    means fresh randomness. ``initial_state`` is a basis state (int) or a
    complex64 state vector. ``qsim_options`` are the caller's (qsim's short
    keys, ``QSimOptions.as_dict()``), applied over qdask's. A noisy
    expectation value averages ``trajectories`` trajectories from
    ``first_trajectory`` on: qsim seeds trajectory ``i`` of a call with
    ``seed + i``, so a block of them is the serial call's own.
    """

    seeds: Seeds | None = None
    threads: int = 1
    max_fused_gate_size: int = 2
    initial_state: int | np.ndarray = 0
    qsim_options: dict[str, Any] | None = None
    trajectories: int = 1
    first_trajectory: int = 0

    @property
    def first_seed(self) -> int | None:
        return None if self.seeds is None or len(self.seeds) == 0 else int(self.seeds[0])


@runtime_checkable
class Backend(Protocol):
    """What a qdask backend provides.

    Besides these, a backend implements the work it supports, each called only
    after ``unsupported(info, work)`` returned None, and may define
    ``seed_draws(info, work, repetitions) -> int`` (default 1: one seed per call):

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


def _expectation_values(
    sim: Any, circuit: cirq.AbstractCircuit, observables: list[Any], qubit_order: Any, opts: RunOptions
) -> np.ndarray:
    """``sim.simulate_expectation_values`` (qsimcirq's or cirq's) of a circuit checked on the client."""
    values = sim.simulate_expectation_values(
        circuit,
        observables=observables,
        qubit_order=qubit_order,
        initial_state=opts.initial_state,
        permit_terminal_measurements=True,  # the caller's check ran on the client
    )
    return np.asarray(values, dtype=np.complex128)


def _records(result: cirq.Result) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.int8) for k, v in result.records.items()}


def _on_noisy_device(circuit: cirq.AbstractCircuit, repetitions: int, opts: RunOptions) -> dict[str, np.ndarray] | None:
    """Samples with this worker's emulated device noise; None on a noiseless worker."""
    # Start-up cost: hybrid.noise imports cirq, which this module otherwise needs only for annotations.
    from qdask.hybrid.noise import device_noise, sample_on_device

    noise = device_noise()
    if noise is None:
        return None
    return sample_on_device(noise, circuit, repetitions, opts.first_seed, opts.threads)


@functools.lru_cache(maxsize=16)
def _qsim_settings(
    backend: type[QSimBackend], threads: int, max_fused_gate_size: int, qsim_options: tuple[tuple[str, Any], ...] = ()
) -> tuple[Any, dict[str, Any]]:
    """(qsim module, option dict) of ``backend``'s simulator for these options; both only read."""
    opts = RunOptions(threads=threads, max_fused_gate_size=max_fused_gate_size, qsim_options=dict(qsim_options) or None)
    sim = backend()._simulator(opts)
    return _compat.qsim_module_of(sim), dict(sim.qsim_options)


def qsim_option_dict(opts: RunOptions, **backend: Any) -> dict[str, Any]:
    """qsim's option dict for a call: qdask's threads and fusion, the caller's options over them, the backend's keys."""
    options = {"t": opts.threads, "f": opts.max_fused_gate_size}
    options.update((k, v) for k, v in (opts.qsim_options or {}).items() if k not in _BACKEND_KEYS)
    options.update(backend)
    return options


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
        why = qsim_limit(info)
        if why is not None:
            return why
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

    def seed_draws(self, info: CircuitInfo, work: str, repetitions: int) -> int:
        """Seeds qsimcirq draws for this call (see :class:`SeedStream`)."""
        if work != "sample":
            return 1
        if not info.per_repetition and repetitions > 1:
            return 1  # one simulation, all repetitions sampled from its final state
        return repetitions

    def _simulator(self, opts: RunOptions) -> Any:
        import qsimcirq

        seed = SeedStream(opts.seeds) if opts.seeds is not None else None
        return qsimcirq.QSimSimulator(qsim_option_dict(opts, g=False), seed=seed)

    def sample(self, circuit: cirq.AbstractCircuit, repetitions: int, opts: RunOptions) -> dict[str, np.ndarray]:
        noisy = _on_noisy_device(circuit, repetitions, opts)
        if noisy is not None:
            return noisy
        # One seed for several repetitions: the client's analysis found the
        # circuit noiseless with only terminal measurements (seed_draws);
        # qsim_fast runs qsimcirq's path for that without its per-call overhead.
        if not self.noisy and repetitions > 1 and opts.seeds is not None and len(opts.seeds) == 1:
            # Start-up cost: qsim_fast imports cirq (through analysis); a worker that never samples skips it.
            from qdask.quantum.qsim_fast import sample_circuit

            records = sample_circuit(*self._settings(opts), circuit, repetitions, int(opts.seeds[0]))
            if records is not None:
                return records
        return _records(self._simulator(opts).run(circuit, repetitions=repetitions))

    def sample_compact(
        self,
        compact: CompactCircuit,
        gates: GateTable,
        resolver: cirq.ParamResolver,
        repetitions: int,
        opts: RunOptions,
    ) -> dict[str, np.ndarray]:
        """:meth:`sample`'s records of a circuit the planner sent in its compact form (``qsim_fast``).

        The planner sends that form only for circuits qsimcirq samples from one
        final state, and only to a cluster without emulated device noise.
        """
        # Start-up cost: both import cirq (see _on_noisy_device).
        from qdask.hybrid.noise import device_noise
        from qdask.quantum.qsim_fast import sample

        if device_noise() is not None:
            raise RuntimeError(
                "this worker emulates device noise set after the batch was planned, and the batch came without "
                "cirq circuits to add it to. Fix: submit the batch again (it is planned for the noisy devices)."
            )
        assert opts.seeds is not None, "the planner sends a compact circuit with its seed draws"
        return sample(*self._settings(opts), compact, gates, repetitions, int(opts.seeds[0]), resolver)

    def _settings(self, opts: RunOptions) -> tuple[Any, dict[str, Any]]:
        """(qsim module, option dict) of this backend's simulator for ``opts``."""
        caller = tuple(sorted((opts.qsim_options or {}).items()))
        # mypy checks a class against Hashable with its instances' __hash__ signature; classes hash.
        return _qsim_settings(type(self), opts.threads, opts.max_fused_gate_size, caller)  # type: ignore[arg-type]

    def state(self, circuit: cirq.AbstractCircuit, qubit_order: Any, opts: RunOptions) -> np.ndarray:
        # qsim's raw state: the client's trial result normalises it once, as qsimcirq's does
        # (a second normalisation moves amplitudes by an ulp).
        _, state, _ = self._simulator(opts).simulate_into_1d_array(
            circuit, qubit_order=qubit_order, initial_state=opts.initial_state
        )
        return state

    def expectation(
        self, circuit: cirq.AbstractCircuit, observables: list[Any], qubit_order: Any, opts: RunOptions
    ) -> np.ndarray:
        import cirq

        return self.expectation_sweep(circuit, observables, [cirq.ParamResolver()], qubit_order, opts)[0]

    def expectation_sweep(
        self,
        circuit: cirq.AbstractCircuit,
        observables: list[Any],
        resolvers: list[cirq.ParamResolver],
        qubit_order: Any,
        opts: RunOptions,
    ) -> list[np.ndarray]:
        """Expectation values at several parameter points: one qsimcirq sweep, as a serial caller makes it."""
        values = self._simulator(opts).simulate_expectation_values_sweep(
            circuit,
            observables=observables,
            params=resolvers,
            qubit_order=qubit_order,
            initial_state=opts.initial_state,
            permit_terminal_measurements=True,  # the caller's check ran on the client
        )
        return [np.asarray(v, dtype=np.complex128) for v in values]

    def amplitudes(
        self, circuit: cirq.AbstractCircuit, bitstrings: list[int], qubit_order: Any, opts: RunOptions
    ) -> np.ndarray:
        amps = self._simulator(opts).compute_amplitudes(circuit, bitstrings=bitstrings, qubit_order=qubit_order)
        return np.asarray(amps, dtype=np.complex64)


class QSimTrajectoriesBackend(QSimBackend):
    """qsim quantum trajectories for circuits with noise channels.

    As ``qsimcirq`` does: a state or amplitudes are those of one sampled
    trajectory (seeded); an expectation value averages
    ``ev_noisy_repetitions`` trajectories, which the planner may split into
    blocks (:attr:`RunOptions.first_trajectory`) run on several workers.
    """

    name = "qsim-trajectories"
    noisy = True

    def expectation(
        self, circuit: cirq.AbstractCircuit, observables: list[Any], qubit_order: Any, opts: RunOptions
    ) -> np.ndarray:
        prng = SeedStream(opts.seeds[:1] + opts.first_trajectory) if opts.seeds is not None else np.random.RandomState()
        # The simulator's seed and trajectory count are set per call: one call at a time
        # (qsim holds the GIL through a simulation, so slots of a process lose nothing).
        with _BLOCK_LOCK:
            sim = self._block_simulator(opts, qubit_order)
            # This block's trajectories: qsim seeds trajectory i of a call with seed + i.
            sim.qsim_options["r"] = opts.trajectories
            _compat.set_qsim_prng(sim, prng)
            return _expectation_values(sim, circuit, observables, qubit_order, opts)

    def _block_simulator(self, opts: RunOptions, qubit_order: Any) -> Any:
        """This process's qsimcirq simulator for these options, reused for every block of trajectories.

        Translating a noisy circuit for qsim costs ~130 ms at 16 qubits (cirq
        checks every channel's Kraus operators), 40 trajectories' worth: a
        fresh simulator per block would spend the split's gain on it. A kept
        simulator with qsimcirq's own circuit memo translates each circuit
        once per worker; only its seed (``_compat.set_qsim_prng``) and
        trajectory count change between blocks. The memo matches circuits
        only, not the qubit order they were translated for: one simulator
        per order.
        """
        import qsimcirq

        options = qsim_option_dict(opts, g=False)
        options.pop("r", None)
        order = tuple(qubit_order) if isinstance(qubit_order, (list, tuple)) else qubit_order
        key = (tuple(sorted(options.items())), order)
        sims = _BLOCK_SIMULATORS
        sim = sims.get(key)
        if sim is None:
            if len(sims) >= 4:
                sims.clear()
            sim = sims[key] = qsimcirq.QSimSimulator(options, circuit_memoization_size=4)
        return sim


#: { (qsim options but "r", qubit order): simulator }, used under _BLOCK_LOCK.
_BLOCK_SIMULATORS: dict[tuple[Any, Any], Any] = {}
_BLOCK_LOCK = threading.Lock()


def qsim_limit(info: CircuitInfo) -> str | None:
    """What qsim cannot simulate in this circuit (None: nothing); cirq's simulator runs all of it."""
    if info.classical_control:
        return "classically controlled operations (qsim cannot parse them; 'cirq' runs them)"
    if info.qudits:
        return f"qudits of dimension {info.max_dimension} (qsim simulates qubits only; 'cirq' runs them)"
    if info.confusion_maps:
        return "measurements with a confusion map (qsim cannot apply them; 'cirq' does)"
    if info.widest_op > QSIM_MAX_GATE_QUBITS:
        return f"a gate on {info.widest_op} qubits (qsim takes up to {QSIM_MAX_GATE_QUBITS}; 'cirq' runs it)"
    if info.controlled_targets > QSIM_MAX_CONTROLLED_TARGETS:
        return (
            f"a controlled gate on {info.controlled_targets} target qubits "
            f"(qsim takes up to {QSIM_MAX_CONTROLLED_TARGETS}; 'cirq' runs it)"
        )
    return None


class QSimGateTooWideError(BackendMismatchError, NotImplementedError):
    """A gate on more qubits than qsim takes (or a controlled gate on more targets), asked of a qsim backend by name.

    Also a ``NotImplementedError``, the type qsimcirq raises for it.
    """


def mismatch_type(name: str, info: CircuitInfo) -> type[BackendMismatchError]:
    """The error for a circuit the backend ``name`` refuses: of qsim's own type where qsimcirq has one."""
    too_wide = info.widest_op > QSIM_MAX_GATE_QUBITS or info.controlled_targets > QSIM_MAX_CONTROLLED_TARGETS
    if name.startswith("qsim") and too_wide:
        return QSimGateTooWideError
    return BackendMismatchError


class _CirqSimulatorBackend:
    """Sampling and expectation values through one of cirq's simulators (``_simulator``)."""

    def _simulator(self, opts: RunOptions) -> Any:
        raise NotImplementedError

    def available(self) -> bool:
        return True

    def version(self) -> str:
        import cirq

        return str(cirq.__version__)

    def sample(self, circuit: cirq.AbstractCircuit, repetitions: int, opts: RunOptions) -> dict[str, np.ndarray]:
        noisy = _on_noisy_device(circuit, repetitions, opts)
        if noisy is not None:
            return noisy
        return _records(self._simulator(opts).run(circuit, repetitions=repetitions))

    def expectation(
        self, circuit: cirq.AbstractCircuit, observables: list[Any], qubit_order: Any, opts: RunOptions
    ) -> np.ndarray:
        return _expectation_values(self._simulator(opts), circuit, observables, qubit_order, opts)


class CirqBackend(_CirqSimulatorBackend):
    """cirq's state-vector simulator, for what qsim cannot run or return.

    Classical control and measurement feedback, qudits, confusion maps, gates
    on more than 6 qubits; and final states of circuits that measure, whose
    measurement values ``simulate`` returns as cirq does (qsim returns none).
    One seed per call: a circuit that needs a simulation per repetition
    (feedback, mid-circuit measurements, noise) goes out in blocks of
    :attr:`shots_per_block` repetitions, each with a seed of its own
    (:func:`qdask.quantum.plan.shot_block_seeds`), so the same on any cluster.
    """

    name = "cirq"
    #: Repetitions per task of a circuit simulated once per repetition.
    shots_per_block = 4096

    def unsupported(self, info: CircuitInfo, work: str) -> str | None:
        if info.unsupported_gates:
            return f"gates without a unitary or channel: {sorted(info.unsupported_gates)}"
        return None

    def memory_bytes(self, info: CircuitInfo, work: str) -> int:
        # cirq keeps a state and a buffer of the same size.
        return statevector_bytes(info.state_qubits, 2 * config.get("worker.sampling-workspace"))

    def _simulator(self, opts: RunOptions) -> Any:
        import cirq

        return cirq.Simulator(dtype=np.complex64, seed=opts.first_seed)


    def state(self, circuit: cirq.AbstractCircuit, qubit_order: Any, opts: RunOptions) -> tuple[np.ndarray, dict]:
        """(final state vector, measurement values by key), as ``cirq.Simulator.simulate`` gives them."""
        result = self._simulator(opts).simulate(circuit, qubit_order=qubit_order, initial_state=opts.initial_state)
        measurements = {k: np.asarray(v) for k, v in result.measurements.items()}
        return np.asarray(result.final_state_vector, dtype=np.complex64), measurements


    def amplitudes(
        self, circuit: cirq.AbstractCircuit, bitstrings: list[int], qubit_order: Any, opts: RunOptions
    ) -> np.ndarray:
        amps = self._simulator(opts).compute_amplitudes(circuit, bitstrings=bitstrings, qubit_order=qubit_order)
        return np.asarray(amps, dtype=np.complex64)


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
        # stimcirq.StimSampler takes no seed; its converter (same one it uses)
        # plus stim's seeded sampler makes the samples reproducible.
        noisy = _on_noisy_device(circuit, repetitions, opts)
        if noisy is not None:
            return noisy
        stim_circuit, key_ranges = _compat.stim_circuit_data(circuit)
        samples = stim_circuit.compile_sampler(seed=opts.first_seed).sample(repetitions)
        lengths: dict[str, int] = {}
        columns: dict[str, list[int]] = {}
        k = 0
        for key, length in key_ranges:
            lengths.setdefault(key, length)
            columns.setdefault(key, []).extend(range(k, k + length))
            k += length
        return {
            key: samples[:, columns[key]].reshape(repetitions, -1, length).astype(np.int8)
            for key, length in lengths.items()
        }


class DensityMatrixBackend(_CirqSimulatorBackend):
    """cirq's density-matrix simulator: exact noisy states for small circuits."""

    name = "density-matrix"

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

        return cirq.DensityMatrixSimulator(dtype=np.complex64, seed=opts.first_seed)

    def state(self, circuit: cirq.AbstractCircuit, qubit_order: Any, opts: RunOptions) -> np.ndarray:
        result = self._simulator(opts).simulate(circuit, qubit_order=qubit_order, initial_state=opts.initial_state)
        return np.asarray(result.final_density_matrix, dtype=np.complex64)


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


def seed_draws(backend: Backend, info: CircuitInfo, work: str, repetitions: int) -> int:
    """How many seeds ``backend`` consumes for one call (1 unless it says otherwise)."""
    draws = getattr(backend, "seed_draws", None)
    return int(draws(info, work, repetitions)) if draws is not None else 1


def backend_names() -> list[str]:
    """Names of the registered backends whose libraries import here (``qdask.backends()``).

    Any of them is a valid ``simulator=`` of :class:`qdask.Sampler` and
    :class:`qdask.Simulator`; third-party backends register through the
    ``qdask.backends`` entry point group.

    Examples
    --------
    >>> qdask.backends()  # doctest: +SKIP
    ['cirq', 'density-matrix', 'qsim', 'qsim-trajectories', 'qsimh', 'stim']
    """
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
    if qsim_limit(info) is not None or (work == "state" and info.has_measurements):
        order = ["cirq"]
    elif info.has_noise:
        # A noisy state is one trajectory, as qsimcirq gives it; the exact
        # density matrix only by name (simulator="density-matrix").
        order = ["qsim-trajectories"]
    elif work == "sample" and info.is_clifford and info.num_qubits >= 4:
        order = ["stim", "qsim"]
    else:
        order = ["qsim"]
    if "qsim" in order and info.num_qubits >= config.get("gpu.min-qubits"):
        # Wide state vectors run faster on a GPU; tried only where allowed, and
        # a GPU that cannot hold the circuit leaves it to "qsim" after it.
        order.insert(order.index("qsim"), "qsim-gpu")
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


class GPUUnavailableError(RuntimeError):
    """qsim cannot run on a GPU in this process (no device, a CPU-only build, too little memory).

    Raised before any GPU work starts; the worker reports it as a quantum
    error and runs the circuit on the CPU (:func:`qdask.quantum.execute.run_task`).
    """


class GPUOutOfMemoryError(GPUUnavailableError, MemoryError):
    """The state vector does not fit in the GPU's free memory (a quantum error of cause ``oom``)."""


class QSimGPUBackend(QSimBackend):
    """qsim state-vector simulation on an NVIDIA GPU (native CUDA, ``gpu_mode=0``).

    Available only where a GPU build of qsimcirq is installed *and* NVML
    reports a device: qsimcirq's CUDA module ends the process (``exit``) on
    any CUDA error, a missing device or a failed allocation included, so every
    run first checks the device and its free memory. When either check fails
    it raises :class:`GPUUnavailableError` (:class:`GPUOutOfMemoryError` for
    memory) before touching the GPU; the worker then reports a quantum error
    and runs the circuit on the CPU (``qsim``).
    """

    name = "qsim-gpu"

    def available(self) -> bool:
        return resources.qsim_gpu_usable(resources.detect_gpus())

    def unsupported(self, info: CircuitInfo, work: str) -> str | None:
        why = super().unsupported(info, work)
        if why is not None:
            return why
        # Only a process that has GPUs can judge their memory; a client without
        # one leaves the check to the GPU worker (which falls back to the CPU).
        gpus = resources.detect_gpus()
        return _gpu_memory_problem(info.num_qubits, gpus[0]) if gpus else None

    def gpu_problem(self, num_qubits: int) -> str | None:
        """Why a ``num_qubits``-wide state vector cannot be simulated on this process's GPU (None: it can)."""
        try:
            self.check_gpu(num_qubits)
        except GPUUnavailableError as e:
            return str(e)
        return None

    def check_gpu(self, num_qubits: int) -> None:
        """Raise :class:`GPUUnavailableError` (or :class:`GPUOutOfMemoryError`) unless the GPU can run it."""
        gpus = resources.detect_gpus()
        if not gpus:
            raise GPUUnavailableError("NVML reports no GPU in this process")
        if not resources.qsim_gpu_usable(gpus):
            raise GPUUnavailableError(
                f"qsimcirq {self.version()} has no CUDA module (PyPI wheels are CPU-only); "
                "build one with `make qsim-gpu` (docs/gpu.md)"
            )
        # CUDA numbers the visible devices from 0 and qsim uses device 0.
        why = _gpu_memory_problem(num_qubits, gpus[0])
        if why is not None:
            raise GPUOutOfMemoryError(why)

    def _simulator(self, opts: RunOptions) -> Any:
        import qsimcirq

        options = qsim_option_dict(opts, g=True, gmode=0)
        try:
            return qsimcirq.QSimSimulator(options, seed=SeedStream(opts.seeds) if opts.seeds is not None else None)
        except ValueError as e:  # qsimcirq's answer to use_gpu=True without a CUDA build
            raise GPUUnavailableError(
                f"qsimcirq {self.version()} cannot simulate on a GPU: {e} "
                "Fix: build the GPU wheel with `make qsim-gpu` (docs/gpu.md) or use simulator='qsim'."
            ) from e

    def _run(self, work: str, circuit: cirq.AbstractCircuit, *args: Any) -> Any:
        self.check_gpu(len(circuit.all_qubits()))
        return getattr(super(), work)(circuit, *args)

    def sample(self, circuit: cirq.AbstractCircuit, repetitions: int, opts: RunOptions) -> dict[str, np.ndarray]:
        return self._run("sample", circuit, repetitions, opts)

    def state(self, circuit: cirq.AbstractCircuit, qubit_order: Any, opts: RunOptions) -> np.ndarray:
        return self._run("state", circuit, qubit_order, opts)

    def expectation(
        self, circuit: cirq.AbstractCircuit, observables: list[Any], qubit_order: Any, opts: RunOptions
    ) -> np.ndarray:
        return self._run("expectation", circuit, observables, qubit_order, opts)

    def amplitudes(
        self, circuit: cirq.AbstractCircuit, bitstrings: list[int], qubit_order: Any, opts: RunOptions
    ) -> np.ndarray:
        return self._run("amplitudes", circuit, bitstrings, qubit_order, opts)


def _gpu_memory_problem(num_qubits: int, gpu: GPUInfo) -> str | None:
    # qsim's CUDA state space holds one complex64 vector plus kilobytes of
    # scratch; an allocation that fails ends the process, so check up front.
    need = statevector_bytes(num_qubits)
    if need > gpu.free_memory:
        return (
            f"the {num_qubits}-qubit state vector needs {format_bytes(need)} and GPU {gpu.index} "
            f"({gpu.name}) has {format_bytes(gpu.free_memory)} free"
        )
    return None
