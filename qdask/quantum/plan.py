"""Client-side planning: validate circuits, choose backends, draw seeds, pack chunks.

Nothing here talks to a worker; :mod:`qdask.quantum.engine` submits the
chunks this module produces, and :mod:`qdask.quantum.execute` runs them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

import cirq
import numpy as np
import sympy
from dask.utils import format_bytes, parse_bytes

from qdask import config
from qdask.hybrid.levels import OptimizationPolicy
from qdask.hybrid.routing import LOWEST_ERROR
from qdask.quantum import backends as bk
from qdask.quantum import qsim_fast
from qdask.quantum.analysis import CircuitInfo, analyze
from qdask.quantum.annotation import TaskAnnotation
from qdask.quantum.cost import CostModel, measured_here
from qdask.quantum.qsim_fast import CompactCircuit
from qdask.quantum.task import Seeds, Task
from qdask.quantum.validate import (
    BackendMismatchError,
    CircuitTooWideError,
    NoMeasurementsError,
    NoQuantumWorkersError,
    ShotsTooLargeError,
    UnresolvedParametersError,
    UnsupportedGateError,
    check_finite,
    check_program,
    check_repetitions,
)
from qdask.resources import GPU, QUANTUM, STATEVECTOR_BYTES, max_qubits_for
from qdask.scheduler.placement import resolve_priority  # noqa: F401 - re-exported: the engine's and users' name for it


@dataclass(frozen=True)
class ClusterView:
    """What the client needs to know about the cluster to plan a batch."""

    slots: int
    max_statevector_bytes: int
    backends: frozenset[str]
    cost: CostModel
    big_threads: int
    #: Some worker emulates device noise (qdask.hybrid.noise): its samples need the cirq circuit.
    noisy_devices: bool = False

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> ClusterView:
        """Build from ``QuantumCluster.resources()`` rows (quantum workers only count)."""
        quantum = [r for r in rows if r.get("resources", {}).get("quantum")]
        if not quantum:
            raise NoQuantumWorkersError(
                f"the cluster has no quantum worker ({len(rows)} worker(s), none with a 'quantum' resource). "
                "Fix: start workers with the qdask worker plugin (QuantumCluster, or "
                "`dask worker --preload qdask.plugins.worker`)."
            )
        models = [CostModel.from_dict(r["cost_model"]) for r in quantum if r.get("cost_model")]
        cost = CostModel.median(models) if models else measured_here()
        # Threads for a circuit that runs alone: the cores of a host shared by
        # the quantum slots on it (the most crowded host decides).
        per_host: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in quantum:
            per_host[r.get("host") or r["worker"]].append(r)
        big_threads = min(
            max(1, max(r.get("cores") or 1 for r in rs) // sum(int(r["resources"]["quantum"]) for r in rs))
            for rs in per_host.values()
        )
        return cls(
            slots=int(sum(r["resources"]["quantum"] for r in quantum)),
            max_statevector_bytes=int(max(r["resources"].get("statevector_bytes", 0) for r in quantum)),
            backends=frozenset(set().union(*(set(r.get("backends") or ()) for r in quantum))),
            cost=cost,
            big_threads=big_threads,
            noisy_devices=any(r.get("error_rate") or r.get("readout_error") for r in quantum),
        )


@dataclass
class Job:
    """One circuit (one parameter resolver) of the caller's batch."""

    index: int  # position in the caller's flattened batch
    program: int  # which of the caller's circuits
    circuit: cirq.AbstractCircuit  # the caller's circuit, parameters unresolved
    resolver: cirq.ParamResolver
    work: str
    repetitions: int
    info: CircuitInfo
    backend: str
    seeds: Seeds
    est_seconds: float
    memory: int
    extra: dict[str, Any] = field(default_factory=dict)
    blocks: int = 1  # tasks its repetitions need at least, for memory (admit_shots)
    #: The circuit's compact form where the worker samples it from that (qsim_fast), else None.
    compact: CompactCircuit | None = None


