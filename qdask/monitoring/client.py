"""Client side of monitoring: the calls behind ``QuantumCluster``'s reading API.

Each function talks to the qdask scheduler plugin through its handlers
(``client.scheduler.qdask_*``), so the same calls work for an embedded cluster,
a cluster attached by address and the ``qdask monitor`` command.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes

from qdask.config import MonitoringConfig
from qdask.monitoring.results import AnalysisResult, DetailedMetrics, ErrorStatistics, ResourceMetrics

if TYPE_CHECKING:
    from distributed import Client

Window = float | str | None


class Monitoring:
    """Handle of the scheduler's monitor, returned by ``QuantumCluster.start_monitoring``.

    Calling ``start_monitoring`` again reconfigures the same scheduler-side
    monitor; any handle's :meth:`stop` stops it.

    Attributes
    ----------
    config : MonitoringConfig
        The configuration the scheduler runs with.

    Examples
    --------
    >>> mon = qc.start_monitoring(MonitoringConfig(sampling_interval="100ms"))  # doctest: +SKIP
    >>> mon.samples()[-1]["total"]["quantum_utilization"]  # doctest: +SKIP
    0.0
    >>> mon.stop()  # doctest: +SKIP
    """

    def __init__(self, client: Client, config: MonitoringConfig) -> None:
        self._client = client
        self.config = config

    @property
    def running(self) -> bool:
        """Whether the scheduler's monitor samples or traces now."""
        return bool(self._client.sync(self._client.scheduler.qdask_monitor_status)["running"])

    def samples(self, since: float = 0.0, limit: int | None = None) -> list[dict[str, Any]]:
        """Recorded samples taken after wall-clock time ``since`` (at most the last ``limit``).

        Each sample is a dict with ``time`` (epoch seconds), ``total`` (cluster
        figures such as ``quantum_utilization`` and ``node_utilization``, in
        percent) and ``workers`` (the same per worker); ``docs/monitoring.md``
        lists the fields.

        Examples
        --------
        >>> samples = mon.samples(limit=100)  # doctest: +SKIP
        >>> [s["total"]["quantum_utilization"] for s in samples][-3:]  # doctest: +SKIP
        [100.0, 50.0, 0.0]
        """
        return self._client.sync(self._client.scheduler.qdask_samples, since=since, limit=limit)

    def stop(self) -> None:
        """Stop sampling and tracing; the log and trace files are closed (trace made valid JSON).

        Examples
        --------
        >>> mon.stop()  # doctest: +SKIP
        >>> mon.running  # doctest: +SKIP
        False
        """
        self._client.sync(self._client.scheduler.qdask_monitor_stop)

    def __repr__(self) -> str:
        return f"<Monitoring every {self.config.sampling_interval:g} s>"


def start(client: Client, config: MonitoringConfig | None = None) -> Monitoring:
    """Start (or reconfigure) monitoring on the scheduler of ``client``."""
    config = config if config is not None else MonitoringConfig()
    applied = client.sync(client.scheduler.qdask_monitor_start, config=config.to_dict())
    return Monitoring(client, MonitoringConfig(**applied))


def metrics(client: Client, window: Window = None) -> ResourceMetrics:
    """:class:`ResourceMetrics` averaged over the last ``window`` (default ``qdask.monitoring.window``)."""
    return ResourceMetrics.from_dict(client.sync(client.scheduler.qdask_metrics, window=window))


def detailed_metrics(client: Client, window: Window = None) -> DetailedMetrics:
    """:class:`DetailedMetrics` averaged over the last ``window``."""
    return DetailedMetrics.from_dict(client.sync(client.scheduler.qdask_detailed_metrics, window=window))


def error_statistics(client: Client) -> ErrorStatistics:
    """:class:`ErrorStatistics` since the scheduler started."""
    return ErrorStatistics.from_dict(client.sync(client.scheduler.qdask_error_statistics))


