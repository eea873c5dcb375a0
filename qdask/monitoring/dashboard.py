"""The ``/qdask`` page of the scheduler's dashboard (Bokeh).

Every use of distributed's internal dashboard API lives in this module:
``distributed.dashboard.scheduler.applications`` (the Bokeh apps a scheduler
serves, read once when the Scheduler is built), ``template_variables`` (the
navigation bar) and the template/theme of Dask's own pages. Tests in
``tests/test_monitoring_dashboard.py`` check each of them, so a change in
distributed shows up there first.

The page reads the scheduler-side stores (the monitor's samples, the circuit
tracker, the event store) and Dask's resource accounting; it never talks to
the workers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from qdask.monitoring.events import FAILURE_KINDS, SCALING_KINDS

if TYPE_CHECKING:
    from bokeh.document import Document
    from distributed.scheduler import Scheduler

    from qdask.monitoring.sampler import Monitor

logger = logging.getLogger(__name__)

#: Path of the page, and its name in the navigation bar.
ROUTE = "/qdask"
PAGE = "qdask"
#: Refresh period of the page, milliseconds.
REFRESH_MS = 500
#: Points kept in the utilization plot.
ROLLOVER = 3600


def register() -> bool:
    """Add the page to the dashboard of every Scheduler built from now on (idempotent).

    Must run before the Scheduler is constructed: distributed reads its table
    of Bokeh applications once, when it starts the dashboard. Returns False
    when the dashboard is unavailable (no Bokeh), so the page is simply absent.
    """
    try:
        from distributed.dashboard import scheduler as dashboard
    except ImportError:
        return False
    dashboard.applications.setdefault(ROUTE, qdask_doc)
    return True


def page_served(scheduler: Scheduler) -> bool:
    """Whether this scheduler's dashboard serves ``/qdask``.

    False when its dashboard is off or started before :func:`register` ran
    (a plugin registered on a running scheduler).
    """
    http = getattr(scheduler, "http_application", None)
    for app in getattr(http, "applications", ()):
        if ROUTE in getattr(app, "_applications", {}):
            return True
    return False


def add_nav_link(scheduler: Scheduler) -> bool:
    """Link the page from the navigation bar of Dask's pages, if the page is served."""
    if not page_served(scheduler):
        return False
    from distributed.dashboard.scheduler import template_variables

    # Memoized per scheduler and shared with the running Bokeh app, so
    # appending here reaches pages rendered from now on.
    pages = template_variables(scheduler)["pages"]
    if PAGE not in pages:
        pages.append(PAGE)
    return True


def qdask_doc(scheduler: Scheduler, extra: dict[str, Any], doc: Document) -> None:
    """Build the page for one browser session (distributed's application signature)."""
    from distributed.dashboard.components import add_periodic_callback
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    page = QdaskPage(scheduler)
    page.update()
    add_periodic_callback(doc, page, REFRESH_MS)
    doc.title = "Dask: qdask"
    doc.add_root(page.root)
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)
    doc.theme = BOKEH_THEME


#: (resources() field, column title) of the workers table.
WORKER_COLUMNS = (
    ("name", "worker"),
    ("role", "role"),
    ("slots", "quantum slots"),
    ("max_qubits", "max qubits"),
    ("gpus", "GPUs"),
    ("error_rate", "gate error"),
    ("readout_error", "readout error"),
)


def _cell(value: Any) -> Any:
    """A table cell: "-" where a value does not apply (error rates of classical workers)."""
    return "-" if value is None else value


