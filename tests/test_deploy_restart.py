"""A ``dask`` CLI cluster whose scheduler is killed and started again: supervised workers come back.

``dask worker`` exits when its scheduler goes away (Dask workers do not
reconnect). docs/deploy/cli.md keeps them alive with a supervisor that starts
them again (systemd ``Restart=always``, supervisord ``autorestart=true``); here
a shell loop does what those do. Everything is a real subprocess on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import cirq
import pytest
import qsimcirq
from _polling import wait_for
from distributed import Client
from test_deploy_cli import BIN, START_TIMEOUT, Processes

import qdask
from qdask._compat import scheduler_workers
from qdask.worker.discovery import QUANTUM

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_supervised_cli_worker_comes_back_after_the_scheduler_restarts(tmp_path):
    # One worker: each `dask worker` start is two fresh interpreters (nanny and worker,
    # which imports cirq), and a second worker would show the same again.
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = Processes(tmp_path)
    scheduler = ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0",
                 "--preload", "qdask.plugins.scheduler"]
    worker = (f"{BIN / 'dask'} worker {address} --host 127.0.0.1 --nthreads 1 --memory-limit 1GiB --no-dashboard "
              f"--local-directory {tmp_path / 'scratch'} --preload qdask.plugins.worker")
    q = cirq.LineQubit.range(6)
    circuits = [cirq.testing.random_circuit(q, n_moments=8, op_density=0.8, random_state=i) + cirq.measure(*q, key="m")
                for i in range(20)]
    ref = qsimcirq.QSimSimulator(seed=4).run_batch(circuits, repetitions=10)
    try:
        procs.start("scheduler", scheduler)
        # The supervisor: start the worker again whenever it exits (systemd Restart=always, RestartSec=1).
        log = open(tmp_path / "worker.log", "wb")
        procs.procs["worker"] = subprocess.Popen(
            ["sh", "-c", f"while :; do {worker} --name w0; sleep 1; done"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        pids = []
        for attempt in ("before", "after"):
            with Client(address, timeout=START_TIMEOUT) as c:
                c.wait_for_workers(1, timeout=START_TIMEOUT)
                # A preloaded worker may register before its plugin declared the quantum slot
                # (it then sends it with set_resources): wait for the slot.
                wait_for(lambda: sum(w["resources"].get(QUANTUM, 0) for w in scheduler_workers(c).values())
                         >= 1, timeout=START_TIMEOUT, what="the worker's quantum slot")
                got = qdask.Sampler(c, seed=4, simulator="qsim").run_batch(circuits, repetitions=10)
                assert [g[0] for g in got] == [r[0] for r in ref], attempt
                assert [w["name"] for w in scheduler_workers(c).values()] == ["w0"]
                pids += c.run(os.getpid).values()
            if attempt == "before":
                procs.procs["scheduler"].kill()  # SIGKILL: no goodbye to the workers
                procs.procs["scheduler"].wait()
                time.sleep(2)  # the workers notice and exit; their supervisors start them again
                t0 = time.monotonic()
                procs.start("scheduler", scheduler)  # same address
        assert len(pids) == 2 and pids[0] != pids[1], pids  # a new worker process, started by its supervisor
        print(f"\nscheduler restart: the supervised CLI worker back and a batch correct "
              f"{time.monotonic() - t0:.1f} s after the new scheduler was started")
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop()
