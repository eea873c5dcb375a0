"""Errors raised before any circuit is sent to a worker.

Each names the circuit (its index in the caller's batch), the problem, the
limit and the fix. All are ``ValueError`` subclasses. Checking here matters:
qsim segfaults on a circuit too wide for memory, which would kill a worker.
"""

from __future__ import annotations

import cmath
import numbers
from typing import Any, cast

import cirq
import numpy as np

from qdask.quantum.analysis import CircuitMemo


class CircuitError(ValueError):
    """A circuit (or its request) cannot run as asked.

    Attributes
    ----------
    index : int
        Position of the circuit in the caller's batch.
    problem, limit, fix : str
        What is wrong, the limit it breaks, and what to do.
    """

    def __init__(self, index: int, problem: str, limit: str, fix: str) -> None:
        self.index, self.problem, self.limit, self.fix = index, problem, limit, fix
        super().__init__(f"circuit {index}: {problem} (limit: {limit}). Fix: {fix}")


class CircuitTooWideError(CircuitError):
    """The state vector does not fit in any worker's memory."""


class UnresolvedParametersError(CircuitError):
    """Symbols without values."""


class InvalidRepetitionsError(CircuitError):
    """Repetitions negative (or, as :class:`RepetitionsTypeError`, not an integer)."""


class RepetitionsTypeError(InvalidRepetitionsError, TypeError):
    """Repetitions not an integer: a ``TypeError``, as cirq and qsimcirq raise for it."""


class NotACircuitError(TypeError):
    """A program that is not a ``cirq.AbstractCircuit``.

    Attributes
    ----------
    index : int
        Position of the program in the caller's list.
    """

    def __init__(self, index: int, program: Any) -> None:
        self.index = index
        shown = repr(program)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        super().__init__(
            f"program {index}: expected a cirq.AbstractCircuit, got {type(program).__name__} {shown}. "
            "Fix: pass cirq.Circuit(...) objects (a list of them for run_batch)"
        )


class NonFiniteParameterError(CircuitError, ZeroDivisionError):
    """A gate parameter or matrix entry (given, or from the resolver) is NaN or infinite.

    A ``ValueError``, as ``cirq.Simulator`` raises for NaN ("probabilities
    contain NaN"), and a ``ZeroDivisionError``, as it raises for an infinite
    resolved parameter. qsim would silently return wrong samples.
    """


class ShotsTooLargeError(CircuitError):
    """The repetitions asked for give a result larger than the client may assemble."""


class UnpicklableCircuitError(CircuitError, TypeError):
    """A circuit (a gate of it) cannot be sent to a worker: a ``TypeError``, as pickle raises."""


class NoMeasurementsError(CircuitError):
    """Sampling a circuit that measures nothing."""


class UnsupportedGateError(CircuitError):
    """Operations no backend can simulate."""


class BackendMismatchError(CircuitError):
    """The explicitly requested backend cannot run this circuit."""


class NoQuantumWorkersError(RuntimeError):
    """The cluster has no worker that runs circuits."""


def check_repetitions(index: int, repetitions: Any) -> int:
    """``repetitions`` as an int.

    :class:`RepetitionsTypeError` for a non-integer, :class:`InvalidRepetitionsError` below 0.
    """
    if not isinstance(repetitions, numbers.Integral) or isinstance(repetitions, bool):
        raise RepetitionsTypeError(
            index,
            f"repetitions={repetitions!r} ({type(repetitions).__name__}) is not an integer",
            "an int >= 0",
            f"pass repetitions={_as_int_hint(repetitions)} (an int)",
        )
    if repetitions < 0:
        raise InvalidRepetitionsError(
            index,
            f"repetitions={repetitions!r}: Number of repetitions cannot be negative. Was {repetitions}",
            "an int >= 0",
            "pass repetitions=1000 (an int)",
        )
    return int(repetitions)


def _as_int_hint(value: Any) -> str:
    try:
        return str(int(float(value)))
    except (TypeError, ValueError, OverflowError):
        return "1000"


def check_program(index: int, program: Any) -> None:
    """:class:`NotACircuitError` unless ``program`` is a circuit (a string would fail later, obscurely)."""
    if not isinstance(program, cirq.AbstractCircuit):
        raise NotACircuitError(index, program)


