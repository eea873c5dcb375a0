"""Errors of circuits that failed on the workers: :class:`BatchError` and :class:`TaskFailure`.

A circuit that raises on a worker does not fail its chunk: the worker returns
a :class:`TaskFailure` in its place (the exception itself, with a note naming
the circuit and the backend), so the chunk's other circuits come back. The
client then raises one :class:`BatchError` for the batch, carrying every
finished result and every error, and also an instance of the error's own type
when all failures share one: ``except ValueError`` catches what qsimcirq or
cirq would raise for the same call.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

#: { original exception type: BatchError subclass of it }
_TYPED: dict[type, type] = {}
_LOCK = threading.Lock()


class TaskFailure:
    """A circuit's exception, in place of its result (picklable by construction).

    Parameters
    ----------
    error : BaseException
        What the backend raised, with a note naming the circuit and backend.
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    @classmethod
    def of(cls, error: BaseException, note: str) -> TaskFailure:
        """``error`` with ``note`` added, or a ``RuntimeError`` describing it where it does not survive pickling.

        The failure travels to the client inside the chunk's result: an
        exception that pickles but does not unpickle (a custom ``__init__``
        with other arguments) would fail the whole chunk there.
        """
        error.add_note(note)
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:
            fallback = RuntimeError(f"{type(error).__module__}.{type(error).__qualname__}: {error}")
            fallback.add_note(note)
            fallback.add_note("(the original exception cannot be pickled, so its type could not be kept)")
            return cls(fallback)
        return cls(error)

    def __getstate__(self) -> BaseException:
        return self.error

    def __setstate__(self, state: BaseException) -> None:
        self.error = state

    def __repr__(self) -> str:
        return f"<TaskFailure {type(self.error).__name__}: {self.error}>"


class BatchError(Exception):
    """Some circuits of a batch failed on the workers; the others finished.

    Raised once per call, after every circuit finished or failed. Where all
    failures share one exception type ``T`` (e.g. the ``ValueError`` a gate's
    ``_unitary_`` raised), the error raised is also an instance of ``T``, so
    ``except T`` code written for qsimcirq or cirq keeps working.

    Attributes
    ----------
    results : dict
        ``{circuit index in the batch: its results}`` of every circuit that
        finished (for ``Sampler``/``Simulator`` batches: lists of
        :class:`qdask.quantum.task.TaskResult`).
    errors : dict
        ``{circuit index: exception}`` of every circuit that failed; each has
        a note (``__notes__``) naming the circuit, backend and worker.

    Examples
    --------
    >>> try:  # doctest: +SKIP
    ...     sampler.run_batch(circuits, repetitions=100)
    ... except qdask.BatchError as e:
    ...     good = e.results  # index -> results; e.errors: index -> exception
    """

    def __init__(self, message: str, results: dict[int, Any], errors: dict[int, BaseException]) -> None:
        super().__init__(message)
        self.results = results
        self.errors = errors

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (str(self), self.results, self.errors)

    @classmethod
    def of(cls, results: dict[int, Any], errors: dict[int, BaseException], fix: str) -> BatchError:
        """The error for ``errors``: a subclass of their type where they share one.

        ``fix`` ends the message: what the caller can do.

        Examples
        --------
        >>> err = BatchError.of({0: "ok"}, {1: ValueError("bad gate")}, "drop circuit 1")
        >>> isinstance(err, ValueError), sorted(err.results), sorted(err.errors)
        (True, [0], [1])
        """
        first = min(errors)
        shown = "; ".join(
            f"circuit {i}: {type(e).__name__}: {e}" for i, e in sorted(errors.items())[:5]
        ) + ("; ..." if len(errors) > 5 else "")
        message = (
            f"{len(errors)} of {len(errors) + len(results)} circuit(s) failed on the workers ({shown}). "
            f"The {len(results)} that finished are in .results, the errors in .errors "
            f"(the first, circuit {first}, is the cause of this one). Fix: {fix}"
        )
        err = _typed(errors)(message, results, errors)
        err.__cause__ = errors[first]
        return err


def _typed(errors: dict[int, BaseException]) -> type:
    kinds = {type(e) for e in errors.values()}
    if len(kinds) != 1:
        return BatchError
    base = kinds.pop()
    if issubclass(base, BatchError) or not issubclass(base, Exception):
        return BatchError
    with _LOCK:
        typed = _TYPED.get(base)
        if typed is None:
            try:
                typed = type("BatchError", (BatchError, base), {"__module__": __name__,
                                                                "__qualname__": f"BatchError[{base.__name__}]"})
                typed("probe", {}, {})  # a base whose __init__ or layout does not allow it: plain BatchError
            except Exception:
                typed = BatchError
            _TYPED[base] = typed
    return typed


def _rebuild(message: str, results: dict[int, Any], errors: dict[int, BaseException]) -> BatchError:
    err = _typed(errors)(message, results, errors)
    return err


#: What a caller can do about circuits that failed on the workers.
FIX = (
    "correct or remove the failed circuit(s) (see each error's notes); "
    "with fault tolerance on (QuantumCluster.enable_fault_tolerance) the finished results are checkpointed, "
    "so rerunning the batch with the same seed computes only the failed circuits"
)


def raise_failures(results: Any) -> None:
    """Raise :class:`BatchError` if any of ``results`` (TaskResults) is a :class:`TaskFailure`.

    For work assembled on a worker (``Sampler.submit``), where there is no
    client-side collect to gather the failures.
    """
    errors = {r.index: r.payload.error for r in results if isinstance(r.payload, TaskFailure)}
    if errors:
        done: dict[int, list[Any]] = {}
        for r in results:
            if r.index not in errors:
                done.setdefault(r.index, []).append(r)
        raise BatchError.of(done, errors, FIX)