@dataclass
class Chunk:
    """One Dask task: several small tasks, or one big one."""

    tasks: list[Task]
    est_seconds: float
    memory: int
    qubits: int
    route: str | None = None  # "lowest-error": noise-aware routing (qdask.hybrid.routing)

    def annotation(self, priority: int) -> TaskAnnotation:
        """The task annotation read by scheduling, elastic scaling, fault tolerance and monitoring."""
        backends = {t.backend for t in self.tasks}
        return TaskAnnotation(
            circuits=len(self.tasks),
            qubits=self.qubits,
            backend=backends.pop() if len(backends) == 1 else "mixed",
            est_seconds=self.est_seconds,
            statevector_bytes=self.memory,
            priority=priority,
            route=self.route,
        )

    def resources(self) -> dict[str, float]:
        """Dask resources the chunk's task requests: a slot, its state vector, a GPU if it uses one."""
        res = {QUANTUM: 1.0, STATEVECTOR_BYTES: float(self.memory)}
        if any(t.backend == "qsim-gpu" for t in self.tasks):
            res[GPU] = 1.0
        return res

    @property
    def cost_class(self) -> str:
        """Factor-of-two cost bucket; part of the task key so Dask learns
        durations per bucket instead of one average for every circuit."""
        return f"c{max(0, int(math.log2(max(self.est_seconds, 1e-4) / 1e-4)))}"

    def task_name(self, work: str) -> str:
        """Prefix of the chunk's task key, as Dask's pages show it: ``qdask_sample_16q_6.4ms``.

        The kind of work, the widest circuit and the cost class as the
        duration it stands for (its lower bound, 0.1 ms x 2**class). Dask
        groups and learns durations per prefix (``key_split``), so the prefix
        keeps the cost class. Underscores, not hyphens: ``key_split`` keeps
        only alphabetic words after a hyphen ("qdask-sample-16q" would show
        as "qdask-sample").
        """
        seconds = 1e-4 * 2 ** int(self.cost_class[1:])
        for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
            if seconds >= scale or unit == "us":
                value = seconds / scale
                text = f"{value:.0f}" if value >= 10 else f"{value:.1f}".rstrip("0").rstrip(".")
                return f"qdask_{work}_{self.qubits}q_{text}{unit}"
        raise AssertionError("unreachable")


#: Seed draws of one job above which they travel as a :class:`SeedRange`, drawn where they are used.
LAZY_SEEDS = 2**16
_SEED_HIGH = 2**31 - 1  # qsimcirq draws randint(2**31 - 1)
_MASK = 0x7FFFFFFF


def skip_draws(state: np.random.RandomState, n: int) -> None:
    """Advance ``state`` past ``n`` draws of ``randint(2**31 - 1)``, without making them.

    The legacy ``randint`` takes one 32-bit output of MT19937 per draw,
    masked to 31 bits, and rejects the one value above its range
    (``2**31 - 1``, once in 2**31 outputs): reading the raw outputs and
    counting those rejections lands exactly where ``n`` draws would, ~4x
    faster and without holding them.
    """
    bits = state._bit_generator  # the MT19937 the RandomState draws from
    while n > 0:
        raw = bits.random_raw(min(n, 1 << 22))
        n -= raw.size - int(np.count_nonzero((raw & _MASK) == _MASK))


