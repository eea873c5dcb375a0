"""The documentation site: it builds with warnings as errors, and what it says exists."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
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


# -- the code on the pages runs ------------------------------------------------------

_BLOCK = re.compile(r"(<!-- qdask:no-run ([^>]*)-->\n)?```python\n(.*?)```", re.S)
_GUARD = 'if __name__ == "__main__":'


def _python_blocks() -> Iterator[tuple[str, str, str | None]]:
    """(page:line, code, reason not to run or None) of every python block of the docs."""
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        for m in _BLOCK.finditer(text):
            where = f"{page.relative_to(DOCS).as_posix()}:{text[:m.start(3)].count(chr(10)) + 1}"
            yield where, m.group(3), m.group(2)


def _starts_a_cluster(code: str) -> bool:
    """Whether the block starts worker processes (attaching by address or MPI does not)."""
    return "QuantumCluster(" in code and "address=" not in code and "from_mpi" not in code


_SCRIPTS = [(w, c, r) for w, c, r in _python_blocks() if _GUARD in c]


def test_snippets_that_start_a_cluster_are_guarded_scripts():
    unguarded = [w for w, c, _ in _python_blocks() if _starts_a_cluster(c) and _GUARD not in c]
    assert unguarded == [], f'wrap these snippets in `{_GUARD}` (they start worker processes)'
    assert len(_SCRIPTS) >= 8


def _run_script(code: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    script = cwd / "snippet.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


@pytest.mark.parametrize("where,code,reason", _SCRIPTS, ids=[w for w, _, _ in _SCRIPTS])
def test_snippet_runs_as_a_script(where, code, reason, tmp_path):
    if reason:
        pytest.skip(reason.strip())
    out = _run_script(code, tmp_path, timeout=180)
    assert out.returncode == 0, f"{where}\n{out.stdout}\n{out.stderr}"


def test_unguarded_snippet_fails_at_once_with_the_fix(tmp_path):
    # The monitoring page's script with its guard removed, as a user pastes it.
    code = next(c for w, c, _ in _SCRIPTS if w.startswith("monitoring.md"))
    lines = code.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(_GUARD))
    body = [line[4:] for line in lines[at + 1:]]
    unguarded = "\n".join(lines[:at] + body) + "\n"
    t0 = time.perf_counter()
    out = _run_script(unguarded, tmp_path, timeout=60)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 1
    assert elapsed < 10, elapsed
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("qdask.deploy.guard.UnguardedMainError: QuantumCluster() was started at the top level"), last
    assert _GUARD in last and "snippet.py, line " in last
    assert "bootstrapping phase" not in out.stderr
