"""Noisy expectation values: qdask spreads a call's trajectories over the workers, serial qsimcirq runs them in turn.

Workload (issue 20): expectation values of three observables on a 16-qubit
random circuit (depth 12) with depolarising noise after every moment,
averaged over 1,000 quantum trajectories (qsim's ``ev_noisy_repetitions``).

Peers, taking turns (a shared machine's speed drifts by tens of percent
within minutes), each the best of ``--repeats`` runs after a warm-up:

serial  ``qsimcirq.QSimSimulator(QSimOptions(ev_noisy_repetitions=1000), seed=..., noise=...)``
        in this process, one thread (qsim's default);
qdask   ``qdask.Simulator(client, seed=..., noise=..., qsim_options=...)`` on a
        local cluster of ``--workers`` single-threaded workers: the
        trajectories go out in blocks, each block the serial call's own
        (qsim seeds trajectory i with seed + i), and come back averaged.

split   the serial call presplit by hand: ``--workers`` processes of a pool,
        each running its share of the trajectories at once, without Dask:
        the machine's own floor at this moment (a shared host's load moves it).

Printed: the times, serial / qdask (the goal: >= 1.7 on 2 workers),
serial / split (the most any scheduler could get in the same rounds) and
split / qdask (how close qdask comes to it), each round's ratios, the
largest difference between the serial and qdask values (the same
trajectories: rounding only), and the machine's capacity after the run.
Everything binds to 127.0.0.1.

Usage: ``python benchmarks/noisy_expectation.py [--workers 2] [--trajectories 1000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable

import cirq
import numpy as np
import qsimcirq

import qdask
from _machine import concurrent_span, speedup, turns
from qdask import ClusterConfig, QuantumCluster

QUBITS = 16
DEPTH = 12
SEED = 2026
NOISE = cirq.depolarize(0.005)


def workload() -> tuple[cirq.Circuit, list[cirq.PauliSum]]:
    """The circuit (not Clifford: qsim runs it as a serial user would) and its observables."""
    q = cirq.LineQubit.range(QUBITS)
    circuit = cirq.testing.random_circuit(q, n_moments=DEPTH, op_density=0.9, random_state=SEED) + cirq.T.on_each(*q)
    observables = [
        cirq.PauliSum.wrap(cirq.Z(q[0]) * cirq.Z(q[1])),
        sum(cirq.X(qi) for qi in q[::3]) / 6,
        cirq.PauliSum.wrap(cirq.Y(q[7]) * cirq.Z(q[8]) * cirq.X(q[15])),
    ]
    return circuit, observables


def serial_values(circuit: cirq.Circuit, observables: list[cirq.PauliSum], trajectories: int) -> list[complex]:
    options = qsimcirq.QSimOptions(ev_noisy_repetitions=trajectories)
    return qsimcirq.QSimSimulator(options, seed=SEED, noise=NOISE).simulate_expectation_values(circuit, observables)


class Timed:
    """A peer for :func:`_machine.turns`: times one call, keeps its values."""

    def __init__(self, call: Callable[[], list[complex]]) -> None:
        self.call = call
        self.values: list[complex] = []

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.values = self.call()
        return time.perf_counter() - t0


def _one_trajectory_block(trajectories: int) -> None:
    circuit, observables = workload()
    serial_values(circuit, observables, trajectories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trajectories", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per peer (the best counts), after a warm-up")
    args = parser.parse_args()
    circuit, observables = workload()
    options = qsimcirq.QSimOptions(ev_noisy_repetitions=args.trajectories)
    with QuantumCluster(ClusterConfig(num_nodes=args.workers, memory_per_node="2GiB")) as qc:
        client = qc.get_client()
        serial = Timed(lambda: serial_values(circuit, observables, args.trajectories))

        def distributed() -> list[complex]:
            # A fresh simulator per run: the same seed, so the same trajectories as the serial peer.
            sim = qdask.Simulator(client, seed=SEED, noise=NOISE, qsim_options=options)
            values = sim.simulate_expectation_values(circuit, observables)
            distributed.tasks, distributed.workers = sim.engine.last.tasks, len(sim.engine.last.workers)  # type: ignore[attr-defined]
            return values

        qdask_peer = Timed(distributed)
        share = [(args.trajectories // args.workers,)] * args.workers
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            pool.starmap(_one_trajectory_block, [(2,)] * args.workers)  # imports and qsim loaded first

            def split() -> float:
                return concurrent_span(pool, _one_trajectory_block, share)

            times = turns([serial, qdask_peer, split], args.repeats)
    # Capacity after the cluster is gone: its idle processes would share the cores.
    capacity = speedup(_one_trajectory_block, (50,), (2,), processes=args.workers, context="spawn")
    diff = float(np.max(np.abs(np.asarray(serial.values) - np.asarray(qdask_peer.values))))
    best_serial, best_qdask, best_split = min(times[0]), min(times[1]), min(times[2])
    print(f"\nnoisy expectation values: {QUBITS} qubits, depth {DEPTH}, depolarize({NOISE.p}) after every moment, "
          f"{len(observables)} observables, {args.trajectories} trajectories; best of {args.repeats} after a warm-up")
    print(f"{'peer':8} {'seconds':>8} {'ratio':>6}")
    print(f"{'serial':8} {best_serial:8.2f} {1.0:6.2f}")
    print(f"{'qdask':8} {best_qdask:8.2f} {best_serial / best_qdask:6.2f}   "
          f"({distributed.tasks} tasks on {distributed.workers} of {args.workers} workers)")  # type: ignore[attr-defined]
    print(f"{'split':8} {best_split:8.2f} {best_serial / best_split:6.2f}   "
          f"(presplit over {args.workers} processes, no Dask)")
    rounds = [s / q for s, q in zip(times[0], times[1])]
    floor = [s / p for s, p in zip(times[0], times[2])]
    near = [p / q for p, q in zip(times[2], times[1])]
    print("per round serial/qdask: " + " ".join(f"{r:.2f}" for r in rounds)
          + f"  median {statistics.median(rounds):.2f}")
    print("per round serial/split: " + " ".join(f"{r:.2f}" for r in floor) + f"  median {statistics.median(floor):.2f}")
    print("per round split/qdask:  " + " ".join(f"{r:.2f}" for r in near) + f"  median {statistics.median(near):.2f}")
    print(f"serial / qdask = {best_serial / best_qdask:.2f}x on {args.workers} workers (goal >= 1.7x); "
          f"largest |value difference| {diff:.1e} (the same trajectories, summed in blocks)")
    print(f"capacity: {args.workers} concurrent serial qsim runs go {capacity:.2f}x as fast as one on this machine now "
          f"({args.workers} = ideal; the ratio cannot exceed it)")


if __name__ == "__main__":
    main()
