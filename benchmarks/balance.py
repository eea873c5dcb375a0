"""Load balancing: qdask vs plain Dask (work stealing on), as ratios to the lower bound.

Scenarios (issue 4), 2 workers x 1 thread on 127.0.0.1:

(a) mixed-width circuits (14-22 qubits) arriving in three bursts;
(b) one worker running at half speed (it shares its core with a busy process);
(c) a second worker added a quarter of the way through;
(d) priority latency: 500 low-priority circuits queued, then 20 "high" ones, one at a time;
(e) overhead: 10,000 no-op plain Dask tasks with and without the qdask plugins.

(d)'s limit is counted twice: from serial single-thread times measured
before the run, and from the run times the workers measured during it.

Lower bounds come from serial single-thread qsim runs of the same circuits in
this process: (a) sum / 2, (b) sum / 1.5, (c) t_join + (sum - t_join) / 2, where
t_join is when the worker is asked for; (c) also prints the bound from when it
registered. In (a)-(c) the serial run, qdask and plain Dask take turns for
``--repeats`` rounds, and each figure is the best of its rounds: the bound
from the fastest serial run, so the ratios err on the strict side. Every
cluster run starts its own cluster (and warms it, off the clock), so neither
peer shares the two cores with the other's idle processes.
The bounds assume two full cores. On a shared 2-vCPU box two concurrent qsim
processes get between ~1.5x and 2x of one (shared caches and memory bandwidth,
the host's other load), so (a) and (b) also time a "split" peer in the same
rounds: the circuits split in advance over processes pinned to the cores,
without Dask (:class:`Split`), what the cores give as they are then; the
per-round ratio to it is the figure drift blurs least. (c)
prints the qsim capacity instead: two concurrent serial runs against one.

Usage: ``python benchmarks/balance.py [--only a,b,c,d,e] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import cirq
import numpy as np
from distributed import Client, LocalCluster, wait

import qdask
from qdask import ClusterConfig, QuantumCluster

sys.path.insert(0, os.path.dirname(__file__))
from _machine import concurrent_span, turns  # noqa: E402
from throughput import qsim_capacity, run_one, serial  # noqa: E402  (the same per-circuit work as the peers)

LOOPBACK = dict(host="127.0.0.1", dashboard_address="127.0.0.1:0")
#: The cores this process may run on; (a) and (b) pin to the first two.
CORES = sorted(os.sched_getaffinity(0))


def circuits(n: int, widths: tuple[int, int], depth: int, seed: int) -> list[cirq.Circuit]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        q = cirq.LineQubit.range(int(rng.integers(widths[0], widths[1] + 1)))
        c = cirq.testing.random_circuit(q, n_moments=depth, op_density=0.8, random_state=int(rng.integers(2**31)))
        out.append(c + cirq.measure(*q, key="m"))
    return out


def serial_times(cs: list[cirq.Circuit], reps: int = 100) -> list[float]:
    times = []
    for i, c in enumerate(cs):
        t0 = time.perf_counter()
        run_one(c, reps, i)
        times.append(time.perf_counter() - t0)
    return times


def qdask_cluster(n: int) -> QuantumCluster:
    return QuantumCluster(ClusterConfig(num_nodes=n, memory_per_node="4GiB"))


def plain_cluster(n: int) -> LocalCluster:
    return LocalCluster(n_workers=n, threads_per_worker=1, memory_limit="4GiB", **LOOPBACK)


def add_worker(handle: QuantumCluster | LocalCluster) -> None:
    cluster = handle.cluster if isinstance(handle, QuantumCluster) else handle
    cluster.scale(len(cluster.worker_spec) + 1)


@contextmanager
def peer(kind: str, n: int) -> Iterator[tuple[Client, QuantumCluster | LocalCluster]]:
    """A fresh, warmed cluster of ``n`` workers for ``kind`` ("qdask" or "plain"): its client and cluster."""
    if kind == "qdask":
        with qdask_cluster(n) as qc:
            client = qc.get_client()
            warm(client, "qdask")
            yield client, qc
    else:
        with plain_cluster(n) as pc, Client(pc) as client:
            warm(client)
            yield client, pc


def fresh(kind: str, n: int, run: Callable[[Client, QuantumCluster | LocalCluster], float]) -> Callable[[], float]:
    """A call that times ``run(client, cluster)`` on a fresh cluster of its own (started off the clock)."""

    def call() -> float:
        with peer(kind, n) as (client, cluster):
            return run(client, cluster)

    return call


# -- runners: submit bursts, return wall time to the last result ------------------------
def run_qdask(client: Client, bursts: list[list[cirq.Circuit]], gap: float, during=None) -> float:
    sampler = qdask.Sampler(client, seed=1)
    t0 = time.perf_counter()
    if during:
        during()  # on the run's clock, as the bounds count it
    subs = []
    for i, burst in enumerate(bursts):
        if i:
            time.sleep(gap)
        subs.append(sampler.engine.submit(burst, [None] * len(burst), [100] * len(burst), work="sample"))
    for sub in subs:
        sampler.engine.collect(sub)
    return time.perf_counter() - t0


def run_plain(client: Client, bursts: list[list[cirq.Circuit]], gap: float, during=None) -> float:
    t0 = time.perf_counter()
    if during:
        during()
    futures = []
    for i, burst in enumerate(bursts):
        if i:
            time.sleep(gap)
        futures += [client.submit(run_one, c, 100, j, pure=False) for j, c in enumerate(burst)]
    wait(futures)
    return time.perf_counter() - t0


RUNNERS = {"qdask": run_qdask, "plain": run_plain}


def warm(client: Client, kind: str = "plain") -> None:
    """Off the clock: imports, qsim's first load and Dask's connections on every worker.

    For qdask also one small batch through the Sampler, whose first chunks
    otherwise pay for the worker-side modules and the first allocations.
    """
    client.run(lambda: run_one(cirq.Circuit(cirq.measure(cirq.LineQubit(0), key="m")), 1, 0))
    if kind == "qdask":
        run_qdask(client, [circuits(8, (10, 12), 4, seed=0)], gap=0)


def serial_run(cs: list[cirq.Circuit]) -> Callable[[], float]:
    """A call that runs ``cs`` one after another in this process, as the bounds count them."""
    return lambda: serial(cs, 100)


def best(name: str, bound: float, runs: dict[str, list[float]], **extra) -> dict:
    """A row: the bound, each peer's best time, and its ratios over all runs."""
    row = {"name": name, "bound": bound, **extra}
    for peer, times in runs.items():
        row[peer], row[f"{peer}_runs"] = min(times), times
    return row


