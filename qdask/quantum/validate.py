"""Errors raised before any circuit is sent to a worker.

Each names the circuit (its index in the caller's batch), the problem, the
limit and the fix. All are ``ValueError`` subclasses. Checking here matters:
qsim segfaults on a circuit too wide for memory, which would kill a worker.
"""

from __future__ import annotations

import numbers
from typing import Any


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
    """Repetitions negative or not an integer."""


class NoMeasurementsError(CircuitError):
    """Sampling a circuit that measures nothing."""


class UnsupportedGateError(CircuitError):
    """Operations no backend can simulate."""


class BackendMismatchError(CircuitError):
    """The explicitly requested backend cannot run this circuit."""


class NoQuantumWorkersError(RuntimeError):
    """The cluster has no worker that runs circuits."""


def check_repetitions(index: int, repetitions: Any) -> int:
    """``repetitions`` as an int, or :class:`InvalidRepetitionsError`."""
    ok = isinstance(repetitions, numbers.Integral) and not isinstance(repetitions, bool)
    if not ok or repetitions < 0:
        raise InvalidRepetitionsError(
            index,
            f"repetitions={repetitions!r} is not a non-negative integer",
            "an int >= 0",
            "pass repetitions=1000 (an int)",
        )
    return int(repetitions)
