"""Client side of failure events: the handlers of ``QuantumCluster.on_node_failure`` and friends.

One :class:`FailureHandlers` per client holds the client's only subscription
to the ``qdask-failures`` topic (Dask keeps one handler per topic and client)
and fans each event out, as a typed event, to every handler of its kind.
Handlers run one at a time, in order, in a dedicated thread: they may block
and may call the (synchronous) client, which the client's event loop, where
Dask delivers events, must not do. A handler that raises is logged and the
others still run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from qdask.fault.events import EVENT_TYPES, TOPIC, FailureEvent, from_message

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

Handler = TypeVar("Handler", bound=Callable[[Any], Any])


class FailureHandlers:
    """Failure and recovery handlers of one client.

    Parameters
    ----------
    client : distributed.Client

    Examples
    --------
    >>> handlers = FailureHandlers(client)  # doctest: +SKIP
    >>> handlers.add("node_failure", lambda e: print(e.worker, e.cause))  # doctest: +SKIP
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        # { kind: handlers in registration order }
        self._handlers: dict[str, list[Callable[[Any], Any]]] = {kind: [] for kind in EVENT_TYPES}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def add(self, kind: str, handler: Handler) -> Handler:
        """Call ``handler(event)`` for every event of ``kind``; returns ``handler`` (usable as a decorator)."""
        if kind not in self._handlers:
            raise ValueError(f"unknown failure kind {kind!r}: allowed {sorted(self._handlers)}.")
        if not callable(handler):
            raise TypeError(f"a failure handler must be callable, got {handler!r}. Fix: pass a function of one event.")
        with self._lock:
            self._handlers[kind].append(handler)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdask-failure-handlers")
                self.client.subscribe_topic(TOPIC, self._receive)
        return handler

    def remove(self, kind: str, handler: Callable[[Any], Any]) -> None:
        """Stop calling ``handler`` for ``kind``."""
        with self._lock:
            self._handlers[kind].remove(handler)

    def _receive(self, event: tuple[float, dict[str, Any]]) -> None:
        # On the client's event loop: only hand the event over.
        _, msg = event
        try:
            typed = from_message(msg)
        except Exception:
            logger.warning("ignoring a malformed %s event: %r", TOPIC, msg, exc_info=True)
            return
        with self._lock:
            if self._executor is not None:
                self._executor.submit(self._dispatch, typed)

    def _dispatch(self, event: FailureEvent) -> None:
        with self._lock:
            handlers = list(self._handlers[event.kind])
        for handler in handlers:
            try:
                handler(event)
            except Exception:
                logger.exception("qdask failure handler %r raised on %r", handler, event)

    def close(self) -> None:
        """Unsubscribe and wait for the handlers already running."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return
        if self.client.status == "running":
            self.client.unsubscribe_topic(TOPIC)
        executor.shutdown(wait=True)
