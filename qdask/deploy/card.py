"""``QuantumCluster._repr_html_``: Dask's cluster card with qdask's quantum figures.

It renders distributed's own ``cluster.html.j2`` (what ``LocalCluster`` shows
in Jupyter), so the card looks like Dask's, with quantum slots, state-vector
memory, GPUs and the widest circuit in its ``cluster_status`` rows, and the
compact per-worker table of ``resources()`` in the details.
"""

from __future__ import annotations

import html
from typing import Any

import distributed.widgets  # noqa: F401  (adds distributed's templates to dask.widgets)
from dask.utils import format_bytes
from dask.widgets import get_template

from qdask.table import RESOURCES_SUMMARY

__all__ = ["cluster_card"]


def _row(*cells: tuple[str, str]) -> str:
    tds = "".join(f'<td style="text-align: left;"><strong>{k}:</strong> {v}</td>' for k, v in cells)
    return f"<tr>{tds}</tr>"


def cluster_card(
    *, scheduler_address: str, dashboard_link: str | None, workers: dict[str, Any], resources: list[dict[str, Any]]
) -> str:
    """HTML of the card: ``workers`` as in ``Client.scheduler_info()["workers"]``, ``resources`` its rows.

    Examples
    --------
    >>> html = cluster_card(scheduler_address="tcp://127.0.0.1:1", dashboard_link="http://127.0.0.1:2/status",
    ...                     workers={}, resources=[])
    >>> "QuantumCluster" in html and "http://127.0.0.1:2/status" in html
    True
    """
    slots = sum((r.get("resources") or {}).get("quantum", 0) for r in resources)
    busy = sum((r.get("used_resources") or {}).get("quantum", 0) for r in resources)
    sv = sum((r.get("resources") or {}).get("statevector_bytes", 0) for r in resources)
    gpus = sum(int(r.get("gpus") or 0) for r in resources)
    qubits = max((int(r.get("max_qubits") or 0) for r in resources), default=0)
    roles = sorted({str(r.get("role")) for r in resources if r.get("role")})
    status = "".join([
        _row(("Quantum slots", f"{busy:g} busy of {slots:g}"), ("State-vector memory", format_bytes(int(sv)))),
        _row(("GPUs", str(gpus) if gpus else "none"), ("Widest circuit", f"{qubits} qubits" if qubits else "-")),
        _row(("Roles", html.escape(", ".join(roles) or "-")), ("Scheduler", html.escape(scheduler_address))),
    ])
    head = "".join(f"<th style='text-align: left;'>{html.escape(h)}</th>" for h, _ in RESOURCES_SUMMARY)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align: left;'>{html.escape(fn(r))}</td>" for _, fn in RESOURCES_SUMMARY)
        + "</tr>"
        for r in resources
    )
    table = f"<table style='width: 100%;'><tr>{head}</tr>{body}</table>"
    return get_template("cluster.html.j2").render(
        type="QuantumCluster",
        name=html.escape(scheduler_address),
        dashboard_link=dashboard_link or "",
        workers=workers,
        cluster_status=status,
        scheduler_info_repr=table,
    )
