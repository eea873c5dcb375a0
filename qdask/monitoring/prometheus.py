"""``qdask_*`` metrics on the scheduler's ``/metrics`` endpoint.

Dask serves ``prometheus_client.REGISTRY`` on ``/metrics``; this module adds
one collector to it, following distributed's ``PrometheusCollector`` pattern
(``distributed/http/scheduler/prometheus``): the collector is registered once
per process and returns early when no qdask scheduler lives there. Several
schedulers in one process (test suites, notebooks) each get a ``scheduler``
label instead of colliding.

Names follow Prometheus' conventions (https://prometheus.io/docs/practices/naming/):
snake case under ``qdask_``, the unit last and in base units (``_bytes``,
``_seconds``, ``_ratio`` for 0-1 fractions), ``_total`` on counters.
``worker`` labels carry the worker's *name* (``ws.name``): a Nanny restarts a
worker under the same name but a new address, so labelling by address would
start new series at each restart and leave the old ones behind.

Metrics (all labelled ``scheduler``):

==================================================  =========  =============================================
name                                                type       meaning
==================================================  =========  =============================================
``qdask_workers{role}``                             gauge      workers per role (quantum, classical)
``qdask_quantum_slots{worker}``                     gauge      quantum slots of the worker
``qdask_quantum_busy_slots{worker}``                gauge      slots running a circuit task
``qdask_quantum_queued_tasks{worker}``              gauge      circuit tasks waiting there for a slot
``qdask_statevector_budget_bytes{worker}``          gauge      state-vector budget
``qdask_statevector_used_bytes{worker}``            gauge      state-vector bytes requested by its circuit tasks
``qdask_gpus{worker}``                              gauge      GPUs of the worker
``qdask_busy_gpus{worker}``                         gauge      GPUs running a circuit task
``qdask_worker_latency_seconds{worker}``            gauge      heartbeat round trip (smoothed)
``qdask_worker_sent_bytes_total{worker}``           counter    task data the worker sent
``qdask_quantum_utilization_ratio``                 gauge      busy slots / slots, 0-1
``qdask_ready_circuit_tasks{priority}``             gauge      ready circuit tasks per priority (monitoring on)
``qdask_circuits_total{backend,kind}``              counter    circuits finished, per backend and kind of work
``qdask_circuit_duration_seconds``                  histogram  compute time per circuit (a task's, split evenly)
``qdask_batches_total``                             counter    batches planned (``Sampler``/``Simulator`` calls)
``qdask_monitoring_samples_total``                  counter    samples taken
``qdask_events_total{kind}``                        counter    node failures, errors, recoveries, migrations,
                                                               scaling events (see ``events.KINDS``)
==================================================  =========  =============================================
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from distributed.http.prometheus import PrometheusCollector

from qdask.monitoring.counters import BUCKETS
from qdask.monitoring.events import KINDS
from qdask.monitoring.worker import METRIC
from qdask.scheduler.placement import worker_resources

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from qdask.monitoring.monitor import Monitor

#: Monitors of the schedulers alive in this process.
_MONITORS: weakref.WeakSet[Monitor] = weakref.WeakSet()
_COLLECTOR: QdaskCollector | None = None
_LOCK = threading.Lock()

#: (metric name, key of ``worker_resources``, help)
_PER_WORKER = (
    ("quantum_slots", "quantum_slots", "Quantum slots of the worker."),
    ("quantum_busy_slots", "quantum_busy", "Quantum slots running a circuit task."),
    ("quantum_queued_tasks", "quantum_queued", "Circuit tasks waiting on the worker for a slot."),
    ("statevector_budget_bytes", "statevector_bytes", "State-vector budget of the worker."),
    ("statevector_used_bytes", "statevector_used", "State-vector bytes requested by circuit tasks on the worker."),
    ("gpus", "gpus", "GPUs of the worker."),
    ("busy_gpus", "gpus_busy", "GPUs running a circuit task."),
)


class QdaskCollector(PrometheusCollector):
    """Collects ``qdask_*`` metrics from every live qdask scheduler of the process."""

    def __init__(self) -> None:
        super().__init__(server=None)
        # qdask_* whatever distributed's namespace ("dask" by default) is.
        self.namespace = "qdask"

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        monitors = [m for m in list(_MONITORS) if m.scheduler.status.name == "running"]
        if not monitors:
            return
        gauges: dict[str, Any] = {
            name: GaugeMetricFamily(self.build_name(name), doc, labels=["scheduler", "worker"])
            for name, _, doc in _PER_WORKER
        }
        workers = GaugeMetricFamily(self.build_name("workers"), "Workers per role.", labels=["scheduler", "role"])
        latency = GaugeMetricFamily(
            self.build_name("worker_latency_seconds"),
            "Scheduler-worker heartbeat round trip (smoothed).",
            labels=["scheduler", "worker"],
        )
        sent = CounterMetricFamily(
            self.build_name("worker_sent_bytes"), "Task data sent by the worker.", labels=["scheduler", "worker"]
        )
        utilization = GaugeMetricFamily(
            self.build_name("quantum_utilization_ratio"), "Busy quantum slots / slots (0-1).", labels=["scheduler"]
        )
        ready = GaugeMetricFamily(
            self.build_name("ready_circuit_tasks"),
            "Circuit tasks ready to run, per priority (while monitoring runs).",
            labels=["scheduler", "priority"],
        )
        samples = CounterMetricFamily(
            self.build_name("monitoring_samples"), "Monitoring samples taken.", labels=["scheduler"]
        )
        events = CounterMetricFamily(
            self.build_name("events"),
            "Failures, recoveries, migrations and scaling events.",
            labels=["scheduler", "kind"],
        )
        circuits = CounterMetricFamily(
            self.build_name("circuits"),
            "Circuits finished, per backend and kind of work (sample, simulate, ...).",
            labels=["scheduler", "backend", "kind"],
        )
        durations = HistogramMetricFamily(
            self.build_name("circuit_duration_seconds"),
            "Compute time per circuit (a circuit task's, split evenly over its circuits).",
            labels=["scheduler"],
        )
        batches = CounterMetricFamily(
            self.build_name("batches"), "Batches planned (one per Sampler/Simulator call).", labels=["scheduler"]
        )
        for monitor in monitors:
            s = monitor.scheduler
            sched = s.address
            roles = {"quantum": 0, "classical": 0}
            slots = busy = 0.0
            # A copy: with several schedulers in the process, another one may run on another thread.
            for ws in list(s.workers.values()):
                res = worker_resources(ws)
                name = str(ws.name)  # stable across restarts, unlike ws.address
                roles["quantum" if res["quantum_slots"] else "classical"] += 1
                slots += res["quantum_slots"]
                busy += res["quantum_busy"]
                for metric, key, _ in _PER_WORKER:
                    gauges[metric].add_metric([sched, name], res[key])
                q = ws.metrics.get(METRIC) or {}
                if "latency" in q:
                    latency.add_metric([sched, name], q["latency"])
                if "sent_bytes" in q:
                    sent.add_metric([sched, name], q["sent_bytes"])
            for role, n in roles.items():
                workers.add_metric([sched, role], n)
            utilization.add_metric([sched], busy / slots if slots else 0.0)
            counters = monitor.counters
            for (backend, kind), n in sorted(counters.circuits.items()):
                circuits.add_metric([sched, backend, kind], n)
            durations.add_metric(
                [sched],
                [("+Inf" if math.isinf(b) else repr(b), n) for b, n in zip(BUCKETS, counters.buckets)],
                counters.duration_sum,
            )
            batches.add_metric([sched], counters.batches)
            if monitor.tracking:
                for priority, n in sorted(monitor.tracker.by_priority.items()):
                    ready.add_metric([sched, str(priority)], n)
            samples.add_metric([sched], monitor.count)
            for kind in KINDS:
                events.add_metric([sched, kind], monitor.events.totals[kind])
        yield workers
        yield from gauges.values()
        yield latency
        yield sent
        yield utilization
        yield ready
        yield circuits
        yield durations
        yield batches
        yield samples
        yield events


def register(monitor: Monitor) -> None:
    """Expose ``monitor``'s scheduler on ``/metrics`` (the collector is registered once per process)."""
    global _COLLECTOR
    import prometheus_client

    with _LOCK:
        _MONITORS.add(monitor)
        if _COLLECTOR is None:
            _COLLECTOR = QdaskCollector()
            prometheus_client.REGISTRY.register(_COLLECTOR)


def unregister(monitor: Monitor) -> None:
    """Stop exposing ``monitor``'s scheduler (the collector stays, empty)."""
    with _LOCK:
        _MONITORS.discard(monitor)
