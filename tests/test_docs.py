"""The documentation site: it builds with warnings as errors, and what it says exists.

The example notebooks execute top to bottom against the embedded local cluster,
once, through the same function the docs build uses (``docs/hooks.py``: one
kernel, its names reset before each notebook, each cell bounded, clusters on 127.0.0.1); the site is
built once, from these executed copies, and renders them with their outputs.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import time
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbclient.exceptions
import nbformat
import pytest
import yaml

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(58)

REPO = Path(__file__).parent.parent
DOCS = REPO / "docs"
MKDOCS = Path(sys.executable).parent / "mkdocs"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


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


def _load_hooks() -> Any:
    spec = importlib.util.spec_from_file_location("qdask_docs_hooks", REPO / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``executed(path)``: the notebook, run once per module (all of them in one kernel, as ``make docs``).

    The executed copies are in ``executed.folder``; a notebook that failed raises its error.
    """
    folder = tmp_path_factory.mktemp("executed")
    with warnings.catch_warnings():  # jupyter_client's and zmq's, not qdask's
        warnings.simplefilter("ignore", DeprecationWarning)
        done = hooks.execute_notebooks(NOTEBOOKS, folder)

    def run(path: Path) -> nbformat.NotebookNode:
        outcome = done[path]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    run.folder = folder  # type: ignore[attr-defined]
    return run


