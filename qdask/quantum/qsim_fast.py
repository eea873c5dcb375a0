"""Compact circuits: sampling with qsim, each gate translated once per batch, no cirq objects on the worker.

On circuits of a few qubits qsim's C++ simulation takes microseconds; the
milliseconds go to Python: qsimcirq decomposes, classifies and translates
every operation of every circuit, and pickling cirq circuits to a worker and
back into objects costs as much again. A batch sees all its circuits first,
so the client translates each distinct gate (by value) once into what qsim's
circuit builder takes, and sends each circuit as a :class:`CompactCircuit`:
a flat array of (gate, time, qubits) references into the batch's
:class:`GateTable`, and its measurements as column indices. A worker feeds
that straight into the same ``qsim`` calls ``qsimcirq`` makes
(``add_gate``, ``add_diagonal_gate``, ``add_matrix_gate``,
``control_last_gate``), in the same order with the same times, then one
``qsim_sample_final`` with the prescribed seed: the records are bit-identical
to ``QSimSimulator(seed=...).run`` (``tests/test_quantum_units.py``).

A parameterised gate goes into the table unresolved and is translated on the
worker for each sweep point; the rest of the circuit is translated once.

The compact form covers what qsimcirq samples from one final state: noiseless
circuits whose measurements are all terminal, more than one repetition. The
planner sends every other circuit as it is (``metadata["path"] == "cirq"``).

qsimcirq's translation decisions are private functions of
``qsimcirq.qsim_circuit``; this module reaches them through
:mod:`qdask._compat` (``qsim_gate_kind``, ``qsim_has_gate_kind``,
``qsim_control_details``, ``QSIM_DIAGONAL_ANGLES``), whose canaries in
``tests/test_compat.py`` fail naming any an upgrade drops. Written against qsimcirq 0.22.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cirq
import numpy as np
import sympy
from qsimcirq import qsim_circuit as qc

from qdask import _compat
from qdask.quantum.analysis import CircuitMemo

# -- stage timings --------------------------------------------------------------------

#: Seconds spent per stage in this process, for ``benchmarks/throughput.py``'s
#: breakdown. Client: "plan" (``build_jobs``, which includes "analysis" and
#: "encode"), "pickle"; worker: "chunk" (in ``run_chunk``, which includes
#: "decode": unpickling and building qsim circuits, "qsim", and "pack":
#: records from qsim's shots, bit-packed).
STAGES: Counter[str] = Counter()
_STAGES_LOCK = threading.Lock()


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the time spent in the block to :data:`STAGES` ``[name]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        tally(**{name: time.perf_counter() - t0})


def tally(**seconds: float) -> None:
    """Add ``seconds`` per stage to :data:`STAGES` (per circuit: a context manager costs ~3 us)."""
    with _STAGES_LOCK:
        STAGES.update(seconds)


def take_stages() -> dict[str, float]:
    """:data:`STAGES` so far, then reset (``client.run(take_stages)`` reads workers')."""
    with _STAGES_LOCK:
        out = {stage: float(seconds) for stage, seconds in STAGES.items()}
        STAGES.clear()
    return out


# -- the gate table -------------------------------------------------------------------

#: A gate as qsim takes it: (qubits, op, payload, controls), plain picklable values.
#: op "gate": payload (GateKind name, {param: float}); "diag": diagonal angles;
#: "matrix": the unitary as [re, im, ...]; "sym": the unresolved cirq gate,
#: translated per sweep point. controls: None, or (number of control qubits,
#: positions of the effective controls among them, their values).
Entry = tuple[int, str, Any, Any]


def _entry(gate: cirq.Gate) -> Entry | None:
    """What ``qsimcirq.qsim_circuit.add_op_to_circuit`` adds for ``gate``; None where it cannot (kind unknown)."""
    arity = gate.num_qubits()
    if cirq.is_parameterized(gate):
        return (arity, "sym", gate, None)
    controls = None
    target = gate
    if isinstance(gate, cirq.ControlledGate):
        n = gate.num_controls()
        # Which controls count depends only on the gate: ask with positions for qubits.
        positions, values = _compat.qsim_control_details(gate, list(range(n)))
        if arity - n > 4:
            return None  # qsimcirq raises NotImplementedError: the cirq path says so
        controls = (n, tuple(positions), list(values))
        target = gate.sub_gate
    kind = _compat.qsim_gate_kind(gate)
    if kind is None:
        return None
    name = _kind_names()[int(kind)]  # pybind's own GateKind.name and == take ~40 and ~2 us
    if name in ("kTwoQubitDiagonalGate", "kThreeQubitDiagonalGate"):
        return (arity, "diag", list(getattr(target, _compat.QSIM_DIAGONAL_ANGLES)), controls)
    if name == "kMatrixGate":
        return (arity, "matrix", [float(v) for x in cirq.unitary(target).flat for v in (x.real, x.imag)], controls)
    params = {}
    for attribute, value in vars(target).items():
        key = attribute.strip("_")
        if key not in qc.GATE_PARAMS:
            continue
        if not isinstance(value, (int, float, np.integer, np.floating)):
            return None  # qsimcirq raises "Parameters must be numeric."
        params[key] = float(value)
    return (arity, "gate", (name, params), controls)


@functools.cache
def _kind_names() -> dict[int, str]:
    """{int(GateKind): its name} of the qsim module (kinds travel by name: the module differs by CPU)."""
    return {int(v): n for n, v in type(qc.qsim.kX).__members__.items()}


class _Registry:
    """The client's gates seen lately, each translated once: entries by index, found by id or by value.

    Indices stay valid within a generation; :func:`begin_batch` starts a new
    one when the entries fill up, forgetting the encoded circuits too (they
    refer to indices). Bounded: a caller who builds a new gate per operation
    (random unitaries) must not grow it forever.
    """

    MAX_ENTRIES = 1 << 16
    MAX_CIRCUITS = 4096

    def __init__(self, generation: int = 0) -> None:
        self.generation = generation
        self.entries: list[Entry] = []
        self.by_id: dict[int, tuple[cirq.Gate, int]] = {}  # holds the gate: its id stays its own
        self.by_value: dict[tuple[Any, ...], int] = {}
        self.circuits = CircuitMemo(self.MAX_CIRCUITS)  # their compact forms (False: none)

    def index(self, gate: cirq.Gate) -> int:
        """The entry index of ``gate`` (-1: not translatable)."""
        hit = self.by_id.get(id(gate))
        if hit is not None:
            return hit[1]
        matrix = isinstance(gate, cirq.MatrixGate)  # not by value: rarely shared, up to 64 KB to hash
        key: tuple | None = None
        i: int | None = None
        if not matrix:
            try:
                key = _value_key(gate)
                i = self.by_value.get(key)
            except TypeError:  # unhashable attributes: by id only
                key = None
        if i is None:
            try:
                entry = _entry(gate)
            except (ValueError, NotImplementedError):  # qsimcirq refuses it: its own path says why
                entry = None
            i = -1 if entry is None else len(self.entries)
            if entry is not None:
                self.entries.append(entry)
            if key is not None:  # not a matrix, and hashable
                self.by_value[key] = i
        if len(self.by_id) >= self.MAX_ENTRIES:
            self.by_id.clear()
        self.by_id[id(gate)] = (gate, i)
        return i


def _value_key(gate: Any) -> tuple[Any, ...]:
    """A gate's exact attribute values, as qsimcirq reads them.

    Not cirq's value equality: that compares exponents modulo their period
    (``Z**1.5 == Z**-0.5``), while qsim is handed the exponent itself, and a
    different float gives different fused matrices, so other samples.
    """
    return (type(gate), *(
        (k, _value_key(v) if isinstance(v, cirq.Gate) else v)
        for k, v in vars(gate).items()
        if not k.startswith("_method_cache")  # cirq's cached hash and the like: there or not, the same gate
    ))


_REGISTRY = _Registry()
_REGISTRY_LOCK = threading.Lock()


def begin_batch() -> None:
    """Start a new generation of gate entries if the registry is full (between batches only)."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if len(_REGISTRY.entries) >= _Registry.MAX_ENTRIES or len(_REGISTRY.by_value) >= _Registry.MAX_ENTRIES:
            _REGISTRY = _Registry(_REGISTRY.generation + 1)


@dataclass
class CompactCircuit:
    """A circuit as qsim's builder takes it, gates as references into a :class:`GateTable`.

    Attributes
    ----------
    num_qubits : int
        Qubits of the circuit (measured-only ones included).
    ops : numpy.ndarray
        Per gate in qsimcirq's order: table index, time, then its qubits in
        qsim's numbering (reversed default order); the smallest int dtype
        that holds them.
    measurements : tuple
        ``(key, shifts, invert)`` per key: arrays (instances, width) of where
        each measured qubit's bit sits in qsim's shots, and invert masks.
    gates : numpy.ndarray
        The distinct table indices in ``ops``.
    parameterized : bool
        Some entry is unresolved ("sym"): bound per sweep point on the worker.
    """

    num_qubits: int
    ops: np.ndarray
    measurements: tuple[tuple[str, np.ndarray, np.ndarray], ...]
    gates: np.ndarray
    parameterized: bool
    generation: int  # of the registry its indices refer to


def _to_matrix(op: cirq.Operation) -> Any:
    # qsimcirq's fallback decomposer for gates it cannot translate.
    matrix = cirq.unitary(op.gate, None)
    return NotImplemented if matrix is None else cirq.MatrixGate(matrix).on(*op.qubits)


#: { gate type: whether qsimcirq translates its operations as they are }.
_NATIVE: dict[type, bool] = {}


def _native(op: cirq.Operation, gate: cirq.Gate) -> bool:
    """Whether qsimcirq keeps ``op`` as it is (``cirq.decompose`` would return ``[op]``).

    Except for controlled operations (judged by their target) that depends on
    the gate's type alone: asked once per type.
    """
    if isinstance(op, cirq.ControlledOperation):
        return _compat.qsim_has_gate_kind(op)
    native = _NATIVE.get(type(gate))
    if native is None:
        native = _NATIVE[type(gate)] = _compat.qsim_has_gate_kind(op)
    return native


def encode(circuit: cirq.AbstractCircuit, *, cache: bool = True) -> CompactCircuit | None:
    """The compact form of a noiseless circuit; None where it has none (measurements not all terminal).

    ``cache``: a circuit whose moments are still the same objects is not
    encoded again (``analysis.CircuitMemo``). None where qsimcirq would refuse the
    circuit (confusion maps, a key measured with different widths,
    untranslatable gates): its own path then raises what it raises.
    """
    with _REGISTRY_LOCK, stage("encode"):
        return _encode_cached(circuit, cache)


def _encode_cached(circuit: cirq.AbstractCircuit, cache: bool) -> CompactCircuit | None:
    reg = _REGISTRY
    hit = reg.circuits.get(circuit) if cache else None
    if hit is not None:
        return hit or None
    compact = _encode(reg, circuit, tuple(circuit.moments))
    if cache:
        reg.circuits.put(circuit, compact if compact is not None else False)
    return compact


def _encode(reg: _Registry, circuit: cirq.AbstractCircuit, moments: tuple[cirq.Moment, ...]) -> CompactCircuit | None:
    ordered = cirq.QubitOrder.DEFAULT.order_for(circuit.all_qubits())
    n = len(ordered)
    column = {q: i for i, q in enumerate(ordered)}
    qsim_index = {q: n - 1 - i for i, q in enumerate(ordered)}  # qsim numbers qubits in reverse
    ops: list[int] = []
    used: set[int] = set()
    measured: dict[str, tuple[list[list[int]], list[list[bool]]]] = {}
    done: set[cirq.Qid] = set()  # measured qubits: no later operation may act on them
    by_id = reg.by_id
    offset = 0
    for moment in moments:
        steps: list[list[tuple[int, tuple[cirq.Qid, ...]]]] = []
        if done and not done.isdisjoint(moment.qubits):
            return None  # a measurement is not terminal: qsimcirq simulates each repetition
        for op in moment:
            gate = op.gate
            if isinstance(gate, cirq.MeasurementGate):
                # qsimcirq samples with measurements replaced by identities, which add no gate.
                if gate.confusion_map:
                    return None
                done.update(op.qubits)
                cols, inverts = measured.setdefault(cirq.measurement_key_name(gate), ([], []))
                if cols and len(cols[0]) != len(op.qubits):
                    return None
                cols.append([column[q] for q in op.qubits])
                inverts.append(list(gate.full_invert_mask()))
                continue
            if gate is not None and _native(op, gate):
                hit = by_id.get(id(gate))
                i = hit[1] if hit is not None else reg.index(gate)
                if i < 0:
                    return None
                steps.append([(i, op.qubits)])
                continue
            step = []
            try:
                subs = cirq.decompose(op, fallback_decomposer=_to_matrix, keep=_compat.qsim_has_gate_kind)
            except Exception:  # a user's gate failing here fails on the worker as today, in its circuit's result
                return None
            for sub in subs:
                i = reg.index(sub.gate) if sub.gate is not None else -1
                if i < 0:
                    return None
                step.append((i, sub.qubits))
            steps.append(step)
        length = max(map(len, steps), default=0)
        for gi in range(length):  # qsimcirq adds gates in time order
            for step in steps:
                if gi < len(step):
                    i, qubits = step[gi]
                    used.add(i)
                    ops.append(i)
                    ops.append(offset + gi)
                    ops.extend(map(qsim_index.__getitem__, qubits))
        offset += length
    flat = np.asarray(ops, dtype=np.int32)
    if flat.size and flat.max() < 2**15:  # the bytes sent per circuit halve
        flat = flat.astype(np.int8 if flat.max() < 2**7 else np.int16)
    gates = np.asarray(sorted(used), dtype=np.int32)
    return CompactCircuit(
        num_qubits=n,
        ops=flat,
        measurements=tuple(
            # Bit n-1-j of a qsim shot is the j-th qubit of the default order.
        (key, (n - 1 - np.asarray(cols, dtype=np.int64)).astype(np.uint64), np.asarray(inverts, dtype=np.int8))
            for key, (cols, inverts) in measured.items()
        ),
        gates=gates,
        parameterized=any(reg.entries[i][1] == "sym" for i in used),
        generation=reg.generation,
    )


class GateTable:
    """The gate entries one batch's compact circuits refer to.

    Pickled as one blob of its entries, made once per batch: each chunk
    embeds those bytes (the standard C pickler, no Python hook per object),
    and a worker loads each distinct blob once (:func:`_load_table`). On the
    worker it keeps the qsim circuits built from it (:func:`build`), so a
    circuit sent again (the same batch resubmitted) is not built again.
    """

    #: Ints in the ops of the built circuits a table keeps (about 4 a gate, a few hundred bytes each in qsim).
    BUILT_MAX_INTS = 400_000

    def __init__(self, entries: dict[int, Entry], blob: bytes | None = None) -> None:
        self.entries = entries
        self._blob = blob
        self._adders: dict[int, tuple[int, Callable[[int, list[int], Any], None] | None]] | None = None
        self.built: dict[tuple[int, bytes], Any] = {}  # { (qubits, ops bytes): qsim.Circuit }
        self.built_ints = 0
        self.lock = threading.Lock()

    @classmethod
    def for_circuits(cls, circuits: list[CompactCircuit]) -> GateTable:
        """The entries ``circuits`` use, from the client's registry."""
        with _REGISTRY_LOCK:
            return cls._of(circuits)

    @classmethod
    def _of(cls, circuits: list[CompactCircuit]) -> GateTable:
        reg = _REGISTRY
        stale = {c.generation for c in circuits} - {reg.generation}
        if stale:  # begin_batch runs between batches only, so this is a bug, not a race
            raise RuntimeError(f"compact circuits of registry generations {sorted(stale)}, now {reg.generation}")
        used = np.unique(np.concatenate([c.gates for c in circuits])) if circuits else np.zeros(0, np.int32)
        return cls({int(i): reg.entries[int(i)] for i in used})

    @property
    def blob(self) -> bytes:
        if self._blob is None:
            self._blob = pickle.dumps(self.entries, protocol=pickle.HIGHEST_PROTOCOL)
        return self._blob

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _load_table, (self.blob,)

    def adders(self) -> dict[int, tuple[int, Callable[[int, list[int], Any], None] | None]]:
        """{index: (qubits, add(time, qubits, circuit))}; add None for parameterised entries."""
        if self._adders is None:
            self._adders = {i: (e[0], _adder(e) if e[1] != "sym" else None) for i, e in self.entries.items()}
        return self._adders


#: { blob: table } a worker loaded lately (a batch's chunks, and batches sent again, share them).
_TABLES: dict[bytes, GateTable] = {}
_TABLES_MAX = 8
_TABLES_LOCK = threading.Lock()


def _load_table(blob: bytes) -> GateTable:
    with _TABLES_LOCK:
        table = _TABLES.get(blob)
        if table is None:
            if len(_TABLES) >= _TABLES_MAX:
                del _TABLES[next(iter(_TABLES))]
            for older in _TABLES.values():  # only the newest batch's built circuits are kept
                with older.lock:
                    older.built.clear()
                    older.built_ints = 0
            table = _TABLES[blob] = GateTable(pickle.loads(blob), blob)
        return table


def forget_built() -> None:
    """Drop the tables and built qsim circuits this worker keeps (``benchmarks/throughput.py`` times cold runs)."""
    with _TABLES_LOCK:
        _TABLES.clear()


def attach_gates(tasks: list[Any]) -> None:
    """Give the compact circuits among ``tasks`` (``qdask.quantum.task.Task``) the batch's one :class:`GateTable`.

    One object for the batch: its blob is made once, and each worker loads
    it (and makes its adders) once.
    """
    compact = [t for t in tasks if isinstance(t.circuit, CompactCircuit)]
    if compact:
        table = GateTable.for_circuits(list({id(t.circuit): t.circuit for t in compact}.values()))
        for t in compact:
            t.gates = table


# -- worker: build, sample, records ----------------------------------------------------------


def _adder(entry: Entry) -> Callable[[int, list[int], Any], None]:
    """``add(time, qubits, circuit)``: the qsim calls ``add_op_to_circuit`` makes for ``entry``."""
    qsim = qc.qsim
    _, op, payload, controls = entry
    if op == "diag":
        add = lambda t, qs, c: qsim.add_diagonal_gate(t, qs, payload, c)  # noqa: E731
    elif op == "matrix":
        add = lambda t, qs, c: qsim.add_matrix_gate(t, qs, payload, c)  # noqa: E731
    else:
        kind, params = getattr(qsim, payload[0]), payload[1]
        add = lambda t, qs, c: qsim.add_gate(kind, t, qs, params, c)  # noqa: E731
    if controls is None:
        return add
    n, positions, values = controls

    def add_controlled(t: int, qs: list[int], c: Any) -> None:
        add(t, qs[n:], c)
        qsim.control_last_gate([qs[p] for p in positions], values, c)

    return add_controlled


class _PointResolver(cirq.ParamResolver):
    """A sweep point's resolver that evaluates each constant subexpression once per process.

    cirq evaluates a formula's constant parts with sympy's ``subs`` on every
    call (the ``1/pi`` of ``rx(2*b)``'s exponent: ~0.4 ms a gate, more than
    qsim's whole simulation of a 12-qubit point); their value never changes,
    so caching it leaves cirq's resolution, and the samples, exactly as they were.
    """

    _CONSTANTS: dict[sympy.Basic, Any] = {}

    def value_of(self, value: Any, recursive: bool = True) -> Any:
        if isinstance(value, sympy.Basic) and not isinstance(value, sympy.Symbol):
            hit = self._CONSTANTS.get(value)
            if hit is not None:
                return hit
            if not value.free_symbols:
                if len(self._CONSTANTS) >= 4096:
                    self._CONSTANTS.clear()
                hit = self._CONSTANTS[value] = super().value_of(value, recursive)
                return hit
        return super().value_of(value, recursive)


def _bind(entry: Entry, resolver: cirq.ParamResolver) -> Callable[[int, list[int], Any], None]:
    """The adder of a parameterised entry at one sweep point (``resolver``: a :class:`_PointResolver`)."""
    resolved = _entry(cirq.resolve_parameters(entry[2], resolver))
    if resolved is None or resolved[1] == "sym":
        raise ValueError(f"gate {entry[2]!r} at {resolver.param_dict} is not a numeric qsim gate")
    return _adder(resolved)


def build(compact: CompactCircuit, table: GateTable, resolver: cirq.ParamResolver | None = None) -> Any:
    """The ``qsim.Circuit`` qsimcirq translates the circuit into (``resolver`` binds its parameters).

    Built once per distinct circuit of ``table`` (qsim only reads it); a
    parameterised one once per point, its unresolved gates bound here.
    """
    if compact.parameterized:
        resolver = _PointResolver(resolver.param_dict if resolver is not None else {})
        adders = table.adders()
        bound = {i: (table.entries[i][0], _bind(table.entries[i], resolver))
                 for i in compact.gates.tolist() if adders[i][1] is None}
        return _build(compact, {**adders, **bound})
    key = (compact.num_qubits, compact.ops.tobytes())
    circuit = table.built.get(key)
    if circuit is None:
        circuit = _build(compact, table.adders())
        with table.lock:
            if table.built_ints >= table.BUILT_MAX_INTS:
                table.built.clear()
                table.built_ints = 0
            table.built[key] = circuit
            table.built_ints += len(compact.ops)
    return circuit


def _build(compact: CompactCircuit, adders: dict[int, tuple[int, Callable[[int, list[int], Any], None] | None]]) -> Any:
    circuit = qc.qsim.Circuit()
    circuit.num_qubits = compact.num_qubits
    values = compact.ops.tolist()
    p, end = 0, len(values)
    while p < end:
        arity, add = adders[values[p]]
        q = p + 2
        add(values[p + 1], values[q : q + arity], circuit)  # type: ignore[misc]
        p = q + arity
    return circuit


def records(raw: Any, compact: CompactCircuit) -> dict[str, np.ndarray]:
    """int8 records (repetitions, instances, width) per key from ``qsim_sample_final``'s shots."""
    shots = np.asarray(raw, dtype=np.uint64)[:, None, None]
    return {key: ((shots >> shifts) & _ONE).astype(np.int8) ^ invert for key, shifts, invert in compact.measurements}


_ONE = np.uint64(1)


def sample(
    module: Any,
    options: dict[str, Any],
    compact: CompactCircuit,
    table: GateTable,
    repetitions: int,
    seed: int,
    resolver: cirq.ParamResolver | None = None,
) -> dict[str, np.ndarray]:
    """``QSimSimulator(seed).run(circuit, repetitions)``'s records, from the compact form.

    qsimcirq's own path for a noiseless circuit measured at the end: one
    ``qsim_sample_final`` call on ``module`` with ``options`` (a
    ``QSimSimulator``'s, see ``backends._qsim_settings``) and the prescribed
    seed serves every repetition.
    """
    t0 = time.perf_counter()
    circuit = build(compact, table, resolver)
    t1 = time.perf_counter()
    raw = module.qsim_sample_final({**options, "c": circuit, "s": seed}, repetitions)
    t2 = time.perf_counter()
    out = records(raw, compact)
    tally(decode=t1 - t0, qsim=t2 - t1, pack=time.perf_counter() - t2)
    return out


def sample_circuit(
    module: Any, options: dict[str, Any], circuit: cirq.AbstractCircuit, repetitions: int, seed: int
) -> dict[str, np.ndarray] | None:
    """:func:`sample` of a (resolved) cirq circuit, encoded here; None where it has no compact form.

    A worker that got the circuit as a cirq object takes this path (``metadata["path"] == "cirq"``):
    the circuit is a fresh object per chunk, so it is not cached.
    """
    begin_batch()
    with _REGISTRY_LOCK:
        with stage("encode"):
            compact = _encode_cached(circuit, cache=False)
        if compact is None:
            return None
        table = GateTable._of([compact])
    return sample(module, options, compact, table, repetitions, seed)
