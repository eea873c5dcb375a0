"""The example notebooks execute top to bottom against the embedded local cluster, and the
site renders them with their outputs.

They execute once here, through the same function the docs build uses
(``docs/hooks.py``: a fresh kernel per notebook, each cell bounded, clusters on 127.0.0.1);
the last test builds the site from these executed copies.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

REPO = Path(__file__).parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _load_hooks() -> Any:
    spec = importlib.util.spec_from_file_location("qdask_docs_hooks", REPO / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()

#: A Jupyter kernel and a cluster per notebook: seconds in `make test`, longest first (tests/conftest.py).
pytestmark = pytest.mark.long(55)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``executed(path)``: the notebook run once per module, its copy in ``executed.folder``."""
    folder = tmp_path_factory.mktemp("executed")
    done: dict[Path, Any] = {}

    def run(path: Path) -> nbformat.NotebookNode:
        if path not in done:
            try:
                done[path] = hooks.execute_notebook(path, folder / "notebooks" / path.name)
            except Exception as e:  # reported by this notebook's test, and by the site's
                done[path] = e
        if isinstance(done[path], Exception):
            raise done[path]
        return done[path]

    run.folder = folder  # type: ignore[attr-defined]
    return run


def _outputs(nb: nbformat.NotebookNode) -> list[Any]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, executed):
    nb = executed(path)  # a failing cell raises nbclient's CellExecutionError with its traceback
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    assert outputs
    # At least one figure each (matplotlib's inline backend: a PNG per plt.show()).
    assert [o for o in outputs if "image/png" in o.get("data", {})], f"{path.name} shows no figure"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_site_renders_the_executed_notebooks(executed, tmp_path):
    for path in NOTEBOOKS:
        executed(path)
    site = tmp_path / "site"
    out = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1", QDASK_DOCS_NOTEBOOKS=str(executed.folder)),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for path in NOTEBOOKS:
        page = (site / "notebooks" / path.stem / "index.html").read_text()
        assert "data:image/png;base64," in page, f"{path.name}: its figures are not on its page"
        assert "Traceback" not in page, path.name
        # The executed notebook itself is copied beside its page.
        assert "image/png" in (site / "notebooks" / path.stem / path.name).read_text()


def test_the_three_guides_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_quickstart", "02_hybrid", "03_monitoring"} <= names


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_progress_bars_are_widgets_by_default_in_a_notebook(executed):
    # The quickstart's Sampler(client, seed=7) has no progress= argument; in its Jupyter
    # kernel that is tqdm.auto's widget bar.
    nb = executed(REPO / "notebooks" / "01_quickstart.ipynb")
    cell = next(c for c in nb.cells if c.cell_type == "code" and "qdask.Sampler(client, seed=7)" in c.source)
    outputs = cell.outputs
    assert not [o for o in outputs if o.output_type == "error"], outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), outputs
    assert any("BatchStats(circuits=50" in o.get("text", "") for o in outputs if o.output_type == "stream"), outputs
    # No text bar on stderr beside the widget.
    assert not any("circ/s" in o.get("text", "") for o in outputs if o.get("name") == "stderr"), outputs
