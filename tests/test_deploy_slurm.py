"""The SLURM recipe of ``docs/deploy/slurm.md``, checked without SLURM.

dask-jobqueue's ``SLURMCluster`` runs its scheduler in this process and only
calls ``sbatch`` when scaled, so the recipe's two halves can be checked here:
the scheduler carries the qdask plugin, and the job script starts a qdask
worker (run on this machine, bound to ``lo``, by the slow test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest
from dask_jobqueue import SLURMCluster

from qdask import QuantumCluster
from qdask.worker.discovery import QUANTUM

WORKER_MODULE = "distributed.cli.dask_worker"


@pytest.fixture
def slurm_cluster() -> Iterator[SLURMCluster]:
    # The recipe, on loopback: interface "lo" instead of the cluster network.
    with SLURMCluster(
        cores=1, processes=1, memory="1GiB", walltime="00:10:00", interface="lo",
        worker_extra_args=["--preload", "qdask.plugins.worker"],
        scheduler_options={"preload": ["qdask.plugins.scheduler"], "dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        yield cluster


def test_scheduler_has_qdask_and_job_script_preloads_it(slurm_cluster):
    assert slurm_cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    assert "qdask" in slurm_cluster.scheduler.plugins
    script = slurm_cluster.job_script()
    [command] = [line for line in script.splitlines() if WORKER_MODULE in line]
    assert "--preload qdask.plugins.worker" in command
    assert slurm_cluster.scheduler_address in command


@pytest.mark.slow
def test_job_script_worker_joins_as_a_quantum_worker(slurm_cluster, tmp_path):
    [command] = [line for line in slurm_cluster.job_script().splitlines() if WORKER_MODULE in line]
    # What sbatch would run on a compute node, run here in its own session.
    proc = subprocess.Popen(["bash", "-c", command], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with QuantumCluster(address=slurm_cluster.scheduler_address) as qc:
            qc.get_client().wait_for_workers(1, timeout=120)
            [row] = qc.resources()
            assert row["role"] == "quantum"
            assert row["worker"].startswith("tcp://127.0.0.1:")
            assert row["resources"][QUANTUM] == 1
            assert qc.get_client().submit(pow, 3, 2, resources={QUANTUM: 1}).result() == 9
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
