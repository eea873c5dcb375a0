"""The qdask command line, run as a user would (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

QDASK = [str(Path(sys.executable).parent / "qdask")]


def _run(args, timeout=120):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(QDASK + args, capture_output=True, text=True, timeout=timeout, env=env)


def test_info_on_this_machine():
    out = _run(["info"])
    assert out.returncode == 0, out.stderr
    for word in ("max_qubits", "qsim_isa", "memory_limit", "statevector_bytes", "quantum=", "qsim"):
        assert word in out.stdout


def test_info_of_a_running_cluster(cluster2):
    out = _run(["info", "--address", cluster2.scheduler_address])
    assert out.returncode == 0, out.stderr
    assert "2 worker(s)" in out.stdout
    for row in cluster2.resources():
        assert row["worker"] in out.stdout
    assert out.stdout.count("quantum") >= 2


def test_dask_cli_entry_point():
    dask = str(Path(sys.executable).parent / "dask")
    out = subprocess.run([dask, "qdask", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "info" in out.stdout and "demo" in out.stdout


def test_demo_runs_against_a_cluster(cluster2):
    out = _run(["demo", "--address", cluster2.scheduler_address, "--circuits", "20", "--quiet"])
    assert out.returncode == 0, out.stderr
    assert "20 circuits" in out.stdout and "backends: " in out.stdout
    assert "dashboard: http://127.0.0.1:" in out.stdout
