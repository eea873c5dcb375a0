"""Docs build helpers: generated tables (mkdocs hooks) and docstring roles (a griffe extension).

Tables are generated from qdask itself, so that the docs cannot drift from the
code. A page asks for a table with a marker on a line of its own:

``<!-- qdask:config-classes -->``
    every config dataclass of :mod:`qdask.config`, its dask-config section and fields;
``<!-- qdask:config-keys -->``
    every key of ``qdask/qdask.yaml`` with its default, environment variable and
    the description from ``qdask/qdask-schema.yaml``.

The notebooks of ``notebooks/`` become pages of the site (``notebooks/NAME.ipynb``
in the nav, rendered by mkdocs-jupyter) with their outputs: :func:`on_files`
executes them (:func:`execute_notebooks`) before the pages render. Each notebook
starts its own cluster on 127.0.0.1 (``QuantumCluster``'s default) and closes it
in its last cell; every cell is bounded by :data:`CELL_TIMEOUT` and an error in
any cell fails the build with that cell's traceback. ``QDASK_DOCS_NOTEBOOKS``
chooses where the rendered notebooks come from:

``execute`` (the default, ``make docs``)
    executed now;
``source``
    as stored in ``notebooks/``, without outputs (a quick build of the prose);
a folder
    ``FOLDER/notebooks/NAME.ipynb``, executed already (``tests/test_docs.py``
    executes them once and renders the site from its copies).

qdask's numpydoc docstrings cross-reference with Sphinx roles
(``:func:`qdask.deploy.mpi.initialize```), which mkdocstrings would print
verbatim; :class:`SphinxRoles` shows them as code, the way Sphinx does.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import griffe
import mkdocs.plugins
import nbformat
import yaml
from jupyter_client.manager import KernelManager
from mkdocs.structure.files import File, Files
from nbclient import NotebookClient

from qdask import config


def config_classes() -> str:
    """Markdown table: class, dask-config section, fields."""
    rows = ["| class | dask config section | fields |", "| --- | --- | --- |"]
    for name in config.__all__:
        cls = getattr(config, name)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            fields = ", ".join(f"`{f.name}`" for f in dataclasses.fields(cls))
            rows.append(f"| [`{name}`][qdask.config.{name}] | `qdask.{cls.section}` | {fields} |")
    return "\n".join(rows)


def _leaves(defaults: dict[str, Any], schema: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any, str]]:
    for key, value in defaults.items():
        node = schema.get("properties", {}).get(key, {})
        path = f"{prefix}.{key}"
        if isinstance(value, dict):
            yield from _leaves(value, node, path)
        else:
            yield path, value, node.get("description", "")


def config_keys() -> str:
    """Markdown table: key, default, environment variable, description."""
    with open(config.CONFIG_PATH) as f:
        defaults = yaml.safe_load(f)["qdask"]
    with open(config.SCHEMA_PATH) as f:
        schema = yaml.safe_load(f)["properties"]["qdask"]
    rows = ["| key | default | environment variable | meaning |", "| --- | --- | --- | --- |"]
    for key, default, description in _leaves(defaults, schema, "qdask"):
        # Dask's rule: DASK_ prefix, "." -> "__", "-" -> "_", upper case.
        env = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
        shown = "null" if default is None else default
        rows.append(f"| `{key}` | `{shown}` | `{env}` | {description} |")
    return "\n".join(rows)


MARKERS: dict[str, Callable[[], str]] = {
    "<!-- qdask:config-classes -->": config_classes,
    "<!-- qdask:config-keys -->": config_keys,
}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace each marker line with its generated table."""
    for marker, render in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown


REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
#: Seconds one notebook cell may run (the longest, a QAOA optimization, takes ~10 s on 2 cores).
CELL_TIMEOUT = 300


