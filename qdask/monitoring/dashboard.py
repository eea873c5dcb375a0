"""The ``/qdask`` page of the scheduler's dashboard (Bokeh).

distributed's internal dashboard API (``distributed.dashboard.scheduler.applications``,
the Bokeh apps a scheduler serves, read once when the Scheduler is built;
``template_variables``, the navigation bar; the template/theme of Dask's own
pages) is reached through :mod:`qdask._compat`, whose canaries in
``tests/test_compat.py`` show a change in distributed first.

The page reads the scheduler-side stores (the monitor's samples, the circuit
tracker, the event store) and Dask's resource accounting; it never talks to
the workers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from qdask import _compat
from qdask.monitoring.counters import BUCKETS
from qdask.monitoring.events import FAILURE_KINDS, SCALING_KINDS
from qdask.quantum.annotation import TaskAnnotation
from qdask.scheduler.placement import worker_resources
from qdask.table import format_seconds

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.models import FactorRange, Range1d
    from distributed.scheduler import Scheduler

    from qdask.monitoring.monitor import Monitor

logger = logging.getLogger(__name__)

#: Path of the page, and its name in the navigation bar.
ROUTE = "/qdask"
PAGE = "qdask"
#: Refresh period of the page, milliseconds.
REFRESH_MS = 500
#: Points kept in the utilization plot.
ROLLOVER = 3600
#: Seconds the utilization curve is averaged over (single samples jump between 0 and 100 %).
SMOOTHING_S = 2.0
#: Priority classes shown by name (qdask.scheduler.placement.PRIORITIES); other priorities by number.
PRIORITY_NAMES = {-10: "low", 0: "normal", 10: "high", 100: "critical"}
#: Duration histogram labels, one per bucket of qdask.monitoring.counters.BUCKETS.
NO_GPUS = "no GPUs on this cluster"


def priority_label(priority: int) -> str:
    """``"high"`` for a class's own priority, the number otherwise.

    Examples
    --------
    >>> priority_label(10), priority_label(7)
    ('high', '7')
    """
    return PRIORITY_NAMES.get(priority, str(priority))


def bucket_label(bound: float) -> str:
    """A duration bucket's upper bound as text (``"<= 25ms"``, ``"> 5min"``).

    Examples
    --------
    >>> bucket_label(0.025), bucket_label(300.0), bucket_label(float("inf"))
    ('<=25ms', '<=5min', '>5min')
    """
    import math

    if math.isinf(bound):
        return ">5min"
    if bound >= 60:
        return f"<={bound / 60:g}min"
    if bound >= 1:
        return f"<={bound:g}s"
    return f"<={bound * 1e3:g}ms"


def eta_text(running: int, waiting: int, seconds_left: float, slots: float, finished: int, rate: float) -> str:
    """The progress line of the page.

    Examples
    --------
    >>> print(eta_text(2, 8, 12.0, 2, 100, 5.0))  # doctest: +NORMALIZE_WHITESPACE
    circuit tasks: 2 running, 8 waiting; about 12 s of work left on 2 slot(s), done in ~6 s;
    100 circuits finished, 5 circuits/s
    """
    parts = [f"circuit tasks: {running} running, {waiting} waiting"]
    if running or waiting:
        eta = seconds_left / slots if slots else float("inf")
        done = f"done in ~{eta:.3g} s" if eta != float("inf") else "no quantum slot to run them"
        parts.append(f"about {seconds_left:.3g} s of work left on {slots:g} slot(s), {done}")
    parts.append(f"{finished} circuits finished, {rate:.3g} circuits/s")
    return "; ".join(parts)


def register() -> bool:
    """Add the page to the dashboard of every Scheduler built from now on (idempotent).

    Must run before the Scheduler is constructed: distributed reads its table
    of Bokeh applications once, when it starts the dashboard. Returns False
    when the dashboard is unavailable (no Bokeh), so the page is simply absent.
    """
    return _compat.add_dashboard_application(ROUTE, qdask_doc)


def page_served(scheduler: Scheduler) -> bool:
    """Whether this scheduler's dashboard serves ``/qdask``.

    False when its dashboard is off or started before :func:`register` ran
    (a plugin registered on a running scheduler).
    """
    return _compat.dashboard_serves(scheduler, ROUTE)


def add_nav_link(scheduler: Scheduler) -> bool:
    """Link the page from the navigation bar of Dask's pages, if the page is served."""
    if not page_served(scheduler):
        return False
    # Memoized per scheduler and shared with the running Bokeh app, so
    # appending here reaches pages rendered from now on.
    pages = _compat.dashboard_nav_pages(scheduler)
    if PAGE not in pages:
        pages.append(PAGE)
    return True


