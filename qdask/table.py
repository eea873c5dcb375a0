"""A small list-of-rows table with a plain-text rendering (for ``resources()`` and the CLI)."""

from __future__ import annotations

from typing import Any

from dask.utils import format_bytes

#: Columns shown by ``str(table)``; the rows keep every field.
_BYTES = {"memory_limit", "statevector_bytes"}


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
        cells = [self.columns] + [[_fmt(c, row.get(c)) for c in self.columns] for row in self]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)


def _fmt(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in _BYTES and isinstance(value, (int, float)):
        return format_bytes(int(value))
    if isinstance(value, dict):
        return " ".join(f"{k}={_fmt(k, v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value)