def notebooks() -> list[Path]:
    """The notebooks of the site, in the order of their file names."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


#: Run in the shared kernel before each notebook: the state a fresh kernel starts with.
#: ``%reset -f`` empties the ``__main__`` module's dict, and with it the attributes
#: every module has; multiprocessing's spawn reads ``__main__.__spec__`` when a
#: cluster starts its workers, so they are put back as a fresh kernel has them.
_FRESH_NAMESPACE = """\
%reset -f
__spec__ = __loader__ = __package__ = None
import os as _os, dask as _dask
_os.chdir({cwd!r})
_dask.config.refresh()
del _os, _dask
"""


def execute_notebooks(
    paths: list[Path], dest: Path, timeout: int = CELL_TIMEOUT,
) -> dict[Path, nbformat.NotebookNode | Exception]:
    """Run each notebook top to bottom and write it, with outputs, to ``dest/notebooks/NAME.ipynb``.

    The notebooks share one ``python3`` kernel, in turn: a kernel imports
    cirq and starts qdask's worker fork server once, which made four fresh
    kernels cost twice the CPU time. Each notebook starts from what a fresh kernel
    has (:data:`_FRESH_NAMESPACE`: no names of the notebook before, dask's
    configuration as loaded), in its own temporary working directory, so what it
    writes (logs, checkpoints) stays out of the repository. After a notebook
    fails, the kernel is restarted for the next.

    Returns
    -------
    dict
        For each path, the executed notebook, or the error that stopped it:
        nbclient's ``CellExecutionError`` (the cell and its traceback), or
        ``CellTimeoutError`` when a cell ran past ``timeout`` seconds.
    """
    done: dict[Path, nbformat.NotebookNode | Exception] = {}
    with tempfile.TemporaryDirectory(prefix="qdask-notebook-") as top:
        km = KernelManager(kernel_name="python3")
        km.start_kernel(cwd=top)
        try:
            for path in paths:
                cwd = Path(top) / path.stem
                cwd.mkdir()
                nb = nbformat.read(path, as_version=4)
                client = NotebookClient(nb, km=km, timeout=timeout)
                try:
                    _run_in(km, _FRESH_NAMESPACE.format(cwd=str(cwd)))
                    client.execute()
                except Exception as e:
                    done[path] = e
                    km.restart_kernel(now=True)
                    continue
                finally:
                    if client.kc is not None:
                        client.kc.stop_channels()
                (dest / "notebooks").mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, dest / "notebooks" / path.name)
                done[path] = nb
        finally:
            km.shutdown_kernel(now=True)
    return done


def _run_in(km: KernelManager, code: str) -> None:
    """Run ``code`` in ``km``'s kernel; raise RuntimeError with the traceback if it fails."""
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        errors: list[str] = []
        reply = kc.execute_interactive(
            code, timeout=60,
            output_hook=lambda msg: errors.extend(msg["content"].get("traceback", [])),
        )
    finally:
        kc.stop_channels()
    if reply["content"]["status"] != "ok":
        raise RuntimeError("resetting the notebook kernel failed:\n" + "\n".join(errors))


_executed: tempfile.TemporaryDirectory[str] | None = None


@mkdocs.plugins.event_priority(50)  # before mkdocs-jupyter's on_files turns .ipynb files into pages
def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    """Add ``notebooks/NAME.ipynb`` pages, executed unless ``QDASK_DOCS_NOTEBOOKS`` says otherwise."""
    global _executed
    mode = os.environ.get("QDASK_DOCS_NOTEBOOKS", "execute")
    if mode == "execute":
        _executed = tempfile.TemporaryDirectory(prefix="qdask-docs-")
        src_dir = Path(_executed.name)
        for path, outcome in execute_notebooks(notebooks(), src_dir).items():
            if isinstance(outcome, Exception):
                raise RuntimeError(f"notebooks/{path.name} failed") from outcome
    elif mode == "source":
        src_dir = REPO
    else:
        src_dir = Path(mode)
    for path in notebooks():
        if not (src_dir / "notebooks" / path.name).is_file():
            raise FileNotFoundError(f"QDASK_DOCS_NOTEBOOKS={mode}: no notebooks/{path.name} in it")
        files.append(File(f"notebooks/{path.name}", str(src_dir), config["site_dir"], config["use_directory_urls"]))
    return files


def on_post_build(**kwargs: Any) -> None:
    """Remove the executed copies (mkdocs-jupyter has rendered them)."""
    global _executed
    if _executed is not None:
        _executed.cleanup()
        _executed = None


#: ``:func:`x```, ``:class:`~a.b.C``` (shown as ``C``), ...
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    """Render Sphinx cross-reference roles in docstrings as inline code."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