def qdask_doc(scheduler: Scheduler, extra: dict[str, Any], doc: Document) -> None:
    """Build the page for one browser session (distributed's application signature)."""
    page = QdaskPage(scheduler)
    page.update()
    doc.title = "Dask: qdask"
    doc.add_root(page.root)
    _compat.style_dashboard_doc(doc, extra, page, REFRESH_MS)


#: (field, column title) of the batches table.
BATCH_COLUMNS = (
    ("batch", "batch"),
    ("kind", "kind"),
    ("progress", "tasks done"),
    ("circuits", "circuits done"),
    ("running", "running"),
    ("waiting", "waiting"),
    ("elapsed", "elapsed"),
    ("eta", "ETA"),
)
#: Batches shown, newest first.
BATCHES_SHOWN = 5


def batch_rows(progress: list[dict[str, Any]], live: dict[str, tuple[int, int, float]], slots: float,
               now: float) -> dict[str, list[Any]]:
    """Columns of the batches table: ``progress`` from CircuitCounters, ``live`` {batch: (running, waiting, est s)}.

    The ETA extrapolates the batch's own pace once a task finished, and uses
    the cost model's estimate of its ready tasks over the cluster's slots before.

    Examples
    --------
    >>> rows = batch_rows([{"batch": "b1", "kind": "sample", "tasks": 10, "done": 4, "circuits": 40,
    ...                     "started": 0.0, "finished": None}], {"b1": (2, 4, 3.0)}, 2, 8.0)
    >>> rows["progress"], rows["eta"]
    (['4/10'], ['~12 s'])
    """
    rows: dict[str, list[Any]] = {k: [] for k, _ in BATCH_COLUMNS}
    for p in reversed(progress[-BATCHES_SHOWN:]):
        running, waiting, est = live.get(p["batch"], (0, 0, 0.0))
        end = p["finished"] if p["finished"] is not None else now
        elapsed = max(end - p["started"], 0.0)
        left = max(p["tasks"] - p["done"], 0)
        if p["finished"] is not None or not left:
            eta = "done"
        elif p["done"]:
            eta = "~" + format_seconds(elapsed / p["done"] * left)
        else:
            eta = "~" + format_seconds(est / slots) if slots else "no quantum slot"
        rows["batch"].append(p["batch"])
        rows["kind"].append(p["kind"])
        rows["progress"].append(f"{p['done']}/{p['tasks']}")
        rows["circuits"].append(p["circuits"])
        rows["running"].append(running)
        rows["waiting"].append(waiting)
        rows["elapsed"].append(format_seconds(elapsed))
        rows["eta"].append(eta)
    return rows


