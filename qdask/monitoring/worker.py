"""Worker side of monitoring: a custom heartbeat metric (``Worker.metrics["qdask"]``).

The qdask worker plugin installs :class:`WorkerMetrics` on every worker, so
each heartbeat carries, in ``WorkerState.metrics["qdask"]`` on the scheduler:

``latency``
    the worker's smoothed heartbeat round trip to the scheduler, seconds;
``sent_bytes``
    task data the worker has sent so far (to workers and clients), bytes;
``gpus``
    for workers with GPUs, one ``{"index", "utilization", "memory_used",
    "memory_total"}`` per GPU, read through NVML (percent, bytes). Dask's own
    system monitor reports only the first visible GPU.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Worker

logger = logging.getLogger(__name__)

#: Key of the metric in ``Worker.metrics`` and ``WorkerState.metrics``.
METRIC = "qdask"


class WorkerMetrics:
    """Callable that Dask's heartbeat invokes as ``metric(worker)``.

    Parameters
    ----------
    gpu_indices : list of int
        NVML indices of the worker's GPUs (empty: no GPU reading, no NVML import).

    Examples
    --------
    >>> class FakeWorker:
    ...     latency = 0.002
    ...     transfer_outgoing_bytes_total = 10
    >>> WorkerMetrics([])(FakeWorker())
    {'latency': 0.002, 'sent_bytes': 10}
    """

    def __init__(self, gpu_indices: list[int]) -> None:
        self.gpu_indices = list(gpu_indices)
        self._handles: list[Any] | None = None

    def __call__(self, worker: Worker) -> dict[str, Any]:
        out: dict[str, Any] = {
            "latency": float(worker.latency),
            "sent_bytes": int(worker.transfer_outgoing_bytes_total),
        }
        if self.gpu_indices:
            out["gpus"] = self.read_gpus()
        return out

    def read_gpus(self) -> list[dict[str, float]]:
        """Utilization and memory of each GPU; empty when NVML fails (logged once)."""
        try:
            import pynvml

            if self._handles is None:
                # Reference-counted in NVML: safe beside Dask's own nvmlInit.
                pynvml.nvmlInit()
                self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in self.gpu_indices]
            rows = []
            for index, h in zip(self.gpu_indices, self._handles):
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                rows.append(
                    {
                        "index": index,
                        "utilization": float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
                        "memory_used": float(mem.used),
                        "memory_total": float(mem.total),
                    }
                )
            return rows
        except Exception:
            logger.warning("qdask: reading GPU metrics through NVML failed; no GPU metrics", exc_info=True)
            self.gpu_indices = []
            return []
