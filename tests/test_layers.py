"""The layering of docs/architecture.md holds: import-linter's contracts, and no import cycle."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _lint(*config: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", *config], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )


def test_the_contracts_in_pyproject_are_kept():
    result = _lint()
    assert result.returncode == 0, f"lint-imports found a broken contract:\n{result.stdout}{result.stderr}"
    assert "0 broken" in result.stdout


def test_every_module_has_a_layer():
    # A module no layer names is not checked: a new module must be placed (docs/architecture.md).
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    named = set(re.findall(r"qdask[\w.]*", " ".join(layers)))
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "qdask").rglob("*.py")}
    modules = {m for m in modules if not m.endswith(".__init__")}
    unplaced = sorted(m for m in modules if not any(m == n or m.startswith(n + ".") for n in named))
    assert unplaced == [], f"modules in no layer of [tool.importlinter]: {unplaced}"


def test_a_broken_contract_fails(tmp_path):
    # deploy imports config, so config cannot be the layer above it.
    config = tmp_path / "broken.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "qdask"\n\n'
        '[[tool.importlinter.contracts]]\nname = "wrong on purpose"\ntype = "layers"\n'
        'layers = ["qdask.config", "qdask.deploy"]\n'
    )
    result = _lint(str(config))
    assert result.returncode == 1 and "BROKEN" in result.stdout, result.stdout + result.stderr


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_between_modules():
    # Imports inside functions count too; annotations only (TYPE_CHECKING) do not.
    graph = grimp.build_graph("qdask", exclude_type_checking_imports=True)
    assert _cycles(graph) == []
