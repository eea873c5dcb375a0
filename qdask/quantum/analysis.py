"""Circuit analysis: the facts placement, backend choice and the cost model use."""

from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import cirq


@dataclass(frozen=True)
class CircuitInfo:
    """What qdask knows about a circuit before running it.

    Attributes
    ----------
    num_qubits : int
        Width (qubits the circuit acts on).
    depth : int
        Moments.
    num_ops : int
        Operations (measurements included).
    two_qubit_ops : int
        Operations on two or more qubits.
    gate_counts : dict
        Operations per gate type name.
    is_clifford : bool
        Every operation has a stabilizer effect (stim can sample it).
    has_noise : bool
        Some operation is a channel (mixture or Kraus), not a unitary.
    has_measurements : bool
        The circuit measures something.
    terminal_measurements : bool
        All measurements are at the end (one simulation serves all repetitions).
    measurement_keys : tuple of str
        Measurement keys in order of appearance.
    unresolved : tuple of str
        Names of symbols without a value.
    unsupported_gates : tuple of str
        Operations that are neither unitary, channel nor measurement.
    classical_control : bool
        Some operation is classically controlled (``with_classical_controls``).
    max_dimension : int
        Largest dimension of a qid (above 2: qudits, ``cirq.LineQid``).
    confusion_maps : bool
        Some measurement has a confusion map.
    widest_op : int
        Qubits of the widest operation (qsim takes gates on up to 6).
    controlled_targets : int
        Most target qubits of a controlled operation (qsim takes up to 4).
    """

    num_qubits: int
    depth: int
    num_ops: int
    two_qubit_ops: int
    gate_counts: dict[str, int] = field(default_factory=dict)
    is_clifford: bool = False
    has_noise: bool = False
    has_measurements: bool = False
    terminal_measurements: bool = True
    measurement_keys: tuple[str, ...] = ()
    unresolved: tuple[str, ...] = ()
    unsupported_gates: tuple[str, ...] = ()
    classical_control: bool = False
    max_dimension: int = 2
    confusion_maps: bool = False
    widest_op: int = 0
    controlled_targets: int = 0

    @property
    def per_repetition(self) -> bool:
        """Each repetition needs its own simulation (noise or mid-circuit measurement)."""
        return self.has_noise or not self.terminal_measurements

    @property
    def qudits(self) -> bool:
        """Some qid is not a qubit (qsim simulates qubits only)."""
        return self.max_dimension != 2

    @property
    def state_qubits(self) -> float:
        """log2 of the state vector's length: ``num_qubits``, more for qudits."""
        return self.num_qubits * math.log2(self.max_dimension) if self.qudits else float(self.num_qubits)


@dataclass(frozen=True)
class _GateFacts:
    """What :func:`analyze` needs of one gate (the same for every plain operation of it)."""

    gate: cirq.Gate  # held, so that the id keying it stays this gate's while it is cached
    name: str
    kind: str
    clifford: bool
    wide: bool  # acts on two or more qubits

    @classmethod
    def of(cls, op: cirq.GateOperation) -> _GateFacts:
        return cls(op.gate, type(op.gate).__name__, *_classify(op), len(op.qubits) >= 2)


#: Facts of the gates seen lately, by id and by value: circuits reuse a few gate
#: objects, and cirq's protocol checks (and a gate's value hash) cost far more
#: than a dict lookup. A 2,000-circuit batch is analysed on the client before
#: any of it can reach a worker.
_BY_ID: dict[int, _GateFacts] = {}
_BY_VALUE: dict[cirq.Gate, _GateFacts] = {}
_CACHE_MAX = 4096


def _classify(op: cirq.Operation) -> tuple[str, bool]:
    """("measure" | "param" | "classical" | "unitary" | "noise" | "unsupported", is Clifford)."""
    if cirq.is_measurement(op):
        return "measure", True
    if isinstance(op, cirq.ClassicallyControlledOperation):
        return "classical", False
    if cirq.is_parameterized(op):
        return "param", False
    if cirq.has_unitary(op):
        return "unitary", bool(cirq.has_stabilizer_effect(op))
    if cirq.has_mixture(op) or cirq.has_kraus(op):
        return "noise", False
    return "unsupported", False


def _controlled_targets(op: cirq.Operation) -> int:
    """Target qubits of a controlled operation (0 for any other)."""
    if isinstance(op, cirq.ControlledOperation):
        return len(op.sub_operation.qubits)
    if isinstance(op.gate, cirq.ControlledGate):
        return op.gate.sub_gate.num_qubits()
    return 0


def _remember(cache: dict, key: object, facts: _GateFacts) -> _GateFacts:
    # Bounded: a caller that builds a new gate per operation must not grow it forever.
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = facts
    return facts


