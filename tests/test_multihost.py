"""Several hosts on one machine: the scheduler, three workers and the client each in a network namespace.

The testbed (``ip netns`` + veth, built and torn down by the ``testbed``
fixture) is a private switch: one namespace holds a bridge, and every "host"
namespace (``scheduler``, ``worker-0..2``, ``client``) has one veth ``eth0``
whose peer is a port of that bridge. Addresses are 10.213.0.0/24 and exist
only inside these namespaces: no link is created in the machine's own
namespace, no namespace has a default route, so nothing can reach or leave
for the outside world. Each process is started with ``ip netns exec``:
``dask scheduler --preload qdask.plugins.scheduler``, ``dask worker
--preload qdask.plugins.worker`` (with its Nanny) and a small client script
that attaches with ``QuantumCluster(address=...)`` and reports JSON lines.

The test cuts one worker's cable (``ip link set eth0 down`` in its
namespace) while a batch of circuits is running there. Nothing closes: the
scheduler only notices through its ``worker-ttl`` check (set to 5 s), tries
to restart the worker through its unreachable Nanny (connect timeout set to
5 s), then removes it. The client's ``on_node_failure`` handler must see the
worker as ``heartbeat-lost`` and the batch must still equal a serial qsim run
with the same seed. Needs root (``ip netns add``); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cirq
import numpy as np
import pytest
import qsimcirq

from qdask.worker.discovery import QUANTUM

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600, method="signal")]

BIN = Path(sys.executable).parent
REPO = Path(__file__).parent.parent
SUBNET = "10.213.0"
SCHEDULER_IP = f"{SUBNET}.1"
#: host name -> address on the private switch
HOSTS = {"scheduler": SCHEDULER_IP, "worker-0": f"{SUBNET}.11", "worker-1": f"{SUBNET}.12",
         "worker-2": f"{SUBNET}.13", "client": f"{SUBNET}.100"}
WORKERS = ["worker-0", "worker-1", "worker-2"]
VICTIM = "worker-1"
START_TIMEOUT = 120
CLIENT_TIMEOUT = 240
N_CIRCUITS, QUBITS, DEPTH, REPETITIONS, SEED = 300, 12, 30, 100, 2213

# Run with `ip netns exec <client namespace> python CLIENT ...`; one JSON object per stdout line.
CLIENT = textwrap.dedent('''
    import json, pickle, sys, threading, time
    from dataclasses import asdict

    import numpy as np

    import qdask
    from qdask import QuantumCluster

    address, victim, circuits_path, out_path = sys.argv[1:5]
    seed, repetitions, timeout = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])


    def say(stage, **msg):
        print(json.dumps({"stage": stage, **msg}, default=str), flush=True)


    def progress(dask_scheduler, victim):
        """Circuit tasks not finished yet, and how many of them the victim is running or holds."""
        pending = [ts for key, ts in dask_scheduler.tasks.items()
                   if str(key).startswith("qdask_sample_") and ts.state != "memory"]
        ws = next((w for w in dask_scheduler.workers.values() if w.name == victim), None)
        return {"pending": len(pending), "victim_processing": len(ws.processing) if ws else 0}


    with open(circuits_path, "rb") as f:
        circuits = pickle.load(f)
    with QuantumCluster(address=address) as qc:
        failures, network_errors = [], []
        qc.on_node_failure(failures.append)
        qc.on_network_error(network_errors.append)
        say("attached", resources=list(qc.resources()))
        client = qc.get_client()
        outcome = {}

        def run():
            try:
                outcome["results"] = qdask.Sampler(client, seed=seed, simulator="qsim").run_batch(
                    circuits, repetitions=repetitions)
            except BaseException as e:
                outcome["error"] = repr(e)

        t0 = time.monotonic()
        batch = threading.Thread(target=run, name="batch", daemon=True)
        batch.start()
        # Cut once a fifth of the batch is done and the victim still holds work.
        total = 0
        while batch.is_alive() and time.monotonic() - t0 < timeout:
            p = client.run_on_scheduler(progress, victim=victim)
            total = max(total, p["pending"])
            if total and p["pending"] <= 0.8 * total and p["victim_processing"] >= 2:
                break
            time.sleep(0.05)
        else:
            say("error", error=f"the batch ended or timed out before the cut: {outcome}")
            sys.exit(1)
        say("cut-now", tasks=total, **p)
        sys.stdin.readline()  # the test cut the victim's link
        batch.join(timeout)
        seconds = time.monotonic() - t0
        if batch.is_alive() or "error" in outcome:
            say("error", error=f"batch did not complete within {timeout} s: {outcome.get('error')}")
            sys.exit(1)
        deadline = time.monotonic() + 60  # events travel apart from results
        while not failures and time.monotonic() < deadline:
            time.sleep(0.1)
        results = outcome["results"]
        np.savez(out_path, *[r[0].measurements["m"] for r in results])
        say("done", seconds=seconds,
            node_failures=[e.to_message() for e in failures],
            network_errors=[e.to_message() for e in network_errors],
            workers_used=sorted({w for r in results for w in r[0].metadata["workers"]}),
            resources=list(qc.resources()),
            error_statistics=asdict(qc.error_statistics()))
''')


class Unsupported(RuntimeError):
    """This machine cannot build the testbed (not root, no netns/veth/bridge support)."""


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def must(out: subprocess.CompletedProcess[str]) -> None:
    if out.returncode != 0:
        raise RuntimeError(f"`{' '.join(out.args)}` failed ({out.returncode}): {out.stderr.strip()}")


@dataclass
class NetnsHosts:
    """Network namespaces on a private bridge, and the processes started in them."""

    tag: str
    logdir: Path
    #: host name -> namespace
    netns: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)

    @property
    def switch(self) -> str:
        return f"{self.tag}-switch"

    def _add_netns(self, name: str) -> None:
        out = ip("netns", "add", name)
        if out.returncode != 0:
            raise Unsupported(f"`ip netns add {name}` failed: {out.stderr.strip()}")
        self.netns[name] = name
        must(ip("-n", name, "link", "set", "lo", "up"))

    def build(self) -> None:
        if os.geteuid() != 0:
            raise Unsupported(f"needs root to create network namespaces (ip netns add); running as uid {os.geteuid()}")
        if shutil.which("ip") is None:
            raise Unsupported("needs iproute2's `ip` command (ip netns, veth, bridge)")
        self._add_netns(self.switch)
        out = ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        if out.returncode != 0:
            raise Unsupported(f"no Linux bridge support (`ip link add br0 type bridge`): {out.stderr.strip()}")
        must(ip("-n", self.switch, "link", "set", "br0", "up"))
        for host, address in HOSTS.items():
            ns = f"{self.tag}-{host}"
            self._add_netns(ns)
            self.netns[host] = self.netns.pop(ns)
            # Both ends are created inside the testbed: the machine's own namespace gets no link.
            out = ip("-n", self.switch, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
            if out.returncode != 0:
                raise Unsupported(f"no veth support (`ip link add ... type veth`): {out.stderr.strip()}")
            must(ip("-n", self.switch, "link", "set", host, "master", "br0", "up"))
            must(ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"))
            must(ip("-n", ns, "link", "set", "eth0", "up"))

    def start(self, name: str, host: str, argv: list[str], env: dict[str, str] | None = None,
              pipes: bool = False) -> subprocess.Popen[Any]:
        """Run ``argv`` in ``host``'s namespace, in a session of its own (so it ends with its children).

        Output goes to ``<name>.log``; with ``pipes`` stdout (text) and stdin are pipes instead.
        """
        log = open(self.logdir / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", self.netns[host], *argv], cwd=REPO,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL, stdout=subprocess.PIPE if pipes else log,
            stderr=log, text=pipes, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        log.close()
        return self.procs[name]

    def cut(self, host: str) -> None:
        """Pull the host's cable: its interface goes down, no packet in or out, nothing closes cleanly."""
        must(ip("-n", self.netns[host], "link", "set", "dev", "eth0", "down"))

    def logs(self) -> str:
        logs = sorted(self.logdir.glob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs)

    def teardown(self) -> list[str]:
        """Kill every process, delete every namespace; returns what could not be cleaned up."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            # Also whatever the leader left behind (a Nanny's worker process).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        leftovers = []
        for ns in self.netns.values():
            # Anything still inside a testbed namespace is ours: a worker that left its process group.
            for pid in ip("netns", "pids", ns).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            out = ip("netns", "del", ns)  # takes the veths and the bridge with it
            if out.returncode != 0:
                leftovers.append(f"namespace {ns}: {out.stderr.strip()}")
        remaining = [ns for ns in ip("netns", "list").stdout.split() if ns.startswith(f"{self.tag}-")]
        leftovers += [f"namespace {ns} still listed" for ns in remaining]
        return leftovers


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[NetnsHosts]:
    bed = NetnsHosts(f"qdask{os.getpid()}", tmp_path)
    try:
        try:
            bed.build()
        except Unsupported as e:
            pytest.skip(f"cannot build the network-namespace testbed: {e}")
        yield bed
    finally:
        leftovers = bed.teardown()
        assert not leftovers, f"the testbed was not cleaned up: {leftovers}"


def random_circuits() -> list[cirq.Circuit]:
    q = cirq.LineQubit.range(QUBITS)
    return [
        cirq.testing.random_circuit(q, n_moments=DEPTH, op_density=0.8, random_state=SEED + i)
        + cirq.measure(*q, key="m")
        for i in range(N_CIRCUITS)
    ]


class Lines:
    """The client's JSON lines, read in a thread so that every wait has a deadline."""

    def __init__(self, proc: subprocess.Popen[str], bed: NetnsHosts) -> None:
        self.proc, self.bed = proc, bed
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, name="multihost-client-reader", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.queue.put(json.loads(line))
        self.queue.put(None)

    def expect(self, stage: str, timeout: float) -> dict[str, Any]:
        try:
            msg = self.queue.get(timeout=timeout)
        except queue.Empty:
            msg = {"stage": "timeout", "error": f"no {stage!r} from the client within {timeout} s"}
        if msg is None or msg["stage"] != stage:
            pytest.fail(f"expected {stage!r} from the client, got {msg}\n{self.bed.logs()}")
        return msg


