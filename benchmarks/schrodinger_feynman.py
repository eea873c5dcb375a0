"""Distributed Schrödinger-Feynman: amplitudes of a wide circuit on 1 vs 2 quantum workers.

A ``--qubits``-qubit line circuit (random single-qubit gates and CZ layers,
``--depth`` layers) is cut in the middle by :func:`qdask.hybrid.schrodinger_feynman.plan_cut`;
its prefix paths are split into ``--tasks`` Dask tasks. Peers: qsimh summing
every prefix value in this process (one thread), and qdask on local clusters
of 1 and of 2 single-threaded quantum workers, one qsimh thread per task. All three give the same
amplitudes (checked). Ratios are the in-process time over each peer's time;
the 2-vs-1 worker speed-up targets >= 1.8. Best of ``--repeats`` after a
warm-up, everything bound to 127.0.0.1.

The machine's capacity for this very work is printed first: the speed-up two
concurrent in-process qsimh runs of one task get over one run. No
distribution can beat it. It falls with the parts' size: two tasks of a
36-qubit circuit cut 18/18 hold 12 MiB of states each, together most of this
VM's 32 MiB L3 cache, and measured 1.64x here (1.42x at 34 qubits), while
15-qubit parts (30 qubits, 2 MiB per task) measured 1.99x. The default is
that 30-qubit circuit, deep enough for 4,096 paths; ``--qubits 36 --depth 18``
shows the cache-bound case.

Usage: ``python benchmarks/schrodinger_feynman.py [--qubits 30] [--depth 24] [--tasks 8] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cirq
import numpy as np

from _machine import parallel_capacity, speedup
from qdask import ClusterConfig, QuantumCluster
from qdask.hybrid import schrodinger_feynman as sf

TARGET = 1.8


def circuit(n: int, depth: int, seed: int) -> cirq.Circuit:
    q = cirq.LineQubit.range(n)
    rng = np.random.default_rng(seed)
    c = cirq.Circuit()
    for d in range(depth):
        c.append(
            cirq.PhasedXZGate(x_exponent=rng.random(), z_exponent=rng.random(), axis_phase_exponent=rng.random())(x)
            for x in q
        )
        c.append(cirq.CZ(q[i], q[i + 1]) for i in range(d % 2, n - 1, 2))
    return c


def best_time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def on_cluster(
    workers: int, c: cirq.Circuit, bitstrings: list[int], tasks: int, repeats: int
) -> tuple[float, np.ndarray]:
    config = ClusterConfig(num_nodes=workers, threads_per_node=1, memory_per_node="2GiB")
    with QuantumCluster(config) as qc:
        client = qc.get_client()
        # One qsimh thread per task whatever the worker count: the ratio measures
        # distribution, not qsim's threading (which differs with cores per slot).
        return best_time(lambda: sf.compute_amplitudes(client, c, bitstrings, tasks=tasks, threads=1), repeats)


def one_task(prep: sf.Prepared, cut: sf.Cut, bitstrings: list[int], tasks: int) -> None:
    """What one of ``tasks`` Dask tasks runs, here in a pool process (for the capacity)."""
    sf.path_amplitudes(prep, cut, bitstrings, 0, max(1, cut.prefixes // tasks))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qubits", type=int, default=30)
    p.add_argument("--depth", type=int, default=24)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()

    c = circuit(args.qubits, args.depth, args.seed)
    bitstrings = [0, 1, 2 ** (args.qubits - 1), 12345]
    prep = sf.prepare(c)
    cut = sf.plan_cut(prep, max_part=args.qubits // 2 + 2, tasks=args.tasks)
    task = (prep, cut, bitstrings, args.tasks)
    capacity = speedup(one_task, task, task)
    print(f"capacity of this machine now, 2 processes: {parallel_capacity(2):.2f}x on a CPU loop, "
          f"{capacity:.2f}x on one qsimh task of this cut (no distribution can beat it)")
    t_local, local = best_time(lambda: sf.serial_amplitudes(prep, cut, bitstrings), args.repeats)
    t_one, one = on_cluster(1, c, bitstrings, args.tasks, args.repeats)
    t_two, two = on_cluster(2, c, bitstrings, args.tasks, args.repeats)
    diff = float(max(np.max(np.abs(one - local)), np.max(np.abs(two - local))))

    print(f"{args.qubits} qubits, depth {args.depth}: parts {cut.sizes}, {cut.cut_bits} Schmidt bits, "
          f"{cut.prefixes} prefix values in {args.tasks} tasks, {cut.memory / 2**20:.0f} MiB per task")
    print(f"{'peer':<30}{'seconds':>10}{'ratio':>8}")
    for name, t in (("qsimh in process (1 thread)", t_local), ("qdask, 1 worker", t_one), ("qdask, 2 workers", t_two)):
        print(f"{name:<30}{t:>10.2f}{t_local / t:>8.2f}")
    gain = t_one / t_two
    print(f"2 vs 1 workers: {gain:.2f}x (target >= {TARGET}x): {'met' if gain >= TARGET else 'NOT met'}; "
          f"{gain / capacity:.2f} of the qsimh capacity; max |difference| = {diff:.1e}")


if __name__ == "__main__":
    main()