def _facts(op: cirq.Operation) -> tuple[str, str, bool, bool]:
    """(gate type name, kind, is Clifford, acts on two or more qubits) of ``op``."""
    gate = op.gate
    # Only plain gate operations (Pauli ones included) behave exactly as
    # their gate; tagged, controlled or classically controlled ones do not.
    if gate is None or not isinstance(op, cirq.GateOperation):
        name = type(gate).__name__ if gate is not None else type(op).__name__
        return (name, *_classify(op), len(op.qubits) >= 2)
    facts = _BY_ID.get(id(gate))
    if facts is None:
        try:
            facts = _BY_VALUE.get(gate)
        except TypeError:  # unhashable gate: cached by id only
            facts = _GateFacts.of(op)
        if facts is None:
            facts = _remember(_BY_VALUE, gate, _GateFacts.of(op))
        _remember(_BY_ID, id(gate), facts if facts.gate is gate else replace(facts, gate=gate))
    return facts.name, facts.kind, facts.clifford, facts.wide


class CircuitMemo:
    """Values computed from circuits, each kept while the circuit's moments are the same objects.

    Moments are immutable, so a circuit whose moments are all the objects
    they were is the circuit it was (a ``cirq.Circuit`` can be changed in
    place, which replaces moments). Callers that run the same circuits again
    (benchmarks, optimizers resubmitting a batch) skip the work; at most
    ``size`` circuits are kept, each held with its value, the least recently
    used dropped first (a batch of new circuits does not evict one in use).
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        # { id(circuit): (circuit, its moments, value) }
        self.entries: dict[int, tuple[cirq.AbstractCircuit, tuple[cirq.Moment, ...], Any]] = {}

    def get(self, circuit: cirq.AbstractCircuit, default: Any = None) -> Any:
        """The value stored for ``circuit`` as it is now, else ``default``."""
        key = id(circuit)
        hit = self.entries.pop(key, None)
        if hit is None or hit[0] is not circuit:
            return default
        moments = circuit.moments
        if len(moments) != len(hit[1]) or not all(map(operator.is_, moments, hit[1])):
            return default
        self.entries[key] = hit  # now the most recently used
        return hit[2]

    def put(self, circuit: cirq.AbstractCircuit, value: Any) -> None:
        while len(self.entries) >= self.size:
            del self.entries[next(iter(self.entries))]
        self.entries[id(circuit)] = (circuit, tuple(circuit.moments), value)


_ANALYSED = CircuitMemo()


def analyze(circuit: cirq.AbstractCircuit) -> CircuitInfo:
    """Analyse ``circuit`` in one pass over its operations (once while it is unchanged, :class:`CircuitMemo`).

    The pass runs from the last moment back, so a measurement is terminal
    when no later moment acts on its qubits (cirq's
    ``are_all_measurements_terminal``, without a second pass), and qubits
    are gathered as each moment's own set rather than one by one.

    Examples
    --------
    >>> q = cirq.LineQubit.range(2)
    >>> info = analyze(cirq.Circuit(cirq.H(q[0]), cirq.CNOT(*q), cirq.measure(*q, key="m")))
    >>> info.num_qubits, info.is_clifford, info.measurement_keys
    (2, True, ('m',))
    """
    info = _ANALYSED.get(circuit)
    if info is None:
        info = _analyze(circuit)
        _ANALYSED.put(circuit, info)
    return info


def _analyze(circuit: cirq.AbstractCircuit) -> CircuitInfo:
    counts: Counter[str] = Counter()
    two_qubit = 0
    clifford = True
    noise = False
    parameterized = False
    terminal = True
    unsupported: set[str] = set()
    classical = confusion = False
    widest = targets = 0
    later: set[cirq.Qid] = set()  # qubits that moments after the current one act on
    measurements: list[list[cirq.Operation]] = []  # per moment, last moment first
    moments = circuit.moments
    for moment in reversed(moments):
        here = []
        for op in moment:
            name, kind, is_clifford, wide = _facts(op)
            counts[name] += 1
            two_qubit += wide
            if wide and kind != "measure":  # qsim measures any number of qubits
                widest = max(widest, len(op.qubits))
                targets = max(targets, _controlled_targets(op))
            clifford = clifford and is_clifford
            if kind == "measure":
                terminal = terminal and later.isdisjoint(op.qubits)
                here.append(op)
                confusion = confusion or bool(getattr(op.gate, "confusion_map", None))
            elif kind == "param":
                parameterized = True
            elif kind == "noise":
                noise = True
            elif kind == "classical":
                classical = True
            elif kind == "unsupported":
                unsupported.add(name)
        if here:
            measurements.append(here)
        later.update(moment.qubits)
    keys = dict.fromkeys(k for ops in reversed(measurements) for op in ops for k in cirq.measurement_key_names(op))
    return CircuitInfo(
        num_qubits=len(later),
        depth=len(moments),
        num_ops=sum(counts.values()),
        two_qubit_ops=two_qubit,
        gate_counts=dict(counts),
        is_clifford=clifford,
        has_noise=noise,
        has_measurements=bool(keys),
        terminal_measurements=terminal,
        measurement_keys=tuple(keys),
        unresolved=tuple(sorted(cirq.parameter_names(circuit))) if parameterized else (),
        unsupported_gates=tuple(sorted(unsupported)),
        classical_control=classical,
        max_dimension=max((q.dimension for q in later), default=2),
        confusion_maps=confusion,
        widest_op=widest or min(len(later), 1),
        controlled_targets=targets,
    )
