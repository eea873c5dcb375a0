"""The benchmark scripts (run by ``make bench``, not by the suite) at least compile and parse their options."""

from __future__ import annotations

import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parent.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_benchmark_compiles(path):
    py_compile.compile(str(path), doraise=True)


def test_throughput_benchmark_parses_its_options():
    script = BENCHMARKS[0].parent / "throughput.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--monitoring" in out and "--only" in out
