"""Chaos: batches of circuits on the embedded cluster while workers and the scheduler are killed.

A *job* process (this script with ``--job``) runs ``QuantumCluster`` (scheduler,
client and nannies in the job, workers in their own processes) with fault
tolerance on and a checkpoint store, and runs batch after batch of seeded
circuits; each finished batch is written whole (temporary file, then rename)
and logged as delivered. The *controller* (this script) meanwhile, every 0.5-2 s,
picks a random event:

* ``kill``      SIGKILL one random worker process;
* ``kill-all``  SIGKILL every worker at once (an OOM killer's sweep);
* ``stop``      SIGSTOP one worker for 1-8 s, then SIGCONT (the job's
  ``qdask.scheduler.worker-ttl`` is 3 s, floored by Dask to 5 s: the longer
  stops are detected as frozen and the worker restarted);
* ``restart``   about every ``--restart-every`` seconds: SIGKILL the whole job
  (scheduler, client, nannies, workers) and start it again; it resumes at the
  first batch not delivered, with the results checkpointed before the kill
  loaded instead of recomputed.

At the end the controller resumes the workers it stopped, asks the job to stop
after its current batch and
checks every delivered batch against serial ``qsimcirq.QSimSimulator`` under
the same seed: ``lost`` counts circuits without a result or with a wrong one
(plus the circuits of a batch the job could not finish), ``duplicates``
results delivered more than once (a batch delivered twice, or more results
than circuits). Both must be 0.

Usage: ``python benchmarks/chaos.py [--seconds 600] [--workers 3] [--seed 0] [--json out.json]``
(``--seconds 60`` for a short run). Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

#: Circuits per batch, their width, depth and repetitions.
CIRCUITS, QUBITS, DEPTH, REPS = 200, 10, 14, 20


def circuits_for(batch: int, seed: int) -> list:
    import cirq

    q = cirq.LineQubit.range(QUBITS)
    base = (seed * 1_000_003 + batch) * CIRCUITS
    return [
        cirq.testing.random_circuit(q, n_moments=DEPTH, op_density=0.8, random_state=base + i)
        + cirq.measure(*q, key="m")
        for i in range(CIRCUITS)
    ]


def batch_seed(batch: int, seed: int) -> int:
    return seed * 1_000_003 + batch


# -- the job ------------------------------------------------------------------------------
def job(work: Path, workers: int, seed: int) -> None:
    """Run batches until ``work/stop`` exists; resumes after the last delivered batch."""
    import dask

    import qdask
    from qdask import ClusterConfig, FaultToleranceConfig, QuantumCluster

    out = work / "batches"
    out.mkdir(exist_ok=True)
    settings = {
        "qdask.scheduler.worker-ttl": "3s",
        "qdask.quantum.chunk-duration": "100ms",
        # A worker is restarted within seconds; Dask would give up on it after 15 s.
        "distributed.deploy.lost-worker-timeout": "600s",
    }
    with dask.config.set(settings), QuantumCluster(ClusterConfig(num_nodes=workers, memory_per_node="1GiB")) as qc:
        client = qc.get_client()
        ft = qc.enable_fault_tolerance(FaultToleranceConfig(checkpoint_url=str(work / "checkpoints"),
                                                            checkpoint_interval=0.5, max_failures=10))
        (work / "ready").write_text(str(os.getpid()))
        batch = len(list(out.glob("batch-*.npz")))
        while not (work / "stop").exists():
            t0 = time.perf_counter()
            try:
                got = qdask.Sampler(client, seed=batch_seed(batch, seed), simulator="qsim").run_batch(
                    circuits_for(batch, seed), repetitions=REPS)
            except Exception as e:  # counted by the controller; the batch runs again (from checkpoints)
                with open(work / "errors.log", "a") as f:
                    f.write(f"{batch} {type(e).__name__}: {str(e)[:300]!r}\n")
                continue
            samples = np.stack([r[0].measurements["m"] for r in got])
            tmp = out / f".batch-{batch:05d}.npz"
            np.savez(tmp, samples=samples, count=len(got))
            os.replace(tmp, out / f"batch-{batch:05d}.npz")
            stats = dict(ft.checkpoints.stats)
            with open(work / "delivered.log", "a") as f:
                f.write(json.dumps({"batch": batch, "pid": os.getpid(), "seconds": time.perf_counter() - t0,
                                    "hits": stats.get("hits", 0), "written": stats.get("written", 0),
                                    "corrupt": stats.get("corrupt", 0)}) + "\n")
            batch += 1
        ft.stop()


# -- the controller -----------------------------------------------------------------------
class Chaos:
    def __init__(self, work: Path, workers: int, seed: int) -> None:
        self.work, self.workers, self.seed = work, workers, seed
        self.rng = random.Random(seed)
        self.counts = {"kill": 0, "kill-all": 0, "stop": 0, "restart": 0}
        self.stopped: list[float] = []  # seconds of each SIGSTOP
        self.frozen: set[int] = set()  # the workers SIGSTOPped (some may be resumed or dead by now)
        self.job: subprocess.Popen | None = None
        self.log = open(work / "job.log", "ab")

    def start_job(self) -> None:
        (self.work / "ready").unlink(missing_ok=True)
        argv = [sys.executable, __file__, "--job", str(self.work), "--workers", str(self.workers),
                "--seed", str(self.seed)]
        # Own session: a restart kills the job's whole process group at once.
        self.job = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while not (self.work / "ready").exists():
            if self.job.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the chaos job did not start (exit {self.job.poll()}); see {self.work / 'job.log'}")
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        """The job's worker processes (not the forkserver or resource tracker they start from)."""
        assert self.job is not None
        pids = []
        with contextlib.suppress(psutil.NoSuchProcess):
            for p in psutil.Process(self.job.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    cmd = " ".join(p.cmdline())
                    if "resource_tracker" in cmd or ("forkserver" in cmd and p.ppid() == self.job.pid):
                        continue
                    if p.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_STOPPED):
                        pids.append(p.pid)
        return pids

    def kill_job(self) -> None:
        assert self.job is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.job.pid, signal.SIGKILL)
        self.job.wait()
        # Workers forked from the job's forkserver are in its group too; wait until all are gone.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_pgid(p.pid) == self.job.pid for p in psutil.process_iter()):
            time.sleep(0.1)

    def event(self, since_restart: float, restart_every: float) -> None:
        pids = self.worker_pids()
        if since_restart >= restart_every:
            self.counts["restart"] += 1
            self.kill_job()
            self.start_job()
            return
        if not pids:
            return
        roll = self.rng.random()
        if roll < 0.08:
            self.counts["kill-all"] += 1
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        elif roll < 0.6:
            self.counts["kill"] += 1
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.rng.choice(pids), signal.SIGKILL)
        else:
            self.counts["stop"] += 1
            pid, seconds = self.rng.choice(pids), self.rng.uniform(1, 8)
            self.stopped.append(seconds)
            self.frozen.add(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            threading.Timer(seconds, _cont, args=(pid,)).start()

    def run(self, seconds: float, restart_every: float) -> dict:
        self.start_job()
        t0 = last_restart = time.monotonic()
        while (now := time.monotonic()) - t0 < seconds:
            time.sleep(self.rng.uniform(0.5, 2.0))
            restarts = self.counts["restart"]
            self.event(now - last_restart, restart_every)
            if self.counts["restart"] != restarts:
                last_restart = time.monotonic()
        chaos_seconds = time.monotonic() - t0
        # The chaos is over: a worker still stopped would hold the last batch for the
        # rest of its stop (up to 8 s) or until its heartbeats time out.
        for pid in self.frozen:
            _cont(pid)
        (self.work / "stop").write_text("")
        assert self.job is not None
        finished = True
        try:
            self.job.wait(timeout=300)
        except subprocess.TimeoutExpired:
            finished = False
            self.kill_job()
        self.log.close()
        report = self.check()
        report.update(seconds=round(chaos_seconds, 1), total_seconds=round(time.monotonic() - t0, 1),
                      workers=self.workers, **self.counts,
                      stops_over_ttl=sum(s > 5 for s in self.stopped), job_finished=finished,
                      job_exit=self.job.returncode)
        return report

    def check(self) -> dict:
        """Every delivered batch against serial qsim under the same seed."""
        import qsimcirq

        delivered = [json.loads(line) for line in (self.work / "delivered.log").read_text().splitlines()] \
            if (self.work / "delivered.log").exists() else []
        times = {}
        for d in delivered:
            times.setdefault(d["batch"], []).append(d)
        files = sorted((self.work / "batches").glob("batch-*.npz"))
        lost = wrong = dup = 0
        for path in files:
            b = int(path.stem.split("-")[1])
            with np.load(path) as z:
                samples, count = z["samples"], int(z["count"])
            ref = qsimcirq.QSimSimulator(seed=batch_seed(b, self.seed)).run_batch(circuits_for(b, self.seed),
                                                                                   repetitions=REPS)
            expected = np.stack([r[0].measurements["m"] for r in ref])
            dup += max(0, count - CIRCUITS) + max(0, len(times.get(b, [])) - 1)
            lost += max(0, CIRCUITS - count)
            wrong += int(sum(not np.array_equal(a, e) for a, e in zip(samples, expected)))
        errors = (self.work / "errors.log").read_text().splitlines() if (self.work / "errors.log").exists() else []
        # Batches are numbered in order: a gap is a batch never delivered.
        numbers = [int(p.stem.split("-")[1]) for p in files]
        gaps = len(set(range(len(numbers))) - set(numbers))
        # The job's counters are cumulative per job process: a batch's own hits are the difference.
        last: dict[int, int] = {}
        for d in delivered:
            d["batch_hits"] = d["hits"] - last.get(d["pid"], 0)
            last[d["pid"]] = d["hits"]
        resumed = [d for d in delivered if d["batch_hits"]]
        return {
            "batches": len(files), "circuits": len(files) * CIRCUITS, "lost": lost + wrong + gaps * CIRCUITS,
            "wrong": wrong, "duplicates": dup, "batch_errors": len(errors), "errors": errors[:5],
            "checkpoint_hits": sum(d["batch_hits"] for d in resumed), "resumed_batches": len(resumed),
            "corrupt": sum(last_corrupt for last_corrupt in {d["pid"]: d["corrupt"] for d in delivered}.values()),
            "mean_batch_seconds": round(float(np.mean([d["seconds"] for d in delivered])), 2) if delivered else None,
        }


def _cont(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600.0, help="how long the chaos lasts (default 600)")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restart-every", type=float, default=None,
                   help="seconds between scheduler restarts (default: seconds / 4, at least one per run)")
    p.add_argument("--json", help="write the report here too")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        job(Path(args.job), args.workers, args.seed)
        return None
    restart_every = args.restart_every or max(args.seconds / 4, 3.0)
    with tempfile.TemporaryDirectory(prefix="qdask-chaos-") as tmp:
        os.chmod(tmp, 0o700)
        report = Chaos(Path(tmp), args.workers, args.seed).run(args.seconds, restart_every)
    width = max(map(len, report))
    print(f"{'chaos: ' + str(args.seconds) + ' s':>{width}}")
    for k, v in report.items():
        print(f"{k:>{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    report = main()
    if report is not None and (report["lost"] or report["duplicates"]):
        sys.exit(1)