@pytest.fixture(scope="module")
def site(executed: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for this module with warnings as errors, from the executed notebooks.

    A notebook that failed is reported by its own test, and fails the build here, as ``make docs``.
    """
    site = tmp_path_factory.mktemp("docs") / "site"
    out = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1", QDASK_DOCS_NOTEBOOKS=str(executed.folder)),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return site


def test_site_builds_strict(site):
    # The generated tables and the API reference made it into the pages.
    configuration = (site / "guide" / "configuration" / "index.html").read_text()
    assert "DASK_QDASK__CLUSTER__NUM_NODES" in configuration
    assert "<!-- qdask:" not in configuration
    assert "FaultToleranceConfig" in configuration
    deploy = (site / "reference" / "deploy" / "index.html").read_text()
    assert 'id="qdask.deploy.mpi.initialize"' in deploy
    cluster = (site / "reference" / "cluster" / "index.html").read_text()
    assert 'id="qdask.deploy.cluster.QuantumCluster.from_mpi"' in cluster
    # Sphinx roles of the numpydoc docstrings are shown as code, not verbatim.
    assert ":func:`" not in cluster and ":class:`" not in cluster
    # The notebooks are pages of the site.
    for path in NOTEBOOKS:
        assert (site / "notebooks" / path.stem / "index.html").is_file(), path.name


# -- the API reference has every public name -------------------------------------------

#: The calls whose returned objects are public types (the handles and results of the contract).
_RETURNING = {
    "qdask.deploy.cluster.QuantumCluster": (
        "resources", "metrics", "detailed_metrics", "error_statistics", "analyze",
        "start_monitoring", "start_load_balancer", "enable_fault_tolerance", "enable_elastic_scaling",
    ),
    "qdask.deploy.elastic.ElasticScaling": ("events",),
}
#: Public types that no annotation above names: what results and handlers receive.
_ALSO = (
    "qdask.quantum.engine.Result",
    "qdask.monitoring.results.Bottleneck",
    "qdask.fault.events.NodeFailure",
    "qdask.fault.events.NetworkError",
    "qdask.fault.events.QuantumError",
    "qdask.fault.events.RecoveryEvent",
)
#: Internals: the reference documents none of them.
_INTERNAL = (
    "qdask.deploy.forkserver", "qdask.deploy.nannies", "qdask.deploy.spec", "qdask.deploy.connect",
    "qdask.scheduler.plugin", "qdask.scheduler.registry", "qdask.worker.plugin", "qdask.quantum.qsim_fast",
)


def _home(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _public_types() -> dict[str, str]:
    """{how users reach it: dotted home} for ``qdask.__all__`` and the types the calls return."""
    import qdask

    names = {f"qdask.{name}": _home(getattr(qdask, name)) for name in qdask.__all__}
    for owner, methods in _RETURNING.items():
        cls = _resolve(owner)
        for method in methods:
            returned = typing.get_type_hints(getattr(cls, method))["return"]
            for t in typing.get_args(returned) or (returned,):  # list[ScalingEvent] -> ScalingEvent
                names[f"{cls.__name__}.{method}()"] = _home(t)
    names.update({home: home for home in _ALSO})
    return names


def _reference_ids(site: Path) -> set[str]:
    html = "".join(p.read_text() for p in (site / "reference").rglob("*.html"))
    return set(re.findall(r'id="(qdask\.[^"]+)"', html))


def _public_members(cls: type) -> Iterator[str]:
    """The public methods and properties ``cls`` itself defines (not those it inherits)."""
    for name, value in vars(cls).items():
        if not name.startswith("_") and (callable(value) or isinstance(value, (property, classmethod, staticmethod))):
            yield name


def test_every_public_name_has_a_reference_entry(site):
    ids = _reference_ids(site)
    names = _public_types()
    assert len(names) >= 25, names
    missing = {name: home for name, home in names.items() if home not in ids}
    assert missing == {}, "add these to a page of docs/reference/ (and give them a docstring)"
    # ... and so has every public method and property of the classes among them.
    undocumented = [
        f"{home}.{member}" for home in sorted(set(names.values()))
        if isinstance(cls := _resolve(home), type) and not issubclass(cls, BaseException)
        for member in _public_members(cls) if f"{home}.{member}" not in ids
    ]
    assert undocumented == [], "give these a numpydoc docstring"


def test_public_classes_and_methods_have_examples():
    # Numpydoc with an Examples section (house style) on each public type and its methods;
    # one-line properties are exempt.
    lacking = []
    for home in sorted(set(_public_types().values())):
        obj = _resolve(home)
        members = [getattr(obj, m) for m in _public_members(obj)] if isinstance(obj, type) else []
        for item in [obj, *members]:
            if isinstance(item, property):
                continue
            doc = inspect.getdoc(item.__func__ if isinstance(item, classmethod) else item) or ""
            if "Examples\n--------" not in doc:
                lacking.append(getattr(item, "__qualname__", home))
    assert lacking == [], "add an Examples section to these docstrings"


def test_internals_are_not_in_the_reference(site):
    ids = _reference_ids(site)
    shown = sorted({i for i in ids for module in _INTERNAL if i == module or i.startswith(module + ".")})
    assert shown == []


def test_every_page_is_in_the_nav():
    with open(REPO / "mkdocs.yml") as f:
        nav = set(_nav_pages(yaml.safe_load(f)["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    pages |= {f"notebooks/{p.name}" for p in NOTEBOOKS}  # added by docs/hooks.py
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


#: Runs each script given as ``[[where, path], ...]`` as ``__main__`` (``runpy``, which sets
#: ``sys.modules["__main__"]`` and ``sys.argv[0]`` as ``python path`` does) in its own
#: directory, in turn, with dask.config back to its defaults, files and environment after
#: each (``refresh``, which keeps the defaults of every library imported so far); writes
#: ``{where: error or None}``.
_RUNNER = """
import json, os, runpy, sys, traceback
import dask

errors = {}
for where, path in json.loads(sys.argv[1]):
    cwd = os.getcwd()
    print(f"=== {where}", flush=True)
    try:
        os.chdir(os.path.dirname(path))
        runpy.run_path(path, run_name="__main__")
        errors[where] = None
    except SystemExit as e:
        errors[where] = None if e.code in (None, 0) else f"exit {e.code}"
    except BaseException:
        errors[where] = traceback.format_exc()
    finally:
        os.chdir(cwd)
        dask.config.refresh()
with open(sys.argv[2], "w") as f:
    json.dump(errors, f)
"""


def test_every_snippet_runs_as_a_script(tmp_path):
    """Each guarded snippet runs as ``__main__``: one after the other, in one interpreter.

    One interpreter imports cirq and starts qdask's worker fork server once for all
    of them (a fresh ``python snippet.py`` each cost 4 CPU-seconds of imports: half
    of this test's time); ``test_unguarded_snippet_fails_at_once_with_the_fix`` runs
    one as a separate ``python`` process.
    """
    runs = []
    for i, (where, code, reason) in enumerate(_SCRIPTS):
        if reason:
            continue  # its qdask:no-run comment says why (e.g. it needs GPUs or MPI)
        script = tmp_path / f"snippet{i}" / "snippet.py"
        script.parent.mkdir()
        script.write_text(code)
        runs.append((where, str(script)))
    report = tmp_path / "errors.json"
    out = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(runs), str(report)], capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert report.exists(), out.stdout[-3000:] + out.stderr[-3000:]
    errors = json.loads(report.read_text())
    assert set(errors) == {where for where, _ in runs}
    failed = {where: error for where, error in errors.items() if error}
    assert failed == {}, "\n".join(f"{w}:\n{e}" for w, e in failed.items()) + out.stdout[-3000:] + out.stderr[-3000:]
    assert len(runs) >= 8


_NO_RUN = [(w, r) for w, _, r in _SCRIPTS if r]


@pytest.mark.parametrize("where,reason", _NO_RUN, ids=[w for w, _ in _NO_RUN])
def test_snippet_marked_no_run(where, reason):
    """A snippet that cannot run here (its ``qdask:no-run`` comment says why) shows as skipped."""
    pytest.skip(reason.strip())


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
    assert elapsed < 30, elapsed  # "at once": a hang in multiprocessing's bootstrap runs to the 60 s timeout
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("qdask.deploy.guard.UnguardedMainError: QuantumCluster() was started at the top level"), last
    assert _GUARD in last and "snippet.py, line " in last
    assert "bootstrapping phase" not in out.stderr


# -- the example notebooks ---------------------------------------------------------------
def _outputs(nb: nbformat.NotebookNode) -> list[Any]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, executed):
    nb = executed(path)  # a failing cell raises nbclient's CellExecutionError with its traceback
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    assert outputs
    # At least one figure each (matplotlib's inline backend: a PNG per plt.show()).
    assert [o for o in outputs if "image/png" in o.get("data", {})], f"{path.name} shows no figure"


def test_a_notebook_does_not_see_the_names_of_the_one_before(tmp_path):
    # The notebooks share a kernel (docs/hooks.py): each must still stand on its own.
    first, second = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1\nimport os\nos.getcwd()")]), first)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")]), second)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        done = hooks.execute_notebooks([first, second], tmp_path / "out")
    assert done[first].cells[0].outputs[0]["data"]["text/plain"].endswith("/a'")  # its own directory
    assert isinstance(done[second], nbclient.exceptions.CellExecutionError)
    assert "NameError" in str(done[second])
    assert not (tmp_path / "out" / "notebooks" / "b.ipynb").exists()


def test_site_renders_the_executed_notebooks(site):
    for path in NOTEBOOKS:
        page = (site / "notebooks" / path.stem / "index.html").read_text()
        assert "data:image/png;base64," in page, f"{path.name}: its figures are not on its page"
        assert "Traceback" not in page, path.name
        # The executed notebook itself is copied beside its page.
        assert "image/png" in (site / "notebooks" / path.stem / path.name).read_text()


def test_the_three_guides_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_quickstart", "02_hybrid", "03_monitoring"} <= names


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
