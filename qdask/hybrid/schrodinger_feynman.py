"""Distributed Schrödinger-Feynman amplitudes with qsimh.

qsimh splits the qubits into two parts and simulates each part's state
vector; every two-qubit gate across the cut is replaced by its Schmidt
decomposition, so an amplitude is a sum over *paths* (one Schmidt term per
cut gate). qsimh orders the cut gates in time and splits them into *prefix*,
*root* and *suffix* gates: one call sums every root and suffix path for one
*prefix value* ``w`` (the bit-packed Schmidt indices of the prefix gates).
The amplitude is the sum over all ``w`` of those calls, so the prefix values
are the unit of distribution here: each Dask task sums a range of ``w`` on a
quantum worker and the client (or a reduce task) adds the ranges up.

Memory per task is three state vectors of each part (``8 * 3 * (2**n0 +
2**n1)`` bytes), so a 40-qubit circuit split 20/20 needs about 50 MB per
worker instead of the 8 TiB of its state vector. Time grows as
``2**(Schmidt bits of the cut)``: the method pays off for circuits with few
gates across some cut, e.g. shallow ones.

The cut is chosen automatically (:func:`plan_cut`): the bipartition with the
fewest Schmidt bits across it (contiguous splits of the qubit order and a
Kernighan-Lin bisection are tried) whose parts fit a worker; then enough
prefix gates for ``qdask.hybrid.paths-per-slot`` tasks per quantum slot, and
the number of root gates that minimises each task's work.

Use it through ``qdask.Simulator(client, simulator="qsimh").compute_amplitudes``,
automatically at ``optimization_level="aggressive"`` for circuits too wide for
state vectors, or directly with :func:`compute_amplitudes`.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import cirq
import dask
import numpy as np

from qdask import config
from qdask.quantum.backends import QSIMH, QSimBackend, RunOptions
from qdask.quantum.cost import PARALLEL_MIN_QUBITS
from qdask.quantum.engine import Engine, register_job_router
from qdask.quantum.plan import Chunk, ClusterView, Job
from qdask.quantum.task import TaskResult
from qdask.quantum.validate import CircuitTooWideError, UnresolvedParametersError, UnsupportedGateError
from qdask.resources import ANNOTATION, BYTES_PER_AMPLITUDE, statevector_bytes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from distributed import Client, Future

    from qdask.hybrid.levels import OptimizationPolicy
    from qdask.quantum.analysis import CircuitInfo

logger = logging.getLogger(__name__)

#: Schmidt bits qsimh spends on a gate of this type when it crosses the cut:
#: rank-2 decompositions take one bit, rank-4 two (qsim ``lib/gates_cirq.h``,
#: ``GetSchmidtDecomp``). Other two-qubit gates (matrix gates, controlled
#: gates) have none there, so they are decomposed into these first.
SCHMIDT_BITS: dict[type[cirq.Gate], int] = {
    cirq.CZPowGate: 1,
    cirq.CXPowGate: 1,
    cirq.XXPowGate: 1,
    cirq.YYPowGate: 1,
    cirq.ZZPowGate: 1,
    cirq.SwapPowGate: 2,
    cirq.ISwapPowGate: 2,
    cirq.PhasedISwapPowGate: 2,
    cirq.FSimGate: 2,
}

#: State vectors qsimh keeps per part: after the prefix, the root and the suffix checkpoint.
STATES_PER_PART = 3
#: More Schmidt bits than this across the best cut is beyond any cluster (2**48 paths).
MAX_CUT_BITS = 48


def schmidt_bits(gate: cirq.Gate | None) -> int:
    """Schmidt bits of ``gate`` on the cut (0: qsimh cannot cut it)."""
    for cls, bits in SCHMIDT_BITS.items():
        if isinstance(gate, cls):
            return bits
    return 0


@dataclass(frozen=True)
class Prepared:
    """A circuit in the form qsimh cuts: one- and two-qubit gates of :data:`SCHMIDT_BITS`.

    Attributes
    ----------
    circuit : cirq.Circuit
        The decomposed circuit, measurements and global phases removed.
    qubits : tuple of cirq.Qid
        Qubit order; bitstrings read the first qubit as the most significant bit.
    phase : complex
        Global phase the decomposition produced (multiplies every amplitude).
    """

    circuit: cirq.Circuit
    qubits: tuple[cirq.Qid, ...]
    phase: complex


def prepare(
    circuit: cirq.AbstractCircuit, qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT, index: int = 0
) -> Prepared:
    """Decompose ``circuit`` into gates qsimh can cut.

    Raises
    ------
    qdask.quantum.validate.CircuitError
        Unresolved symbols, noise channels or mid-circuit measurements
        (``index`` names the circuit in the caller's batch).
    """
    if cirq.is_parameterized(circuit):
        raise UnresolvedParametersError(
            index, "Schrödinger-Feynman needs numbers, the circuit has symbols", "a resolved circuit",
            "pass params= (qdask resolves them) or cirq.resolve_parameters(circuit, params)",
        )
    if circuit.has_measurements():
        if not circuit.are_all_measurements_terminal():
            raise UnsupportedGateError(
                index, "mid-circuit measurements", "unitary circuits", "remove the measurements; amplitudes need none"
            )
        circuit = cirq.drop_terminal_measurements(circuit)
    qubits = tuple(cirq.QubitOrder.as_qubit_order(qubit_order).order_for(circuit.all_qubits()))

    def stuck(op: cirq.Operation) -> Exception:
        return UnsupportedGateError(
            index,
            f"operation {op} is not unitary or cannot be decomposed into one- and two-qubit gates",
            "unitary gates",
            "remove noise channels and classically controlled operations (amplitudes are of pure states)",
        )

    phase = 1 + 0j
    ops = []
    for op in cirq.decompose(circuit, keep=_keep, on_stuck_raise=stuck):
        if not op.qubits:
            phase *= complex(cirq.unitary(op)[0, 0])
        else:
            ops.append(op)
    return Prepared(cirq.Circuit(ops), qubits, phase)


def _keep(op: cirq.Operation) -> bool:
    if len(op.qubits) <= 1:  # global phases are collected, one-qubit gates stay in their part
        return cirq.has_unitary(op)
    return len(op.qubits) == 2 and schmidt_bits(op.gate) > 0


@dataclass(frozen=True)
class Cut:
    """Where and how qsimh splits a prepared circuit.

    Attributes
    ----------
    part1 : tuple of int
        qsim indices of the part-1 qubits (qsimh's ``k``; qsim numbers the
        last qubit of the order 0).
    sizes : tuple of int
        Qubits in part 0 and part 1.
    prefix_gates, root_gates : int
        qsimh's ``p`` and ``r``: the first ``p`` cut gates are fixed by the
        prefix value, the next ``r`` are summed after the second checkpoint.
    prefix_bits, root_bits, suffix_bits : int
        Schmidt bits of each group; there are ``2**prefix_bits`` prefix values.
    memory : int
        Bytes of state vectors one task holds.
    work : float
        Estimated amplitude updates per prefix value (for cost estimates).
    """

    part1: tuple[int, ...]
    sizes: tuple[int, int]
    prefix_gates: int
    root_gates: int
    prefix_bits: int
    root_bits: int
    suffix_bits: int
    memory: int
    work: float

    @property
    def prefixes(self) -> int:
        """Prefix values ``w`` to sum over."""
        return 2**self.prefix_bits

    @property
    def cut_bits(self) -> int:
        return self.prefix_bits + self.root_bits + self.suffix_bits


def max_part_qubits(budget_bytes: float) -> int:
    """Widest part whose qsimh states fit in ``budget_bytes`` (with an equal other part)."""
    per = STATES_PER_PART * BYTES_PER_AMPLITUDE * 2
    return int(math.floor(math.log2(budget_bytes / per))) if budget_bytes >= per * 2 else 0


def plan_cut(prep: Prepared, *, max_part: int, tasks: int = 1, index: int = 0) -> Cut:
    """Choose the cut, prefix and root gates for ``prep`` (see the module docstring).

    Parameters
    ----------
    prep : Prepared
        From :func:`prepare`.
    max_part : int
        Most qubits a part may have (:func:`max_part_qubits` of a worker's budget).
    tasks : int, default 1
        Prefix values wanted at least (the parallelism to expose).
    index : int
        Position of the circuit in the caller's batch (for errors).

    Examples
    --------
    >>> q = cirq.LineQubit.range(4)
    >>> prep = prepare(cirq.Circuit(cirq.H.on_each(*q), cirq.CZ(q[1], q[2])))
    >>> plan_cut(prep, max_part=2, tasks=2).prefixes
    2
    """
    n = len(prep.qubits)
    lo, hi = max(1, n - max_part), min(n - 1, max_part)
    if n < 2 or lo > hi:
        raise CircuitTooWideError(
            index,
            f"{n} qubits cannot be split into two parts of at most {max_part} qubits each",
            f"{2 * max_part} qubits for Schrödinger-Feynman on this cluster",
            "add workers with more memory (ClusterConfig(memory_per_node=...))",
        )
    position = {q: i for i, q in enumerate(prep.qubits)}
    # (moment, qubit positions, Schmidt bits if two-qubit) in qsim's time order
    ops = [
        (m, tuple(position[q] for q in op.qubits), schmidt_bits(op.gate) if len(op.qubits) == 2 else 0)
        for m, moment in enumerate(prep.circuit)
        for op in moment
    ]
    side = _best_bipartition(n, ops, lo, hi)
    cut_ops = [bits for _, qs, bits in ops if len(qs) == 2 and side[qs[0]] != side[qs[1]]]
    total_bits = sum(cut_ops)
    if total_bits > MAX_CUT_BITS:
        raise CircuitTooWideError(
            index,
            f"the best cut has {total_bits} Schmidt bits ({2**total_bits:.1e} paths)",
            f"{MAX_CUT_BITS} bits",
            "use a shallower circuit or fewer gates between the two halves",
        )
    n1 = sum(side)
    sizes = (n - n1, n1)
    amps = [2.0 ** sizes[0], 2.0 ** sizes[1]]
    # Work of each op on the parts' state vectors, and the index of each cut gate.
    weights, cut_at = [], []
    for i, (_, qs, _bits) in enumerate(ops):
        parts = {side[p] for p in qs}
        weights.append(sum(amps[p] for p in parts))
        if len(parts) == 2:
            cut_at.append(i)
    prefix = 0
    while prefix < len(cut_ops) and 2 ** sum(cut_ops[:prefix]) < tasks:
        prefix += 1
    root, work = _best_root(weights, cut_at, cut_ops, prefix, sum(amps))
    rbits = sum(cut_ops[prefix : prefix + root])
    sbits = total_bits - sum(cut_ops[:prefix]) - rbits
    states = 1 + (rbits > 0) + (sbits > 0)
    return Cut(
        part1=tuple(sorted(n - 1 - p for p in range(n) if side[p])),
        sizes=sizes,
        prefix_gates=prefix,
        root_gates=root,
        prefix_bits=sum(cut_ops[:prefix]),
        root_bits=rbits,
        suffix_bits=sbits,
        memory=int(BYTES_PER_AMPLITUDE * sum(amps) * states),
        work=work,
    )


def _best_bipartition(n: int, ops: list[tuple[int, tuple[int, ...], int]], lo: int, hi: int) -> list[int]:
    """Part (0 or 1) of each qubit position: fewest cut bits, then least state-vector work."""
    weight: dict[tuple[int, int], int] = {}
    for _, qs, bits in ops:
        if len(qs) == 2:
            edge = (min(qs), max(qs))
            weight[edge] = weight.get(edge, 0) + bits
    candidates = [[0] * (n - k) + [1] * k for k in range(lo, hi + 1)]
    if n >= 4 and weight:
        import networkx as nx

        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        graph.add_weighted_edges_from((a, b, w) for (a, b), w in weight.items())
        a, _ = nx.algorithms.community.kernighan_lin_bisection(graph, weight="weight", seed=0)
        if lo <= len(a) <= hi:
            candidates.append([1 if p in a else 0 for p in range(n)])

    def cost(side: list[int]) -> float:
        bits = sum(w for (a, b), w in weight.items() if side[a] != side[b])
        n1 = sum(side)
        return 2.0**bits * (2.0 ** (n - n1) + 2.0**n1)

    return min(candidates, key=cost)


def _best_root(
    weights: list[float], cut_at: list[int], cut_bits: list[int], prefix: int, copy: float
) -> tuple[int, float]:
    """Root gates minimising the work per prefix value, and that work.

    qsimh applies the gates up to the last prefix gate once, those up to the
    last root gate once per root path, and the rest once per root and suffix
    path (copying both parts' states at each branch).
    """
    total = sum(cut_bits[prefix:])
    start = cut_at[prefix - 1] + 1 if prefix else 0
    head = sum(weights[:start])
    best: tuple[int, float] | None = None
    for root in range(len(cut_bits) - prefix + 1):
        end = cut_at[prefix + root - 1] + 1 if root else start
        rbits = sum(cut_bits[prefix : prefix + root])
        middle = sum(weights[start:end]) + (copy if rbits else 0)
        tail = sum(weights[end:]) + (copy if total - rbits else 0)
        work = head + 2.0**rbits * middle + 2.0**total * tail
        if best is None or work < best[1]:
            best = (root, work)
    assert best is not None
    return best


# -- worker side ---------------------------------------------------------------------
def path_amplitudes(
    prep: Prepared, cut: Cut, bitstrings: Sequence[int], first: int, last: int, threads: int = 1
) -> tuple[np.ndarray, float, str]:
    """Sum of qsimh's amplitudes over prefix values ``first <= w < last``.

    Returns the partial amplitudes (without the global phase), the seconds
    spent and the worker's address. Runs as a Dask task.
    """
    import qsimcirq
    from qsimcirq import qsim

    t0 = time.perf_counter()
    n = len(prep.qubits)
    # One translation for every prefix value (QSimhSimulator would redo it
    # per call); the options are those QSimhSimulator passes to qsim.
    translated, _ = qsimcirq.QSimCircuit(prep.circuit).translate_cirq_to_qsim(cirq.QubitOrder.explicit(prep.qubits))
    options: dict[str, Any] = {
        "c": translated,
        # qsim reads bitstrings with the first qubit of the order last.
        "i": "\n".join(format(int(b), "b").zfill(n)[::-1] for b in bitstrings),
        "k": list(cut.part1),
        "p": cut.prefix_gates,
        "r": cut.root_gates,
        "t": threads,
        "f": 2,
        "v": 0,
    }
    total = np.zeros(len(bitstrings), dtype=np.complex128)
    for w in range(first, last):
        options["w"] = w
        amplitudes = qsim.qsimh_simulate(options)
        if len(amplitudes) != len(bitstrings):  # qsimh reports errors on stderr only
            raise RuntimeError(f"qsimh failed on prefix value {w} of cut {cut}; see the worker's stderr")
        total += np.asarray(amplitudes, dtype=np.complex128)
    return total, time.perf_counter() - t0, _worker_address()


def _worker_address() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:
        return ""


def serial_amplitudes(prep: Prepared, cut: Cut, bitstrings: Sequence[int], threads: int = 1) -> np.ndarray:
    """Every prefix value in this process (what one task of a ``none``-level run does)."""
    partial, _, _ = path_amplitudes(prep, cut, bitstrings, 0, cut.prefixes, threads)
    return (partial * prep.phase).astype(np.complex64)


# -- client side ---------------------------------------------------------------------
def tasks_for(view: ClusterView) -> int:
    """Path tasks per circuit: ``qdask.hybrid.paths-per-slot`` per quantum slot."""
    return max(1, view.slots * int(config.get("hybrid.paths-per-slot")))


def submit_paths(
    client: Client,
    prep: Prepared,
    cut: Cut,
    bitstrings: Sequence[int],
    view: ClusterView,
    *,
    tasks: int,
    priority: int = 0,
    threads: int | None = None,
) -> list[Future]:
    """One Dask task per range of prefix values, each on a quantum worker that holds ``cut.memory``.

    ``threads`` (qsimh's ``t``) defaults to the cores per quantum slot for
    parts of :data:`~qdask.quantum.cost.PARALLEL_MIN_QUBITS` qubits or more, else 1.
    """
    tasks = max(1, min(tasks, cut.prefixes))
    edges = np.linspace(0, cut.prefixes, tasks + 1).astype(int)
    if threads is None:
        threads = view.big_threads if max(cut.sizes) >= PARALLEL_MIN_QUBITS else 1
    per_prefix = view.cost.per_circuit + view.cost.per_amp_op * cut.work / view.cost.speedup(max(cut.sizes), threads)
    futures = []
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        # A Chunk gives the same annotation and cost-class key as other circuit
        # tasks, so placement, monitoring and duration learning treat them alike.
        chunk = Chunk([], per_prefix * int(b - a), cut.memory, max(cut.sizes))
        annotation = replace(chunk.annotation(priority), backend=QSIMH, circuits=int(i == 0))
        with dask.annotate(**{ANNOTATION: annotation.to_dict()}):
            futures.append(
                client.submit(
                    path_amplitudes,
                    prep,
                    cut,
                    list(bitstrings),
                    int(a),
                    int(b),
                    threads,
                    key=f"{chunk.task_name('paths')}-{uuid.uuid4().hex}",
                    resources=chunk.resources(),
                    priority=priority,
                    pure=False,
                )
            )
    return futures


def plan(
    circuit: cirq.AbstractCircuit, qubit_order: cirq.QubitOrderOrList, view: ClusterView, *, tasks: int, index: int = 0
) -> tuple[Prepared, Cut]:
    """Prepare ``circuit`` and cut it for ``view``'s workers."""
    prep = prepare(circuit, qubit_order, index)
    return prep, plan_cut(prep, max_part=max_part_qubits(view.max_statevector_bytes), tasks=tasks, index=index)


def compute_amplitudes(
    client: Client,
    circuit: cirq.AbstractCircuit,
    bitstrings: Sequence[int],
    qubit_order: cirq.QubitOrderOrList = cirq.QubitOrder.DEFAULT,
    *,
    tasks: int | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Amplitudes of ``bitstrings`` by Schrödinger-Feynman, prefix paths spread over the cluster.

    Parameters
    ----------
    client : distributed.Client
        Client of a qdask cluster.
    circuit : cirq.AbstractCircuit
        A resolved unitary circuit (terminal measurements are ignored).
    bitstrings : sequence of int
        Basis states, the first qubit of ``qubit_order`` as the most significant bit.
    qubit_order : cirq.QubitOrderOrList
        As for ``cirq.SimulatesAmplitudes``.
    tasks : int, optional
        Dask tasks to split the paths into; default ``paths-per-slot`` per quantum slot.
    threads : int, optional
        qsimh threads per task (see :func:`submit_paths`).

    Returns
    -------
    numpy.ndarray
        complex64 amplitudes, in the order of ``bitstrings``.

    Examples
    --------
    >>> q = cirq.LineQubit.range(40)  # doctest: +SKIP
    >>> c = cirq.Circuit(cirq.H.on_each(*q), [cirq.CZ(a, b) for a, b in zip(q, q[1:])])  # doctest: +SKIP
    >>> compute_amplitudes(client, c, [0])  # doctest: +SKIP
    array([9.536743e-07+0.j], dtype=complex64)
    """
    view, _ = Engine(client).context()
    ntasks = tasks if tasks is not None else tasks_for(view)
    prep, cut = plan(circuit, qubit_order, view, tasks=ntasks)
    logger.info("Schrödinger-Feynman cut %s: %d prefix values over %d tasks", cut, cut.prefixes, ntasks)
    parts = client.gather(submit_paths(client, prep, cut, bitstrings, view, tasks=ntasks, threads=threads))
    return (sum(p[0] for p in parts) * prep.phase).astype(np.complex64)


def submit_job(client: Client, job: Job, view: ClusterView, priority: int) -> Future:
    """The engine's path for an amplitudes job on the ``qsimh`` backend.

    Returns a future of ``[TaskResult]`` with the summed amplitudes, as a
    circuit chunk's future would be, so the engine collects it like any other.
    """
    circuit = cirq.resolve_parameters(job.circuit, job.resolver) if job.resolver.param_dict else job.circuit
    tasks = tasks_for(view)
    prep, cut = plan(circuit, job.extra["qubit_order"], view, tasks=tasks, index=job.index)
    futures = submit_paths(client, prep, cut, job.extra["bitstrings"], view, tasks=tasks, priority=priority)
    key = f"qdask-sf-sum-{uuid.uuid4().hex}"
    return client.submit(_job_result, job.index, prep.phase, *futures, key=key, pure=False)


def _job_result(index: int, phase: complex, *parts: tuple[np.ndarray, float, str]) -> list[TaskResult]:
    amplitudes = np.asarray(sum(p[0] for p in parts) * phase).astype(np.complex64)
    workers = ",".join(sorted({p[2] for p in parts}))
    return [TaskResult(index, 0, QSIMH, sum(p[1] for p in parts), workers, amplitudes, int(amplitudes.nbytes))]


class _PathRouter:
    """The engine's route for ``qsimh`` amplitudes jobs: prefix paths spread over the workers."""

    def claims(self, job: Job, policy: OptimizationPolicy) -> bool:
        return job.backend == QSIMH and policy.split_paths

    def submit(self, client: Client, job: Job, view: ClusterView, priority: int) -> Future:
        return submit_job(client, job, view, priority)


register_job_router(_PathRouter())


class QSimhBackend:
    """qsimh Schrödinger-Feynman amplitudes of circuits too wide for a state vector.

    Memory is three state vectors of each half of the qubits, not one of all of
    them; time grows with the Schmidt rank of the gates across the cut. The
    engine spreads a circuit's prefix paths over the workers
    (:mod:`qdask.hybrid.schrodinger_feynman`); :meth:`amplitudes` sums all of
    them in one call (``optimization_level="none"``).
    """

    name = QSIMH

    def available(self) -> bool:
        return QSimBackend().available()

    def version(self) -> str:
        return QSimBackend().version()

    def unsupported(self, info: CircuitInfo, work: str) -> str | None:
        if work != "amplitudes":
            return f"Schrödinger-Feynman computes amplitudes only (asked for {work})"
        if info.has_noise:
            return "the circuit has noise channels"
        if info.num_qubits < 2:
            return "a cut needs at least two qubits"
        if info.unsupported_gates:
            return f"gates without a unitary: {sorted(info.unsupported_gates)}"
        return None

    def memory_bytes(self, info: CircuitInfo, work: str) -> int:
        """Least any cut needs: both halves equal (the chosen cut's own need is requested per task)."""
        half = (info.num_qubits + 1) // 2
        return STATES_PER_PART * 2 * statevector_bytes(half)

    def amplitudes(
        self, circuit: cirq.AbstractCircuit, bitstrings: list[int], qubit_order: Any, opts: RunOptions
    ) -> np.ndarray:
        prep = prepare(circuit, qubit_order)
        # The halves the planner's memory check admitted.
        cut = plan_cut(prep, max_part=(len(prep.qubits) + 1) // 2)
        return serial_amplitudes(prep, cut, bitstrings, opts.threads)
