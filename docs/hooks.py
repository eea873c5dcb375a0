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
executes each one in a fresh kernel before the pages render. Each notebook
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


def execute_notebook(path: Path, dest: Path, timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run ``path`` top to bottom in a fresh ``python3`` kernel and write it, with outputs, to ``dest``.

    The kernel's working directory is a temporary folder, so what a notebook
    writes (logs, checkpoints) stays out of the repository. Raises nbclient's
    ``CellExecutionError`` (the cell and its traceback) when a cell fails and
    ``CellTimeoutError`` when one runs past ``timeout`` seconds.
    """
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="qdask-notebook-") as cwd:
        NotebookClient(
            nb, timeout=timeout, startup_timeout=120, kernel_name="python3",
            resources={"metadata": {"path": cwd}},
        ).execute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return nb


_executed: tempfile.TemporaryDirectory[str] | None = None


@mkdocs.plugins.event_priority(50)  # before mkdocs-jupyter's on_files turns .ipynb files into pages
def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    """Add ``notebooks/NAME.ipynb`` pages, executed unless ``QDASK_DOCS_NOTEBOOKS`` says otherwise."""
    global _executed
    mode = os.environ.get("QDASK_DOCS_NOTEBOOKS", "execute")
    if mode == "execute":
        _executed = tempfile.TemporaryDirectory(prefix="qdask-docs-")
        src_dir = Path(_executed.name)
        for path in notebooks():
            execute_notebook(path, src_dir / "notebooks" / path.name)
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
