"""Workarounds for qsim holding the GIL through a whole simulation, on a worker.

While one slot simulates, the worker's event loop cannot run: it neither
reports a finished task, serves a fetch of a result, nor reads the
scheduler's messages. :class:`HandOff` and :class:`Inbox` give it turns.
"""

from __future__ import annotations

import select
import threading
import time
from typing import Any

from qdask import _compat, config


class HandOff:
    """Hold a worker's next chunk until an urgent result has been fetched, for at most ``limit`` seconds.

    qsim holds the GIL for a whole simulation, so a worker that starts its next
    chunk at once can neither report a finished task nor serve the client's
    fetch of the result until that simulation ends: 70-150 ms behind 20-qubit
    backlog circuits on 2 cores, against ~10 ms when the next chunk first
    sleeps (GIL released) until the worker has sent data out
    (``benchmarks/balance.py`` scenario d). Armed only after a result above
    normal priority, so batches do not pay it.
    """

    def __init__(self) -> None:
        self.deadline = 0.0
        self.sent = 0

    def arm(self, worker: Any, limit: float) -> None:
        self.deadline = time.monotonic() + limit
        self.sent = worker.transfer_outgoing_count_total

    def wait(self, worker: Any) -> None:
        while time.monotonic() < self.deadline and worker.transfer_outgoing_count_total == self.sent:
            time.sleep(0.001)
        self.deadline = 0.0


#: One per worker process: its slots share the GIL, so any chunk started after
#: an urgent result would hold up the fetch.
_HAND_OFF = HandOff()


class Inbox:
    """Let a worker's event loop take in the scheduler's messages between long circuits.

    qsim holds the GIL through each simulation, so the worker's event loop
    runs only between circuits, and it needs several turns to read and handle
    one message: each turn ends by waiting on its selector (GIL released),
    the chunk starts its next circuit, and the next turn waits for all of it.
    Behind 20-qubit backlog circuits the scheduler's ``compute-task`` for an
    urgent circuit reached the worker's state machine 40-80 ms after it was
    sent (``benchmarks/balance.py`` scenario d); steal requests wait alike.
    So after a circuit that held the GIL for ``qdask.quantum.inbox-after``
    (20 ms) or more, the chunk waits (GIL released) for one turn of the loop,
    and for more, up to :data:`TURNS`, while the scheduler's stream has data
    or the loop has callbacks due; at most :data:`LIMIT` seconds a turn. A
    turn costs well under a millisecond (1% of such a circuit at most);
    shorter circuits let the loop in often enough.
    """

    #: Turns of the event loop at most: read the frames, resume the reading
    #: coroutine, handle the message.
    TURNS = 4
    LIMIT = 0.05
    #: After our callback ran, the loop finishes its turn without contention for the GIL.
    SETTLE = 0.0002

    def __init__(self, worker: Any, held: float) -> None:
        self.loop, self.held = worker.loop, held
        comm = getattr(getattr(worker, "batched_stream", None), "comm", None)
        # TCP and TLS comms read a socket; other comms (inproc, UCX) are not polled.
        self.socket = getattr(getattr(comm, "stream", None), "socket", None)
        self.due = _compat.asyncio_ready_queue(self.loop)
        self.last = time.perf_counter()

    @classmethod
    def of(cls, worker: Any) -> Inbox | None:
        """The inbox of a chunk on ``worker``; None outside a worker or with ``inbox-after: null``."""
        after = config.get("quantum.inbox-after")
        return cls(worker, config.parse_duration(after)) if worker is not None and after is not None else None

    def after_circuit(self) -> None:
        now = time.perf_counter()
        held, self.last = now - self.last, now
        if held < self.held:
            return
        for _ in range(self.TURNS):
            if not self._turn() or not self._pending():
                break
        self.last = time.perf_counter()

    def _turn(self) -> bool:
        """Wait for the loop to run what is due now and one callback of ours; False if it did not in time."""
        done = threading.Event()
        self.loop.add_callback(done.set)
        if not done.wait(self.LIMIT):
            return False
        time.sleep(self.SETTLE)
        return True

    def _pending(self) -> bool:
        if len(self.due) > 0:
            return True
        try:
            return self.socket is not None and bool(select.select([self.socket], [], [], 0)[0])
        except (OSError, ValueError):  # closed while the worker shuts down
            self.socket = None
            return False


def _current_worker() -> Any:
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:  # called outside a worker (tests, serial runs)
        return None
