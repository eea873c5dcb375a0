"""The qdask command line, as a user runs it.

What needs a process of its own (Ctrl-C, what a start-up imports, the entry
points, ``dask worker`` with qdask's preload) runs as one; the rest runs in this
process through click's ``CliRunner``: the same command code, without another
interpreter importing it (0.5 CPU-seconds each, 2-3 with cirq).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dask
import pytest
from _processes import ctrl_c_ready
from click.testing import CliRunner, Result

from qdask.cli.main import cli

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(28)

QDASK = [str(Path(sys.executable).parent / "qdask")]


def _run(args: list[str]) -> Result:
    """``qdask ARGS`` in this process; ``exit_code``, ``stdout`` and ``stderr`` as a subprocess's."""
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _run_timed(args: list[str]) -> tuple[Result, float]:
    """:func:`_run`, and the seconds it took."""
    t0 = time.perf_counter()
    out = _run(args)
    return out, time.perf_counter() - t0


#: Seconds within which a refused command line has ended, even on a loaded machine: what
#: it guards against is a command that goes on (starts a cluster, retries to connect for
#: good); 60 s, the subprocess timeout, would be a hang.
FAIL_FAST = 20


def _timed(cmd, **env_extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    return out, time.perf_counter() - t0


def _one_error_line(out):
    """The single ``Error: ...`` line of a click failure, and no traceback."""
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out.stderr
    return errors[0]


@pytest.mark.parametrize("args,option", [
    (["demo", "--circuits", "0"], "--circuits"),
    (["demo", "--seed", "-1"], "--seed"),
    (["demo", "--address", "foo:bar"], "--address"),
    (["info", "--address", "tcp://127.0.0.1:99999"], "--address"),
    (["monitor", "--address", "127.0.0.1:1", "--interval", "xyz"], "--interval"),
    (["monitor", "--address", "127.0.0.1:1", "--interval", "0"], "--interval"),
    (["monitor", "--address", "127.0.0.1:1", "--count", "0"], "--count"),
])
def test_bad_argument_is_one_click_error_before_anything_starts(args, option):
    out, elapsed = _run_timed(args)
    assert out.exit_code == 2, out.stderr
    line = _one_error_line(out)
    assert f"Invalid value for '{option}'" in line
    assert out.stdout == ""  # no cluster started, nothing printed
    assert elapsed < FAIL_FAST, elapsed


@pytest.mark.parametrize("command", ["info", "demo", "monitor"])
def test_unreachable_address_fails_within_the_connect_timeout(command):
    with dask.config.set({"distributed.comm.timeouts.connect": "500ms"}):
        out, elapsed = _run_timed([command, "--address", "127.0.0.1:1"])
    assert out.exit_code == 1, out.stderr
    line = _one_error_line(out)
    assert "no qdask scheduler answered at 127.0.0.1:1 within 0.5 s" in line
    assert "dask scheduler --preload qdask.plugins.scheduler" in line
    assert elapsed < FAIL_FAST, elapsed


@pytest.mark.parametrize("option,value,says", [
    ("--qdask-role", "bogus", "'bogus' is not one of 'quantum', 'classical'"),
    ("--qdask-noise", "[1", "Expected a mapping such as"),
    ("--qdask-noise", "gate_error", "a str, not a mapping"),
    ("--qdask-noise", "{gate_error: 2}", "gate_error"),
    ("--qdask-noise", "{gate_eror: 0.1}", "no parameter 'gate_eror'"),
])
def test_bad_preload_option_names_the_preload_command(option, value, says):
    dask = str(Path(sys.executable).parent / "dask")
    out, elapsed = _timed([dask, "worker", "tcp://127.0.0.1:1", "--preload", "qdask.plugins.worker", option, value])
    assert out.returncode == 2, out.stderr
    assert "Usage: dask worker --preload qdask.plugins.worker [OPTIONS]" in out.stderr
    line = _one_error_line(out)
    assert f"Invalid value for '{option}'" in line and says in line, line
    assert "--help" not in out.stderr  # dask worker's help would not list the preload's options
    assert out.stderr.rstrip().endswith(line)  # the error is the last line: nothing follows on other lines
    assert elapsed < FAIL_FAST, elapsed


def test_the_preload_checks_its_options_without_importing_cirq():
    # Its import takes seconds: a bad --qdask-noise is refused before it.
    code = (
        "import sys, click\n"
        "import qdask.plugins.worker as w\n"
        "for value in ('{gate_error: 0.01}', '{gate_error: 2}'):\n"
        "    try:\n"
        "        w._noise(None, None, value)\n"
        "    except click.BadParameter:\n"
        "        pass\n"
        "print(sorted(m for m in ('cirq', 'qsimcirq') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_demo_without_keep_prints_no_dead_dashboard_link():
    out = _run(["demo", "--circuits", "2", "--quiet"])
    assert out.exit_code == 0, out.stderr
    assert "2 circuits" in out.stdout
    assert "http://" not in out.stdout and "--keep" in out.stdout


def test_demo_keep_serves_the_dashboard_until_ctrl_c():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(QDASK + ["demo", "--circuits", "2", "--quiet", "--keep"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=ctrl_c_ready)
    try:
        link = None
        for line in proc.stdout:
            if line.startswith("dashboard: "):
                link = line.split()[1]
            if "Ctrl-C" in line:
                break
        assert link is not None and link.startswith("http://127.0.0.1:"), link
        page = link.rsplit("/", 1)[0] + "/qdask"
        time.sleep(1.0)  # still up a while after the summary
        with urllib.request.urlopen(page, timeout=10) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopping" in rest, rest
    assert "Traceback" not in err, err
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(page, timeout=5)


def test_info_on_this_machine_in_human_units():
    out = _run(["info"])
    assert out.exit_code == 0, out.stderr
    for word in ("max_qubits", "qsim_isa", "memory_limit", "statevector_bytes", "quantum=", "qsim"):
        assert word in out.stdout
    assert re.search(r"memory_limit +[\d.]+ GiB", out.stdout), out.stdout
    assert re.search(r"per_op=[\d.]+ (ns|us|ms)", out.stdout), out.stdout
    assert not re.search(r"\d{7,}", out.stdout), out.stdout  # no raw byte counts


def test_info_of_a_running_cluster(cluster2):
    out = _run(["info", "--address", cluster2.scheduler_address])
    assert out.exit_code == 0, out.stderr
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
    assert out.exit_code == 0, out.stderr
    assert "20 circuits" in out.stdout and "backends: " in out.stdout
    # An attached cluster's dashboard stays up after the demo detaches: its link is live.
    assert "dashboard: http://127.0.0.1:" in out.stdout
