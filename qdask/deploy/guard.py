"""Refuse to start worker processes from an unguarded ``__main__``, with the fix in the message.

Local workers start with ``spawn`` or ``forkserver``
(:mod:`qdask.deploy.forkserver`): each new process imports the user's script
again, as ``__mp_main__``. A script that starts a cluster at its top level,
outside ``if __name__ == "__main__":``, starts one more cluster in every
worker process; Python refuses that ("An attempt has been made to start a new
process before the current process has finished its bootstrapping phase"),
the worker never registers, and the parent waits for it until a timeout or
forever. Dask has the same trap (dask/distributed#2520).

The check runs in the parent before any process starts: it finds the
statement of the main script that is executing now and, from the script's
syntax tree, whether that statement lies inside an ``if __name__ ==
"__main__":`` block. Scripts whose source cannot be read, interactive
sessions and notebooks (no ``__main__.__file__``; they are not imported
again) pass unchecked.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
from types import FrameType

__all__ = ["UnguardedMainError", "check_main_guarded"]


class UnguardedMainError(RuntimeError):
    """A cluster with worker processes was started from the top level of an unguarded script."""


def _is_main_test(node: ast.expr) -> bool:
    """``__name__ == "__main__"`` (either side)."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
        return False
    sides = [node.left, node.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1


@functools.lru_cache(maxsize=16)
def _guarded_lines(filename: str, mtime_ns: int) -> tuple[tuple[int, int], ...] | None:
    """Line ranges of the bodies of top-level ``if __name__ == "__main__":`` blocks; None if unparsable."""
    try:
        with open(filename, "rb") as f:
            tree = ast.parse(f.read(), filename)
    except (OSError, SyntaxError, ValueError):
        return None
    ranges = []
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test) and node.body:
            ranges.append((node.body[0].lineno, node.body[-1].end_lineno or node.body[-1].lineno))
    return tuple(ranges)


def _main_script_frame(frame: FrameType | None) -> FrameType | None:
    """The frame running the top level of the ``__main__`` script, if it is on the stack."""
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__":
            return frame
        frame = frame.f_back
    return None


def check_main_guarded(what: str = "QuantumCluster()") -> None:
    """Raise :class:`UnguardedMainError` if called from unguarded top-level code of the main script.

    Parameters
    ----------
    what : str
        What is being started, for the message.

    Raises
    ------
    UnguardedMainError
        With the script, the line and the fix (``if __name__ == "__main__":``).

    Examples
    --------
    In ``script.py``, run as ``python script.py``:

    >>> from qdask import QuantumCluster  # doctest: +SKIP
    >>> qc = QuantumCluster()  # doctest: +SKIP
    UnguardedMainError: QuantumCluster() was started at the top level of script.py, line 2, ...
    """
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) is None:
        return
    frame = _main_script_frame(sys._getframe(1))
    if frame is None:
        return
    filename = frame.f_code.co_filename
    try:
        mtime = os.stat(filename).st_mtime_ns
    except OSError:
        return
    ranges = _guarded_lines(filename, mtime)
    if ranges is None:
        return
    line = frame.f_lineno
    if any(start <= line <= end for start, end in ranges):
        return
    raise UnguardedMainError(
        f"{what} was started at the top level of {filename}, line {line}, outside "
        'an `if __name__ == "__main__":` block. Worker processes start with spawn/forkserver and '
        "import this script again, so each of them would start a cluster of its own and the "
        "cluster would never come up. Fix: move the code that starts the cluster under "
        '`if __name__ == "__main__":` (e.g. into a main() function called from there).'
    )