class Split:
    """What the cores give now: the circuits split in advance over pinned processes, no Dask.

    Part ``k`` (longest circuits first, each to the part that ends soonest
    at its core's ``speeds``) runs serially in a pool process pinned to this
    process's ``k``-th core: no scheduling, transfer or idle overhead, and a
    split that is perfect while the cores run at ``speeds``. A dynamic
    scheduler beats it only when they do not (a shared host's vCPUs drift
    apart), so it stands for the machine's floor, not for a strict bound.
    """

    def __init__(self, cs: list[cirq.Circuit], speeds: list[float]) -> None:
        if len(CORES) < len(speeds):
            raise ValueError(f"Split over {len(speeds)} cores: this process may use only {CORES}")
        self.parts: list[list[cirq.Circuit]] = [[] for _ in speeds]
        load = [0.0] * len(speeds)
        for t, i in sorted(((t, i) for i, t in enumerate(serial_times(cs))), reverse=True):
            core = min(range(len(speeds)), key=lambda k: (load[k] + t) / speeds[k])
            self.parts[core].append(cs[i])
            load[core] += t
        # spawn: a cluster's threads are not safe to fork.
        self.pool = multiprocessing.get_context("spawn").Pool(len(speeds))
        self.pool.starmap(_pinned, [(part[:1], CORES[k]) for k, part in enumerate(self.parts)], chunksize=1)

    def __call__(self) -> float:
        return concurrent_span(self.pool, _pinned, [(part, CORES[k]) for k, part in enumerate(self.parts)])

    def __enter__(self) -> Split:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.terminate()


def _pinned(part: list[cirq.Circuit], core: int) -> float:
    os.sched_setaffinity(0, {core})
    return serial(part, 100)


def scenario_a(repeats: int) -> dict:
    if len(CORES) < 2:
        return {"name": "(a) bursts", "skipped": "needs 2 cores"}
    cs = circuits(90, (14, 22), 16, seed=1)
    bursts = [cs[:30], cs[30:60], cs[60:]]

    def bursty(kind: str) -> Callable[[], float]:
        return fresh(kind, 2, lambda client, _: RUNNERS[kind](client, bursts, gap=0.5))

    with Split(cs, [1.0, 1.0]) as split:  # also the serial warm-up
        t_serial, q, p, t_split = turns([serial_run(cs), bursty("qdask"), bursty("plain"), split], repeats,
                                        warmup=False)
    return best("(a) bursts", min(t_serial) / 2, {"qdask": q, "plain": p, "split": t_split})


