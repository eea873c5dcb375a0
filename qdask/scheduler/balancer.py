"""Dynamic load balancing on Dask's own work stealing.

Dask's ``WorkStealing`` extension (key ``"stealing"``) moves queued tasks to
*idle* workers, levelled by prefix-average durations; qdask already feeds it
circuit cost estimates (see :mod:`qdask.scheduler.placement`). The balancer
configures it from :class:`~qdask.config.LoadBalancerConfig` and adds one
rule Dask lacks: a worker holding more than ``threshold`` of the cluster's
queued work sheds tasks to the least-loaded capable worker even when no worker
is idle yet. Moves go through ``WorkStealing.move_task_request``, Dask's
steal handshake, so a task already executing is never moved, and only to
workers that satisfy its restrictions.

``algorithm="static"`` (or ``enable_migration=False``) stops work stealing:
tasks stay where they were first placed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tornado.ioloop import PeriodicCallback

from qdask import _compat
from qdask.config import LoadBalancerConfig

if TYPE_CHECKING:
    from distributed.scheduler import Scheduler, TaskState, WorkerState

logger = logging.getLogger(__name__)

#: Key of the balancer's periodic callback in ``Scheduler.periodic_callbacks``.
CALLBACK = "qdask-balancer"


class LoadBalancer:
    """Owned by the ``qdask`` scheduler plugin; driven by ``QuantumCluster.start_load_balancer``.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    record : callable
        ``record(kind, **fields)`` for migration events (the plugin's event store).
    """

    def __init__(self, scheduler: Scheduler, record: Any) -> None:
        self.scheduler = scheduler
        self.record = record
        self.config: LoadBalancerConfig | None = None
        self.migrations = 0

    @property
    def stealing(self) -> Any:
        return self.scheduler.extensions.get("stealing")

    async def configure(self, cfg: LoadBalancerConfig) -> dict[str, Any]:
        """Apply ``cfg`` (idempotent; call again to reconfigure)."""
        await self.stop()
        self.config = cfg
        stealing = self.stealing
        if cfg.algorithm == "static" or not cfg.enable_migration:
            if stealing is not None:
                await stealing.stop()
            return self.status()
        if stealing is not None:
            await stealing.stop()
            _compat.set_stealing_interval(stealing, cfg.check_interval)
            await stealing.start()
        pc = PeriodicCallback(self.check, cfg.check_interval * 1000)
        self.scheduler.periodic_callbacks[CALLBACK] = pc
        pc.start()
        return self.status()

    async def stop(self) -> dict[str, Any]:
        """Stop qdask's rule and restore Dask's default stealing."""
        pc = self.scheduler.periodic_callbacks.pop(CALLBACK, None)
        if pc is not None:
            pc.stop()
        stealing = self.stealing
        if stealing is not None and "stealing" not in self.scheduler.periodic_callbacks:
            await stealing.start()
        self.config = None
        return self.status()

    def status(self) -> dict[str, Any]:
        stealing = self.stealing
        return {
            "config": self.config.to_dict() if self.config else None,
            "migrations": self.migrations,
            "dask_steals": int(stealing.count) if stealing is not None else 0,
            "stealing_active": "stealing" in self.scheduler.periodic_callbacks,
        }

    def worker_running(self) -> None:
        """Balance at once when a worker starts running (it joined, or was unpaused).

        The worker then gets queued work now rather than at the next interval
        (up to ``check_interval`` later): qdask's rule, then one pass of Dask's
        own stealing, which hands idle workers the rest of their share.
        """
        if self.config is not None and CALLBACK in self.scheduler.periodic_callbacks:
            self.scheduler.loop.add_callback(self._rebalance)

    def _rebalance(self) -> None:
        self.check()
        if self.stealing is not None:
            self.stealing.balance()

    def check(self) -> None:
        """One balancing pass: overloaded workers shed queued tasks to capable ones."""
        try:
            self._check()
        except Exception:  # never stop the loop (Adaptive's habit)
            logger.warning("qdask load balancer pass failed", exc_info=True)

    def _check(self) -> None:
        s, cfg, stealing = self.scheduler, self.config, self.stealing
        if cfg is None or stealing is None:
            return
        workers = [ws for ws in s.workers.values() if ws.status.name == "running"]
        # Projected occupancy: a requested move only lands when the victim confirms.
        occ = {ws: ws.occupancy for ws in workers}
        total = sum(occ.values())
        if len(workers) < 2 or total <= 0:
            return
        for victim in sorted(workers, key=lambda w: -occ[w]):
            if occ[victim] <= cfg.threshold * total:
                break
            # Lowest priority first: the tasks that would run last on the victim.
            for ts in sorted(victim.processing, key=lambda t: t.priority or (), reverse=True):
                thief = self._thief(ts, victim, workers, occ)
                if thief is None:
                    continue
                duration = _compat.prefix_duration(s, ts.prefix)
                if occ[thief] + duration >= occ[victim] - duration:
                    break  # moving more would only shift the imbalance
                if stealing.move_task_request(ts, victim, thief) == "in-flight":
                    continue
                occ[victim] -= duration
                occ[thief] += duration
                self.migrations += 1
                self.record("migration", worker=victim.address, thief=thief.address, keys=[str(ts.key)])
                if occ[victim] <= cfg.threshold * total:
                    break

    def _thief(
        self, ts: TaskState, victim: WorkerState, workers: list[WorkerState], occ: dict[WorkerState, float]
    ) -> WorkerState | None:
        valid = self.scheduler.valid_workers(ts)
        candidates = [w for w in workers if w is not victim and (valid is None or w in valid)]
        return min(candidates, key=lambda w: occ[w], default=None)


class LoadBalancing:
    """Client-side handle returned by ``QuantumCluster.start_load_balancer``.

    Attributes
    ----------
    config : LoadBalancerConfig
        The configuration the scheduler runs with.

    Examples
    --------
    >>> balancer = qc.start_load_balancer(LoadBalancerConfig(check_interval="500ms"))  # doctest: +SKIP
    >>> balancer.status()["migrations"]  # doctest: +SKIP
    0
    >>> balancer.stop()  # doctest: +SKIP
    """

    def __init__(self, client: Any, config: LoadBalancerConfig) -> None:
        self._client = client
        self.config = config

    def status(self) -> dict[str, Any]:
        """Migrations by qdask's rule, Dask's own steals, and whether stealing runs.

        Returns
        -------
        dict
            ``config`` (the running configuration as a dict, or None), ``migrations``
            (tasks moved by qdask's rule), ``dask_steals`` and ``stealing_active``.

        Examples
        --------
        >>> balancer.status()  # doctest: +SKIP
        {'config': {...}, 'migrations': 3, 'dask_steals': 0, 'stealing_active': True}
        """
        return self._client.sync(self._client.scheduler.qdask_balancer_status)

    def stop(self) -> dict[str, Any]:
        """Stop qdask's rule; Dask's default work stealing resumes.

        Returns the last :meth:`status`.

        Examples
        --------
        >>> balancer.stop()["migrations"]  # doctest: +SKIP
        3
        """
        return self._client.sync(self._client.scheduler.qdask_balancer_stop)


def start(client: Any, config: LoadBalancerConfig | None) -> LoadBalancing:
    """Configure the scheduler's balancer (the call behind ``start_load_balancer``)."""
    cfg = config if config is not None else LoadBalancerConfig()
    client.sync(client.scheduler.qdask_balancer_configure, config=cfg.to_dict())
    return LoadBalancing(client, cfg)
