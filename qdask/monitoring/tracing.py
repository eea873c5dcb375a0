"""Chrome trace-event output: one complete event per circuit task.

The file is a JSON array of trace events (the "JSON Array Format" of the
Trace Event specification), which Perfetto (https://ui.perfetto.dev) and
``chrome://tracing`` open. Events are streamed as they happen, so a trace cut
short is still readable (both viewers accept a missing closing ``]``);
:meth:`ChromeTrace.close` writes the ``]`` and leaves a valid JSON document.

Layout: one trace *process* per Dask worker (named by its address), one
*thread* per worker thread that ran circuits, and counter tracks for the
cluster-wide quantum utilization when sampling is on.
"""

from __future__ import annotations

import json
from typing import IO, Any


class ChromeTrace:
    """Writer of a Chrome trace-event JSON file.

    Parameters
    ----------
    path : str
        File to (over)write.

    Examples
    --------
    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "trace.json")
    >>> trace = ChromeTrace(path)
    >>> trace.span("circuit", start=1.0, stop=1.5, worker="tcp://127.0.0.1:1", thread=7,
    ...            args={"qubits": 12})
    >>> trace.close()
    >>> [e["ph"] for e in json.load(open(path))]
    ['M', 'M', 'X']
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.spans = 0
        # { worker address: trace pid }
        self._pids: dict[str, int] = {}
        # { (pid, worker thread ident): trace tid }
        self._tids: dict[tuple[int, int], int] = {}
        self._file: IO[str] | None = open(path, "w")
        self._file.write("[")
        self._empty = True

    @property
    def closed(self) -> bool:
        return self._file is None

    def span(
        self,
        name: str,
        *,
        start: float,
        stop: float,
        worker: str,
        thread: int | None,
        category: str = "circuit",
        args: dict[str, Any] | None = None,
    ) -> None:
        """A complete event from ``start`` to ``stop`` (seconds since the epoch)."""
        pid = self._pid(worker)
        tid = self._tid(pid, thread if thread is not None else 0)
        self._write(
            {
                "name": name,
                "cat": category,
                "ph": "X",
                "ts": start * 1e6,
                "dur": max(stop - start, 0.0) * 1e6,
                "pid": pid,
                "tid": tid,
                "args": args or {},
            }
        )
        self.spans += 1

    def counter(self, name: str, t: float, values: dict[str, float]) -> None:
        """A counter track value at ``t`` (seconds since the epoch), on the scheduler track."""
        self._write({"name": name, "ph": "C", "ts": t * 1e6, "pid": 0, "args": values})

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Terminate the JSON array and close the file (idempotent)."""
        if self._file is not None:
            self._file.write("\n]\n")
            self._file.close()
            self._file = None

    # -- internals ---------------------------------------------------------------
    def _write(self, event: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(("\n" if self._empty else ",\n") + json.dumps(event, separators=(",", ":")))
        self._empty = False

    def _pid(self, worker: str) -> int:
        pid = self._pids.get(worker)
        if pid is None:
            # pid 0 is the scheduler's counter track.
            pid = self._pids[worker] = len(self._pids) + 1
            self._write({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": worker}})
        return pid

    def _tid(self, pid: int, thread: int) -> int:
        tid = self._tids.get((pid, thread))
        if tid is None:
            tid = self._tids[pid, thread] = sum(1 for p, _ in self._tids if p == pid)
            self._write(
                {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": f"thread {tid}"}}
            )
        return tid
