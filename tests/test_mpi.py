"""qdask under ``mpiexec`` (dask-mpi), run as users run it: a real MPICH job in a subprocess.

MPICH's ``gforker`` process manager forks every rank on this machine without
opening a network port (Hydra's ``mpiexec`` listens on 0.0.0.0), and libfabric's
tcp provider is pinned to ``lo``, so the whole job stays on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qdask.worker.discovery import QUANTUM, STATEVECTOR_BYTES

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(17)

BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec.gforker"
HERE = Path(__file__).parent
TIMEOUT = 150


def _mpiexec(n: int, args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``mpiexec -n N python ARGS`` on loopback; the job is killed with its ranks on timeout."""
    assert MPIEXEC.exists(), f"{MPIEXEC} is missing: install the mpich wheel (pip install 'qdask[mpi]')"
    full_env = dict(
        os.environ,
        MPIR_CVAR_CH4_NETMOD="ofi",
        FI_PROVIDER="tcp",
        FI_TCP_IFACE="lo",
        PYTHONUNBUFFERED="1",
        **env,
    )
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        # The ranks are in the job's own session: end any that is left, not just mpiexec.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def test_four_ranks_run_a_script_on_two_quantum_workers(tmp_path):
    report = tmp_path / "report.json"
    out = _mpiexec(
        4,
        ["-m", "qdask.mpi", "--local-directory", str(tmp_path / "scratch"), str(HERE / "mpi_client.py"), str(report)],
        tmp_path,
        DASK_QDASK__CLUSTER__MEMORY_PER_NODE="1GiB",
    )
    assert out.returncode == 0, out.stdout[-5000:]
    seen = json.loads(report.read_text())
    assert seen["rank"] == 1
    assert seen["argv"] == [str(HERE / "mpi_client.py"), str(report)]

    # Ranks 2 and 3 are the workers, each discovered and advertised as a quantum worker
    # with the memory limit the config asked for.
    workers = seen["workers"]
    assert sorted(w["name"] for w in workers) == ["2", "3"]
    for w in workers:
        assert w["worker"].startswith("tcp://127.0.0.1:")
        assert w["role"] == "quantum"
        assert w["memory_limit"] == 2**30
        assert w["max_qubits"] == 26  # 0.75 GiB of complex64 amplitudes
        assert w["resources"][QUANTUM] == 1
        assert w["resources"][STATEVECTOR_BYTES] == int(0.75 * 2**30)

    # The batch ran on the quantum workers, with GHZ outcomes only.
    addresses = {w["worker"] for w in workers}
    assert len(seen["batch"]) == 8
    for worker, outcomes in seen["batch"]:
        assert worker in addresses
        assert outcomes == [0, 2**5 - 1]

    # Scheduler, workers and client (Dask servers and MPI sockets alike) listen on loopback only.
    listeners = seen["listeners"]
    assert len(listeners["workers"]) == 2
    ips = {ip for ips in [listeners["client"], listeners["scheduler"], *listeners["workers"].values()] for ip in ips}
    assert ips == {"127.0.0.1"}


@pytest.mark.slow
def test_from_mpi_assigns_roles_from_the_config(tmp_path):
    script = tmp_path / "roles.py"
    script.write_text(
        "import json\n"
        "from qdask import ClusterConfig, QuantumCluster\n"
        "qc = QuantumCluster.from_mpi(ClusterConfig(quantum_devices=1, memory_per_node='1GiB'),\n"
        f"                            local_directory={str(tmp_path / 'scratch')!r})\n"
        "rows = {r['name']: [r['role'], r['resources']] for r in qc.resources()}\n"
        "print('ROLES=' + json.dumps(rows))\n"
        "qc.close()\n"
    )
    out = _mpiexec(4, [str(script)], tmp_path)
    assert out.returncode == 0, out.stdout[-5000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("ROLES="))
    roles = json.loads(line.removeprefix("ROLES="))
    # The first worker rank is the quantum one; the other advertises no quantum resources.
    assert roles["2"][0] == "quantum" and roles["2"][1][QUANTUM] == 1
    assert roles["3"] == ["classical", {}]


def test_too_few_ranks_fail_at_once_with_the_fix(tmp_path):
    script = tmp_path / "never.py"
    script.write_text("raise SystemExit('the client script must not run')\n")
    out = _mpiexec(2, ["-m", "qdask.mpi", str(script)], tmp_path)
    assert out.returncode != 0
    assert "Not enough MPI ranks to start cluster, found 2, needs at least 3" in out.stdout
    assert "mpiexec -n 4 python -m qdask.mpi script.py" in out.stdout
    assert "must not run" not in out.stdout
    assert "Traceback" not in out.stdout
