"""A small list-of-rows table with a compact text rendering (for ``resources()`` and the CLI)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes

if TYPE_CHECKING:
    import pandas as pd

#: Fields in bytes and in seconds, shown in human units (the rows keep the raw numbers).
_BYTES = {"memory_limit", "statevector_bytes", "statevector_used", "memory", "total_memory", "gpu_memory",
          "gpu_memory_total", "sent_bytes"}
_SECONDS = {"per_circuit", "per_op", "per_amp_op", "per_amp_term", "latency", "load"}
#: Fields in bytes per second.
_RATES = {"bandwidth", "net_read", "net_write"}
#: Fields holding a time since the epoch, shown as the local clock time.
_EPOCH = {"joined", "time", "left"}
#: Width that ``str(table)`` keeps within (a terminal, a notebook cell).
WIDTH = 100

#: A column of the compact form: (header, value of a row as text).
Summary = list[tuple[str, Callable[[dict[str, Any]], str]]]


class Table(list):
    """Rows (dicts) with ``str()`` giving an aligned text table at most 100 columns wide.

    The rows keep every field and raw number (bytes, seconds, epoch times);
    ``str()`` shows them in human units and, where a ``summary`` is given,
    only its columns, as many as fit. :meth:`to_frame` has everything.

    Parameters
    ----------
    rows : list of dict
        One dict per row.
    columns : list of str, optional
        Fields shown by ``str()`` (default: the keys of the first row).
    summary : list of (str, callable), optional
        The compact form instead: (header, function of a row) in order of
        importance; columns that do not fit the width are left out.

    Examples
    --------
    >>> print(Table([{"worker": "tcp://127.0.0.1:1", "nthreads": 1, "memory_limit": 2**30}]))
    worker             nthreads  memory_limit
    tcp://127.0.0.1:1  1         1.00 GiB
    """

    def __init__(
        self, rows: list[dict[str, Any]], columns: list[str] | None = None, *, summary: Summary | None = None
    ) -> None:
        super().__init__(rows)
        self.columns = columns or (list(rows[0]) if rows else [])
        self.summary = summary

    def column(self, name: str) -> list[Any]:
        """The values of field ``name`` in every row (None where a row lacks it).

        Examples
        --------
        >>> qc.resources().column("name")  # doctest: +SKIP
        ['quantum-0', 'quantum-1']
        """
        return [row.get(name) for row in self]

    def to_frame(self) -> pd.DataFrame:
        """Every field of every row as a pandas DataFrame (raw numbers: bytes, seconds, epoch times).

        Examples
        --------
        >>> Table([{"worker": "a", "nthreads": 2}]).to_frame()
          worker  nthreads
        0      a         2
        """
        import pandas as pd

        fields = list(dict.fromkeys(k for row in self for k in row))
        return pd.DataFrame(list(self), columns=fields or self.columns)

    def __str__(self) -> str:
        if not self:
            return "(no rows)"
        if self.summary is not None and self.columns == self._default_columns():
            columns = [(h, [fn(row) for row in self]) for h, fn in self.summary]
        else:
            columns = [(c, [format_value(c, row.get(c)) for row in self]) for c in self.columns]
        return render(columns)

    def _default_columns(self) -> list[str]:
        return list(self[0]) if self else []

    def _repr_html_(self) -> str:
        return self.to_frame()._repr_html_()


def render(columns: list[tuple[str, list[str]]], width: int = WIDTH) -> str:
    """Aligned text of ``(header, cells)`` columns, leaving out those past ``width`` (named in a last line)."""
    shown: list[tuple[str, list[str], int]] = []
    left_out: list[str] = []
    used = 0
    for header, cells in columns:
        w = max(len(header), *(len(c) for c in cells))
        if used + w + (2 if shown else 0) <= width:
            shown.append((header, cells, w))
            used += w + (2 if len(shown) > 1 else 0)
        else:
            left_out.append(header)
    lines = ["  ".join(h.ljust(w) for h, _, w in shown).rstrip()]
    for i in range(len(shown[0][1]) if shown else 0):
        lines.append("  ".join(cells[i].ljust(w) for _, cells, w in shown).rstrip())
    if left_out:
        note = f"(+{len(left_out)} more: " + ", ".join(left_out)
        if len(note) > width - 18:
            note = note[: width - 22] + "..."
        lines.append(note + "; see to_frame())")
    return "\n".join(lines)


def format_seconds(seconds: float) -> str:
    """Seconds in the unit that keeps three significant digits (down to ns).

    Dask's ``format_time`` stops at microseconds, so a cost-model coefficient
    of 0.2 ns would show as ``0.00 us``.

    Examples
    --------
    >>> format_seconds(0.0001431), format_seconds(1.87e-10), format_seconds(75)
    ('143 us', '0.187 ns', '75 s')
    """
    if seconds == 0:
        return "0 s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_clock(epoch: float) -> str:
    """A time since the epoch as the local clock time, with the date unless it is today.

    Examples
    --------
    >>> import time
    >>> len(format_clock(time.time()))  # HH:MM:SS
    8
    """
    t = time.localtime(epoch)
    if time.strftime("%Y-%m-%d", t) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%Y-%m-%d %H:%M", t)


def format_value(column: str, value: Any) -> str:
    """``value`` of field ``column`` as text, bytes and seconds in human units.

    Examples
    --------
    >>> format_value("memory_limit", 4 * 2**30)
    '4.00 GiB'
    >>> format_value("resources", {"quantum": 2, "statevector_bytes": 2**30})
    'quantum=2 statevector_bytes=1.00 GiB'
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if column in _BYTES and isinstance(value, (int, float)):
        return format_bytes(int(value))
    if column in _SECONDS and isinstance(value, (int, float)):
        return format_seconds(value)
    if column in _RATES and isinstance(value, (int, float)):
        return format_bytes(int(value)) + "/s"
    if column in _EPOCH and isinstance(value, (int, float)):
        return format_clock(value)
    if isinstance(value, dict):
        return " ".join(f"{k}={format_value(k, v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value)


def _resource_pair(key: str, fmt: Callable[[float], str]) -> Callable[[dict[str, Any]], str]:
    def cell(row: dict[str, Any]) -> str:
        total = (row.get("resources") or {}).get(key)
        if not total:
            return "-"
        used = (row.get("used_resources") or {}).get(key, 0)
        return f"{fmt(used)}/{fmt(total)}"

    return cell


def _field(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: format_value(name, row.get(name))


#: The compact form of ``QuantumCluster.resources()``: what a worker offers and uses, in order of importance.
RESOURCES_SUMMARY: Summary = [
    ("worker", _field("worker")),
    ("name", _field("name")),
    ("role", _field("role")),
    ("threads", _field("nthreads")),
    ("memory", _field("memory_limit")),
    ("qubits", _field("max_qubits")),
    ("gpus", _field("gpus")),
    ("slots", _resource_pair("quantum", lambda v: f"{v:g}")),
    ("statevector", _resource_pair("statevector_bytes", lambda v: format_bytes(int(v)))),
    ("status", _field("status")),
    ("joined", _field("joined")),
    ("isa", _field("qsim_isa")),
    ("error", _field("error_rate")),
]