@contextmanager
def busy_core(core: int) -> Iterator[None]:
    """A busy process on ``core``: whatever else runs there gets half of it."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.sched_setaffinity(hog.pid, {core})
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


@contextmanager
def half_speed(client: Client) -> Iterator[None]:
    """One worker on the first core, which it shares with a busy process, the other on the second."""
    slow, fast = sorted(client.run(os.getpid).values())
    os.sched_setaffinity(slow, {CORES[0]})
    os.sched_setaffinity(fast, {CORES[1]})
    with busy_core(CORES[0]):
        yield


def scenario_b(repeats: int) -> dict:
    if len(CORES) < 2:
        return {"name": "(b) half speed", "skipped": "needs 2 cores"}
    cs = circuits(120, (16, 21), 16, seed=2)

    def slowed(kind: str) -> Callable[[], float]:
        def run(client: Client, _) -> float:
            with half_speed(client):
                return RUNNERS[kind](client, [cs], gap=0)

        return fresh(kind, 2, run)

    with Split(cs, [0.5, 1.0]) as split:  # also the serial warm-up

        def split_slowed() -> float:
            with busy_core(CORES[0]):
                return split()

        # The serial runs go without the busy process: the bound is one full core and a half.
        t_serial, q, p, t_split = turns([serial_run(cs), slowed("qdask"), slowed("plain"), split_slowed], repeats,
                                        warmup=False)
    return best("(b) half speed", min(t_serial) / 1.5, {"qdask": q, "plain": p, "split": t_split})


def scenario_c(repeats: int) -> dict:
    # Long enough that the new worker (seconds to start a process and import
    # cirq and qsim on this machine) registers well before the batch ends.
    cs = circuits(240, (16, 21), 16, seed=3)
    join_at = serial(cs, 100) / 4  # also the serial warm-up
    ready: dict[str, list[float]] = {"qdask": [], "plain": []}

    def joins(kind: str) -> Callable[[], float]:
        def run(client: Client, cluster: QuantumCluster | LocalCluster) -> float:
            if kind == "qdask":
                cluster.start_load_balancer(qdask.LoadBalancerConfig(check_interval="200ms"))
            joiner = Joiner(join_at, lambda: add_worker(cluster), client)
            t = RUNNERS[kind](client, [cs], gap=0, during=joiner.start)
            ready[kind].append(joiner.ready)
            return t

        return fresh(kind, 1, run)

    t_serial, q, p = turns([serial_run(cs), joins("qdask"), joins("plain")], repeats, warmup=False)
    total = min(t_serial)
    row = best("(c) worker joins", join_at + (total - join_at) / 2, {"qdask": q, "plain": p},
               capacity=qsim_capacity(cs[::4], 100, 2))
    # No scheduler can use the worker before it has started and registered:
    # the bound from that moment, for each peer's best run (process start and imports take seconds).
    row["ready"] = {k: ready[k][row[f"{k}_runs"].index(row[k])] for k in ready}
    row["ready_bound"] = {k: t + max(total - t, 0) / 2 for k, t in row["ready"].items()}
    return row


class Joiner:
    """Add a worker ``delay`` s after ``start()``.

    ``ready``: seconds from ``start()`` until it registered (nan: never).
    """

    def __init__(self, delay: float, add, client: Client) -> None:
        self.delay, self.add, self.client = delay, add, client
        self.ready = float("nan")

    def start(self) -> None:
        import threading

        t0 = time.perf_counter()

        def join() -> None:
            time.sleep(self.delay)
            self.add()
            # Polled every 0.1 s (a fast poll would load the 2 cores being measured); the
            # last poll that still saw one worker is taken as the registration, so the
            # bound errs on the strict side.
            before = time.perf_counter()  # the request, if the first poll already sees it
            try:
                while True:
                    seen = time.perf_counter()
                    if len(self.client.scheduler_info(n_workers=-1)["workers"]) >= 2:
                        break
                    before = seen
                    time.sleep(0.1)
            except Exception:  # the run ended (cluster closed) before the worker registered
                return
            self.ready = before - t0

        threading.Thread(target=join, daemon=True).start()


def scenario_d() -> dict:
    # 20-qubit circuits (~50 ms each): long enough that Dask's few-ms round trip is not
    # the whole latency. The high-priority circuits are submitted one at a time, each
    # when the previous one is back, so each measures its own latency behind the backlog.
    low = circuits(500, (20, 20), 12, seed=4)
    high = circuits(20, (20, 20), 12, seed=5)
    t_high = serial_times(high)
    t_low = float(np.mean(serial_times(low[:40])))
    with qdask_cluster(2) as qc:
        client = qc.get_client()
        warm(client, "qdask")
        backlog = qdask.Sampler(client, seed=1, priority="low")
        sub_low = backlog.engine.submit(low, [None] * 500, [100] * 500, work="sample")
        time.sleep(1.0)
        urgent = qdask.Sampler(client, seed=2, priority="high")
        latency, own = [], []
        for c in high:
            t0 = time.perf_counter()
            result = urgent.submit(c, repetitions=100).result()
            latency.append(time.perf_counter() - t0)
            own.append(result.metadata["seconds"])
        pending = sum(not f.done() for f in sub_low.futures)
        ran = backlog.engine.collect(sub_low)
    limits = [2 * (t + t_low) for t in t_high]
    # The same limit from the run times the workers measured meanwhile: this
    # machine's speed drifts by tens of percent between the serial runs above
    # and the cluster's.
    backlog_run = float(np.median([r.seconds for rs in ran.values() for r in rs]))
    as_run = [2 * (t + backlog_run) for t in own]
    return {"name": "(d) priority", "worst": max(latency), "median": float(np.median(latency)),
            "limit": float(np.median(limits)), "within": sum(d <= lim for d, lim in zip(latency, limits)),
            "limit_run": float(np.median(as_run)), "within_run": sum(d <= lim for d, lim in zip(latency, as_run)),
            "pending": pending, "tasks": len(sub_low.futures)}


def noop(x: int) -> int:
    return x


def scenario_e() -> dict:
    def run(client: Client) -> float:
        client.gather(client.map(noop, range(200)))  # warm up
        t0 = time.perf_counter()
        client.gather(client.map(noop, range(10_000)))
        return time.perf_counter() - t0

    with plain_cluster(2) as pc, Client(pc) as c:
        plain = min(run(c) for _ in range(2))
    with qdask_cluster(2) as qc:
        q = min(run(qc.get_client()) for _ in range(2))
    return {"name": "(e) overhead", "plain": plain, "qdask": q}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="a,b,c,d,e")
    parser.add_argument("--repeats", type=int, default=3,
                        help="(a)-(c): rounds in which serial, qdask and plain take turns")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: at least 1 round is needed")
    funcs = {"a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d, "e": scenario_e}
    rows = [funcs[k](args.repeats) if k in "abc" else funcs[k]() for k in args.only.split(",")]
    print(f"\nload balancing, 2 workers x 1 thread; (a)-(c): best of {args.repeats} rounds, "
          "every round's ratio in brackets")
    for r in rows:
        if "skipped" in r:
            print(f"{r['name']:18} skipped: {r['skipped']}")
        elif "bound" in r:
            def peer(k: str, r: dict = r) -> str:
                runs = " ".join(f"{t / r['bound']:.2f}" for t in r[f"{k}_runs"])
                return f"{k} {r[k]:6.2f} s = {r[k] / r['bound']:.2f}x [{runs}]"

            print(f"{r['name']:18} bound {r['bound']:6.2f} s | {peer('qdask')} | {peer('plain')} "
                  f"| plain/qdask {r['plain'] / r['qdask']:.2f}")
            if "split" in r:
                # Round by round the peers ran minutes apart at most: the ratio within a round
                # is what the machine's drifting speed (and so the best of each) blurs least.
                def rounds(k: str, r: dict = r) -> str:
                    ratios = [t / u for t, u in zip(r[f"{k}_runs"], r["split_runs"])]
                    return f"{k}/split median {np.median(ratios):.2f} [{' '.join(f'{x:.2f}' for x in ratios)}]"

                print(f"{'':18} machine floor: {peer('split')}, presplit over pinned processes without Dask")
                print(f"{'':18} per round: {rounds('qdask')} | {rounds('plain')}")
            if "ready" in r:
                print(f"{'':18} bound from when the new worker registered: "
                      + " | ".join(f"{k} ready after {r['ready'][k]:.2f} s, bound {r['ready_bound'][k]:.2f} s = "
                                   f"{r[k] / r['ready_bound'][k]:.2f}x" for k in ("qdask", "plain")))
            if "capacity" in r:
                print(f"{'':18} qsim capacity: {r['capacity']:.2f}x on 2 processes, so no scheduler can beat "
                      f"{2 / r['capacity']:.2f}x the bound on this machine now (2 = ideal)")
        elif "limit" in r:
            print(f"{r['name']:18} high-priority latency: median {r['median']:.3f} s, worst {r['worst']:.3f} s; "
                  f"limit 2x(own + one backlog circuit) ~ {r['limit']:.3f} s from serial times: "
                  f"{r['within']}/20 within, "
                  f"~ {r['limit_run']:.3f} s from the run times on the workers: {r['within_run']}/20 within; "
                  f"backlog {r['pending']}/{r['tasks']} tasks still pending after the last one")
        else:
            print(f"{r['name']:18} 10,000 no-op tasks: plain {r['plain']:.2f} s, with qdask plugins {r['qdask']:.2f} s "
                  f"= {r['qdask'] / r['plain']:.2f}x")


if __name__ == "__main__":
    main()
