"""Progress bars of ``Sampler``/``Simulator`` batches: a widget in Jupyter, text elsewhere.

``progress=None`` (the default) shows a bar only in a Jupyter kernel, where a
batch's wait is otherwise silent and the bar costs nothing on the console;
``tqdm.auto`` picks the ipywidgets bar there (``pip install 'qdask[notebook]'``)
and plain tqdm on stderr in a terminal.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["in_notebook", "progress_bar", "resolve_progress"]


def in_notebook() -> bool:
    """Whether this process is a Jupyter (IPython) kernel.

    Examples
    --------
    >>> in_notebook()  # in a script or pytest
    False
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def resolve_progress(progress: bool | None) -> bool:
    """``progress``, with None meaning "in a notebook"."""
    return in_notebook() if progress is None else bool(progress)


def progress_bar(total: int, enabled: bool, **kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar over ``total`` circuits (disabled: counts nothing, shows nothing)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="circuits", unit="circ", disable=not enabled, **kwargs)
