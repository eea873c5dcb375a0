"""Averages of sample records: what ``metrics()`` and ``detailed_metrics()`` return.

Pure functions of the records built by :class:`~qdask.monitoring.monitor.Monitor`,
so they are tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def covered(samples: list[dict[str, Any]]) -> float:
    """Seconds the samples cover (the first one's interval included)."""
    if not samples:
        return 0.0
    return samples[-1]["time"] - samples[0]["time"] + samples[0]["interval"]


def resource_metrics(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Fields of :class:`~qdask.monitoring.results.ResourceMetrics`.

    Examples
    --------
    >>> s = {"total": {"node_utilization": 50.0, "bandwidth": 10.0, "quantum_utilization": 100.0}}
    >>> resource_metrics([s, s])["quantum_utilization"]
    100.0
    """
    return {
        "node_utilization": _mean_total(samples, "node_utilization"),
        "network_bandwidth": _mean_total(samples, "bandwidth"),
        "quantum_utilization": _mean_total(samples, "quantum_utilization"),
    }


def detailed_metrics(samples: list[dict[str, Any]], *, recorded: bool = True) -> dict[str, Any]:
    """Fields of :class:`~qdask.monitoring.results.DetailedMetrics`.

    Gauges are averaged over the samples; capacities, task states and ready
    circuits are those of the latest sample; task throughput and times are
    summed over the samples' intervals. ``recorded=False`` marks a single
    reading taken on demand (``samples=0`` in the result).
    """
    last = samples[-1]
    tasks = [s["tasks"] for s in samples]
    finished = sum(t["finished"] for t in tasks)
    compute = sum(t["compute"] for t in tasks)
    elapsed = sum(s["interval"] for s in samples)
    return {
        "active_nodes": last["total"]["running"],
        "avg_load": _mean_total(samples, "load"),
        "bandwidth": _mean_total(samples, "bandwidth"),
        "latency": _mean_total(samples, "latency"),
        "memory_usage": int(_mean_total(samples, "memory")),
        "cpu_usage": _mean_total(samples, "cpu"),
        "memory_limit": last["total"]["memory_limit"],
        "node_utilization": _mean_total(samples, "node_utilization"),
        "quantum_slots": last["total"]["quantum_slots"],
        "quantum_busy": _mean_total(samples, "quantum_busy"),
        "quantum_queued": _mean_total(samples, "quantum_queued"),
        "quantum_utilization": _mean_total(samples, "quantum_utilization"),
        "statevector_bytes": last["total"]["statevector_bytes"],
        "statevector_used": _mean_total(samples, "statevector_used"),
        "gpu_utilization": mean(s["total"]["gpu_utilization"] for s in samples),
        "gpu_memory": mean(s["total"]["gpu_memory"] for s in samples),
        "throughput": finished / elapsed if elapsed > 0 else 0.0,
        "mean_task_duration": compute / finished if finished else None,
        "transfer_time": sum(t["transfer"] for t in tasks),
        "compute_time": compute,
        "tasks_by_state": dict(last["tasks"]["states"]),
        "circuits_by_priority": dict(last["tasks"]["circuits_by_priority"]),
        "workers": per_worker(samples),
        "window": covered(samples),
        "samples": len(samples) if recorded else 0,
    }


def per_worker(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each worker's numeric fields averaged over the samples it appears in.

    Text fields (name, role, status) are those of its latest appearance.
    """
    rows: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        for addr, w in s["workers"].items():
            rows.setdefault(addr, []).append(w)
    out = {}
    for addr, ws in rows.items():
        latest = ws[-1]
        out[addr] = {
            k: (mean(w.get(k) for w in ws) if _numeric(v) or v is None else v) for k, v in latest.items()
        }
    return out


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mean_total(samples: list[dict[str, Any]], key: str) -> float:
    return mean(s["total"][key] for s in samples) or 0.0
