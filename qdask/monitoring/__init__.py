"""Monitoring: metrics sampled on the scheduler, tracing, analysis, Prometheus and the dashboard page.

Layout (scheduler side unless noted):

* :mod:`~qdask.monitoring.monitor` -- the :class:`Monitor` owned by the qdask
  scheduler plugin, and the transition hook that tracks circuit tasks;
* :mod:`~qdask.monitoring.events` -- the store of failures, recoveries,
  migrations and scaling events that other subsystems feed;
* :mod:`~qdask.monitoring.aggregate`, :mod:`~qdask.monitoring.analysis` -- pure
  functions of the samples;
* :mod:`~qdask.monitoring.tracing` -- Chrome trace-event output;
* :mod:`~qdask.monitoring.prometheus`, :mod:`~qdask.monitoring.dashboard` --
  ``/metrics`` and ``/qdask`` on the scheduler's HTTP server;
* :mod:`~qdask.monitoring.worker` -- the workers' heartbeat metric;
* :mod:`~qdask.monitoring.client` -- the client-side reading API.

Only the light modules are imported here: workers import :mod:`qdask` too,
and must not pay for Bokeh.
"""

from __future__ import annotations

from qdask.monitoring.client import Monitoring, format_summary, summary
from qdask.monitoring.results import (
    AnalysisResult,
    Bottleneck,
    DetailedMetrics,
    ErrorStatistics,
    ResourceMetrics,
)

__all__ = [
    "AnalysisResult",
    "Bottleneck",
    "DetailedMetrics",
    "ErrorStatistics",
    "Monitoring",
    "ResourceMetrics",
    "format_summary",
    "summary",
]
