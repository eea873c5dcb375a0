"""Elastic scaling: time to drain a 300-circuit burst, elastic (1-4 nodes) vs fixed 1 and 4 nodes.

Each mode gets a fresh embedded cluster on 127.0.0.1 with warm workers; the
clock runs from ``Sampler.run_batch`` to its last result. The elastic cluster
starts at one node, so its time includes starting the others. Node-seconds
(nodes present, integrated over the drain) show what each mode paid for it.
All three must return the same samples (same seed).

Usage: ``python benchmarks/elastic.py [--circuits 300] [--qubits 18] [--cooldown 2s]``
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import cirq
import numpy as np

import qdask
from qdask import ClusterConfig, ElasticConfig, QuantumCluster
from qdask._compat import scheduler_workers
from qdask.config import parse_duration
from qdask.deploy.elastic import ScalingEvent

MEMORY = "1GiB"


def burst(n: int, qubits: int, depth: int) -> list[cirq.Circuit]:
    rng = np.random.default_rng(2024)
    q = cirq.LineQubit.range(qubits)
    return [
        cirq.testing.random_circuit(q, n_moments=depth, op_density=0.8, random_state=int(rng.integers(2**31)))
        + cirq.measure(*q, key="m")
        for _ in range(n)
    ]


@dataclass
class Run:
    mode: str
    nodes: str
    started: float  # wall clock
    seconds: float
    node_seconds: float
    results: list[list[cirq.Result]]
    events: list[ScalingEvent]
    back_to_min: float | None = None  # seconds after the drain until min_nodes again


def drain(mode: str, nodes: int, circuits: list[cirq.Circuit], reps: int, elastic: ElasticConfig | None) -> Run:
    with QuantumCluster(ClusterConfig(num_nodes=nodes, memory_per_node=MEMORY)) as qc:
        client = qc.get_client()
        sampler = qdask.Sampler(client, seed=1)
        sampler.run(circuits[0], repetitions=1)  # warm up imports on the worker
        sampler = qdask.Sampler(client, seed=7)
        es = qc.enable_elastic_scaling(elastic, interval="250ms") if elastic is not None else None
        start_wall, t0 = time.time(), time.perf_counter()
        results = sampler.run_batch(circuits, repetitions=reps)
        seconds = time.perf_counter() - t0
        end_wall = time.time()
        if es is None:
            return Run(mode, str(nodes), start_wall, seconds, nodes * seconds, results, [])
        # Node-seconds from the recorded steps (workers requested count from their step).
        events = es.events(start_wall)
        node_seconds, last_t, count = 0.0, start_wall, nodes
        for e in events:
            if e.time > end_wall:
                break
            node_seconds += count * (e.time - last_t)
            last_t, count = e.time, e.to_nodes
        node_seconds += count * (end_wall - last_t)
        deadline = time.monotonic() + 300
        while len(scheduler_workers(client)) > elastic.min_nodes and time.monotonic() < deadline:
            time.sleep(0.25)
        back = time.time() - end_wall
        events = es.events(start_wall)
        es.stop()
        peak = max([nodes] + [e.to_nodes for e in events if e.to_nodes is not None])
        shape = f"{nodes}->{peak}->{elastic.min_nodes}"
        return Run(mode, shape, start_wall, seconds, node_seconds, results, events, back)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--circuits", type=int, default=300)
    parser.add_argument("--qubits", type=int, default=18)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--cooldown", default="2s")
    parser.add_argument("--target-duration", default="2s")
    args = parser.parse_args()
    circuits = burst(args.circuits, args.qubits, args.depth)
    load_before = os.getloadavg()[0]
    elastic = ElasticConfig(min_nodes=1, max_nodes=4, scale_factor=2, cooldown_period=args.cooldown,
                            target_duration=args.target_duration)
    runs = [
        drain("fixed", 1, circuits, args.reps, None),
        drain("fixed", 4, circuits, args.reps, None),
        drain("elastic", 1, circuits, args.reps, elastic),
    ]
    if any(r.results != runs[0].results for r in runs[1:]):
        raise SystemExit("the modes returned different samples for the same seed")
    one, four = runs[0].seconds, runs[1].seconds
    print(f"\ndrain a {args.circuits}-circuit burst ({args.qubits} qubits, depth {args.depth}, {args.reps} reps); "
          f"elastic: min 1, max 4, factor 2, cooldown {parse_duration(args.cooldown):g}s, "
          f"target {parse_duration(args.target_duration):g}s")
    print(f"{'mode':8} {'nodes':>9} {'drain s':>8} {'/fixed1':>8} {'/fixed4':>8} {'node*s':>8} {'node*s/fixed1':>14}")
    for r in runs:
        print(f"{r.mode:8} {r.nodes:>9} {r.seconds:8.2f} {r.seconds / one:8.2f} {r.seconds / four:8.2f} "
              f"{r.node_seconds:8.1f} {r.node_seconds / runs[0].node_seconds:14.2f}")
    elastic_run = runs[2]
    print("elastic steps (s after the burst started):")
    for e in elastic_run.events:
        print(f"  {e.time - elastic_run.started:+7.2f}  {e.kind:10} {e.from_nodes} -> {e.to_nodes}  {e.reason}")
    if elastic_run.back_to_min is not None:
        print(f"back at min_nodes {elastic_run.back_to_min:.1f} s after the drain")
    # Other processes share the cores: figures from a busy machine are not comparable.
    print(f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