def analyze(client: Client, window: Window = None) -> AnalysisResult:
    """:class:`AnalysisResult` over the last ``window`` (default ``qdask.monitoring.analysis.window``)."""
    return AnalysisResult.from_dict(client.sync(client.scheduler.qdask_analyze, window=window))


def format_summary(
    metrics: ResourceMetrics,
    detailed: DetailedMetrics,
    errors: ErrorStatistics,
    analysis: AnalysisResult,
) -> str:
    """Metrics, failures and analysis as a few lines of text (for ``qdask demo`` and logs).

    Examples
    --------
    >>> m = ResourceMetrics(node_utilization=50.0, network_bandwidth=0.0, quantum_utilization=75.0)
    >>> d = DetailedMetrics(active_nodes=2, avg_load=0.5, bandwidth=0.0, latency=0.002,
    ...                     memory_usage=2**30, cpu_usage=40.0, quantum_slots=2)
    >>> e = ErrorStatistics(node_failures=0, network_errors=0, quantum_errors=0, avg_recovery_time=None)
    >>> print(format_summary(m, d, e, AnalysisResult([], [])))  # doctest: +NORMALIZE_WHITESPACE
    utilization   quantum 75.0%  nodes 50.0%  cpu 40.0%
    cluster       2 workers  2 quantum slots  load 0.5 s/thread  memory 1.00 GiB
    network       0 B/s  latency 2.0 ms
    failures      none
    analysis      no bottleneck found
    """
    lines = [
        f"utilization   quantum {metrics.quantum_utilization:.1f}%  nodes {metrics.node_utilization:.1f}%"
        f"  cpu {detailed.cpu_usage:.1f}%"
        + (f"  gpu {detailed.gpu_utilization:.1f}%" if detailed.gpu_utilization is not None else ""),
        f"cluster       {detailed.active_nodes} workers  {detailed.quantum_slots} quantum slots"
        f"  load {detailed.avg_load:.3g} s/thread  memory {format_bytes(detailed.memory_usage)}",
        f"network       {format_bytes(int(metrics.network_bandwidth))}/s  latency {detailed.latency * 1e3:.1f} ms",
    ]
    failures = [
        f"{n} {label}"
        for n, label in (
            (errors.node_failures, "node failure(s)"),
            (errors.network_errors, "network error(s)"),
            (errors.quantum_errors, "quantum error(s)"),
        )
        if n
    ]
    if errors.avg_recovery_time is not None:
        failures.append(f"recovery {errors.avg_recovery_time:.3g} s on average")
    lines.append("failures      " + (", ".join(failures) or "none"))
    if analysis.healthy:
        lines.append("analysis      no bottleneck found")
    for b in analysis.bottlenecks:
        lines.append(f"bottleneck    {b.rule}: {b.message}")
        lines.append(f"  -> {b.recommendation}")
    return "\n".join(lines)


def summary(client: Client, window: Window = None) -> str:
    """Read everything from the scheduler and :func:`format_summary` it."""
    return format_summary(
        metrics(client, window), detailed_metrics(client, window), error_statistics(client), analyze(client, window)
    )


def format_line(detailed: DetailedMetrics) -> str:
    """One line of live metrics (``qdask monitor``)."""
    gpu = f" gpu {detailed.gpu_utilization:5.1f}%" if detailed.gpu_utilization is not None else ""
    return (
        f"{time.strftime('%H:%M:%S')} workers {detailed.active_nodes}"
        f" quantum {detailed.quantum_utilization:5.1f}% ({detailed.quantum_busy:.0f}/{detailed.quantum_slots} busy,"
        f" {detailed.quantum_queued:.0f} queued)"
        f" nodes {detailed.node_utilization:5.1f}% cpu {detailed.cpu_usage:5.1f}%{gpu}"
        f" mem {format_bytes(detailed.memory_usage)}"
        f" net {format_bytes(int(detailed.bandwidth))}/s latency {detailed.latency * 1e3:.1f} ms"
        f" tasks {sum(detailed.tasks_by_state.get(s, 0) for s in ('processing', 'queued', 'no-worker'))} ready"
    )
