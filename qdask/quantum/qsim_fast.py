"""qsimcirq's sampling of many small circuits, without its per-circuit Python overhead.

On circuits of a few qubits qsim's C++ simulation takes microseconds; the
milliseconds go to qsimcirq's Python: scans of every operation for noise and
mid-circuit measurements, a simulator and random state per call, a
``cirq.decompose`` and a parameter extraction for every operation, and the
shots unpacked bit by bit. A worker runs the same qsimcirq path -- the same
qsim circuit, the same seed, the same C++ call -- without those repeats:

* what the client's analysis settled (noiseless, measured only at the end:
  one simulation serves every repetition) is not checked again;
* each gate object is translated once per worker (a chunk shares its gate
  objects: pickling keeps identity), then only its qubits change;
* operations that are not native gates (controlled, needing decomposition)
  take qsimcirq's own per-operation translation.

The samples are bit-identical to ``QSimSimulator(seed=...).run``
(``tests/test_quantum_units.py``). Written against qsimcirq 0.22 (pinned).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cirq
import numpy as np
from qsimcirq import qsim_circuit as qc

#: { id(gate): (gate, add or None) }; the value holds the gate, so its id is
#: never reused by another object while the entry exists.
_GATES: dict[int, tuple[cirq.Gate, Callable[[int, list[int], Any], None] | None]] = {}
_GATES_MAX = 4096


def _adder(gate: cirq.Gate) -> Callable[[int, list[int], Any], None] | None:
    """``add(time, qubits, circuit)`` as qsimcirq's ``add_op_to_circuit`` would add ``gate``; None if not native."""
    if isinstance(gate, cirq.ControlledGate):
        return None
    kind = qc._cirq_gate_kind(gate)
    if kind is None:
        return None
    qsim = qc.qsim
    if kind in (qsim.kTwoQubitDiagonalGate, qsim.kThreeQubitDiagonalGate):
        angles = gate._diag_angles_radians
        return lambda time, qubits, circuit: qsim.add_diagonal_gate(time, qubits, angles, circuit)
    if kind == qsim.kMatrixGate:
        matrix = [v for x in list(cirq.unitary(gate).flat) for v in (x.real, x.imag)]
        return lambda time, qubits, circuit: qsim.add_matrix_gate(time, qubits, matrix, circuit)
    params = {}
    for name, value in vars(gate).items():
        key = name.strip("_")
        if key not in qc.GATE_PARAMS:
            continue
        if not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError("Parameters must be numeric.")
        params[key] = value
    return lambda time, qubits, circuit: qsim.add_gate(kind, time, qubits, params, circuit)


def _cached_adder(op: cirq.Operation) -> Callable[[int, list[int], Any], None] | None:
    # qsimcirq keeps any operation whose gate is native as it is (Pauli and
    # tagged operations included) and adds it by its gate and qubits alone;
    # controlled operations have their own path.
    gate = op.gate
    if gate is None or isinstance(op, cirq.ControlledOperation):
        return None
    entry = _GATES.get(id(gate))
    if entry is None:
        if isinstance(gate, cirq.MatrixGate):  # not kept: up to 64 KB each, and rarely shared
            return _adder(gate)
        if len(_GATES) >= _GATES_MAX:
            _GATES.clear()
        entry = _GATES[id(gate)] = (gate, _adder(gate))
    return entry[1]


def _to_matrix(op: cirq.Operation) -> Any:
    # qsimcirq's fallback decomposer for gates it cannot translate.
    matrix = cirq.unitary(op.gate, None)
    return NotImplemented if matrix is None else cirq.MatrixGate(matrix).on(*op.qubits)


def translate(program: qc.QSimCircuit) -> Any:
    """``program.translate_cirq_to_qsim(cirq.QubitOrder.DEFAULT)[0]``, translating each gate object once."""
    circuit = qc.qsim.Circuit()
    ordered = cirq.QubitOrder.DEFAULT.order_for(program.all_qubits())
    circuit.num_qubits = len(ordered)
    index = {q: i for i, q in enumerate(reversed(ordered))}  # qsim numbers qubits in reverse
    time_offset = 0
    for moment in program:
        steps = []
        for op in moment:
            add = _cached_adder(op)
            if add is not None:  # a native gate: cirq.decompose would keep it as it is
                steps.append([(op, add)])
            else:
                steps.append([(sub, None) for sub in cirq.decompose(op, fallback_decomposer=_to_matrix, keep=qc._has_cirq_gate_kind)])
        length = max((len(s) for s in steps), default=0)
        for gi in range(length):  # gates must be added in time order
            for step in steps:
                if gi < len(step):
                    op, add = step[gi]
                    if add is not None:
                        add(time_offset + gi, [index[q] for q in op.qubits], circuit)
                    else:
                        qc.add_op_to_circuit(op, time_offset + gi, index, circuit)
        time_offset += length
    return circuit


def sample_final_state(module: Any, options: dict[str, Any], circuit: cirq.AbstractCircuit, repetitions: int, seed: int) -> dict[str, np.ndarray]:
    """``QSimSimulator(seed).run(circuit, repetitions)`` records of a noiseless circuit measured only at the end.

    qsimcirq's own path for the case (``_sample_measure_results``):
    measurements replaced by identities, the prescribed seed, one
    ``qsim_sample_final`` call on ``module`` with ``options`` (from a
    ``QSimSimulator`` configured as the backend's). Returns int8 arrays
    (repetitions, instances, qubits) per key.
    """
    program = qc.QSimCircuit(circuit)  # also refuses confusion maps, as qsimcirq does
    qubits = cirq.QubitOrder.DEFAULT.order_for(program.all_qubits())
    column = {q: i for i, q in enumerate(qubits)}
    measurements: dict[str, list[cirq.Operation]] = {}
    measured_moments = set()
    for i, op, _ in program.findall_operations_with_gate_type(cirq.MeasurementGate):
        measurements.setdefault(cirq.measurement_key_name(op), []).append(op)
        measured_moments.add(i)
    for key, ops in measurements.items():
        if len({len(op.qubits) for op in ops}) > 1:
            raise ValueError(f"repeated key {key!r} with different numbers of qubits: {[len(op.qubits) for op in ops]}")
    for i in measured_moments:  # qsimcirq rebuilds every moment; the others come out equal
        program.moments[i] = cirq.Moment(
            [cirq.IdentityGate(1).on(q) for q in op.qubits] if isinstance(op.gate, cirq.MeasurementGate) else op
            for op in program.moments[i]
        )
    raw = module.qsim_sample_final({**options, "c": translate(program), "s": seed}, repetitions)
    # Bit n-1-j of a shot is the j-th qubit of the order.
    shifts = np.arange(len(qubits) - 1, -1, -1, dtype=np.uint64)
    bits = ((np.asarray(raw, dtype=np.uint64)[:, None] >> shifts) & np.uint64(1)).astype(np.int8)
    return {
        key: np.stack(
            [bits[:, [column[q] for q in op.qubits]] ^ np.asarray(op.gate.full_invert_mask(), dtype=np.int8) for op in ops],
            axis=1,
        )
        for key, ops in measurements.items()
    }