def test_a_batch_survives_a_cut_link(testbed: NetnsHosts, tmp_path: Path) -> None:
    t_start = time.monotonic()
    scheduler = f"tcp://{SCHEDULER_IP}:8786"
    scheduler_file = tmp_path / "scheduler.json"
    testbed.start("scheduler", "scheduler", [
        str(BIN / "dask"), "scheduler", "--host", SCHEDULER_IP, "--port", "8786",
        "--dashboard-address", f"{SCHEDULER_IP}:8787", "--scheduler-file", str(scheduler_file),
        "--preload", "qdask.plugins.scheduler",
    ], env={
        # A silent cut is noticed only by the worker-ttl check (default 5 min); the check then
        # tries to restart the worker through its Nanny, which is cut off too (default 30 s).
        "DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "5s",
        "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s",
    })
    deadline = time.monotonic() + START_TIMEOUT
    while not scheduler_file.exists():
        assert testbed.procs["scheduler"].poll() is None and time.monotonic() < deadline, \
            f"the scheduler did not start:\n{testbed.logs()}"
        time.sleep(0.1)
    assert json.loads(scheduler_file.read_text())["address"] == scheduler
    for name in WORKERS:
        testbed.start(name, name, [
            str(BIN / "dask"), "worker", scheduler, "--host", HOSTS[name], "--name", name, "--nthreads", "1",
            "--memory-limit", "1GiB", "--no-dashboard", "--local-directory", str(tmp_path / name),
            "--preload", "qdask.plugins.worker",
        ])

    circuits = random_circuits()
    circuits_path, results_path, script = tmp_path / "circuits.pkl", tmp_path / "results.npz", tmp_path / "client.py"
    circuits_path.write_bytes(pickle.dumps(circuits))
    script.write_text(CLIENT)
    # Start the client once every worker is registered; it runs inside the client namespace.
    wait = testbed.start("wait-for-workers", "client", [sys.executable, "-c", (
        "from distributed import Client\n"
        f"with Client({scheduler!r}, timeout=60) as c: c.wait_for_workers({len(WORKERS)}, timeout={START_TIMEOUT})"
    )])
    assert wait.wait(timeout=START_TIMEOUT + 90) == 0, f"the workers did not register:\n{testbed.logs()}"
    client = testbed.start("client", "client", [
        sys.executable, str(script), scheduler, VICTIM, str(circuits_path), str(results_path),
        str(SEED), str(REPETITIONS), str(CLIENT_TIMEOUT),
    ], env={"DASK_QDASK__QUANTUM__CHUNK_DURATION": "100ms"}, pipes=True)  # many tasks: the cut lands mid-batch
    lines = Lines(client, testbed)

    # Every worker's capabilities are visible from the client's host.
    attached = lines.expect("attached", timeout=2 * START_TIMEOUT)  # imports cirq and qdask first
    cluster_up = time.monotonic() - t_start
    rows = {row["name"]: row for row in attached["resources"]}
    assert sorted(rows) == WORKERS
    for name, row in rows.items():
        assert row["worker"].startswith(f"tcp://{HOSTS[name]}:"), row
        assert row["role"] == "quantum" and row["resources"][QUANTUM] == 1, row
        assert row["max_qubits"] >= QUBITS, row
    victim = rows[VICTIM]["worker"]

    before_cut = lines.expect("cut-now", timeout=CLIENT_TIMEOUT)
    testbed.cut(VICTIM)
    cut_at = time.time()
    assert client.stdin is not None
    client.stdin.write("cut\n")
    client.stdin.flush()

    done = lines.expect("done", timeout=CLIENT_TIMEOUT + 90)
    assert client.wait(timeout=60) == 0, testbed.logs()

    # The handlers saw the cut worker, and only it, as lost for want of heartbeats.
    failures = done["node_failures"]
    assert [(e["worker"], e["cause"]) for e in failures] == [(victim, "heartbeat-lost")], (failures, testbed.logs())
    assert failures[0]["recovery"]["rescheduled"], "the victim held no work when its link was cut"
    assert all(victim in (e["worker"], *e["peers"]) for e in done["network_errors"]), done["network_errors"]
    assert sorted(row["name"] for row in done["resources"]) == ["worker-0", "worker-2"]
    assert done["error_statistics"]["node_failures"] == 1

    # The batch completed with the serial simulator's results.
    reference = qsimcirq.QSimSimulator(seed=SEED).run_batch(circuits, repetitions=REPETITIONS)
    with np.load(results_path) as got:
        assert len(got.files) == N_CIRCUITS
        wrong = [i for i in range(N_CIRCUITS) if not np.array_equal(got[f"arr_{i}"], reference[i][0].measurements["m"])]
    assert not wrong, f"{len(wrong)} circuit(s) differ from serial qsim, e.g. {wrong[:5]}"

    print(
        f"\nmultihost: {N_CIRCUITS} circuits of {QUBITS} qubits on {len(WORKERS)} namespaced workers; "
        f"cut {VICTIM} ({victim}) with {before_cut['victim_processing']} of its tasks in flight and "
        f"{before_cut['pending']}/{before_cut['tasks']} pending; node_failure {failures[0]['cause']} "
        f"{failures[0]['time'] - cut_at:.1f} s after the cut, {len(failures[0]['recovery']['rescheduled'])} "
        f"task(s) rescheduled; {len(done['network_errors'])} network_error event(s) "
        f"{[(e['cause'], e['worker']) for e in done['network_errors']]}; batch {done['seconds']:.1f} s, "
        f"workers used {done['workers_used']}; cluster up and attached in {cluster_up:.0f} s, "
        f"test {time.monotonic() - t_start:.0f} s"
    )
