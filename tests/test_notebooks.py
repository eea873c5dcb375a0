"""The example notebooks execute top to bottom against the embedded local cluster."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    # At least one figure each (matplotlib's inline backend: a PNG per plt.show()).
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} shows no figure"


def test_the_three_guides_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_quickstart", "02_hybrid", "03_monitoring"} <= names


def test_progress_bars_are_widgets_by_default_in_a_notebook(tmp_path):
    # Sampler(client) with no progress= argument, in a Jupyter kernel: tqdm.auto's widget bar.
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(
            "import cirq, qdask\n"
            "qc = qdask.QuantumCluster(qdask.ClusterConfig(num_nodes=1))\n"
            "sampler = qdask.Sampler(qc.get_client(), seed=1)\n"
            "q = cirq.LineQubit.range(2)\n"
            "c = cirq.Circuit(cirq.H(q[0]), cirq.CNOT(*q), cirq.measure(*q, key='m'))\n"
            "results = sampler.run_batch([c] * 3, repetitions=10)\n"
            "print(sampler.engine.progress, len(results))"
        ),
        nbformat.v4.new_code_cell("qc.close()"),
    ])
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"], outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), outputs
    assert any(o.get("text", "").strip() == "True 3" for o in outputs if o.output_type == "stream"), outputs
    # No text bar on stderr beside the widget.
    assert not any("circ/s" in o.get("text", "") for o in outputs if o.get("name") == "stderr"), outputs
