"""Client side of failure events: the handlers of ``QuantumCluster.on_node_failure`` and friends.

One :class:`FailureHandlers` per client holds the client's only subscription
to the ``qdask-failures`` topic (Dask keeps one handler per topic and client)
and fans each event out, as a typed event, to every handler of its kind.
Handlers run one at a time, in order, in a dedicated thread: they may block
and may call the (synchronous) client, which the client's event loop, where
Dask delivers events, must not do. A handler that raises is logged and the
others still run. The first registration returns once the scheduler delivers
events to this client, so no failure after it goes unseen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from qdask.fault.events import EVENT_TYPES, TOPIC, FailureEvent, from_message

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)

#: Seconds the first registration waits for the subscription to take effect.
SUBSCRIBE_TIMEOUT = 30.0
#: ``kind`` of the message a client sends itself to learn that its subscription is active.
SYNC = "sync"

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
        self._synced = threading.Event()

    def add(self, kind: str, handler: Handler) -> Handler:
        """Call ``handler(event)`` for every event of ``kind``; returns ``handler`` (usable as a decorator)."""
        if kind not in self._handlers:
            raise ValueError(f"unknown failure kind {kind!r}: allowed {sorted(self._handlers)}.")
        if not callable(handler):
            raise TypeError(f"a failure handler must be callable, got {handler!r}. Fix: pass a function of one event.")
        with self._lock:
            self._handlers[kind].append(handler)
            subscribe = self._executor is None
            if subscribe:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdask-failure-handlers")
                self.client.subscribe_topic(TOPIC, self._receive)
        if subscribe:
            self._wait_subscribed()
        return handler

    def _wait_subscribed(self) -> None:
        # The subscription travels on the client's batched stream, a message
        # logged through the RPC on another comm: repeat it until it comes back.
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
        while not self._synced.is_set() and time.monotonic() < deadline:
            self.client.log_event(TOPIC, {"kind": SYNC, "client": self.client.id})
            self._synced.wait(0.2)
        if not self._synced.is_set():
            logger.warning("no %s event came back within %.0f s; handlers may miss early events",
                           TOPIC, SUBSCRIBE_TIMEOUT)

    def remove(self, kind: str, handler: Callable[[Any], Any]) -> None:
        """Stop calling ``handler`` for ``kind``."""
        with self._lock:
            self._handlers[kind].remove(handler)

    def _receive(self, event: tuple[float, dict[str, Any]]) -> None:
        # On the client's event loop: only hand the event over.
        _, msg = event
        if msg.get("kind") == SYNC:
            if msg.get("client") == self.client.id:
                self._synced.set()
            return
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
