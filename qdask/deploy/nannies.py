"""The Nanny of qdask's local workers: it brings its worker back, and its close cannot hang.

**Self-healing.** Dask's Nanny restarts a worker process that exits while the
Nanny runs, but not one that dies while the Nanny itself is starting, nor
one whose restart fails: a worker that exits during its start (before it
reports to the Nanny) makes ``Nanny.start`` fail and the Nanny close, and one
that exits right after registering, while its Nanny still finishes starting,
is never restarted (the Nanny skips restarts while ``starting``). Either way
a ``SpecCluster`` stays below its planned size for good (issue 24: 1 of 2
workers after a replacement died 0.12 s after registering).
:class:`QuantumNanny` retries a start that failed while it starts, up to
``qdask.worker.restart-attempts`` times in a row with a short backoff, and
watches its worker process every :data:`WATCH_INTERVAL` seconds: a process
gone while nothing restarts it (two checks in a row) is started again, with
the same bound (reset once a worker stayed up :data:`STABLE_AFTER` seconds).
Once it runs, Dask's own restart of an exited process is kept (unbounded, as
in Dask). Every restart logs a warning and publishes an event on the
scheduler's :data:`TOPIC` (``client.get_events("qdask-nanny")``); when the
attempts are spent it logs an error and publishes ``"gave-up"``.

``Nanny.close`` asks the worker process to stop, sends SIGKILL when it has
not exited within 80% of the timeout (Dask's 5 s), and waits what is left
(1 s) for the process to be reaped. A loaded host can take longer than that
to reap a killed worker (its last thread still unmapping a large heap): the
close then raises ``TimeoutError`` and leaves the Nanny ``closing`` for good.
Every later close of it awaits a finish that never comes, and ``SpecCluster``
closes it again on each ``scale`` and on ``close``, which then hang.

:class:`QuantumNanny` gives a killed worker :data:`REAP_TIMEOUT` more seconds
during a close and then lets the close finish either way, so every path that
closes a local worker (``QuantumCluster.close``, elastic scaling, a user's own
``cluster.scale``) ends. dask-cuda's workers keep dask-cuda's own Nanny, which
closes with a longer timeout for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from distributed import Nanny
from distributed.core import Status
from distributed.utils import wait_for
from tornado.ioloop import PeriodicCallback

from qdask import config
from qdask._compat import WorkerProcess

logger = logging.getLogger(__name__)

#: Dask event topic of the restarts (on the scheduler).
TOPIC = "qdask-nanny"
#: Seconds between checks that the worker process is alive.
WATCH_INTERVAL = 1.0
#: Seconds before the n-th retry of a start: ``BACKOFF * n``.
BACKOFF = 0.5
#: A worker that stayed up this long resets the count of restart attempts.
STABLE_AFTER = 30.0

#: Seconds a closing Nanny waits for its killed worker process to be reaped
#: before it closes without it (the SIGKILL has been sent; the kernel finishes it).
REAP_TIMEOUT = 30.0


class QuantumNanny(Nanny):
    """``Nanny`` that restarts a worker dying during or right after its start, and whose close always finishes.

    See the module's docstring.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.restart_attempts = int(config.get("worker.restart-attempts"))
        #: Restarts in a row (reset once a worker stays up STABLE_AFTER seconds).
        self.restarts = 0
        self._healing = False
        self._gone_since: float | None = None
        self._up_since = time.monotonic()
        # One start at a time (see instantiate).
        self._instantiating = asyncio.Lock()
        pc = PeriodicCallback(self._watch, WATCH_INTERVAL * 1000)
        self.periodic_callbacks["qdask-watch"] = pc  # started with the Nanny's own callbacks

    # Dask's Nanny.instantiate closes the Nanny when its WorkerProcess.start
    # raises (the process died before reporting in); its start then returns
    # a failed status instead, which instantiate below retries.
    @property
    def process(self) -> WorkerProcess | None:
        return self._qdask_process

    @process.setter
    def process(self, process: WorkerProcess | None) -> None:
        if process is not None and not hasattr(process.start, "qdask_no_raise"):
            process.start = _failed_not_raised(process)  # type: ignore[method-assign]
        self._qdask_process = process

    def _alive(self) -> bool:
        process = self.process
        if process is None:
            return False
        if process.status == Status.starting:
            return True  # a start in progress (Dask's own restart, or ours)
        return process.status == Status.running and process.is_alive()

    async def instantiate(self) -> Status:
        """Start the worker process; while the Nanny starts, a failed start is retried (bounded).

        Once the Nanny runs, Dask's ``_on_worker_exit`` restarts every process
        that exits, failed starts included; retrying here as well would start
        two processes at once.

        Starts are serialised: when a process dies during a restart, Dask calls
        ``_on_worker_exit`` again before the first restart noticed the death, and
        the second ``WorkerProcess.start`` replaced the queue the first one still
        polled: the first took the new process's "connected" message, dropped it
        (another uid), and the second waited for it for good (its Nanny then
        took a minute to close).
        """
        while True:
            async with self._instantiating:
                status = await super().instantiate()
            if status == Status.running:
                self._up_since = time.monotonic()
            if status == Status.running or self.status not in (Status.init, Status.starting):
                return status
            if not self._may_retry(f"worker process {status.name} while its nanny started"):
                return status
            await asyncio.sleep(BACKOFF * self.restarts)

    async def _on_worker_exit(self, exitcode: int) -> None:
        # Dask restarts the process when the Nanny runs; say so, with the cause.
        if self.status == Status.running:
            logger.warning("Worker process of nanny %s exited (code %s): restarting it", self.address_safe, exitcode)
            self._publish("restart", f"worker process exited with code {exitcode}")
        await super()._on_worker_exit(exitcode)

    def _may_retry(self, why: object) -> bool:
        if time.monotonic() - self._up_since > STABLE_AFTER:
            self.restarts = 0
        if self.restarts >= self.restart_attempts:
            logger.error(
                "Worker of nanny %s failed to start %d times in a row (last: %s); giving up. "
                "Fix: see the worker's log for why it exits; raise qdask.worker.restart-attempts to try longer.",
                self.address_safe, self.restarts, why,
            )  # fmt: skip
            self._publish("gave-up", why)
            return False
        self.restarts += 1
        logger.warning(
            "Worker of nanny %s failed during its start (%s): restart %d of %d",
            self.address_safe, why, self.restarts, self.restart_attempts,
        )  # fmt: skip
        self._publish("restart", why)
        return True

    def _publish(self, action: str, why: object) -> None:
        """An event on the scheduler's :data:`TOPIC` (best effort: the scheduler may be gone)."""
        msg = {"action": action, "nanny": self.address_safe, "name": str(self.name), "attempt": self.restarts,
               "limit": self.restart_attempts, "cause": str(why)}
        try:
            self.log_event(TOPIC, msg)
        except Exception:  # the scheduler may be gone: the log line stays
            logger.debug("could not publish %s", msg, exc_info=True)

    async def _watch(self) -> None:
        """A worker process gone while nothing restarts it (twice in a row: Dask's restart gets a tick) starts again."""
        if self.status != Status.running or self._healing or self._alive():
            self._gone_since = None
            return
        now = time.monotonic()
        if self._gone_since is None:
            self._gone_since = now
            return
        self._healing = True
        try:
            if self._may_retry(f"worker process gone for {now - self._gone_since:.1f} s, not restarted"):
                if (await self.instantiate()) == Status.running:
                    self._up_since = time.monotonic()
        except Exception:
            logger.exception("Restarting the worker of nanny %s failed", self.address_safe)
        finally:
            self._healing = False
            self._gone_since = None

    async def kill(self, timeout: float = 5, reason: str = "nanny-kill") -> None:
        """Stop the worker process as Dask does; on a close, wait longer for the killed process to go."""
        closing = self.status == Status.closing
        try:
            # On a close, bounded: a start in progress that never ends (its process
            # gone without an exit callback) would hold WorkerProcess.kill forever.
            await (wait_for(super().kill(timeout=timeout, reason=reason), timeout + REAP_TIMEOUT) if closing
                   else super().kill(timeout=timeout, reason=reason))
        except TimeoutError:
            process = self.process
            if not closing or process is None:
                raise  # a restart: Dask reports it timed out and the Nanny stays usable
            try:
                await wait_for(process.stopped.wait(), REAP_TIMEOUT)
            except TimeoutError:
                logger.warning(
                    "Worker process %s was sent SIGKILL and is not reaped after %.0f s more; "
                    "its Nanny %s closes without it",
                    process.pid, REAP_TIMEOUT, self.name,
                )
        except Exception:
            if not closing:
                raise
            # A WorkerProcess left half-started by a failed start (its queues released)
            # fails its kill; an exception here would leave the Nanny "closing" for good.
            process = self.process
            pid = process.process.pid if process is not None and process.process is not None else None
            logger.warning("Stopping the worker process %s of nanny %s failed; sending SIGKILL", pid, self.name,
                           exc_info=True)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _failed_not_raised(process: WorkerProcess) -> Any:
    """``process.start`` that returns ``Status.failed`` where it raised."""
    start = process.start

    async def wrapped() -> Status:
        try:
            return await start()
        except Exception as e:
            logger.warning("Worker process failed to start: %s: %s", type(e).__name__, e)
            if process.status == Status.starting:  # raised before Dask marked it: kill() accepts "failed"
                process.status = Status.failed
            return Status.failed

    wrapped.qdask_no_raise = True  # type: ignore[attr-defined]
    return wrapped
