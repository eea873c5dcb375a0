"""The scheduler-side monitor: one record of the whole cluster every ``sampling_interval``.

:class:`Monitor` is owned by the qdask scheduler plugin
(``scheduler.extensions["qdask"].monitor``). Started, it samples in
``scheduler.periodic_callbacks["qdask-monitor"]`` and installs
:class:`CircuitTracker`, a scheduler plugin of the same name whose
transition hook counts ready circuit tasks per priority and writes the trace
spans. Stopped, neither runs, so an unmonitored cluster pays nothing.

A sample costs O(workers + task prefixes): per-worker figures come from what
the scheduler already keeps (``WorkerState.resources``/``used_resources``,
occupancy, the heartbeat's ``metrics``), task counts and compute/transfer
times from Dask's per-prefix accumulators. The record layout is documented in
``docs/monitoring.md`` ("Sample record").
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable
from logging.handlers import RotatingFileHandler
from typing import TYPE_CHECKING, Any

from distributed import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from qdask import _compat
from qdask import config as qconfig
from qdask.config import MonitoringConfig, parse_duration
from qdask.monitoring import aggregate, analysis, prometheus
from qdask.monitoring.counters import CircuitCounters
from qdask.monitoring.events import EventStore
from qdask.monitoring.tracing import ChromeTrace
from qdask.monitoring.worker import METRIC
from qdask.quantum.annotation import TaskAnnotation
from qdask.resources import QUANTUM
from qdask.scheduler.placement import worker_resources

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed.scheduler import Scheduler, TaskState, WorkerState

logger = logging.getLogger(__name__)

#: Name of the periodic callback and of the tracker plugin.
NAME = "qdask-monitor"
#: Scheduler states of a task that can run now (on a worker, queued, or lacking a worker).
READY = frozenset({"queued", "no-worker", "processing"})


def _priority(ts: TaskState, ann: TaskAnnotation) -> int:
    p = ann.priority
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        return int(p)
    return _compat.user_priority(ts)


class CircuitTracker(SchedulerPlugin):
    """Transition hook of monitoring: ready circuit tasks per priority, and trace spans.

    Installed by :meth:`Monitor.start` (``scheduler.plugins["qdask-monitor"]``),
    removed by :meth:`Monitor.stop`.
    """

    name = NAME
    idempotent = True

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        # { key of a ready circuit task: its priority }
        self.ready: dict[Key, int] = {}
        # { priority: ready circuit tasks }
        self.by_priority: Counter[int] = Counter()
        self.trace: ChromeTrace | None = None

    def scan(self) -> None:
        """Pick up circuit tasks that were ready before the tracker was installed (once, O(tasks))."""
        self.ready.clear()
        self.by_priority.clear()
        for ts in self.scheduler.tasks.values():
            if ts.state in READY:
                ann = TaskAnnotation.of(ts)
                if ann is not None:
                    self._add(ts.key, _priority(ts, ann))

    def transition(self, key: Key, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        # Only crossings of the READY boundary matter; everything else returns at once.
        if (start in READY) == (finish in READY):
            return
        if finish in READY:
            ts = self.scheduler.tasks.get(key)
            ann = TaskAnnotation.of(ts)
            if ann is not None:
                assert ts is not None
                self._add(key, _priority(ts, ann))
            return
        priority = self.ready.pop(key, None)
        if priority is None:
            return
        self.by_priority[priority] -= 1
        if not self.by_priority[priority]:
            del self.by_priority[priority]
        if self.trace is not None and start == "processing" and finish in ("memory", "erred"):
            self._span(key, finish, priority, kwargs)

    def _add(self, key: Key, priority: int) -> None:
        if key not in self.ready:
            self.ready[key] = priority
            self.by_priority[priority] += 1

    def _span(self, key: Key, state: str, priority: int, kw: dict[str, Any]) -> None:
        assert self.trace is not None
        startstops = kw.get("startstops") or ()
        compute = [s for s in startstops if s.get("action") == "compute"]
        worker = kw.get("worker")
        if not compute or not worker:
            return
        ann = TaskAnnotation.of(self.scheduler.tasks.get(key))
        if ann is None:  # only circuit tasks become ready here; one forgotten since is skipped
            return
        backend, qubits = ann.backend or None, ann.qubits
        self.trace.span(
            f"{backend} {qubits}q" if backend and qubits is not None else str(key),
            start=min(s["start"] for s in compute),
            stop=max(s["stop"] for s in compute),
            worker=str(worker),
            thread=kw.get("thread"),
            category=str(backend or "circuit"),
            args={
                "key": str(key),
                "worker": str(worker),
                "state": state,
                "backend": backend,
                "qubits": qubits,
                "circuits": ann.circuits,
                "statevector_bytes": ann.statevector_bytes,
                "priority": priority,
                "est_seconds": ann.est_seconds,
                "transfer_seconds": sum(
                    s["stop"] - s["start"] for s in startstops if s.get("action") == "transfer"
                ),
            },
        )


class Monitor:
    """Samples the cluster, keeps the history, writes the log and the trace.

    Parameters
    ----------
    scheduler : distributed.Scheduler
        The scheduler to watch.
    events : EventStore
        Failures, recoveries, migrations and scaling events (read only here).
    history : int, optional
        Samples kept; default ``qdask.monitoring.history``.

    Examples
    --------
    From a scheduler plugin or ``run_on_scheduler``::

        monitor = scheduler.extensions["qdask"].monitor
        monitor.start(MonitoringConfig(sampling_interval="100ms"))
        monitor.samples[-1]["total"]["quantum_utilization"]
    """

    def __init__(self, scheduler: Scheduler, events: EventStore, history: int | None = None) -> None:
        self.scheduler = scheduler
        self.events = events
        self.config: MonitoringConfig | None = None
        self.samples: deque[dict[str, Any]] = deque(maxlen=history or int(qconfig.get("monitoring.history")))
        self.count = 0  # samples taken since the scheduler started
        self.tracker = CircuitTracker(scheduler)
        self._log: RotatingFileHandler | None = None
        self._log_settings: tuple[str, int, int] | None = None  # (path, max bytes, backups)
        # Cumulative readings at the previous committed sample, for per-interval figures.
        self._prev_time = time.time()
        self._prev_tasks: dict[str, float] = self._task_totals()[1]
        # { task prefix: (finished, compute seconds, circuits) } at the previous committed sample
        self._prev_groups: dict[str, tuple[int, float, int]] = {}
        # { worker address: (heartbeat time, sent bytes, bytes/s) }
        self._sent: dict[str, tuple[float, float, float]] = {}
        # Counted from the start, sampling or not (Prometheus counters never go back).
        self.counters = CircuitCounters(scheduler)
        scheduler.add_plugin(self.counters, name=self.counters.name, idempotent=False)
        prometheus.register(self)

    # -- lifetime ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Sampling or tracing is on."""
        return self.sampling or self.tracking

    @property
    def sampling(self) -> bool:
        """The periodic sampler runs."""
        return NAME in self.scheduler.periodic_callbacks

    @property
    def tracking(self) -> bool:
        """The circuit tracker (ready circuits per priority, trace spans) is installed."""
        return self.scheduler.plugins.get(NAME) is self.tracker

    def start(self, config: MonitoringConfig) -> MonitoringConfig:
        """Start, or reconfigure a running monitor (idempotent)."""
        self.config = config
        if config.collect_metrics or config.enable_tracing:
            if not self.tracking:
                self.scheduler.add_plugin(self.tracker, name=NAME, idempotent=False)
                self.tracker.scan()
        else:
            self._remove_tracker()
        self._set_trace(config.trace_file if config.enable_tracing else None)
        self._set_log(config if config.collect_metrics else None)
        pc = self.scheduler.periodic_callbacks.get(NAME)
        interval_ms = config.sampling_interval * 1000
        if not config.collect_metrics:
            self._stop_sampling()
        elif pc is None or pc.callback_time != interval_ms:
            self._stop_sampling()
            self._commit_baseline()
            pc = PeriodicCallback(self._tick, interval_ms)
            self.scheduler.periodic_callbacks[NAME] = pc
            pc.start()
        logger.info("qdask monitoring %s", config.to_dict())
        return config

    def stop(self) -> None:
        """Stop sampling and tracing; close the log and the trace (idempotent)."""
        self._stop_sampling()
        self._remove_tracker()
        self._set_trace(None)
        self._set_log(None)
        self.config = None

    def close(self) -> None:
        """Stop and forget this monitor (scheduler closing)."""
        self.stop()
        if self.scheduler.plugins.get(self.counters.name) is self.counters:
            self.scheduler.remove_plugin(name=self.counters.name)
        prometheus.unregister(self)

    def _stop_sampling(self) -> None:
        pc = self.scheduler.periodic_callbacks.pop(NAME, None)
        if pc is not None:
            pc.stop()

    def _remove_tracker(self) -> None:
        if self.tracking:
            self.scheduler.remove_plugin(name=NAME)
        self.tracker.ready.clear()
        self.tracker.by_priority.clear()

    def _set_trace(self, path: str | None) -> None:
        trace = self.tracker.trace
        if trace is not None and trace.path == path:
            return
        if trace is not None:
            trace.close()
        self.tracker.trace = ChromeTrace(path) if path is not None else None

    def _set_log(self, config: MonitoringConfig | None) -> None:
        """Open, reopen (other file or rotation) or close the JSON-lines log."""
        settings = None
        if config is not None and config.log_file is not None:
            settings = (config.log_file, int(config.log_max_bytes or 0), config.log_backups)
        if settings == self._log_settings:
            return
        if self._log is not None:
            self._log.close()
            self._log = None
        if settings is not None:
            path, max_bytes, backups = settings
            # Appends (a restarted monitor continues the same file) and rotates at
            # max_bytes: the log grows ~50 MB/hour on 2 workers at 100 ms.
            self._log = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
            self._log.setFormatter(logging.Formatter("%(message)s"))
        self._log_settings = settings

    def _tick(self) -> None:
        # A failing sample is logged and the next one tried: monitoring must
        # never take the scheduler down (as Dask's Adaptive does with its loop).
        try:
            record = self.sample()
            self.samples.append(record)
            self.count += 1
            if self._log is not None:
                # Straight to the handler (no logger): it rotates, writes a line and flushes.
                self._log.handle(logging.makeLogRecord({"msg": json.dumps(record, separators=(",", ":"))}))
            trace = self.tracker.trace
            if trace is not None:
                total = record["total"]
                trace.counter(
                    "utilization %",
                    record["time"],
                    {"quantum": total["quantum_utilization"], "nodes": total["node_utilization"]},
                )
                trace.flush()
        except Exception:
            logger.error("qdask monitoring: sample failed", exc_info=True)

    # -- sampling ----------------------------------------------------------------
    def sample(self, commit: bool = True) -> dict[str, Any]:
        """One record of the cluster now (the layout of ``docs/monitoring.md``).

        ``commit=False`` leaves the per-interval accounting untouched, for a
        reading on demand while the periodic sampler owns it.
        """
        now = time.time()
        workers = {addr: self._worker(addr, ws, commit) for addr, ws in self.scheduler.workers.items()}
        if commit:
            for gone in self._sent.keys() - workers.keys():
                del self._sent[gone]
        states, cumulative = self._task_totals()
        window = {k: max(v - self._prev_tasks.get(k, 0.0), 0.0) for k, v in cumulative.items()}
        groups_now = self._group_totals()
        groups = {}
        for prefix, (finished, compute, circuits) in groups_now.items():
            f0, c0, n0 = self._prev_groups.get(prefix, (0, 0.0, 0))
            if finished > f0:
                groups[prefix] = {"finished": finished - f0, "compute": max(compute - c0, 0.0),
                                  "circuits": max(circuits - n0, 0)}
        record = {
            "time": now,
            "interval": max(now - self._prev_time, 0.0),
            "workers": workers,
            "total": totals(workers.values()),
            "tasks": {
                "states": states,
                "circuits_ready": len(self.tracker.ready) if self.tracking else None,
                "circuits_by_priority": {str(p): n for p, n in sorted(self.tracker.by_priority.items())},
                "finished": int(window["finished"]),
                "erred": int(window["erred"]),
                "compute": window["compute"],
                "transfer": window["transfer"],
                "groups": groups,
            },
        }
        if commit:
            self._prev_time, self._prev_tasks, self._prev_groups = now, cumulative, groups_now
        return record

    def _group_totals(self) -> dict[str, tuple[int, float, int]]:
        """Per task prefix: cumulative finished tasks, compute seconds and circuits."""
        circuits = self.counters.prefix_circuits
        return {
            name: (tp.state_counts.get("memory", 0), tp.all_durations.get("compute", 0.0), circuits.get(name, 0))
            for name, tp in self.scheduler.task_prefixes.items()
            if tp.state_counts.get("memory", 0)
        }

    def _commit_baseline(self) -> None:
        self._prev_time = time.time()
        self._prev_tasks = self._task_totals()[1]
        self._prev_groups = self._group_totals()

    def _task_totals(self) -> tuple[dict[str, int], dict[str, float]]:
        """Tasks per state now, and cumulative finished/erred counts and compute/transfer seconds."""
        states: Counter[str] = Counter()
        compute = transfer = 0.0
        finished = erred = 0
        for tp in self.scheduler.task_prefixes.values():
            for state, n in tp.states.items():
                if n and state != "forgotten":
                    states[state] += n
            durations = tp.all_durations
            compute += durations.get("compute", 0.0)
            transfer += durations.get("transfer", 0.0)
            finished += tp.state_counts.get("memory", 0)
            erred += tp.state_counts.get("erred", 0)
        return dict(states), {"finished": finished, "erred": erred, "compute": compute, "transfer": transfer}

    def _worker(self, addr: str, ws: WorkerState, commit: bool) -> dict[str, Any]:
        m = ws.metrics
        q = m.get(METRIC) or {}
        nthreads = ws.nthreads
        processing = len(ws.processing)
        net = m.get("host_net_io") or {}
        gpu_util, gpu_mem, gpu_total = _gpu_reading(m, q)
        return {
            "name": str(ws.name),
            "role": "quantum" if QUANTUM in ws.resources else "classical",
            "status": ws.status.name,
            "nthreads": nthreads,
            "processing": processing,
            "busy_threads": min(processing, nthreads),
            "cpu": float(m.get("cpu", 0.0)),
            "memory": int(m.get("memory", 0)),
            "memory_limit": int(ws.memory_limit or 0),
            "load": ws.occupancy / nthreads if nthreads else 0.0,
            **worker_resources(ws),
            "gpu_utilization": gpu_util,
            "gpu_memory": gpu_mem,
            "gpu_memory_total": gpu_total,
            "bandwidth": self._send_rate(addr, m.get("time"), q.get("sent_bytes"), commit),
            "sent_bytes": int(q.get("sent_bytes", 0)),
            "latency": q.get("latency"),
            "net_read": float(net.get("read_bps", 0.0)),
            "net_write": float(net.get("write_bps", 0.0)),
        }

    def _send_rate(self, addr: str, t: float | None, sent: float | None, commit: bool) -> float:
        """Bytes/s sent between the worker's last two heartbeats (held until the next one)."""
        if t is None or sent is None:
            return 0.0
        prev = self._sent.get(addr)
        if prev is None:
            rate = 0.0
        elif t > prev[0]:
            rate = max(sent - prev[1], 0.0) / (t - prev[0])
        else:
            return prev[2]
        if commit:
            self._sent[addr] = (t, sent, rate)
        return rate

    # -- reading -----------------------------------------------------------------
    def recent(self, window: float) -> list[dict[str, Any]]:
        """Samples of the last ``window`` seconds, oldest first."""
        return self.after(time.time() - window)

    def after(self, t: float) -> list[dict[str, Any]]:
        """Samples taken after wall-clock time ``t``, oldest first (O(samples returned))."""
        out = []
        for record in reversed(self.samples):
            if record["time"] <= t:
                break
            out.append(record)
        out.reverse()
        return out

    def _window_samples(self, window: float | str | None, key: str) -> list[dict[str, Any]]:
        seconds = parse_duration(window if window is not None else qconfig.get(key))
        samples = self.recent(seconds)
        # Monitoring off (or no sample yet): one reading now, so the API always answers.
        return samples or [self.sample(commit=not self.sampling)]

    def metrics(self, window: float | str | None = None) -> dict[str, float]:
        """Fields of :class:`~qdask.monitoring.results.ResourceMetrics`."""
        return aggregate.resource_metrics(self._window_samples(window, "monitoring.window"))

    def detailed(self, window: float | str | None = None) -> dict[str, Any]:
        """Fields of :class:`~qdask.monitoring.results.DetailedMetrics`."""
        samples = self._window_samples(window, "monitoring.window")
        return aggregate.detailed_metrics(samples, recorded=self.sampling)

    def analyze(self, window: float | str | None = None) -> dict[str, Any]:
        """Bottlenecks and recommendations over the last ``window`` (``AnalysisResult`` fields)."""
        samples = self._window_samples(window, "monitoring.analysis.window")
        return analysis.analyze(samples).to_dict()

    # -- scheduler handlers ----------------------------------------------------------
    def handlers(self) -> dict[str, Any]:
        """Scheduler RPC handlers of monitoring (``client.scheduler.<name>(...)``)."""
        return {
            "qdask_monitor_start": self._start_handler,
            "qdask_monitor_stop": self.stop,
            "qdask_monitor_status": self._status_handler,
            "qdask_samples": self._samples_handler,
            "qdask_metrics": self.metrics,
            "qdask_detailed_metrics": self.detailed,
            "qdask_error_statistics": self.events.statistics,
            "qdask_analyze": self.analyze,
        }

    def _start_handler(self, config: dict[str, Any]) -> dict[str, Any]:
        return self.start(MonitoringConfig(**config)).to_dict()

    def _status_handler(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "sampling": self.sampling,
            "config": self.config.to_dict() if self.config else None,
            "samples": self.count,
        }

    def _samples_handler(self, since: float = 0.0, limit: int | None = None) -> list[dict[str, Any]]:
        out = self.after(since)
        return out[-limit:] if limit else out