def batches_html(rows: dict[str, list[Any]]) -> str:
    """The batches table as HTML (escaped cells), or a line saying there is none yet.

    Examples
    --------
    >>> "<td>4/10</td>" in batches_html({k: [v] for k, v in zip([k for k, _ in BATCH_COLUMNS],
    ...                                  ["b1", "sample", "4/10", 40, 2, 4, "8 s", "~12 s"])})
    True
    """
    import html

    if not rows["batch"]:
        return "<p>Batches: none yet (each Sampler/Simulator call is one).</p>"
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in BATCH_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(rows[k][i]))}</td>" for k, _ in BATCH_COLUMNS) + "</tr>"
        for i in range(len(rows["batch"]))
    )
    css = "<style>.qdask-batches th, .qdask-batches td {text-align: left; padding: 2px 16px 2px 0;}</style>"
    return f'{css}<b>Last batches</b><table class="qdask-batches"><tr>{head}</tr>{body}</table>'


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
        # DataTable, Div, Label and TableColumn from their own modules: bokeh.models
        # re-exports them, but not in a way type checkers follow.
        from bokeh.layouts import column, row
        from bokeh.models import (
            BasicTicker,
            ColumnDataSource,
            FactorRange,
            HoverTool,
            NumeralTickFormatter,
            Range1d,
        )
        from bokeh.models.annotations import Label
        from bokeh.models.widgets import DataTable, Div, TableColumn
        from bokeh.plotting import figure

        self.scheduler = scheduler
        self._last_sample = 0.0
        self._last_event: object = None

        self.status = Div(name="qdask-status", text="")
        self.progress = Div(name="qdask-progress", text="")
        self._recent: list[tuple[float, float, float]] = []  # (time, quantum %, threads %) for the rolling mean
        self._counts: list[tuple[float, int]] = []  # (time, circuits finished) over the last SMOOTHING_S
        self.utilization_source = ColumnDataSource(
            {"time": [], "quantum": [], "nodes": [], "quantum_raw": []}, name="qdask-utilization-source"
        )
        self.utilization = figure(
            title=f"Utilization over time (%, mean of the last {SMOOTHING_S:g} s)", x_axis_type="datetime",
            y_range=Range1d(start=0, end=105), height=260, sizing_mode="stretch_width", name="qdask-utilization",
            tools="xpan,xwheel_zoom,reset",
        )
        self.utilization.line("time", "quantum_raw", source=self.utilization_source, line_width=1,
                              color="#7b3294", alpha=0.2, legend_label="quantum slots busy (each sample)")
        self.utilization.line("time", "quantum", source=self.utilization_source, line_width=2,
                              color="#7b3294", legend_label="quantum slots busy")
        self.utilization.line("time", "nodes", source=self.utilization_source, line_width=1,
                              color="#999999", legend_label="worker threads busy")
        # Beside the plot, not over the curve it explains.
        self.utilization.add_layout(self.utilization.legend[0], "right")

        self.priority_source = ColumnDataSource({"priority": [], "label": [], "ready": []},
                                                name="qdask-priority-source")
        # Explicit ranges, set in update(): data ranges of empty plots make Bokeh warn.
        self.priority = figure(title="Ready circuit tasks by priority", height=260, width=360,
                               x_range=FactorRange(factors=["normal"]), y_range=Range1d(start=0, end=1),
                               name="qdask-priority", tools="")
        self.priority.vbar(x="label", top="ready", width=0.8, source=self.priority_source, color="#7b3294")
        self.priority.xaxis.axis_label = "priority (low, normal, high, critical, or the number)"
        self.priority.yaxis.ticker = BasicTicker(desired_num_ticks=5, min_interval=1)

        # Throughput and what ran: circuits/s over time, per backend, durations and widths.
        self.rate_source = ColumnDataSource({"time": [], "rate": []}, name="qdask-rate-source")
        self.rate = figure(title=f"Circuits finished per second (over the last {SMOOTHING_S:g} s)",
                           x_axis_type="datetime",
                           x_range=self.utilization.x_range, y_range=Range1d(start=0, end=1), height=220,
                           sizing_mode="stretch_width", name="qdask-rate", tools="xpan,reset")
        self.rate.line("time", "rate", source=self.rate_source, line_width=2, color="#1b7837")
        self.backends_source = ColumnDataSource({"backend": [], "circuits": []}, name="qdask-backends-source")
        self.backends = self._bars("Circuits per backend", "qdask-backends", self.backends_source, "backend")
        self.durations_source = ColumnDataSource({"bucket": [], "circuits": []}, name="qdask-durations-source")
        self.durations = self._bars("Circuit durations", "qdask-durations", self.durations_source, "bucket")
        self.widths_source = ColumnDataSource({"qubits": [], "circuits": []}, name="qdask-widths-source")
        self.widths = self._bars("Circuit widths (qubits)", "qdask-widths", self.widths_source, "qubits")

        self.capacity_source = ColumnDataSource(
            {k: [] for k in ("worker", "slots", "slots_busy", "sv", "sv_used", "sv_full", "sv_pct", "gpus",
                             "gpus_busy")},
            name="qdask-capacity-source",
        )
        self.capacity = []
        for title, total, used, fmt in (
            ("Quantum slots per worker: capacity / in use", "slots", "slots_busy", "0"),
            # In percent of the budget: MiB of a small circuit would not show against GiB.
            ("State-vector memory per worker: % of its budget in use", "sv_full", "sv_pct", "0"),
            ("GPUs per worker: capacity / in use", "gpus", "gpus_busy", "0"),
        ):
            name = "qdask-capacity-" + {"sv_full": "sv"}.get(total, total)
            fig = figure(title=title, x_range=Range1d(start=0, end=1), y_range=FactorRange(factors=["(no workers)"]),
                         height=240, sizing_mode="stretch_width", name=name, tools="")
            fig.hbar(y="worker", right=total, height=0.8, source=self.capacity_source, color="#c2a5cf",
                     legend_label="capacity")
            fig.hbar(y="worker", right=used, height=0.5, source=self.capacity_source, color="#7b3294",
                     legend_label="in use")
            fig.xaxis.formatter = NumeralTickFormatter(format=fmt)
            if fmt == "0":  # counts: whole ticks only
                fig.xaxis.ticker = BasicTicker(desired_num_ticks=5, min_interval=1)
            fig.legend.location = "bottom_right"
            if total == "sv_full":
                fig.add_tools(HoverTool(tooltips=[("worker", "@worker"), ("budget", "@sv{0.0 b}"),
                                                  ("in use", "@sv_used{0.0 b} (@sv_pct{0.0} %)")]))
            else:
                fig.add_tools(HoverTool(tooltips=[("worker", "@worker"), ("capacity", f"@{total}"),
                                                  ("in use", f"@{used}")]))
            self.capacity.append(fig)
        # Said in words on a machine without GPUs, instead of an empty plot.
        self.no_gpus = Label(x=10, y=10, x_units="screen", y_units="screen", text="", name="qdask-no-gpus",
                             text_font_size="14pt", text_color="#666666")
        self.capacity[2].add_layout(self.no_gpus)

        # Roles and emulated-device error rates (HybridConfig, qdask.hybrid.noise): what
        # role routing and noise-aware routing decide from.
        # A plain HTML table: Bokeh's DataTable (SlickGrid) kept drawing the first rows it
        # was given while its data changed every refresh (seen in headless Chromium).
        self.batches = Div(name="qdask-batches", text="", sizing_mode="stretch_width")
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
            self.progress,
            self.batches,
            row(self.utilization, self.priority, sizing_mode="stretch_width"),
            row(self.rate, self.backends, self.durations, self.widths, sizing_mode="stretch_width"),
            row(*self.capacity, sizing_mode="stretch_width"),
            self.workers,
            row(*self.event_figures, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    @staticmethod
    def _bars(title: str, name: str, source: Any, x: str) -> Any:
        from bokeh.models import BasicTicker, FactorRange, HoverTool, Range1d
        from bokeh.plotting import figure

        fig = figure(title=title, x_range=FactorRange(factors=["-"]), y_range=Range1d(start=0, end=1), height=220,
                     width=300, name=name, tools="")
        fig.vbar(x=x, top="circuits", width=0.8, source=source, color="#1b7837")
        fig.yaxis.ticker = BasicTicker(desired_num_ticks=5, min_interval=1)
        fig.xaxis.major_label_orientation = 0.8
        fig.add_tools(HoverTool(tooltips=[(x, f"@{x}"), ("circuits", "@circuits")]))
        return fig

    @staticmethod
    def _set_bars(fig: Any, source: Any, x: str, labels: list[str], counts: list[int]) -> None:
        if list(source.data.get(x, [])) == labels and list(source.data["circuits"]) == counts:
            return
        source.data = {x: labels, "circuits": counts}
        fig.x_range.factors = labels or ["-"]
        fig.y_range.update(start=0, end=max(counts, default=0) * 1.1 or 1)

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
        by_priority = dict(sorted(monitor.tracker.by_priority.items())) if monitor.tracking else {}
        labels = [priority_label(p) for p in by_priority]
        self.priority_source.data = {"priority": list(by_priority), "label": labels,
                                     "ready": list(by_priority.values())}
        if by_priority:
            cast("FactorRange", self.priority.x_range).factors = labels
            self.priority.y_range.update(start=0, end=max(by_priority.values()) * 1.1)
        self._update_circuits(monitor)
        self._update_events(monitor)

    def _update_circuits(self, monitor: Monitor) -> None:
        """Circuits/s, per backend, durations, widths and the progress line."""
        import time


        counters = monitor.counters
        now, total = time.time(), counters.total
        # Over the last SMOOTHING_S, as utilization: per refresh, whole tasks finishing make a sawtooth.
        self._counts = [c for c in self._counts if c[0] >= now - SMOOTHING_S] + [(now, total)]
        rate = 0.0
        (t0, n0) = self._counts[0]
        if now > t0:
            rate = (total - n0) / (now - t0)
            self.rate_source.stream({"time": [now * 1000], "rate": [rate]}, rollover=ROLLOVER)
            peak = max(self.rate_source.data["rate"], default=0.0)
            self.rate.y_range.update(start=0, end=peak * 1.1 or 1)
        by_backend: dict[str, int] = {}
        for (backend, _), n in counters.circuits.items():
            by_backend[backend] = by_backend.get(backend, 0) + n
        self._set_bars(self.backends, self.backends_source, "backend", sorted(by_backend),
                       [by_backend[b] for b in sorted(by_backend)])
        per_bucket = [b - a for a, b in zip([0, *counters.buckets[:-1]], counters.buckets)]
        used = [i for i, n in enumerate(per_bucket) if n]
        span = range(min(used), max(used) + 1) if used else range(0)
        self._set_bars(self.durations, self.durations_source, "bucket", [bucket_label(BUCKETS[i]) for i in span],
                       [per_bucket[i] for i in span])
        widths = sorted(counters.widths)
        self._set_bars(self.widths, self.widths_source, "qubits", [f"{q}q" for q in widths],
                       [counters.widths[q] for q in widths])
        # Progress of the work in flight: what runs, what waits, and the cost model's estimate of it.
        running = waiting = 0
        seconds_left = 0.0
        live: dict[str, list[float]] = {}  # { batch: [running, waiting, est seconds] }
        for key in monitor.tracker.ready if monitor.tracking else ():
            ts = self.scheduler.tasks.get(key)
            ann = TaskAnnotation.of(ts)
            if ts is None or ann is None:
                continue
            is_running = ts.state == "processing" and ts.processing_on is not None and ts in ts.processing_on.executing
            running += is_running
            waiting += not is_running
            est = float(ann.est_seconds or 0.0)
            seconds_left += est
            if ann.batch is not None:
                acc = live.setdefault(str(ann.batch), [0, 0, 0.0])
                acc[0 if is_running else 1] += 1
                acc[2] += est
        slots = sum(worker_resources(ws)["quantum_slots"] for ws in self.scheduler.workers.values())
        rows = batch_rows(list(counters.batch_progress.values()),
                          {b: (int(r), int(w), e) for b, (r, w, e) in live.items()}, slots, now)
        html = batches_html(rows)
        if self.batches.text != html:
            self.batches.text = html
        text = eta_text(running, waiting, seconds_left, slots, total, rate)
        if not monitor.tracking:
            text += " (start monitoring to follow running and waiting circuits)"
        self.progress.text = text

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
            smoothed: dict[str, Any] = {"time": [], "quantum": [], "nodes": [], "quantum_raw": []}
            for s in new:
                t, q, n = s["time"], s["total"]["quantum_utilization"], s["total"]["node_utilization"]
                self._recent = [r for r in self._recent if r[0] > t - SMOOTHING_S] + [(t, q, n)]
                smoothed["time"].append(t * 1000)
                smoothed["quantum"].append(sum(r[1] for r in self._recent) / len(self._recent))
                smoothed["nodes"].append(sum(r[2] for r in self._recent) / len(self._recent))
                smoothed["quantum_raw"].append(q)
            self.utilization_source.stream(smoothed, rollover=ROLLOVER)

    def _update_workers(self) -> None:
        plugin = self.scheduler.extensions["qdask"]
        rows = sorted(plugin.resources(), key=lambda r: (r["role"], r["name"]))
        data = {k: [_cell(r.get(k)) for r in rows] for k, _ in WORKER_COLUMNS}
        data["slots"] = [_cell(r["resources"].get("quantum", 0)) for r in rows]
        if data != self.workers_source.data:
            self.workers_source.data = data

    def _update_capacity(self) -> None:
        rows: dict[str, list[Any]] = {k: [] for k in self.capacity_source.data}
        for ws in self.scheduler.workers.values():
            res = worker_resources(ws)
            rows["worker"].append(str(ws.name))
            rows["slots"].append(res["quantum_slots"])
            rows["slots_busy"].append(res["quantum_busy"])
            rows["sv"].append(res["statevector_bytes"])
            rows["sv_used"].append(res["statevector_used"])
            budget = res["statevector_bytes"]
            rows["sv_full"].append(100.0 if budget else 0.0)
            rows["sv_pct"].append(100.0 * res["statevector_used"] / budget if budget else 0.0)
            rows["gpus"].append(res["gpus"])
            rows["gpus_busy"].append(res["gpus_busy"])
        factors = rows["worker"] or ["(no workers)"]
        for fig, total in zip(self.capacity, ("slots", "sv_full", "gpus")):
            # Built in __init__ with a FactorRange y and a Range1d x.
            y_range, x_range = cast("FactorRange", fig.y_range), cast("Range1d", fig.x_range)
            if list(y_range.factors) != factors:
                y_range.factors = factors
            end = 100.0 if total == "sv_full" else max(rows[total], default=0) * 1.05 or 1
            if x_range.end != end:
                x_range.end = end
        no_gpus = NO_GPUS if not any(rows["gpus"]) else ""
        if self.no_gpus.text != no_gpus:
            self.no_gpus.text = no_gpus
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
