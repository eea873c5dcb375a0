"""Circuit analysis: the facts placement, backend choice and the cost model use."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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

    @property
    def per_repetition(self) -> bool:
        """Each repetition needs its own simulation (noise or mid-circuit measurement)."""
        return self.has_noise or not self.terminal_measurements


#: { gate: (kind, clifford) } -- circuits reuse a few gate objects, and cirq's
#: protocol checks cost far more than a dict lookup (2,000-circuit batches).
_GATE_KIND: dict[cirq.Gate, tuple[str, bool]] = {}
_GATE_KIND_MAX = 4096


def _classify(op: cirq.Operation) -> tuple[str, bool]:
    """("measure" | "param" | "unitary" | "noise" | "unsupported", is Clifford)."""
    if cirq.is_measurement(op):
        return "measure", True
    if cirq.is_parameterized(op):
        return "param", False
    if cirq.has_unitary(op):
        return "unitary", bool(cirq.has_stabilizer_effect(op))
    if cirq.has_mixture(op) or cirq.has_kraus(op):
        return "noise", False
    return "unsupported", False


def _kind(op: cirq.Operation) -> tuple[str, bool]:
    gate = op.gate
    # Only plain gate operations (Pauli ones included) behave exactly as
    # their gate; tagged, controlled or classically controlled ones do not.
    if gate is None or not isinstance(op, cirq.GateOperation):
        return _classify(op)
    try:
        return _GATE_KIND[gate]
    except KeyError:
        kind = _classify(op)
    except TypeError:  # unhashable gate
        return _classify(op)
    if len(_GATE_KIND) < _GATE_KIND_MAX:
        _GATE_KIND[gate] = kind
    return kind


def analyze(circuit: cirq.AbstractCircuit) -> CircuitInfo:
    """Analyse ``circuit`` in one pass over its operations.

    Examples
    --------
    >>> q = cirq.LineQubit.range(2)
    >>> info = analyze(cirq.Circuit(cirq.H(q[0]), cirq.CNOT(*q), cirq.measure(*q, key="m")))
    >>> info.num_qubits, info.is_clifford, info.measurement_keys
    (2, True, ('m',))
    """
    counts: Counter[str] = Counter()
    two_qubit = 0
    clifford = True
    noise = False
    parameterized = False
    unsupported: set[str] = set()
    keys: list[str] = []
    last_moment: dict[cirq.Qid, int] = {}  # { qubit: last moment acting on it }
    measured: list[tuple[int, tuple[cirq.Qid, ...]]] = []  # (moment, qubits) of measurements
    for moment_index, op in ((i, op) for i, m in enumerate(circuit) for op in m):
        for q in op.qubits:
            last_moment[q] = moment_index
        gate = op.gate
        name = type(gate).__name__ if gate is not None else type(op).__name__
        counts[name] += 1
        if len(op.qubits) >= 2:
            two_qubit += 1
        kind, is_clifford = _kind(op)
        clifford = clifford and is_clifford
        if kind == "measure":
            measured.append((moment_index, op.qubits))
            for k in cirq.measurement_key_names(op):
                if k not in keys:
                    keys.append(k)
        elif kind == "param":
            parameterized = True
        elif kind == "noise":
            noise = True
        elif kind == "unsupported":
            unsupported.add(name)
    return CircuitInfo(
        num_qubits=len(last_moment),
        depth=len(circuit),
        num_ops=sum(counts.values()),
        two_qubit_ops=two_qubit,
        gate_counts=dict(counts),
        is_clifford=clifford,
        has_noise=noise,
        has_measurements=bool(keys),
        # cirq's are_all_measurements_terminal, without its second pass over the circuit
        terminal_measurements=all(max(last_moment[q] for q in qs) == i for i, qs in measured),
        measurement_keys=tuple(keys),
        unresolved=tuple(sorted(cirq.parameter_names(circuit))) if parameterized else (),
        unsupported_gates=tuple(sorted(unsupported)),
    )
