"""The documentation site: it builds with warnings as errors, and what it says exists."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).parent.parent
DOCS = REPO / "docs"
MKDOCS = Path(sys.executable).parent / "mkdocs"


def _nav_pages(nav: Any) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_pages(value)


def _resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted`` and walk the rest as attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # The generated tables and the API reference made it into the pages.
    configuration = (site / "guide" / "configuration" / "index.html").read_text()
    assert "DASK_QDASK__CLUSTER__NUM_NODES" in configuration
    assert "<!-- qdask:" not in configuration
    assert "FaultToleranceConfig" in configuration
    deploy = (site / "reference" / "deploy" / "index.html").read_text()
    for name in ("qdask.deploy.cluster.QuantumCluster.from_mpi", "qdask.deploy.mpi.initialize",
                 "qdask.deploy.connect.connect_client"):
        assert f'id="{name}"' in deploy, name
    # Sphinx roles of the numpydoc docstrings are shown as code, not verbatim.
    assert ":func:`" not in deploy and ":class:`" not in deploy


def test_every_page_is_in_the_nav():
    with open(REPO / "mkdocs.yml") as f:
        nav = set(_nav_pages(yaml.safe_load(f)["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - nav == set(), "add these pages to the nav of mkdocs.yml"
    assert nav - pages == set(), "the nav names pages that do not exist"


def test_contract_map_points_at_existing_code():
    homes = 0
    for line in (DOCS / "contract.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("contract", "---"):
            continue
        spans = re.findall(r"`([^`]+)`", cells[1])
        if not spans:
            assert cells[1].startswith("not yet in qdask"), line
            continue
        for span in spans:
            if span.startswith("qdask."):
                _resolve(span)
                homes += 1
            elif "/" in span or span.endswith((".py", ".toml", ".yaml")):
                assert (REPO / span).exists(), span
    assert homes >= 50