def _gpu_reading(m: dict[str, Any], q: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(utilization %, memory used, memory total) of a worker's GPUs, or Nones."""
    gpus = q.get("gpus")
    if gpus:
        return (
            sum(g["utilization"] for g in gpus) / len(gpus),
            float(sum(g["memory_used"] for g in gpus)),
            float(sum(g["memory_total"] for g in gpus)),
        )
    if "gpu_utilization" in m:
        # Dask's system monitor: the first visible GPU only.
        return (float(m["gpu_utilization"]), float(m.get("gpu_memory_used", 0)), float(m.get("gpu-memory-total", 0)))
    return None, None, None


def totals(workers: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Cluster totals of per-worker records (sums, or means where a sum means nothing)."""
    rows = list(workers)
    n = len(rows)

    def total(k: str) -> float:
        return float(sum(r[k] for r in rows))

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    threads, slots = total("nthreads"), total("quantum_slots")
    gpu_utils = [r["gpu_utilization"] for r in rows if r["gpu_utilization"] is not None]
    gpu_mems = [r["gpu_memory"] for r in rows if r["gpu_memory"] is not None]
    latencies = [r["latency"] for r in rows if r["latency"] is not None]
    return {
        "workers": n,
        "running": sum(1 for r in rows if r["status"] == "running"),
        "threads": int(threads),
        "busy_threads": int(total("busy_threads")),
        "node_utilization": 100.0 * total("busy_threads") / threads if threads else 0.0,
        "cpu": mean([r["cpu"] for r in rows]) or 0.0,
        "memory": int(total("memory")),
        "memory_limit": int(total("memory_limit")),
        "load": mean([r["load"] for r in rows]) or 0.0,
        "quantum_slots": int(slots),
        "quantum_busy": total("quantum_busy"),
        "quantum_queued": total("quantum_queued"),
        "quantum_utilization": 100.0 * total("quantum_busy") / slots if slots else 0.0,
        "statevector_bytes": int(total("statevector_bytes")),
        "statevector_used": total("statevector_used"),
        "gpus": int(total("gpus")),
        "gpus_busy": total("gpus_busy"),
        "gpu_utilization": mean(gpu_utils),
        "gpu_memory": float(sum(gpu_mems)) if gpu_mems else None,
        "bandwidth": total("bandwidth"),
        "latency": mean(latencies),
    }