def _nonfinite(value: Any) -> bool:
    """A number, or an array of them, with a NaN or infinite entry."""
    if isinstance(value, (bool, int, numbers.Integral)) or value is None:
        return False
    if isinstance(value, numbers.Number):
        try:
            # Number declares no conversion; those that have none raise TypeError here.
            return not cmath.isfinite(complex(cast(Any, value)))
        except (TypeError, ValueError, OverflowError):
            return False
    if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        return not bool(np.isfinite(value).all())
    return False


#: { id(gate): (gate, name of its non-finite field or None) }: batches reuse gate objects.
_GATE_CHECKED: dict[int, tuple[Any, str | None]] = {}
_GATE_CHECKED_MAX = 4096


def _gate_nonfinite(gate: Any) -> str | None:
    """The name of a field of ``gate`` (an exponent, angle, matrix) that is NaN or infinite, else None.

    Reads the gate's own numeric fields (what qsim receives), not its unitary:
    computing unitaries would cost ~30 us a gate on the client.
    """
    hit = _GATE_CHECKED.get(id(gate))
    if hit is not None and hit[0] is gate:
        return hit[1]
    found = None
    for name, value in getattr(gate, "__dict__", {}).items():
        if _nonfinite(value):
            found = name.strip("_")
            break
    if len(_GATE_CHECKED) >= _GATE_CHECKED_MAX:
        _GATE_CHECKED.clear()
    _GATE_CHECKED[id(gate)] = (gate, found)
    return found


def _nonfinite_value(value: Any) -> bool:
    # Resolver values may be sympy numbers (sympy.nan, sympy.oo) as well as floats.
    if isinstance(value, (str, bool)):
        return False
    try:
        return not cmath.isfinite(complex(value))
    except (TypeError, ValueError, OverflowError):
        return False


#: Circuits whose gates were all found finite (checked again only once changed).
_FINITE = CircuitMemo()


def check_finite(
    index: int, circuit: cirq.AbstractCircuit, resolver: cirq.ParamResolver, *, gates: bool = True
) -> None:
    """:class:`NonFiniteParameterError` for a NaN/inf resolver value or gate parameter of ``circuit``.

    ``gates=False`` checks the resolver only (the circuit's gates were
    checked with an earlier resolver of the same sweep).
    """
    for key, value in resolver.param_dict.items():
        if _nonfinite_value(value):
            raise NonFiniteParameterError(
                index,
                f"the resolver gives {key}={value!r}",
                "finite parameter values",
                "pass finite values (check the sweep or the optimizer that produced them)",
            )
    if not gates or _FINITE.get(circuit):
        return
    for op in circuit.all_operations():
        gate, field = op.gate, None
        while gate is not None and field is None:
            field = _gate_nonfinite(gate)
            if field is None:
                gate = getattr(gate, "sub_gate", None)  # a controlled gate's own fields, then its target's
        if field is not None:
            raise NonFiniteParameterError(
                index,
                f"operation {op!r} has a NaN or infinite {field}",
                "finite gate parameters and matrix entries",
                "build the gate from finite numbers",
            )
    _FINITE.put(circuit, True)


def find_unpicklable(indices_circuits: Any, error: BaseException) -> UnpicklableCircuitError:
    """The error naming the first circuit (and its operation) that cannot be pickled.

    ``indices_circuits``: ``(circuit index, circuit)`` pairs of what failed to
    pickle together; ``error`` is what pickling all of them raised.
    """
    import cloudpickle

    for index, circuit in indices_circuits:
        try:
            cloudpickle.dumps(circuit)
            continue
        except Exception:
            pass
        for op in circuit.all_operations():
            try:
                cloudpickle.dumps(op)
            except Exception as e:
                return UnpicklableCircuitError(
                    index,
                    f"operation {op!r} ({type(op.gate or op).__name__}) cannot be pickled to reach a worker: "
                    f"{type(e).__name__}: {e}",
                    "gates that pickle (plain data fields)",
                    "keep locks, open files, clients or other process-bound objects out of the gate "
                    "(hold them elsewhere, or define __getstate__/__reduce__ for the gate)",
                )
        return UnpicklableCircuitError(
            index,
            f"the circuit cannot be pickled: {error}",
            "circuits that pickle",
            "make the circuit's objects picklable",
        )
    return UnpicklableCircuitError(
        -1,
        f"the batch cannot be pickled: {type(error).__name__}: {error}",
        "picklable work",
        "check the batch's options",
    )