class SeedRange:
    """Draws ``offset`` to ``offset + count`` of a seed stream, made only where they are used.

    A job of 10**8 repetitions measured mid-circuit needs 10**8 seeds (one per
    simulation, as qsimcirq draws them): 800 MB and 2.7 s to draw on the
    client. A ``SeedRange`` holds the stream's state (2.5 KB) instead; each
    block of repetitions (``range[a:b]``) makes its own seeds on the worker,
    the same numbers a serial ``QSimSimulator(seed=...)`` draws.
    """

    __slots__ = ("state", "offset", "count")

    def __init__(self, state: tuple[Any, ...], offset: int, count: int) -> None:
        self.state, self.offset, self.count = state, offset, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, slice):
            a, b, step = item.indices(self.count)
            if step != 1:
                raise ValueError("a SeedRange slices with step 1 only")
            return SeedRange(self.state, self.offset + a, max(0, b - a))
        i = int(item) + (self.count if int(item) < 0 else 0)
        if not 0 <= i < self.count:
            raise IndexError(f"seed {item} of {self.count}")
        return SeedRange(self.state, self.offset + i, 1).materialize()[0]

    def materialize(self) -> np.ndarray:
        """The seeds as an int64 array."""
        state = np.random.RandomState()
        state.set_state(self.state)
        skip_draws(state, self.offset)
        return state.randint(_SEED_HIGH, size=self.count).astype(np.int64)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        seeds = self.materialize()
        return seeds if dtype is None else seeds.astype(dtype)

    def __iter__(self) -> Any:
        return iter(self.materialize())

    def tolist(self) -> list[int]:
        return self.materialize().tolist()

    def key(self) -> str:
        """What determines the seeds, for checkpoint keys (without making them)."""
        import hashlib

        h = hashlib.sha256(np.asarray(self.state[1], dtype=np.uint32).tobytes())
        h.update(repr((self.state[2], self.offset, self.count)).encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"SeedRange(offset={self.offset}, count={self.count})"


class SeedSource:
    """The seed stream a serial ``QSimSimulator(seed=seed)`` would consume.

    ``seed=None`` gives fresh randomness; an int makes every call of the
    sampler reproducible and equal to the serial simulator's.
    """

    def __init__(self, seed: int | np.random.RandomState | None) -> None:
        # A caller's RandomState is advanced at once (they may read it); our own lazily.
        self._lazy = not isinstance(seed, np.random.RandomState)
        if isinstance(seed, np.random.RandomState):
            self._state = seed
        else:
            self._state = np.random.RandomState(seed)
        self._skip = 0  # draws a SeedRange took, not yet skipped

    def _settle(self) -> None:
        if self._skip:
            skip_draws(self._state, self._skip)
            self._skip = 0

    def draw(self, n: int) -> np.ndarray | SeedRange:
        """The next ``n`` draws; a :class:`SeedRange` above :data:`LAZY_SEEDS`.

        The stream is advanced past a range when it is next drawn from, so
        planning 10**8 repetitions does not wait for 10**8 draws.
        """
        self._settle()
        if n <= LAZY_SEEDS:
            return self._state.randint(_SEED_HIGH, size=n).astype(np.int64)
        # get_state()'s default (legacy) form is a tuple; numpy's stub types it as a dict.
        seeds = SeedRange(cast("tuple[Any, ...]", self._state.get_state()), 0, n)
        self._skip = n
        if not self._lazy:
            self._settle()
        return seeds


def shot_block_seeds(seed: int, blocks: int) -> np.ndarray:
    """Simulator seeds ``s_k`` of the blocks of a circuit split by memory (shot admission).

    A circuit whose one simulation serves every repetition gets one draw
    ``seed`` from the stream, as in qsimcirq; split into blocks, block ``k``
    samples as a serial ``QSimSimulator(seed=s_k).run(circuit, n_k)`` with
    ``s_k = RandomState(seed).randint(2**31 - 1, size=blocks)[k]``, and the
    result is those runs concatenated: the same on any cluster and chunking.
    """
    return np.random.RandomState(seed).randint(_SEED_HIGH, size=blocks).astype(np.int64)


def _qsim_seed(simulator_seed: int) -> int:
    # What QSimSimulator(seed=simulator_seed) hands qsim: its random state's first draw.
    return int(np.random.RandomState(simulator_seed).randint(_SEED_HIGH))


@qsim_fast.stage("plan")
def build_jobs(
    programs: list[cirq.AbstractCircuit],
    sweeps: list[cirq.Sweepable],
    repetitions: list[Any],
    *,
    work: str,
    simulator: str,
    view: ClusterView,
    seeds: SeedSource,
    extra: list[dict[str, Any]] | None = None,
    policy: OptimizationPolicy | None = None,
) -> list[Job]:
    """Validate the batch and turn it into jobs, in the caller's order.

    ``policy`` (default: the ``basic`` level) decides whether "auto" may pick
    any backend and whether too-wide amplitudes fall back to ``qsimh``.

    Raises a :class:`~qdask.quantum.validate.CircuitError` subclass naming the
    circuit for anything that would fail (or crash a worker) later.
    """
    if simulator != "auto":
        bk.get_backend(simulator)  # unknown name: lists the installed ones
    policy = policy if policy is not None else OptimizationPolicy.for_level("basic")
    jobs: list[Job] = []
    measured: dict[int, int] = {}  # { program: bits one repetition records }, for shot admission
    qsim_fast.begin_batch()
    for p, (program, sweep, reps) in enumerate(zip(programs, sweeps, repetitions)):
        check_program(p, program)
        with qsim_fast.stage("analysis"):
            info = analyze(program)
        resolvers = _resolvers(sweep)
        terms = sum(len(o) for o in extra[p].get("observables", ())) if extra else 0
        reps = check_repetitions(len(jobs), reps) if work == "sample" else 1
        for r, resolver in enumerate(resolvers):
            index = len(jobs)
            check_finite(index, program, resolver, gates=r == 0)  # qsim would sample NaN as all ones
            missing = sorted(set(info.unresolved) - set(map(_key_name, resolver.param_dict))) if info.unresolved else []
            if missing:
                raise UnresolvedParametersError(
                    index,
                    f"symbols {missing} have no value",
                    "every symbol resolved",
                    f"pass params={{{missing[0]!r}: 0.5, ...}} or a cirq.Sweep",
                )
            if work == "sample" and not info.has_measurements:
                raise NoMeasurementsError(
                    index,
                    "sampling a circuit without measurements: Circuit has no measurements to sample.",
                    "at least one measurement",
                    "append cirq.measure(*qubits, key='m'), or use qdask.Simulator.simulate for the state",
                )
            if info.unsupported_gates:
                raise UnsupportedGateError(
                    index,
                    f"operations {list(info.unsupported_gates)} are neither unitary, channel nor measurement",
                    "gates with cirq.unitary, cirq.mixture or cirq.kraus",
                    "decompose them (cirq.decompose) into standard gates",
                )
            backend_name = _backend_for(index, info, work, simulator, view, policy)
            backend = bk.get_backend(backend_name)
            memory = backend.memory_bytes(info, work)
            if memory > view.max_statevector_bytes and simulator == "auto" and policy.sf_fallback:
                backend_name, backend, memory = _paths_fallback(info, work, view, backend_name, backend, memory)
            if memory > view.max_statevector_bytes:
                workspace_key = "worker.final-state-workspace" if work == "state" else "worker.sampling-workspace"
                workspace = config.get(workspace_key)
                widest = max_qubits_for(view.max_statevector_bytes, workspace)
                raise CircuitTooWideError(
                    index,
                    f"{info.num_qubits} qubits need {format_bytes(memory)} on {backend_name} for {work}, "
                    f"more than any worker holds ({format_bytes(view.max_statevector_bytes)})",
                    f"{widest} qubits on this cluster",
                    "add workers with more memory (ClusterConfig(memory_per_node=...)), "
                    "or compute amplitudes with Schrödinger-Feynman splitting (simulator='qsimh', "
                    "or optimization_level='aggressive' to fall back to it)",
                )
            if work == "expectation" and backend_name == bk.QSimTrajectoriesBackend.name and extra:
                # A noisy expectation value averages qsim's ev_noisy_repetitions
                # trajectories; _split spreads them like shots.
                reps = max(1, int((extra[p].get("qsim_options") or {}).get("r", 1)))
            blocks = 1
            if work == "sample" and reps >= ADMIT_FROM:
                if p not in measured:
                    measured[p] = _measured_bits(program)
                # Before any seed is drawn: a refused 10**10 repetitions costs nothing.
                blocks, memory = admit_shots(index, info, measured[p], memory, reps, view)
            per_shot = info.per_repetition or info.classical_control  # feedback reads each shot's measurements
            if work == "sample" and backend_name == bk.CirqBackend.name and per_shot:
                # cirq's simulator takes one seed per call and simulates every repetition:
                # fixed-size blocks (so the same on any cluster) spread them over the slots.
                blocks = max(blocks, math.ceil(reps / bk.CirqBackend.shots_per_block))
            draws = bk.seed_draws(backend, info, work, reps)
            # One simulation serves every repetition: the compact form carries it (qsim_fast).
            fast = work == "sample" and backend_name == bk.QSimBackend.name and draws == 1 < reps
            compact = qsim_fast.encode(program) if fast and not info.per_repetition and not view.noisy_devices else None
            jobs.append(
                Job(
                    index=index,
                    program=p,
                    circuit=program,
                    resolver=resolver,
                    work=work,
                    repetitions=reps,
                    info=info,
                    backend=backend_name,
                    seeds=seeds.draw(draws),
                    est_seconds=view.cost.estimate(info, backend_name, repetitions=reps, terms=terms),
                    memory=memory,
                    extra=(extra[p] if extra else {}),
                    compact=compact,
                    blocks=blocks,
                )
            )
    return jobs


#: Repetitions below which a sampling job is admitted without estimating its result (a few MB at most).
ADMIT_FROM = 4096


def _measured_bits(circuit: cirq.AbstractCircuit) -> int:
    """Bits a repetition records: the qubits of every measurement (repeated ones counted again)."""
    return sum(len(op.qubits) for op in circuit.all_operations() if isinstance(op.gate, cirq.MeasurementGate))


def max_result_bytes() -> int:
    """``qdask.quantum.max-result-bytes`` in bytes.

    "auto": a quarter of this machine's memory. Assembling takes up to the
    4 bytes a bit :func:`admit_shots` counts, and the caller still has to use
    the result (a histogram, ``Result.data`` as a DataFrame copies it again).
    """
    value = config.get("quantum.max-result-bytes")
    if value == "auto":
        import psutil

        return int(psutil.virtual_memory().total // 4)
    return int(parse_bytes(value))


def admit_shots(index: int, info: CircuitInfo, bits: int, memory: int, reps: int, view: ClusterView) -> tuple[int, int]:
    """Shot admission: (blocks, task memory) for sampling ``reps`` repetitions, or a refusal.

    Estimates, per repetition, the worker's working memory (qsim's sample and
    its conversion to records: ~16 bytes a qubit measured once at the end,
    ~32 bytes a bit for circuits simulated per repetition, measured on qsim
    0.22) and the client's (4 bytes a measured bit: the bit-packed transfer,
    its unpacking and the ``cirq.Result``'s int8 records). A result larger
    than ``qdask.quantum.max-result-bytes`` is refused, naming the size and
    the fix; otherwise the repetitions are split into ``blocks`` tasks of at
    most ``qdask.quantum.shot-block-bytes`` each (less where a worker holds
    less beside the state), which run in parallel. Constant time: nothing
    per repetition.
    """
    bits = max(bits, 1)
    client = 4 * bits * reps
    limit = max_result_bytes()
    if client > limit:
        most = max(1, limit // (4 * bits))
        raise ShotsTooLargeError(
            index,
            f"{reps:,} repetitions x {bits} measured bit(s) need about {format_bytes(client)} on the client to "
            f"assemble (cirq.Result records hold one int8 a bit), more than qdask.quantum.max-result-bytes "
            f"({format_bytes(limit)})",
            f"{most:,} repetitions of this circuit per call",
            f"sample in calls of at most {most:,} repetitions and aggregate them (e.g. their histograms), "
            "or raise qdask.quantum.max-result-bytes on a client with the memory",
        )
    per_rep = 32 + (32 * bits if info.per_repetition else 16 * max(info.num_qubits, bits))
    budget = min(parse_bytes(config.get("quantum.shot-block-bytes")), view.max_statevector_bytes - memory)
    if budget < per_rep:
        raise ShotsTooLargeError(
            index,
            f"the state takes {format_bytes(memory)} of the {format_bytes(view.max_statevector_bytes)} a worker "
            f"holds, leaving no room for the samples ({per_rep} bytes a repetition)",
            "workers with room for the state and its samples",
            "add workers with more memory (ClusterConfig(memory_per_node=...))",
        )
    blocks = max(1, -(-reps // (budget // per_rep)))
    return blocks, memory + per_rep * -(-reps // blocks)


def _resolvers(sweep: cirq.Sweepable) -> list[cirq.ParamResolver]:
    """``list(cirq.to_resolvers(sweep))``, without rebuilding a list of resolvers.

    cirq turns each resolver into a sweep of one point per symbol and back:
    ~1 ms for a parameter-shift point of 45 symbols, 0.1 s per QAOA gradient.
    """
    if isinstance(sweep, (list, tuple)) and all(type(r) is cirq.ParamResolver for r in sweep):
        return list(sweep)
    return list(cirq.to_resolvers(sweep))


def _key_name(key: Any) -> str:
    # A symbol's name as cirq.parameter_names gives it (str() prints it, 50x slower).
    return key.name if isinstance(key, sympy.Symbol) else str(key)


def _paths_fallback(
    info: CircuitInfo, work: str, view: ClusterView, name: str, backend: bk.Backend, memory: int
) -> tuple[str, bk.Backend, int]:
    """``qsimh`` instead of a state vector that fits no worker, where it can run the circuit."""
    paths = bk.registry().get(bk.QSIMH)
    if paths is None or bk.QSIMH not in view.backends or paths.unsupported(info, work) is not None:
        return name, backend, memory
    return bk.QSIMH, paths, paths.memory_bytes(info, work)


def _backend_for(
    index: int, info: CircuitInfo, work: str, simulator: str, view: ClusterView, policy: OptimizationPolicy
) -> str:
    if simulator == "auto":
        # Without automatic choice, "auto" is what a serial QSimSimulator does.
        allowed = sorted(view.backends if policy.auto_backend else view.backends & set(bk.SERIAL_EQUIVALENT))
        try:
            return bk.choose(info, work, allowed=allowed)
        except ValueError as e:
            raise BackendMismatchError(
                index, str(e), f"backends on this cluster: {sorted(view.backends)}", "install a backend that can run it"
            ) from e
    if simulator not in view.backends:
        raise BackendMismatchError(
            index,
            f"simulator {simulator!r} is not available on any worker",
            f"backends on this cluster: {sorted(view.backends)}",
            "pass simulator='auto' or install it on the workers",
        )
    why = bk.get_backend(simulator).unsupported(info, work)
    if why is not None:
        raise bk.mismatch_type(simulator, info)(
            index,
            f"simulator {simulator!r} cannot {work} it: {why}",
            "what the backend supports",
            "pass simulator='auto'",
        )
    return simulator


def target_chunk_seconds(jobs: list[Job], view: ClusterView, priority: int = 0) -> float:
    """Seconds of work per Dask task.

    ``qdask.quantum.chunk-duration`` when set; "auto" gives each slot about
    ``qdask.quantum.chunks-per-slot`` chunks (so stealing can even out
    estimation errors and the batch ends with short chunks) while keeping each
    chunk long enough that Dask's ~ms per-task overhead stays small.

    Work below normal ``priority`` is a backlog that later, more urgent work
    must overtake: a worker only switches between tasks, so its chunks are
    ``min-chunk-duration`` long and a higher-priority circuit waits at most
    about that long for a slot (at the price of more, shorter tasks).
    """
    configured = config.get("quantum.chunk-duration")
    if configured != "auto":
        return config.parse_duration(configured)
    total = sum(j.est_seconds for j in jobs)
    lo = config.parse_duration(config.get("quantum.min-chunk-duration"))
    hi = config.parse_duration(config.get("quantum.max-chunk-duration"))
    if priority < 0:
        return lo
    per_slot = int(config.get("quantum.chunks-per-slot"))
    return min(hi, max(lo, total / (per_slot * max(view.slots, 1))))


def make_chunks(
    jobs: list[Job],
    view: ClusterView,
    target: float,
    policy: OptimizationPolicy | None = None,
    *,
    ceiling: bool = False,
) -> list[Chunk]:
    """Pack small jobs into chunks of about ``target`` seconds; big jobs run alone.

    ``ceiling`` (a backlog below normal priority): no chunk of several jobs
    exceeds ``target``. A worker switches only between tasks, and qsim holds
    the GIL through each circuit, so a higher-priority circuit waits for the
    rest of the running chunk: at most one backlog circuit or ``target``,
    whichever is longer.

    Chunks taper at the end of the batch (guided self-scheduling): once the
    work left is under ``2 * slots * target``, each chunk takes a
    ``2 * slots``-th of it, down to ``min-chunk-duration``. Equal chunks would
    leave a slot idle for up to a whole chunk while the last ones run.

    Jobs whose every repetition is a separate simulation (noise, mid-circuit
    measurements) and that take longer than ``target`` are split into blocks
    of repetitions, each with its slice of the seed stream. Chunks come back
    longest first (largest-processing-time order), which is the order they are
    submitted and so the order each worker runs them.

    ``policy`` (default ``basic``): without batching every job is one chunk;
    with ``split_shots`` long-enough per-repetition jobs are spread over every
    slot; with ``noise_routing`` sampling chunks ask for the lowest-error device.
    """
    policy = policy if policy is not None else OptimizationPolicy.for_level("basic")
    if not policy.batching:
        target = math.inf
    chunks: list[Chunk] = []
    small: list[Task] = []
    small_est = 0.0
    small_mem = 0
    small_qubits = 0
    # Work not yet in a finished chunk, and the slot count it is shared by.
    left = sum(j.est_seconds for j in jobs)
    share = 2 * max(view.slots, 1)
    floor = min(target, config.parse_duration(config.get("quantum.min-chunk-duration")))

    def flush() -> None:
        nonlocal small, small_est, small_mem, small_qubits, left
        left -= small_est
        if small:
            chunks.append(Chunk(small, small_est, small_mem, small_qubits, _route(small[0].work, policy)))
        small, small_est, small_mem, small_qubits = [], 0.0, 0, 0

    # Longest first, so each chunk packs jobs of like size and the batch ends
    # with the shortest ones (a caller's order may put a big job last).
    for job in sorted(jobs, key=lambda j: -j.est_seconds):
        if job.est_seconds >= target or not policy.batching or _spread_shots(job, policy) or job.blocks > 1:
            for task, est in _split(job, view, target, policy):
                chunks.append(Chunk([task], est, job.memory, job.info.num_qubits, _route(job.work, policy)))
            left -= job.est_seconds
            continue
        if ceiling and small and small_est + job.est_seconds > target:
            flush()
        small.append(_task(job, job.seeds, 0, job.repetitions, 1, policy))
        small_est += job.est_seconds
        small_mem = max(small_mem, job.memory)
        small_qubits = max(small_qubits, job.info.num_qubits)
        if small_est >= min(target, max(floor, left / share)):
            flush()
    flush()
    chunks.sort(key=lambda c: -c.est_seconds)
    return chunks


def _route(work: str, policy: OptimizationPolicy) -> str | None:
    # Devices emulate noise when sampling only (qdask.hybrid.noise): route samples.
    return LOWEST_ERROR if policy.noise_routing and work == "sample" else None


def _spread_shots(job: Job, policy: OptimizationPolicy) -> bool:
    """A per-repetition job worth spreading over every slot (``aggressive``)."""
    floor = 2 * config.parse_duration(config.get("quantum.min-chunk-duration"))
    return policy.split_shots and job.work == "sample" and job.info.per_repetition and job.est_seconds >= floor


def _split(job: Job, view: ClusterView, target: float, policy: OptimizationPolicy) -> list[tuple[Task, float]]:
    threads = view.big_threads if job.info.num_qubits >= 16 else 1
    # A noisy expectation value's trajectories: every block keeps the call's one
    # seed, as qsim seeds trajectory i with seed + i (RunOptions.first_trajectory).
    trajectories = job.work == "expectation" and job.repetitions > 1
    if job.work == "sample" and job.blocks > 1 and len(job.seeds) == 1:
        return _shot_blocks(job, threads, policy)
    if not trajectories and (
        job.work != "sample" or not job.info.per_repetition or job.repetitions <= 1 or len(job.seeds) != job.repetitions
    ):
        return [(_task(job, job.seeds, 0, job.repetitions, threads, policy), job.est_seconds)]
    least = max(view.slots if _spread_shots(job, policy) else 1, job.blocks)
    # Enough blocks per slot to even out the load; more would only add Dask
    # overhead (10**8 repetitions made 35,215 tasks).
    most = max(least, MAX_BLOCKS_PER_SLOT * max(view.slots, 1))
    blocks = min(job.repetitions, max(least, min(most, math.ceil(job.est_seconds / target))))
    edges = np.linspace(0, job.repetitions, blocks + 1).astype(int)
    per_rep = job.est_seconds / job.repetitions
    return [
        (
            _task(job, job.seeds if trajectories else job.seeds[a:b], int(a), int(b - a), threads, policy),
            per_rep * (b - a),
        )
        for a, b in zip(edges[:-1], edges[1:])
        if b > a
    ]


#: Blocks of repetitions of one circuit per quantum slot, at most (shot admission may ask for more).
MAX_BLOCKS_PER_SLOT = 64


def _shot_blocks(job: Job, threads: int, policy: OptimizationPolicy) -> list[tuple[Task, float]]:
    """A circuit whose one simulation serves every repetition, split into ``job.blocks`` by memory.

    Each block simulates the state again and samples its share with its own
    seed (:func:`shot_block_seeds`); the blocks run in parallel.
    """
    edges = np.linspace(0, job.repetitions, job.blocks + 1).astype(np.int64)
    seeds = shot_block_seeds(int(job.seeds[0]), job.blocks)
    per_rep = job.est_seconds / job.repetitions
    return [
        (_task(job, np.array([_qsim_seed(seeds[k])]), int(a), int(b - a), threads, policy), per_rep * (b - a))
        for k, (a, b) in enumerate(zip(edges[:-1], edges[1:]))
        if b > a
    ]


def _task(job: Job, seeds: Seeds, start: int, repetitions: int, threads: int, policy: OptimizationPolicy) -> Task:
    return Task(
        index=job.index,
        start=start,
        circuit=job.compact if job.compact is not None else job.circuit,
        resolver=job.resolver,
        work=job.work,
        backend=job.backend,
        repetitions=repetitions,
        seeds=seeds,
        threads=threads,
        extra=job.extra,
        fused_gate_size=policy.fusion_for(job.info.num_qubits),
    )
