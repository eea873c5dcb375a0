"""The Nanny of qdask's local workers, whose close cannot hang.

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
import logging

from distributed import Nanny
from distributed.core import Status
from distributed.utils import wait_for

logger = logging.getLogger(__name__)

#: Seconds a closing Nanny waits for its killed worker process to be reaped
#: before it closes without it (the SIGKILL has been sent; the kernel finishes it).
REAP_TIMEOUT = 30.0


class QuantumNanny(Nanny):
    """``Nanny`` whose close always finishes (see the module's docstring)."""

    async def kill(self, timeout: float = 5, reason: str = "nanny-kill") -> None:
        """Stop the worker process as Dask does; on a close, wait longer for the killed process to go."""
        try:
            await super().kill(timeout=timeout, reason=reason)
        except asyncio.TimeoutError:
            process = self.process
            if self.status != Status.closing or process is None:
                raise  # a restart: Dask reports it timed out and the Nanny stays usable
            try:
                await wait_for(process.stopped.wait(), REAP_TIMEOUT)
            except asyncio.TimeoutError:
                logger.warning(
                    "Worker process %s was sent SIGKILL and is not reaped after %.0f s more; "
                    "its Nanny %s closes without it",
                    process.pid, REAP_TIMEOUT, self.name,
                )
