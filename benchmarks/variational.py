"""Variational gradients: one parameter-shift gradient of QAOA, serial qsim vs qdask on 2 quantum workers.

The workload is the batch one optimizer step sends: the value and the
parameter-shift gradient of QAOA-MaxCut on a random 3-regular graph,
``1 + 2 * (edges + nodes)`` circuits of ``--qubits`` qubits (91 at 18). The
peer is the same :class:`qdask.hybrid.variational.Objective` evaluated by a
serial ``qsimcirq.QSimSimulator`` (one thread) in this process; qdask runs it
on local clusters of 1 and of ``--workers`` single-threaded quantum workers
(the first shows qdask's overhead, the second its speed-up). All give the
same numbers (checked); ratios are serial time over each peer's time (target
>= 1.6 on 2 workers). Times are the best of ``--repeats`` runs after one
warm-up, the serial runs taking turns with each cluster's (so both see the
same spells of a shared machine's speed), everything bound to 127.0.0.1,
graph and point fixed by ``--seed``.
The machine's current parallel capacity is printed first: on a shared box no
speed-up can exceed it.

Usage: ``python benchmarks/variational.py [--qubits 18] [--layers 1] [--workers 2] [--repeats 3]``
"""

from __future__ import annotations

import argparse

import networkx as nx
import numpy as np
import qsimcirq

import qdask
from _machine import alternate, parallel_capacity
from qdask import ClusterConfig, QuantumCluster
from qdask.hybrid.variational import Objective, qaoa_maxcut

TARGET = 1.6


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

    capacity = parallel_capacity(args.workers)
    print(f"parallel capacity of this machine now: {capacity:.2f}x with {args.workers} processes")
    serial: Objective = problem.objective(qsimcirq.QSimSimulator(qsimcirq.QSimOptions(cpu_threads=1)))
    serial_times, rows, diff = [], [], 0.0
    for workers in (1, args.workers):
        config = ClusterConfig(num_nodes=workers, threads_per_node=1, memory_per_node="2GiB")
        with QuantumCluster(config) as qc:
            sim = qdask.Simulator(qc.get_client())
            objective = problem.objective(sim)
            (ts, (f_serial, g_serial)), (t, (f, g)) = alternate(
                [lambda: serial.value_and_gradient(x), lambda objective=objective: objective.value_and_gradient(x)],
                args.repeats,
            )
            serial_times.append(ts)
            rows.append((f"qdask, {workers} worker(s) ({sim.engine.last.tasks} tasks)", t))
        diff = max(diff, abs(f - f_serial), float(np.max(np.abs(g - g_serial))))
    t_serial = min(serial_times)
    rows.insert(0, ("serial qsim (1 thread)", t_serial))

    print(f"QAOA-MaxCut, {args.qubits} qubits, {args.layers} layer(s): {circuits} circuits per gradient")
    print(f"{'peer':<32}{'seconds':>10}{'ratio':>8}")
    for name, t in rows:
        print(f"{name:<32}{t:>10.2f}{t_serial / t:>8.2f}")
    ratio = t_serial / rows[-1][1]
    print(f"speed-up on {args.workers} workers {ratio:.2f}x (target >= {TARGET}x): "
          f"{'met' if ratio >= TARGET else 'NOT met'}; max |qdask - serial| = {diff:.1e}")


if __name__ == "__main__":
    main()
