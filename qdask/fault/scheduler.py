"""Scheduler side of fault tolerance: detection, redistribution, recovery timing, replicas.

:class:`FaultManager` is owned by the qdask scheduler plugin
(``scheduler.extensions["qdask"].fault``); the plugin forwards it the events
and graph updates below. Detection and redistribution always run; the
settings of :class:`~qdask.config.FaultToleranceConfig` apply once
``QuantumCluster.enable_fault_tolerance`` sent them (``qdask_fault_enable``).

Detection (each published on the Dask event topic ``qdask-failures``, and
counted in the plugin's :class:`~qdask.monitoring.events.EventStore`):

* **node failure** -- the ``remove-worker`` event of a leave the worker did not
  announce (``expected=False``): ``"heartbeat-lost"`` when the scheduler's
  ``worker-ttl`` check gave up on it (its ``worker-ttl-timed-out`` event, then
  a restart through its Nanny or a removal), ``"died"`` otherwise (comm closed,
  the Nanny reported the process gone). Retirements are graceful: no event.
* **network error** -- a worker asks the scheduler where keys are (the
  ``request-refresh-who-has`` stream message of its find-missing loop) while
  the scheduler still lists live holders: its transfers from them failed
  (``"transfer-failed"``); or a task erred with a connection error
  (``"comm-error"``). Both stream handlers are wrapped, so nothing runs per task.
* **quantum error** -- a circuit task reports its backend's exception (the
  ``qdask-quantum-errors`` event of :func:`qdask.fault.worker.report_quantum_error`).

Failure counts: Dask counts a worker's death against every task assigned to
it (``TaskState.suspicious``), including those only waiting there for a slot
(restricted tasks are all assigned at once), and fails the task with
``KilledWorker`` in the same step, before any plugin hears of the death; so
under churn innocent tasks would reach ``allowed-failures``. Chunks submitted
with fault tolerance (their ``qdask_fault`` annotation) therefore carry a
credit: until a chunk reports its start (``qdask_fault_started``, before its
first circuit) its ``suspicious`` is one less than its real failures, so the
death of a worker it only waited on brings it to its real count, and Dask's
check is exact for both kinds; the credit is renewed after each death.

Redistribution (Dask's levers, before ``remove_worker`` transitions the tasks):
the dead worker's tasks get the front of their priority class (the
graph-generation element of ``TaskState.priority`` set to -1, so they run
before any newer work of the same user priority); in manual mode they get an
extra resource restriction no worker has, so they wait in ``no-worker`` until
``qdask_fault_resubmit``. Chunks of several circuits that were running there
are marked for isolation (their retry raises
:class:`~qdask.fault.events.ChunkIsolatedError`, and the client reruns their
circuits one task each with one failure already counted); those that only
waited there stay whole.

Recovery time: from detection to the moment the lost work computes again on a
live worker -- the tasks that were *running* on the dead worker (by its last
heartbeat) and the finished results lost with it that are still needed; the
tasks merely queued there are reassigned at once and lost nothing. A task
"computes again" at the compute start reported with its result (on the
scheduler's clock); an isolated chunk, when the first of its single-circuit
tasks does. Tracked by :class:`~qdask.fault.recovery.RecoveryTracker`, a transition hook
installed only while a recovery is open (:mod:`qdask.fault.recovery`); replicas of
finished results are kept by the policies of :mod:`qdask.fault.replication`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from dask.utils import parse_timedelta
from distributed.active_memory_manager import ActiveMemoryManagerPolicy, ReduceReplicas
from distributed.core import Status
from tornado.ioloop import PeriodicCallback

from qdask import _compat, config
from qdask.config import FaultToleranceConfig
from qdask.fault.events import (
    ANNOTATION,
    TOPIC,
    FailureEvent,
    NetworkError,
    NodeFailure,
    QuantumError,
    RecoveryEvent,
    RecoveryPlan,
    is_network_error,
)
from qdask.fault.recovery import NAME, RecoveryTracker, _Recovery
from qdask.fault.replication import KeepReplicas, ReplicateResults
from qdask.quantum.annotation import TaskAnnotation, is_circuit_task

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed.scheduler import Scheduler, TaskState, WorkerState

    from qdask.monitoring.events import EventStore

logger = logging.getLogger(__name__)

#: Resource no worker offers: a task restricted to it waits in "no-worker" (manual recovery).
HOLD_RESOURCE = "qdask-held"
#: Graph generation given to recovered work: older than any real generation (>= 0).
RECOVERY_GENERATION = -1
#: Dask's default ``distributed.scheduler.worker-ttl``: left alone, qdask's applies.
DASK_WORKER_TTL = "5 minutes"


class FaultManager:
    """Failure detection, redistribution, recovery timing and the settings of fault tolerance.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    events : qdask.monitoring.events.EventStore
        The qdask plugin's event store; network errors, quantum errors and
        recoveries are recorded there (node failures are recorded by the plugin).

    Attributes
    ----------
    config : FaultToleranceConfig or None
        What ``enable_fault_tolerance`` set; None: defaults (automatic recovery,
        Dask's ``allowed-failures``, one replica, no isolation).
    held : dict
        ``{key: (resource restrictions, loose restrictions)}`` before work was held (manual mode).
    """

    def __init__(self, scheduler: Scheduler, events: EventStore) -> None:
        self.scheduler = scheduler
        self.events = events
        self.config: FaultToleranceConfig | None = None
        self._dask_allowed_failures = scheduler.allowed_failures
        self.held: dict[Key, tuple[dict[str, float] | None, bool]] = {}
        # { id: open recovery } and { key: ids of the recoveries waiting for it }
        self.recoveries: dict[int, _Recovery] = {}
        self.waiting_on: dict[Key, set[int]] = {}
        # { single-circuit task: the isolated chunk (still waited for) it reruns a circuit of }
        self.origin_of: dict[Key, Key] = {}
        self._ids = itertools.count()
        # { worker: keys of fault-tolerant tasks that reported their start there (their credit spent) }
        self._started: dict[str, set[Key]] = {}
        # Workers the worker-ttl check gave up on, until their removal arrives.
        self._timed_out: set[str] = set()
        self.tracker = RecoveryTracker(self)
        # (worker, key) transfer failures already reported: find-missing repeats every heartbeat
        self._reported: set[tuple[str, Key]] = set()
        self._reported_order: deque[tuple[str, Key]] = deque()
        # AMM policies of ours, and Dask's ReduceReplicas they stand in for
        self._amm_policies: list[ActiveMemoryManagerPolicy] = []
        self._replaced: list[ActiveMemoryManagerPolicy] = []
        self._amm_started = False
        self._wrapped: dict[str, Any] = {}
        for op, hook in (("task-erred", self._on_task_erred), ("request-refresh-who-has", self._on_refresh_who_has)):
            self._wrap_stream_handler(op, hook)
        self._set_worker_ttl()

    # -- lifetime ------------------------------------------------------------------
    def handlers(self) -> dict[str, Any]:
        """Scheduler RPC handlers (``client.scheduler.<name>(...)``)."""
        return {
            "qdask_fault_enable": self.enable,
            "qdask_fault_disable": self.disable,
            "qdask_fault_status": self.status,
            "qdask_fault_resubmit": self.resubmit,
            "qdask_fault_started": self.started,
        }

    def close(self) -> None:
        self.disable()
        for op, original in self._wrapped.items():
            self.scheduler.stream_handlers[op] = original
        self._wrapped.clear()
        self._set_tracking(False)

    def _wrap_stream_handler(self, op: str, hook: Any) -> None:
        # Observe a worker message without changing what Dask does with it.
        original = self.scheduler.stream_handlers[op]

        def handler(**msg: Any) -> Any:
            try:
                hook(msg)
            except Exception:
                logger.exception("qdask fault detection failed on %r", op)
            return original(**msg)

        self._wrapped[op] = original
        self.scheduler.stream_handlers[op] = handler

    # -- frozen workers ------------------------------------------------------------
    def _set_worker_ttl(self) -> None:
        """``qdask.scheduler.worker-ttl`` in place of Dask's check, unless the user set Dask's own.

        Dask gives a silent worker 5 minutes (``distributed.scheduler.worker-ttl``)
        and checks once per TTL: a SIGSTOPped worker stalled a batch for as long
        as it was stopped (issue 24). qdask's check runs every quarter TTL.
        """
        s = self.scheduler
        ttl = config.get("scheduler.worker-ttl")
        dask_default = parse_timedelta(DASK_WORKER_TTL)
        if ttl is None or s.worker_ttl is None or s.worker_ttl != dask_default:
            return  # off, or the user's (Dask's setting or the Scheduler's keyword)
        s.worker_ttl = config.parse_duration(ttl)
        old = s.periodic_callbacks.pop(_compat.WORKER_TTL_CALLBACK, None)
        if old is not None:
            old.stop()
        pc = PeriodicCallback(self.check_worker_ttl, 1000 * s.worker_ttl / 4)
        s.periodic_callbacks[_compat.WORKER_TTL_CALLBACK] = pc
        if s.status == Status.running:
            pc.start()  # else with the scheduler's own callbacks

    def ttl_of(self, ws: WorkerState, base: float) -> float:
        """Silence allowed to ``ws``: the TTL, plus 4x the estimate of the longest circuit chunk it runs.

        qsim holds the GIL while it simulates: a worker running one long circuit
        sends no heartbeat until it ends, and is not frozen.
        """
        longest = 0.0
        for ts in ws.executing:
            ann = TaskAnnotation.of(ts)
            longest = max(longest, float(ann.est_seconds or 0.0) if ann is not None else 0.0)
        return base + 4 * longest

    async def check_worker_ttl(self) -> None:
        """Dask's ``Scheduler.check_worker_ttl``, with :meth:`ttl_of` for each worker."""
        s = self.scheduler
        now = time.time()
        base = max(s.worker_ttl or 0.0, 10 * _compat.heartbeat_interval(len(s.workers)))
        frozen = []
        for ws in s.workers.values():
            silent = now - ws.last_seen
            if silent > self.ttl_of(ws, base):
                frozen.append(ws.address)
                logger.warning(
                    "Worker failed to heartbeat for %.0fs; %s: %s", silent,
                    "attempting restart" if ws.nanny else "removing", ws,
                )  # fmt: skip
        if frozen:
            # The event Dask's own check publishes (heartbeat_lost hears it).
            s.log_event("scheduler", {"action": "worker-ttl-timed-out", "workers": list(frozen), "ttl": base})
            await s.restart_workers(frozen, wait_for_workers=False, stimulus_id=f"{_compat.WORKER_TTL_STIMULUS}-{now}")

    # -- settings ------------------------------------------------------------------
    def enable(self, config: dict[str, Any]) -> dict[str, Any]:
        """Apply a :class:`FaultToleranceConfig` (as a dict); idempotent. Returns the applied config."""
        cfg = FaultToleranceConfig(**config)
        self._set_replication(cfg.replication_factor)  # first: it may refuse (no AMM)
        if self.config is not None and self.config.recovery_mode == "manual" and cfg.recovery_mode == "automatic":
            self.resubmit()
        self.config = cfg
        # Dask fails a task when more than allowed-failures workers died running it.
        self.scheduler.allowed_failures = cfg.max_failures - 1
        return cfg.to_dict()

    def disable(self) -> dict[str, Any]:
        """Back to the defaults; held work is released. Returns :meth:`status`."""
        self.config = None
        self.scheduler.allowed_failures = self._dask_allowed_failures
        self._set_replication(1)
        self.resubmit()
        return self.status()

    def status(self) -> dict[str, Any]:
        """Applied config, held keys and open recoveries."""
        return {
            "enabled": self.config is not None,
            "config": self.config.to_dict() if self.config else None,
            "allowed_failures": self.scheduler.allowed_failures,
            "held": sorted(str(k) for k in self.held),
            "open_recoveries": len(self.recoveries),
            "replication_policies": [repr(p) for p in self._amm_policies],
        }

    @property
    def mode(self) -> str:
        return self.config.recovery_mode if self.config else "automatic"

    # -- node failures -------------------------------------------------------------
    def remove_worker(self, msg: dict[str, Any]) -> None:
        """The ``remove-worker`` event: runs before Dask transitions the worker's tasks."""
        s = self.scheduler
        started = self._started.pop(msg["worker"], set())
        if msg.get("expected"):
            # Retired or scaled down: Dask moves its work without counting a failure;
            # the chunks that had started there wait again, with their credit back.
            for key in started & set(msg.get("processing-tasks", ())):
                if (ts := s.tasks.get(key)) is not None:
                    _compat.add_suspicious(ts, -1)
            return
        now = time.time()
        stimulus = str(msg.get("stimulus_id", ""))
        timed_out = msg["worker"] in self._timed_out or stimulus.startswith(_compat.WORKER_TTL_STIMULUS)
        self._timed_out.discard(msg["worker"])
        cause = "heartbeat-lost" if timed_out else "died"
        rescheduled: list[TaskState] = []
        failed: list[str] = []
        for key in msg.get("processing-tasks", ()):
            ts = s.tasks.get(key)
            if ts is None:
                continue
            if ts.state != "processing":  # already erred: it reached max_failures (KilledWorker)
                failed.append(str(key))
                continue
            rescheduled.append(ts)
        interrupted, unreported = self._interrupted(rescheduled, started)
        # Only a chunk that was running can be what killed the worker; those that waited stay whole.
        isolated = [str(ts.key) for ts in interrupted if self._isolate(ts)]
        lost = [ts for key in msg.get("lost-computed-tasks", ()) if (ts := s.tasks.get(key)) is not None]
        affected = rescheduled + lost
        for ts in affected:
            if ts.priority:
                ts.priority = _compat.with_priority(ts.priority, generation=RECOVERY_GENERATION)
        held = [self._hold(ts) for ts in affected] if self.mode == "manual" else []
        for ts in rescheduled:
            if ANNOTATION in (ts.annotations or {}) and ts not in unreported:
                # Dask's +1 made the count exact (see the module docstring); renew the
                # credit for the next assignment. A chunk seen running only by the
                # heartbeat (its report failed) had none left: its +1 is its failure.
                _compat.add_suspicious(ts, -1)
        if interrupted or lost:
            self._open_recovery(msg["worker"], cause, now, interrupted + lost)
        self._publish(
            NodeFailure(
                worker=msg["worker"],
                time=now,
                cause=cause,
                keys=tuple(str(k) for k in msg.get("processing-tasks", ())),
                detail=stimulus,
                recovery=RecoveryPlan(
                    mode=self.mode,
                    rescheduled=tuple(str(ts.key) for ts in rescheduled),
                    interrupted=tuple(str(ts.key) for ts in interrupted),
                    held=tuple(held),
                    lost_results=tuple(str(ts.key) for ts in lost),
                    isolated=tuple(isolated),
                    failed=tuple(failed),
                ),
            ),
            record=False,  # the plugin counts node failures with the registry
        )

    def started(self, key: Key, worker: str) -> None:
        """``qdask_fault_started``: a fault-tolerant chunk task starts computing on ``worker``.

        Spends the task's credit (see the module docstring), once per assignment.
        """
        ts, ws = self.scheduler.tasks.get(key), self.scheduler.workers.get(worker)
        if ts is None or ws is None or ts.processing_on is not ws or ANNOTATION not in (ts.annotations or {}):
            return  # stale: moved, released or its worker removed meanwhile
        # Keep only what may still run there (at most a few keys: one per thread).
        tasks = self.scheduler.tasks
        keys: set[Key] = {
            k for k in self._started.get(worker, ()) if (t := tasks.get(k)) is not None and t.processing_on is ws
        }
        if key not in keys:
            _compat.add_suspicious(ts, 1)
        keys.add(key)
        self._started[worker] = keys

    @staticmethod
    def _interrupted(
        tasks: list[TaskState], started: set[Key]
    ) -> tuple[list[TaskState], set[TaskState]]:
        """Which of a dead worker's tasks were running there (the others only waited for a slot).

        Fault-tolerant chunks reported their start (``started``); otherwise the
        worker's last heartbeat tells (``WorkerState.executing``), and if it told
        nothing about the other tasks they all count, rather than miss one.
        Returns the running tasks and, among them, the fault-tolerant chunks
        only the heartbeat saw running (their start report failed).
        """
        if not tasks:
            return [], set()
        ws = tasks[0].processing_on
        executing = {ts for ts in tasks if ws is not None and ts in ws.executing}
        reporting = [ts for ts in tasks if ANNOTATION in (ts.annotations or {})]
        others = [ts for ts in tasks if ANNOTATION not in (ts.annotations or {})]
        unreported = {ts for ts in reporting if ts.key not in started and ts in executing}
        running = [ts for ts in reporting if ts.key in started or ts in unreported]
        running += [ts for ts in others if ts in executing] or (others if not executing else [])
        return running, unreported

    def heartbeat_lost(self, workers: list[str]) -> None:
        """The scheduler's ``worker-ttl-timed-out`` event: these workers stopped answering."""
        self._timed_out.update(w for w in workers if w in self.scheduler.workers)

    def _isolate(self, ts: TaskState) -> bool:
        """Mark a chunk of several circuits so that its retry hands them back one by one."""
        ann = TaskAnnotation.of(ts)
        old = ts.annotations or {}
        # Only a batch a client collects can take the circuits back (the chunk is annotated so);
        # a chunk other tasks depend on (Sampler.submit) keeps its key and is retried whole.
        if (
            self.config is None
            or ann is None
            or int(ann.circuits) < 2
            or not old.get(ANNOTATION, {}).get("isolatable")
            or ts.dependents
        ):
            return False
        # A new dict: tasks of one graph share their annotations' dicts.
        ts.annotations = {**old, ANNOTATION: {**old.get(ANNOTATION, {}), "isolate": True}}
        return True

    def isolated(self, key: Key) -> bool:
        ts = self.scheduler.tasks.get(key)
        return ts is not None and bool((ts.annotations or {}).get(ANNOTATION, {}).get("isolate"))

    # -- manual recovery -----------------------------------------------------------
    def _hold(self, ts: TaskState) -> str:
        if ts.key not in self.held:
            self.held[ts.key] = (ts.resource_restrictions, ts.loose_restrictions)
            ts.resource_restrictions = {**(ts.resource_restrictions or {}), HOLD_RESOURCE: 1}
            # Loose restrictions (allow_other_workers=True) would let any worker take it.
            ts.loose_restrictions = False
        if NAME not in self.scheduler.periodic_callbacks:
            # Well within Dask's no-workers-timeout, which held tasks must never reach.
            timeout = self.scheduler.no_workers_timeout
            pc = PeriodicCallback(self._keep_held, 1000 * min(1.0, timeout / 4 if timeout else 1.0))
            self.scheduler.periodic_callbacks[NAME] = pc
            pc.start()
        return str(ts.key)

    def _keep_held(self) -> None:
        """Held tasks wait in "no-worker": keep them clear of ``no-workers-timeout``."""
        s = self.scheduler
        for key in list(self.held):
            ts = s.tasks.get(key)
            if ts is None or ts.state in ("released", "forgotten", "erred", "memory"):
                del self.held[key]  # cancelled, or done
            elif ts.state == "no-worker":
                _compat.refresh_unrunnable(s, ts)
        if not self.held:
            pc = s.periodic_callbacks.pop(NAME, None)
            if pc is not None:
                pc.stop()

    def resubmit(self, keys: list[str] | None = None) -> list[str]:
        """Release held work (all of it by default) so that it runs; returns the keys released."""
        s = self.scheduler
        wanted = set(keys) if keys is not None else None
        released = []
        for key in list(self.held):
            if wanted is not None and str(key) not in wanted:
                continue
            restrictions, loose = self.held.pop(key)
            ts = s.tasks.get(key)
            if ts is None:
                continue
            ts.resource_restrictions, ts.loose_restrictions = restrictions, loose
            released.append(ts)
        # A task in no-worker has its priority (set when it was added).
        runnable = sorted(
            (ts for ts in released if ts.state == "no-worker"), key=lambda t: t.priority or (), reverse=True
        )
        # Recommendations are processed last-in first-out: highest priority last.
        s.transitions({ts.key: "processing" for ts in runnable}, stimulus_id=f"qdask-resubmit-{time.time()}")
        self._keep_held()
        return [str(ts.key) for ts in released]

    # -- recovery timing -----------------------------------------------------------
    def _open_recovery(self, worker: str, cause: str, detected: float, tasks: list[TaskState]) -> None:
        rid = next(self._ids)
        rec = _Recovery(worker, cause, detected, [str(ts.key) for ts in tasks], {ts.key for ts in tasks})
        self.recoveries[rid] = rec
        for ts in tasks:
            self.waiting_on.setdefault(ts.key, set()).add(rid)
        self._set_tracking(True)

    def _set_tracking(self, on: bool) -> None:
        plugins = self.scheduler.plugins
        if on and plugins.get(NAME) is not self.tracker:
            self.scheduler.add_plugin(self.tracker, name=NAME, idempotent=False)
        elif not on and plugins.get(NAME) is self.tracker:
            self.scheduler.remove_plugin(name=NAME)

    def compute_start(self, transition_kwargs: dict[str, Any]) -> float:
        """Scheduler time at which a finished task started computing (now if unknown)."""
        starts = [s["start"] for s in transition_kwargs.get("startstops") or () if s.get("action") == "compute"]
        if not starts:
            return time.time()
        ws = self.scheduler.workers.get(transition_kwargs.get("worker"))  # type: ignore[arg-type]
        return min(starts) + (ws.time_delay if ws is not None else 0.0)

    def resolve(self, key: Key, started: float | None) -> None:
        """``key`` ran again (at ``started``), or never will (None)."""
        for rid in self.waiting_on.pop(key, ()):
            rec = self.recoveries[rid]
            rec.waiting.discard(key)
            if started is not None:
                rec.last_start = started if rec.last_start is None else max(rec.last_start, started)
            if not rec.waiting:
                self._close_recovery(rid)
        if not self.recoveries:
            self.origin_of.clear()
            self._set_tracking(False)

    def _close_recovery(self, rid: int) -> None:
        rec = self.recoveries.pop(rid)
        if rec.last_start is None:
            return  # nothing affected ran again (all cancelled or failed): nothing recovered
        duration = max(0.0, rec.last_start - rec.detected)
        self._publish(RecoveryEvent(rec.worker, time.time(), rec.cause, tuple(rec.keys), duration=duration))

    def _replace(self, origin: Key, keys: list[Key]) -> None:
        """Single-circuit tasks ``keys`` rerun the circuits of the isolated chunk ``origin``."""
        if origin in self.waiting_on:
            for key in keys:
                self.origin_of[key] = origin

    # -- graph updates -------------------------------------------------------------
    def update_graph(self, annotations: dict[Any, dict[str, Any]]) -> None:
        """Tasks resubmitted after a worker death: their failures so far, their recovery, their priority."""
        s = self.scheduler
        replacing: dict[Key, list[Key]] = {}
        for key, meta in annotations.items():
            ts = s.tasks.get(key)
            if ts is None or not isinstance(meta, dict):
                continue
            failures = int(meta.get("failures", 0))
            # The deaths the chunk already caused count toward max_failures, less the
            # credit of a chunk that has not started (see the module docstring). Dask
            # passes annotations only for the tasks new in a graph: once per task.
            _compat.set_suspicious(ts, failures - 1)
            if failures and ts.priority:
                ts.priority = _compat.with_priority(ts.priority, generation=RECOVERY_GENERATION)
            if meta.get("origin") is not None:
                replacing.setdefault(meta["origin"], []).append(key)
        for origin, keys in replacing.items():
            self._replace(origin, keys)

    # -- network and quantum errors ------------------------------------------------
    def _on_task_erred(self, msg: dict[str, Any]) -> None:
        text = str(msg.get("exception_text") or "")
        if is_network_error(text):
            self._publish(NetworkError(msg.get("worker"), time.time(), "comm-error", (str(msg.get("key")),), text))

    def _on_refresh_who_has(self, msg: dict[str, Any]) -> None:
        if not str(msg.get("stimulus_id", "")).startswith(_compat.FIND_MISSING_STIMULUS):
            return  # other refreshes: all holders busy, which is not a failure
        worker = str(msg.get("worker"))
        keys, peers = [], set()
        for key in msg.get("keys", ()):
            ts = self.scheduler.tasks.get(key)
            holders = {ws.address for ws in (ts.who_has or ())} if ts is not None else set()
            if not holders or (worker, key) in self._reported:
                continue  # lost with its only holder (a node failure), or already reported
            self._remember((worker, key))
            keys.append(str(key))
            peers |= holders
        if keys:
            detail = f"{worker} could not fetch {len(keys)} key(s) from {sorted(peers)}, which hold them"
            event = NetworkError(worker, time.time(), "transfer-failed", tuple(keys), detail, tuple(sorted(peers)))
            self._publish(event)

    def _remember(self, item: tuple[str, Key], limit: int = 10_000) -> None:
        self._reported.add(item)
        self._reported_order.append(item)
        if len(self._reported_order) > limit:
            self._reported.discard(self._reported_order.popleft())

    def worker_event(self, msg: dict[str, Any]) -> None:
        """A :data:`~qdask.fault.events.WORKER_TOPIC` event: a backend failed on a circuit."""
        self._publish(
            QuantumError(
                worker=msg.get("worker"),
                time=time.time(),
                cause=str(msg.get("cause", "backend")),
                keys=(str(msg.get("key")),),
                detail=str(msg.get("detail", "")),
                circuit=msg.get("circuit"),
                backend=msg.get("backend"),
            )
        )

    def _publish(self, event: FailureEvent, record: bool = True) -> None:
        if record:
            duration = event.duration if isinstance(event, RecoveryEvent) else None
            self.events.record(event.kind, worker=event.worker, cause=event.cause, keys=event.keys,
                               duration=duration, when=event.time)
        self.scheduler.log_event(TOPIC, event.to_message())

    # -- replication ---------------------------------------------------------------
    def replicas_missing(self, ts: TaskState, pending: dict[TaskState, tuple[set[Any], set[Any]]]) -> int | None:
        """Replicas a finished circuit result lacks (negative: extra), counting pending AMM moves.

        None for any other task, or when results are not replicated.
        """
        if (
            self.config is None
            or self.config.replication_factor <= 1
            or ts.state != "memory"
            or not ts.who_has
            or not is_circuit_task(ts)
        ):
            return None
        repl, drop = pending.get(ts, (set(), set()))
        return self.config.replication_factor - (len(ts.who_has) + len(repl) - len(drop))

    def _set_replication(self, factor: int) -> None:
        amm = self.scheduler.extensions.get("amm")
        if amm is not None:
            for policy in self._amm_policies:
                amm.policies.discard(policy)
            for policy in self._replaced:
                amm.add_policy(policy)
            if self._amm_started:
                amm.stop()
        self._amm_policies, self._replaced, self._amm_started = [], [], False
        if factor <= 1:
            return
        if amm is None:
            raise RuntimeError(
                f"replication_factor={factor} needs Dask's Active Memory Manager, which this scheduler lacks. "
                "Fix: keep the 'amm' scheduler extension, or use replication_factor=1."
            )
        self._replaced = [p for p in amm.policies if type(p) is ReduceReplicas]
        for policy in self._replaced:
            amm.policies.discard(policy)
        self._amm_policies = [KeepReplicas(self), ReplicateResults(self)]
        for policy in self._amm_policies:
            amm.add_policy(policy)
        if not amm.running:
            logger.info("starting Dask's Active Memory Manager for replication_factor=%d", factor)
            amm.start()
            self._amm_started = True
