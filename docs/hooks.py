"""Docs build helpers: generated tables (mkdocs hooks) and docstring roles (a griffe extension).

Tables are generated from qdask itself, so that the docs cannot drift from the
code. A page asks for a table with a marker on a line of its own:

``<!-- qdask:config-classes -->``
    every config dataclass of :mod:`qdask.config`, its dask-config section and fields;
``<!-- qdask:config-keys -->``
    every key of ``qdask/qdask.yaml`` with its default, environment variable and
    the description from ``qdask/qdask-schema.yaml``.

qdask's numpydoc docstrings cross-reference with Sphinx roles
(``:func:`qdask.deploy.mpi.initialize```), which mkdocstrings would print
verbatim; :class:`SphinxRoles` shows them as code, the way Sphinx does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

import griffe
import yaml

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
