"""Variational gradients: one parameter-shift gradient of QAOA, serial qsim vs qdask on 2 quantum workers.

The workload is the batch one optimizer step sends: the value and the
parameter-shift gradient of QAOA-MaxCut on a random 3-regular graph,
``1 + 2 * (edges + nodes)`` circuits of ``--qubits`` qubits (91 at 18). The
peer is the same :class:`qdask.hybrid.variational.Objective` evaluated by a
serial ``qsimcirq.QSimSimulator`` (one thread) in this process; qdask runs it
on a local cluster of ``--workers`` single-threaded quantum workers. Both give
the same numbers (checked); the ratio is serial time over qdask time
(target >= 1.6 on 2 workers). Times are the best of ``--repeats`` runs after
one warm-up, everything bound to 127.0.0.1, graph and point fixed by ``--seed``.

Usage: ``python benchmarks/variational.py [--qubits 18] [--layers 1] [--workers 2] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import networkx as nx
import numpy as np
import qsimcirq

import qdask
from qdask import ClusterConfig, QuantumCluster
from qdask.hybrid.variational import Objective, qaoa_maxcut

TARGET = 1.6


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    fn()  # warm-up: imports, qsim module load, Dask connections
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qubits", type=int, default=18)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=2024)
    args = p.parse_args()

    problem = qaoa_maxcut(nx.random_regular_graph(3, args.qubits, seed=args.seed), layers=args.layers)
    x = np.random.default_rng(args.seed).uniform(0.1, 0.8, size=2 * args.layers)
    circuits = 1 + 2 * args.layers * (problem.graph.number_of_edges() + args.qubits)

    serial: Objective = problem.objective(qsimcirq.QSimSimulator(qsimcirq.QSimOptions(cpu_threads=1)))
    t_serial, (f_serial, g_serial) = best_time(lambda: serial.value_and_gradient(x), args.repeats)

    config = ClusterConfig(num_nodes=args.workers, threads_per_node=1, memory_per_node="2GiB")
    with QuantumCluster(config) as qc:
        sim = qdask.Simulator(qc.get_client())
        objective = problem.objective(sim)
        t_qdask, (f_qdask, g_qdask) = best_time(lambda: objective.value_and_gradient(x), args.repeats)
        tasks = sim.engine.last.tasks

    diff = max(abs(f_qdask - f_serial), float(np.max(np.abs(g_qdask - g_serial))))
    ratio = t_serial / t_qdask
    print(f"QAOA-MaxCut, {args.qubits} qubits, {args.layers} layer(s): {circuits} circuits per gradient")
    print(f"{'peer':<28}{'seconds':>10}{'ratio':>8}")
    print(f"{'serial qsim (1 thread)':<28}{t_serial:>10.2f}{1.0:>8.2f}")
    print(f"{f'qdask, {args.workers} workers ({tasks} tasks)':<28}{t_qdask:>10.2f}{ratio:>8.2f}")
    print(f"speed-up {ratio:.2f}x (target >= {TARGET}x): {'met' if ratio >= TARGET else 'NOT met'}; "
          f"max |qdask - serial| = {diff:.1e}")


if __name__ == "__main__":
    main()
