"""What the reading API returns: typed views of the scheduler's samples.

The scheduler handlers answer with plain dicts (msgpack travels them); the
client turns them into these frozen dataclasses. Units everywhere:
utilizations in percent, bandwidth in bytes/s, latency and times in seconds,
memory in bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes

from qdask.table import Table, format_seconds

if TYPE_CHECKING:
    import pandas as pd


class _FromDict:
    """``cls.from_dict(d)`` keeping only the fields the class knows, and ``to_frame()``.

    A newer scheduler may send extra keys; an older client ignores them
    instead of failing.
    """

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_frame(self) -> pd.DataFrame:
        """The fields as a one-row pandas DataFrame (raw units: percent, bytes/s, seconds).

        Examples
        --------
        >>> qc.metrics().to_frame()  # doctest: +SKIP
           node_utilization  network_bandwidth  quantum_utilization
        0              50.0                0.0                100.0
        """
        import pandas as pd

        return pd.DataFrame([asdict(self)])  # type: ignore[call-overload]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{format_bytes(int(value))}/s"


@dataclass(frozen=True)
class ResourceMetrics(_FromDict):
    """How busy the cluster is, averaged over the recent samples.

    Attributes
    ----------
    node_utilization : float
        Percent of worker threads running a task.
    network_bandwidth : float
        Bytes/s of task data the workers sent (to other workers and to clients).
    quantum_utilization : float
        Percent of quantum slots running a circuit task.

    Examples
    --------
    >>> m = ResourceMetrics(node_utilization=50.0, network_bandwidth=0.0, quantum_utilization=100.0)
    >>> m.quantum_utilization
    100.0
    """

    node_utilization: float
    network_bandwidth: float
    quantum_utilization: float

    def __str__(self) -> str:
        """One line in human units.

        Examples
        --------
        >>> print(ResourceMetrics(node_utilization=50.0, network_bandwidth=3 * 2**20, quantum_utilization=100.0))
        quantum slots 100.0 % busy, worker threads 50.0 % busy, network 3.00 MiB/s
        """
        return (
            f"quantum slots {_pct(self.quantum_utilization)} busy, worker threads "
            f"{_pct(self.node_utilization)} busy, network {_rate(self.network_bandwidth)}"
        )


@dataclass(frozen=True)
class DetailedMetrics(_FromDict):
    """Cluster totals averaged over the recent samples, and per-worker detail.

    Attributes
    ----------
    active_nodes : int
        Running workers in the latest sample.
    avg_load : float
        Mean over workers of queued work per thread, in seconds (Dask's occupancy / threads).
    bandwidth : float
        Bytes/s of task data sent by the workers (same reading as ``network_bandwidth``).
    latency : float
        Mean scheduler-worker round trip in seconds (heartbeat, smoothed).
    memory_usage : int
        Bytes of worker process memory, summed over workers.
    cpu_usage : float
        Mean CPU percent of the worker processes (100 = one core).
    memory_limit : int
        Bytes of worker memory limits, summed.
    node_utilization : float
        Percent of worker threads running a task.
    quantum_slots : int
        Quantum slots in the cluster (latest sample).
    quantum_busy : float
        Slots running a circuit task, averaged.
    quantum_queued : float
        Circuit tasks waiting on a worker for a free slot, averaged.
    quantum_utilization : float
        ``100 * quantum_busy / quantum_slots``, averaged.
    statevector_bytes : int
        State-vector budget of the cluster in bytes (latest sample).
    statevector_used : float
        State-vector bytes requested by running circuit tasks, averaged.
    gpu_utilization : float or None
        Mean GPU utilization in percent; None when no worker has a GPU.
    gpu_memory : float or None
        GPU memory in use in bytes, summed; None when no worker has a GPU.
    throughput : float
        Tasks finished per second.
    mean_task_duration : float or None
        Seconds of compute per finished task; None when none finished.
    transfer_time : float
        Seconds spent fetching dependencies for the tasks that finished.
    compute_time : float
        Seconds of compute of the tasks that finished.
    tasks_by_state : dict
        Scheduler tasks per state (latest sample).
    circuits_by_priority : dict
        Circuit tasks ready to run (waiting for or in a slot) per priority (latest sample).
    workers : dict
        Per-worker averages, keyed by worker address (see ``docs/monitoring.md``).
    window : float
        Seconds covered by the samples.
    samples : int
        Samples averaged (0: one reading taken on demand, monitoring is off).

    Examples
    --------
    >>> detailed = qc.detailed_metrics("30s")  # doctest: +SKIP
    >>> print(detailed)  # compact, human units  # doctest: +SKIP
    >>> detailed.to_frame()  # one row per worker, raw units  # doctest: +SKIP
    """

    active_nodes: int
    avg_load: float
    bandwidth: float
    latency: float
    memory_usage: int
    cpu_usage: float
    memory_limit: int = 0
    node_utilization: float = 0.0
    quantum_slots: int = 0
    quantum_busy: float = 0.0
    quantum_queued: float = 0.0
    quantum_utilization: float = 0.0
    statevector_bytes: int = 0
    statevector_used: float = 0.0
    gpu_utilization: float | None = None
    gpu_memory: float | None = None
    throughput: float = 0.0
    mean_task_duration: float | None = None
    transfer_time: float = 0.0
    compute_time: float = 0.0
    tasks_by_state: dict[str, int] = field(default_factory=dict)
    circuits_by_priority: dict[str, int] = field(default_factory=dict)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    window: float = 0.0
    samples: int = 0

    def to_frame(self) -> pd.DataFrame:
        """One row per worker (index: address) with its averaged figures, in raw units.

        The cluster totals are the attributes of this object; ``asdict(self)``
        has them all.

        Examples
        --------
        >>> d = DetailedMetrics(active_nodes=1, avg_load=0.0, bandwidth=0.0, latency=0.001,
        ...                     memory_usage=2**30, cpu_usage=5.0,
        ...                     workers={"tcp://127.0.0.1:1": {"name": "0", "memory": 2**30}})
        >>> d.to_frame().loc["tcp://127.0.0.1:1", "memory"]
        np.int64(1073741824)
        """
        import pandas as pd

        frame = pd.DataFrame.from_dict(self.workers, orient="index")
        frame.index.name = "worker"
        return frame

    def __str__(self) -> str:
        """A summary line and a per-worker table, within 100 columns, in human units."""
        head = (
            f"{self.active_nodes} worker(s) over {self.window:.3g} s ({self.samples} sample(s)): "
            f"quantum slots {_pct(self.quantum_utilization)} busy, threads {_pct(self.node_utilization)}\n"
            f"cpu {_pct(self.cpu_usage)}, memory {format_bytes(int(self.memory_usage))}"
            f"/{format_bytes(int(self.memory_limit))}, net {_rate(self.bandwidth)}, "
            f"latency {format_seconds(self.latency)}, {self.throughput:.3g} tasks/s"
        )
        rows = [{"worker": addr, **w} for addr, w in self.workers.items()]
        columns = ["worker", "name", "role", "cpu", "memory", "load", "quantum_busy", "quantum_queued",
                   "statevector_used", "bandwidth", "latency"]
        return head + ("\n" + str(Table(rows, columns)) if rows else "")


@dataclass(frozen=True)
class ErrorStatistics(_FromDict):
    """Failures seen by the scheduler since it started.

    Attributes
    ----------
    node_failures : int
        Workers that died (left without being retired).
    network_errors : int
        Communication failures recorded by fault tolerance.
    quantum_errors : int
        Failed circuit executions recorded by fault tolerance.
    avg_recovery_time : float or None
        Mean seconds from a failure to its recovery; None when nothing recovered yet.
    recoveries : int
        Recoveries recorded.

    Examples
    --------
    >>> ErrorStatistics(node_failures=1, network_errors=0, quantum_errors=0,
    ...                 avg_recovery_time=None).node_failures
    1
    """

    node_failures: int
    network_errors: int
    quantum_errors: int
    avg_recovery_time: float | None
    recoveries: int = 0

    def __str__(self) -> str:
        """One line.

        Examples
        --------
        >>> print(ErrorStatistics(node_failures=1, network_errors=0, quantum_errors=2,
        ...                       avg_recovery_time=0.5, recoveries=1))
        1 node failure(s), 0 network error(s), 2 quantum error(s); 1 recovery(ies), mean 500 ms
        """
        mean = "" if self.avg_recovery_time is None else f", mean {format_seconds(self.avg_recovery_time)}"
        return (
            f"{self.node_failures} node failure(s), {self.network_errors} network error(s), "
            f"{self.quantum_errors} quantum error(s); {self.recoveries} recovery(ies){mean}"
        )


@dataclass(frozen=True)
class Bottleneck(_FromDict):
    """One finding of :func:`qdask.monitoring.analysis.analyze`.

    Attributes
    ----------
    rule : str
        Which rule fired (``"scheduler-bound"``, ``"imbalance"``, ``"quantum-queue"``,
        ``"memory-pressure"``, ``"transfer-bound"``, ``"gpu-idle"``).
    message : str
        What was observed, with the numbers.
    recommendation : str
        What to change.
    evidence : dict
        The figures behind the finding.

    Examples
    --------
    >>> for b in qc.analyze().bottlenecks:  # doctest: +SKIP
    ...     print(b.rule, b.recommendation)
    """

    rule: str
    message: str
    recommendation: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


@dataclass(frozen=True)
class AnalysisResult:
    """Bottlenecks found in the recent samples and what to do about them.

    Attributes
    ----------
    bottlenecks : list of Bottleneck
        Empty for a healthy run.
    recommendations : list of str
        One per bottleneck, in the same order.
    window : float
        Seconds of samples analysed.
    samples : int
        Samples analysed.

    Examples
    --------
    >>> AnalysisResult(bottlenecks=[], recommendations=[]).healthy
    True
    """

    bottlenecks: list[Bottleneck]
    recommendations: list[str]
    window: float = 0.0
    samples: int = 0

    @property
    def healthy(self) -> bool:
        """No bottleneck found."""
        return not self.bottlenecks

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnalysisResult:
        """The result of :meth:`to_dict` (or of the scheduler's ``qdask_analyze`` handler), rebuilt.

        Examples
        --------
        >>> AnalysisResult.from_dict(qc.analyze().to_dict())  # doctest: +SKIP
        """
        return cls(
            bottlenecks=[Bottleneck.from_dict(b) for b in d["bottlenecks"]],
            recommendations=list(d["recommendations"]),
            window=d.get("window", 0.0),
            samples=d.get("samples", 0),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for JSON): bottlenecks as dicts, recommendations, window.

        Examples
        --------
        >>> json.dumps(qc.analyze().to_dict())  # doctest: +SKIP
        """
        return {
            "bottlenecks": [b.__dict__.copy() for b in self.bottlenecks],
            "recommendations": list(self.recommendations),
            "window": self.window,
            "samples": self.samples,
        }
