"""A qdask cluster started with the ``dask`` command line, as on several hosts, here on loopback.

One ``dask scheduler --preload qdask.plugins.scheduler``, two quantum workers
(``dask worker --preload qdask.plugins.worker``, with nannies), one classical
worker preloaded by path (``plugins/qdask_worker.py --qdask-role classical``,
without a nanny) and a second scheduler preloaded by path
(``plugins/qdask_scheduler.py``). Every process is a real subprocess bound to
127.0.0.1 and killed (with its children) when the module's tests end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cirq
import pytest
from distributed import Client, get_worker

from qdask import QuantumCluster
from qdask.worker.discovery import QUANTUM, STATEVECTOR_BYTES

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(13)

BIN = Path(sys.executable).parent
REPO = Path(__file__).parent.parent
START_TIMEOUT = 120


@dataclass
class Processes:
    """Subprocesses of one test module, each in its own session so that it ends with its children."""

    logdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.logdir / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            [str(BIN / "dask"), *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
        )
        log.close()

    def scheduler(self, name: str, preload: str) -> Path:
        """Start a scheduler on a free loopback port; the returned file holds its address."""
        scheduler_file = self.logdir / f"{name}.json"
        self.start(name, [
            "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
            "--scheduler-file", str(scheduler_file), "--preload", preload,
        ])
        return scheduler_file

    def address(self, name: str, scheduler_file: Path) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while not scheduler_file.exists():
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"scheduler {name} did not start:\n{self.logs()}")
            time.sleep(0.1)
        return json.loads(scheduler_file.read_text())["address"]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logdir.glob("*.log")))

    def stop(self) -> None:
        """End every process group: SIGTERM (Dask closes gracefully), then SIGKILL what is left.

        The workers first: a worker whose scheduler closed under it retries to reach it
        (10 s of the teardown went there when all were sent SIGTERM at once).
        """
        schedulers = [name for name in self.procs if name.startswith("scheduler")]
        workers = [name for name in self.procs if name not in schedulers]
        for names in (workers, schedulers):
            for name in names:
                if self.procs[name].poll() is None:
                    os.killpg(self.procs[name].pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            for name in names:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.procs[name].wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            # Also whatever the leader left behind (a nanny's worker process).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass(frozen=True)
class CliCluster:
    address: str
    path_preloaded_address: str


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliCluster]:
    tmp = tmp_path_factory.mktemp("dask-cli")
    procs = Processes(tmp)
    try:
        main_file = procs.scheduler("scheduler", "qdask.plugins.scheduler")
        by_path_file = procs.scheduler("scheduler-by-path", str(REPO / "plugins" / "qdask_scheduler.py"))
        address = procs.address("scheduler", main_file)
        worker = ["worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--memory-limit", "1GiB",
                  "--no-dashboard", "--local-directory", str(tmp / "scratch")]
        procs.start("quantum-0", [*worker, "--name", "quantum-0", "--preload", "qdask.plugins.worker"])
        procs.start("quantum-1", [*worker, "--name", "quantum-1", "--preload", "qdask.plugins.worker",
                                  "--qdask-noise", "{gate_error: 0.01, readout_error: 0.02}"])
        procs.start("classical", [*worker, "--name", "classical", "--no-nanny",
                                  "--preload", str(REPO / "plugins" / "qdask_worker.py"), "--qdask-role", "classical"])
        with Client(address, set_as_default=False) as c:
            try:
                c.wait_for_workers(3, timeout=START_TIMEOUT)
            except TimeoutError as e:
                raise RuntimeError(f"workers did not register:\n{procs.logs()}") from e
        yield CliCluster(address, procs.address("scheduler-by-path", by_path_file))
    finally:
        procs.stop()


def test_the_scheduler_preload_does_not_import_the_simulators():
    # A scheduler runs no circuit: importing cirq/qsim there costs seconds of CPU at every start.
    code = (
        "import sys, qdask.plugins.scheduler; "
        "print(sorted(m for m in ('cirq', 'qsimcirq', 'stim') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_preloads_install_qdask_at_start(cli_cluster):
    # Plain Dask clients: QuantumCluster would register missing plugins itself
    # and hide a preload that did nothing. (Lambdas travel by value; the
    # scheduler and workers cannot import this test module.)
    for address in (cli_cluster.address, cli_cluster.path_preloaded_address):
        with Client(address, set_as_default=False) as c:
            assert c.run_on_scheduler(lambda dask_scheduler: "qdask" in dask_scheduler.plugins
                                      and "qdask" in dask_scheduler.extensions), address
    with Client(cli_cluster.address, set_as_default=False) as c:
        # The worker plugin ran before registration: resources were part of it.
        plugins = c.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert len(plugins) == 3
        assert all("qdask-worker" in names for names in plugins.values())
        registered = c.run_on_scheduler(
            lambda dask_scheduler: {ws.name: dict(ws.resources) for ws in dask_scheduler.workers.values()}
        )
        assert registered["quantum-0"][QUANTUM] == 1 and registered["quantum-1"][QUANTUM] == 1
        assert registered["classical"] == {}


def test_attach_sees_every_workers_capabilities(cli_cluster):
    with QuantumCluster(address=cli_cluster.address) as qc:
        rows = {row["name"]: row for row in qc.resources()}
    assert sorted(rows) == ["classical", "quantum-0", "quantum-1"]
    for name in ("quantum-0", "quantum-1"):
        row = rows[name]
        assert row["worker"].startswith("tcp://127.0.0.1:")
        assert row["role"] == "quantum"
        assert row["nthreads"] == 1
        assert row["memory_limit"] == 2**30
        assert row["max_qubits"] == 26  # 0.75 GiB of complex64 amplitudes
        assert row["resources"] == {QUANTUM: 1, STATEVECTOR_BYTES: int(0.75 * 2**30)}
    # --qdask-noise: quantum-1 emulates a noisy device, quantum-0 is noiseless.
    assert (rows["quantum-1"]["error_rate"], rows["quantum-1"]["readout_error"]) == (0.01, 0.02)
    assert (rows["quantum-0"]["error_rate"], rows["quantum-0"]["readout_error"]) == (0.0, 0.0)
    classical = rows["classical"]
    assert classical["role"] == "classical"
    assert classical["max_qubits"] == 0
    assert classical["resources"] == {}


def test_a_bad_noise_option_stops_the_worker_with_a_clear_error(cli_cluster, tmp_path):
    cmd = [str(BIN / "dask"), "worker", cli_cluster.address, "--host", "127.0.0.1",
           "--no-dashboard", "--no-nanny", "--local-directory", str(tmp_path),
           "--preload", "qdask.plugins.worker", "--qdask-noise", "{gate_error: 2}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT)
    assert proc.returncode != 0
    assert "--qdask-noise" in proc.stderr and "gate_error" in proc.stderr and "[0, 1]" in proc.stderr


def test_a_batch_of_circuits_runs_on_the_quantum_workers_only(cli_cluster):
    # Local, so that it travels by value: the workers cannot import this test module.
    def ghz(seed: int, n: int = 4) -> tuple[str, list[int]]:
        """Sample an ``n``-qubit GHZ circuit with qsim; return the worker and the distinct outcomes."""
        import qsimcirq

        qubits = cirq.LineQubit.range(n)
        circuit = cirq.Circuit(
            cirq.H(qubits[0]), *(cirq.CNOT(a, b) for a, b in zip(qubits, qubits[1:])), cirq.measure(*qubits, key="m")
        )
        result = qsimcirq.QSimSimulator(seed=seed).run(circuit, repetitions=200)
        return get_worker().address, sorted({int(v) for v in result.data["m"]})

    with QuantumCluster(address=cli_cluster.address) as qc:
        quantum = {row["worker"] for row in qc.resources() if row["role"] == "quantum"}
        client = qc.get_client()
        futures = client.map(ghz, range(12), resources={QUANTUM: 1}, pure=False)
        batch = client.gather(futures)
        # A classical task may go anywhere, the classical worker included.
        assert client.submit(sum, [1, 2, 3], workers=["classical"]).result() == 6
    assert len(quantum) == 2
    for worker, outcomes in batch:
        assert worker in quantum
        assert outcomes == [0, 2**4 - 1]


def test_dask_qdask_info_lists_the_cluster(cli_cluster):
    out = subprocess.run([str(BIN / "dask"), "qdask", "info", "--address", cli_cluster.address],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"Cluster at {cli_cluster.address}: 3 worker(s)" in out.stdout
    for name in ("quantum-0", "quantum-1", "classical"):
        assert name in out.stdout
    # The compact form: quantum slots in use/total, classical workers have none ("-").
    assert len(re.findall(r" quantum +1 .* [01]/1 ", out.stdout)) == 2, out.stdout
    assert max(map(len, out.stdout.splitlines())) <= 100, out.stdout
