"""A small list-of-rows table with a plain-text rendering (for ``resources()`` and the CLI)."""

from __future__ import annotations

from typing import Any

from dask.utils import format_bytes

#: Fields in bytes and in seconds, shown in human units (the rows keep the raw numbers).
_BYTES = {"memory_limit", "statevector_bytes", "memory", "total_memory"}
_SECONDS = {"per_circuit", "per_op", "per_amp_op", "per_amp_term"}


class Table(list):
    """Rows (dicts) with ``str()`` giving an aligned text table.

    Examples
    --------
    >>> print(Table([{"worker": "tcp://127.0.0.1:1", "nthreads": 1}]))
    worker             nthreads
    tcp://127.0.0.1:1  1
    """

    def __init__(self, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
        super().__init__(rows)
        self.columns = columns or (list(rows[0]) if rows else [])

    def column(self, name: str) -> list[Any]:
        return [row.get(name) for row in self]

    def __str__(self) -> str:
        if not self:
            return "(no rows)"
        cells = [self.columns] + [[format_value(c, row.get(c)) for c in self.columns] for row in self]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)


def format_seconds(seconds: float) -> str:
    """Seconds in the unit that keeps three significant digits (down to ns).

    Dask's ``format_time`` stops at microseconds, so a cost-model coefficient
    of 0.2 ns would show as ``0.00 us``.

    Examples
    --------
    >>> format_seconds(0.0001431), format_seconds(1.87e-10), format_seconds(75)
    ('143 us', '0.187 ns', '75 s')
    """
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


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
    if isinstance(value, dict):
        return " ".join(f"{k}={format_value(k, v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value)
