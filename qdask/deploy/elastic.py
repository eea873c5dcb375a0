"""Elastic scaling: Dask's ``Adaptive``, sized by queued quantum work.

:class:`ElasticAdaptive` subclasses :class:`distributed.deploy.adaptive.Adaptive`
and is installed with the cluster manager's own ``adapt(Adaptive=...)``, so
Dask's loop, ``wait_count`` and ``scale``/``scale_down`` calls stay as they
are. It changes four decisions:

* **target** -- the nodes that drain the cost model's estimated seconds of
  unfinished circuit tasks within ``target_duration`` (asked of the qdask
  scheduler plugin, :mod:`qdask.scheduler.elastic`), not Dask's task-count
  based ``Scheduler.adaptive_target``; clamped to ``[min_nodes, max_nodes]``;
* **step** -- each action multiplies (or divides) the node count by
  ``scale_factor`` at most, and changes it by one node at least: 1 -> 2 -> 4
  with factor 2, and back 4 -> 2 -> 1;
* **cooldown** -- no action within ``cooldown_period`` of the last one in the
  same direction;
* **scale down** -- only idle quantum workers leave, through Dask's
  ``retire_workers``, which first copies the results they hold to the workers
  that stay: nothing is lost or recomputed.

Each action is recorded as a ``scale_up``/``scale_down`` event (time, node
counts before and after, reason) in the scheduler plugin's event store, where
metrics, Prometheus and the dashboard read it.

It works with any ``SpecCluster``-based manager: the embedded ``LocalCluster``
of :class:`~qdask.deploy.cluster.QuantumCluster` and dask-jobqueue's
``SLURMCluster`` alike (see ``docs/elastic.md``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from inspect import isawaitable
from typing import TYPE_CHECKING, Any

from distributed.deploy.adaptive import Adaptive

from qdask.config import ElasticConfig

if TYPE_CHECKING:
    from distributed.deploy.spec import SpecCluster

logger = logging.getLogger(__name__)


def next_size(current: int, desired: int, scale_factor: float) -> int:
    """The node count one scaling step takes ``current`` to on the way to ``desired``.

    A step changes the count by at most ``scale_factor`` either way (and by
    at least one node), and never passes ``desired``.

    Examples
    --------
    >>> [next_size(n, 8, 2.0) for n in (0, 1, 2, 4)]
    [1, 2, 4, 8]
    >>> [next_size(n, 1, 2.0) for n in (4, 3, 2, 1)]
    [2, 2, 1, 1]
    """
    # The epsilons keep float products such as 3 * 1.1 from rounding the wrong way.
    if desired > current:
        return min(desired, max(current + 1, math.floor(current * scale_factor + 1e-9)))
    if desired < current:
        return max(desired, min(current - 1, math.ceil(current / scale_factor - 1e-9)))
    return current


@dataclass(frozen=True)
class ScalingEvent:
    """One scaling action, as recorded on the scheduler.

    Attributes
    ----------
    time : float
        Wall-clock time (seconds since the epoch, scheduler's clock).
    kind : {"scale_up", "scale_down"}
    from_nodes, to_nodes : int or None
        Nodes planned before and after (None for an event recorded by other code).
    reason : str or None
        The queued work and target that asked for it.

    Examples
    --------
    >>> e = ScalingEvent.from_event({"time": 1.0, "kind": "scale_up", "cause": "queue",
    ...                              "info": {"from_nodes": 1, "to_nodes": 2}})
    >>> e.kind, e.from_nodes, e.to_nodes
    ('scale_up', 1, 2)
    """

    time: float
    kind: str
    from_nodes: int | None
    to_nodes: int | None
    reason: str | None

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> ScalingEvent:
        """From a recorded :class:`qdask.monitoring.events.Event` (as ``to_dict()``).

        Examples
        --------
        >>> ScalingEvent.from_event({"time": 1.0, "kind": "scale_down"}).to_nodes is None
        True
        """
        info = event.get("info") or {}
        return cls(
            time=event["time"],
            kind=event["kind"],
            from_nodes=info.get("from_nodes"),
            to_nodes=info.get("to_nodes"),
            reason=event.get("cause"),
        )


class ElasticAdaptive(Adaptive):
    """Dask's ``Adaptive`` with qdask's target, step, cooldown and safe scale-down.

    Not built directly: ``cluster.adapt(Adaptive=ElasticAdaptive, config=...)``
    (which :func:`enable` does) builds it.

    Parameters
    ----------
    cluster : distributed.deploy.Cluster
        A cluster manager with ``scale``/``scale_down`` (``SpecCluster``-based).
    config : ElasticConfig
        Bounds, scale factor, cooldown and target duration.
    **kwargs
        Passed on to :class:`~distributed.deploy.adaptive.Adaptive`
        (``interval``, ``wait_count``, ``minimum``, ``maximum``, ``target_duration``).
    """

    # Adaptive types it as the base Cluster, which has no scale_down.
    cluster: SpecCluster

    def __init__(self, cluster: Any, *, config: ElasticConfig, **kwargs: Any) -> None:
        self.config = config
        # { "up" | "down": time.monotonic() of the last action that way }
        self._last_action: dict[str, float] = {}
        self._reason = ""
        super().__init__(cluster, **kwargs)

    async def target(self) -> int:
        """Nodes that drain the queued circuit work within ``target_duration``."""
        info = await self.scheduler.qdask_elastic_target(target_duration=self.target_duration)
        cfg = self.config
        self._reason = (
            f"{info['work']:.1f} s of queued circuit work in {info['tasks']} task(s) wants {info['desired']} node(s) "
            f"({info['slots_per_node']:g} slot(s) each, target {self.target_duration:g} s; "
            f"bounds {cfg.min_nodes}-{cfg.max_nodes}, factor {cfg.scale_factor:g})"
        )
        return int(info["desired"])

    async def recommendations(self, target: int) -> dict[str, Any]:
        current = len(self.plan)
        step = next_size(current, target, self.config.scale_factor)
        if step != current:
            last = self._last_action.get("up" if step > current else "down")
            if last is not None and time.monotonic() - last < self.config.cooldown_period:
                return {"status": "same"}
        return await super().recommendations(step)

    async def workers_to_close(self, target: int) -> list[Any]:
        """Idle quantum workers only (Dask's choice may pick busy ones and rerun their tasks)."""
        return await self.scheduler.qdask_elastic_idle(target=target)

    # AdaptiveCore's abstract methods have the two parameters' types swapped
    # (scale_up(workers: Iterable), scale_down(n: int)); Adaptive, the base
    # that runs, calls scale_up(n) and scale_down(workers) as here.
    async def scale_up(self, n: int) -> None:  # type: ignore[override]
        old = len(self.plan)
        await super().scale_up(n)
        await self._acted("up", old, len(self.plan))

    async def scale_down(self, workers: Iterable[Any]) -> None:  # type: ignore[override]
        workers = list(workers)
        old = len(self.plan)
        # Re-checked on the scheduler: a worker that got a task since the last
        # interval stays. One that never arrived holds nothing and is dropped
        # from the plan, as Dask does.
        answer = await self.scheduler.qdask_elastic_retire(names=workers)
        leave = {str(name) for name in answer["retired"] + answer["absent"]}
        gone = [w for w in workers if str(w) in leave]
        if not gone:
            return
        # Recorded once the scheduler let them go, not after the manager reaped
        # the processes (seconds later).
        await self._acted("down", old, old - len(gone))
        f = self.cluster.scale_down(gone)
        if isawaitable(f):
            await f

    async def _acted(self, direction: str, old: int, new: int) -> None:
        # The event carries the action's own time (not the record's arrival),
        # read together with the cooldown's clock.
        self._last_action[direction], when = time.monotonic(), time.time()
        if new != old:
            logger.info("Elastic scaling %s: %d -> %d nodes: %s", direction, old, new, self._reason)
            await self.scheduler.qdask_elastic_record(
                kind=f"scale_{direction}", old=old, new=new, reason=self._reason, when=when
            )


class ElasticScaling:
    """Handle returned by ``QuantumCluster.enable_elastic_scaling`` (and :func:`enable`).

    Attributes
    ----------
    config : ElasticConfig
        The policy in force.
    adaptive : ElasticAdaptive
        The Dask ``Adaptive`` object running it.

    Examples
    --------
    >>> es = qc.enable_elastic_scaling(ElasticConfig(min_nodes=1, max_nodes=8))  # doctest: +SKIP
    >>> [(e.from_nodes, e.to_nodes) for e in es.events()]  # doctest: +SKIP
    [(1, 2), (2, 4), (4, 8), (8, 4), (4, 2), (2, 1)]
    >>> es.stop()  # doctest: +SKIP
    """

    def __init__(self, cluster: Any, adaptive: ElasticAdaptive, config: ElasticConfig) -> None:
        self._cluster = cluster
        self.adaptive = adaptive
        self.config = config

    @property
    def running(self) -> bool:
        """Whether the adaptive loop runs (it starts on the cluster's event loop)."""
        return self.adaptive.state in ("starting", "running")

    def events(self, since: float = 0.0) -> list[ScalingEvent]:
        """Scaling events recorded on the scheduler at or after wall-clock time ``since``.

        Examples
        --------
        >>> t0 = time.time()  # doctest: +SKIP
        >>> [e.kind for e in es.events(since=t0)]  # doctest: +SKIP
        ['scale_up', 'scale_down']
        """
        rows = self._cluster.sync(self._cluster.scheduler_comm.qdask_elastic_events, since=since)
        return [ScalingEvent.from_event(r) for r in rows]

    def stop(self) -> None:
        """Stop scaling; the workers present stay.

        Examples
        --------
        >>> es.stop()  # doctest: +SKIP
        >>> es.running  # doctest: +SKIP
        False
        """
        self.adaptive.stop(reason="ElasticScaling.stop()")

    def __repr__(self) -> str:
        cfg = self.config
        state = "running" if self.running else "stopped"
        return (
            f"<ElasticScaling {state} nodes {cfg.min_nodes}-{cfg.max_nodes} "
            f"factor {cfg.scale_factor:g} cooldown {cfg.cooldown_period:g}s>"
        )


def enable(cluster: Any, config: ElasticConfig | None = None, **adaptive_kwargs: Any) -> ElasticScaling:
    """Turn on elastic scaling of a Dask cluster manager whose scheduler runs qdask.

    Calling it again reconfigures (Dask's ``adapt`` replaces the running
    ``Adaptive``).

    Parameters
    ----------
    cluster : distributed.deploy.Cluster
        A ``SpecCluster``-based manager (``LocalCluster``, dask-jobqueue's
        ``SLURMCluster``, ...) whose scheduler has the qdask plugin.
    config : ElasticConfig, optional
        Defaults from ``qdask.elastic.*``.
    **adaptive_kwargs
        Passed on to Dask's ``Adaptive``: ``interval`` (default
        ``distributed.adaptive.interval``, 1 s), ``wait_count`` (intervals a
        worker must look idle before it leaves, default 3).

    Returns
    -------
    ElasticScaling

    Examples
    --------
    >>> from dask_jobqueue import SLURMCluster  # doctest: +SKIP
    >>> cluster = SLURMCluster(cores=8, memory="32GB", scheduler_options={"preload": ["qdask.plugins.scheduler"]},
    ...                        worker_extra_args=["--preload", "qdask.plugins.worker"])  # doctest: +SKIP
    >>> es = enable(cluster, ElasticConfig(min_nodes=1, max_nodes=16, cooldown_period="60s"))  # doctest: +SKIP
    """
    cfg = config if config is not None else ElasticConfig()
    if not isinstance(cfg, ElasticConfig):
        raise TypeError(f"config={cfg!r} is not an ElasticConfig. Fix: ElasticConfig(min_nodes=1, max_nodes=4).")
    if not all(callable(getattr(cluster, name, None)) for name in ("adapt", "scale", "scale_down")):
        raise TypeError(
            f"{type(cluster).__name__} cannot be scaled: elastic scaling needs a Dask cluster manager with "
            "adapt/scale/scale_down (a SpecCluster such as LocalCluster or dask-jobqueue's SLURMCluster). "
            "Fix: pass the manager, e.g. qc.enable_elastic_scaling(config, cluster=slurm_cluster)."
        )
    if "group" in (getattr(cluster, "new_spec", None) or {}):
        # SpecCluster.scale_down removes whole jobs: retiring one idle worker
        # would kill its busy job-mates and rerun their tasks.
        raise ValueError(
            f"{type(cluster).__name__} starts several worker processes per job, which elastic scaling cannot "
            "retire one by one without losing work. Fix: one worker process per job with several threads, "
            "e.g. SLURMCluster(cores=8, processes=1, ...)."
        )
    try:
        cluster.sync(cluster.scheduler_comm.qdask_elastic_target, target_duration=cfg.target_duration)
    except Exception as e:
        if "qdask_elastic_target" not in str(e):
            raise
        raise RuntimeError(
            f"the scheduler at {cluster.scheduler_address} has no qdask plugin, so it cannot size by quantum "
            "work. Fix: start it with the preload (scheduler_options={'preload': ['qdask.plugins.scheduler']}) "
            "or use qdask.QuantumCluster."
        ) from e
    adaptive = cluster.adapt(
        Adaptive=ElasticAdaptive,
        minimum=cfg.min_nodes,
        maximum=cfg.max_nodes,
        target_duration=cfg.target_duration,
        config=cfg,
        **adaptive_kwargs,
    )
    return ElasticScaling(cluster, adaptive, cfg)