class QdaskPage:
    """The figures of the page and their refresh (a Dask ``DashboardComponent``)."""

    def __init__(self, scheduler: Scheduler) -> None:
        from bokeh.layouts import column, row
        from bokeh.models import (
            BasicTicker,
            ColumnDataSource,
            DataTable,
            Div,
            FactorRange,
            HoverTool,
            NumeralTickFormatter,
            Range1d,
            TableColumn,
        )
        from bokeh.plotting import figure

        self.scheduler = scheduler
        self._last_sample = 0.0
        self._last_event: object = None

        self.status = Div(name="qdask-status", text="")
        self.utilization_source = ColumnDataSource(
            {"time": [], "quantum": [], "nodes": []}, name="qdask-utilization-source"
        )
        self.utilization = figure(
            title="Quantum utilization over time (%)", x_axis_type="datetime", y_range=Range1d(0, 105),
            height=260, sizing_mode="stretch_width", name="qdask-utilization", tools="xpan,xwheel_zoom,reset",
        )
        self.utilization.line("time", "quantum", source=self.utilization_source, line_width=2,
                              color="#7b3294", legend_label="quantum slots busy")
        self.utilization.line("time", "nodes", source=self.utilization_source, line_width=1,
                              color="#999999", legend_label="worker threads busy")
        self.utilization.legend.location = "top_left"

        self.priority_source = ColumnDataSource({"priority": [], "ready": []}, name="qdask-priority-source")
        # Explicit ranges, set in update(): data ranges of empty plots make Bokeh warn.
        self.priority = figure(title="Ready circuit tasks by priority", height=260, width=360,
                               x_range=Range1d(-1, 1), y_range=Range1d(0, 1), name="qdask-priority", tools="")
        self.priority.vbar(x="priority", top="ready", width=0.8, source=self.priority_source, color="#7b3294")
        self.priority.xaxis.axis_label = "priority"
        self.priority.xaxis.ticker = BasicTicker(desired_num_ticks=5, min_interval=1)

        self.capacity_source = ColumnDataSource(
            {k: [] for k in ("worker", "slots", "slots_busy", "sv", "sv_used", "gpus", "gpus_busy")},
            name="qdask-capacity-source",
        )
        self.capacity = []
        for title, total, used, fmt in (
            ("Quantum slots per worker: capacity / in use", "slots", "slots_busy", "0"),
            ("State-vector memory per worker: budget / in use", "sv", "sv_used", "0.0 b"),
            ("GPUs per worker: capacity / in use", "gpus", "gpus_busy", "0"),
        ):
            fig = figure(title=title, x_range=Range1d(0, 1), y_range=FactorRange(factors=["(no workers)"]),
                         height=240, sizing_mode="stretch_width", name=f"qdask-capacity-{total}", tools="")
            fig.hbar(y="worker", right=total, height=0.8, source=self.capacity_source, color="#c2a5cf",
                     legend_label="capacity")
            fig.hbar(y="worker", right=used, height=0.5, source=self.capacity_source, color="#7b3294",
                     legend_label="in use")
            fig.xaxis.formatter = NumeralTickFormatter(format=fmt)
            if fmt == "0":  # counts: whole ticks only
                fig.xaxis.ticker = BasicTicker(desired_num_ticks=5, min_interval=1)
            fig.legend.location = "bottom_right"
            fig.add_tools(HoverTool(tooltips=[("worker", "@worker"), ("capacity", f"@{total}"),
                                              ("in use", f"@{used}")]))
            self.capacity.append(fig)

        # Roles and emulated-device error rates (HybridConfig, qdask.hybrid.noise): what
        # role routing and noise-aware routing decide from.
        self.workers_source = ColumnDataSource({k: [] for k, _ in WORKER_COLUMNS}, name="qdask-workers-source")
        self.workers = DataTable(
            source=self.workers_source, columns=[TableColumn(field=k, title=t) for k, t in WORKER_COLUMNS],
            height=160, sizing_mode="stretch_width", index_position=None, name="qdask-workers",
        )

        self.event_sources = {}
        self.event_figures = []
        for title, kinds, name in (
            ("Failures and recoveries", FAILURE_KINDS, "failures"),
            ("Migrations and scaling events", SCALING_KINDS, "scaling"),
        ):
            source = ColumnDataSource({"time": [], "kind": [], "worker": [], "cause": [], "count": []},
                                      name=f"qdask-{name}-source")
            # On the utilization plot's time axis, so events line up with what they did to it.
            fig = figure(title=title, x_axis_type="datetime", x_range=self.utilization.x_range,
                         y_range=FactorRange(factors=list(kinds)), height=220, sizing_mode="stretch_width",
                         name=f"qdask-{name}", tools="xpan,reset")
            fig.scatter("time", "kind", source=source, size=10, color="#d95f02")
            fig.add_tools(HoverTool(tooltips=[("kind", "@kind"), ("worker", "@worker"), ("cause", "@cause"),
                                              ("count", "@count")]))
            self.event_sources[kinds] = source
            self.event_figures.append(fig)

        self.root = column(
            self.status,
            row(self.utilization, self.priority, sizing_mode="stretch_width"),
            row(*self.capacity, sizing_mode="stretch_width"),
            self.workers,
            row(*self.event_figures, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    @property
    def monitor(self) -> Monitor | None:
        plugin = self.scheduler.extensions.get("qdask")
        return getattr(plugin, "monitor", None)

    def update(self) -> None:
        monitor = self.monitor
        if monitor is None:
            self.status.text = "The qdask scheduler plugin is not installed on this scheduler."
            return
        self._update_utilization(monitor)
        self._update_capacity()
        self._update_workers()
        by_priority = dict(monitor.tracker.by_priority) if monitor.tracking else {}
        self.priority_source.data = {"priority": list(by_priority), "ready": list(by_priority.values())}
        if by_priority:
            self.priority.x_range.update(start=min(by_priority) - 1, end=max(by_priority) + 1)
            self.priority.y_range.update(start=0, end=max(by_priority.values()) * 1.1)
        self._update_events(monitor)

    def _update_utilization(self, monitor: Monitor) -> None:
        if monitor.sampling:
            new = monitor.after(self._last_sample)
            interval = monitor.config.sampling_interval if monitor.config else 0
            self.status.text = (
                f"Monitoring every {interval:g} s, {monitor.count} samples. "
                "Ready circuits are counted while monitoring runs."
            )
        else:
            # Monitoring off: plot live readings taken at each refresh instead.
            new = [monitor.sample(commit=False)]
            self.status.text = (
                "Monitoring is off: showing live readings. Start it with "
                "QuantumCluster.start_monitoring() for history, ready circuits by priority and logs."
            )
        if new:
            self._last_sample = new[-1]["time"]
            self.utilization_source.stream(
                {
                    "time": [s["time"] * 1000 for s in new],
                    "quantum": [s["total"]["quantum_utilization"] for s in new],
                    "nodes": [s["total"]["node_utilization"] for s in new],
                },
                rollover=ROLLOVER,
            )

    def _update_workers(self) -> None:
        plugin = self.scheduler.extensions["qdask"]
        rows = sorted(plugin.resources(), key=lambda r: (r["role"], r["name"]))
        data = {k: [_cell(r.get(k)) for r in rows] for k, _ in WORKER_COLUMNS}
        data["slots"] = [_cell(r["resources"].get("quantum", 0)) for r in rows]
        if data != self.workers_source.data:
            self.workers_source.data = data

    def _update_capacity(self) -> None:
        from qdask.monitoring.sampler import worker_resources

        rows = {k: [] for k in self.capacity_source.data}
        for ws in self.scheduler.workers.values():
            res = worker_resources(ws)
            rows["worker"].append(str(ws.name))
            rows["slots"].append(res["quantum_slots"])
            rows["slots_busy"].append(res["quantum_busy"])
            rows["sv"].append(res["statevector_bytes"])
            rows["sv_used"].append(res["statevector_used"])
            rows["gpus"].append(res["gpus"])
            rows["gpus_busy"].append(res["gpus_busy"])
        factors = rows["worker"] or ["(no workers)"]
        for fig, total in zip(self.capacity, ("slots", "sv", "gpus")):
            if list(fig.y_range.factors) != factors:
                fig.y_range.factors = factors
            end = max(rows[total], default=0) * 1.05 or 1
            if fig.x_range.end != end:
                fig.x_range.end = end
        self.capacity_source.data = rows

    def _update_events(self, monitor: Monitor) -> None:
        events = monitor.events.events
        latest = events[-1] if events else None
        if latest is self._last_event:
            return
        self._last_event = latest
        for kinds, source in self.event_sources.items():
            chosen = [e for e in events if e.kind in kinds]
            source.data = {
                "time": [e.time * 1000 for e in chosen],
                "kind": [e.kind for e in chosen],
                "worker": [e.worker or "" for e in chosen],
                "cause": [e.cause or "" for e in chosen],
                "count": [e.count for e in chosen],
            }
