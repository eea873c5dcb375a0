"""``qdask demo``: the main job, a hybrid batch of random circuits of mixed width."""

from __future__ import annotations

import time

import cirq
import click
import numpy as np

from qdask.cli.common import attach
from qdask.config import MonitoringConfig
from qdask.monitoring.client import summary
from qdask.quantum.sampler import Sampler


def random_circuits(
    n: int, seed: int, widths: tuple[int, int] = (4, 16), depth: int = 10, clifford_share: float = 0.0
) -> list[cirq.Circuit]:
    """``n`` seeded random circuits with widths in ``widths`` and final measurements.

    A ``clifford_share`` of them use Clifford gates only (qdask samples those with stim).
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        q = cirq.LineQubit.range(int(rng.integers(widths[0], widths[1] + 1)))
        clifford: dict[cirq.Gate, int] = {cirq.H: 1, cirq.S: 1, cirq.CNOT: 2, cirq.CZ: 2}
        gates = clifford if rng.random() < clifford_share else None
        c = cirq.testing.random_circuit(
            q, n_moments=depth, op_density=0.8, gate_domain=gates, random_state=int(rng.integers(2**31))
        )
        out.append(c + cirq.measure(*q, key="m"))
    return out


def _entropy(counts: dict[int, int]) -> float:
    """Shannon entropy (bits) of a measured distribution: the classical half of the demo."""
    p = np.array(list(counts.values()), dtype=float)
    p /= p.sum()
    return float(-(p * np.log2(p)).sum())


def run_demo(*, address: str | None, n_circuits: int, seed: int, progress: bool, keep: bool = False) -> None:
    """The demo on the cluster at ``address`` (or the embedded one); ``keep`` waits for Ctrl-C at the end."""
    circuits = random_circuits(n_circuits, seed, clifford_share=0.1)
    widths = [len(c.all_qubits()) for c in circuits]
    t0 = time.perf_counter()
    with attach(address) as qc:
        client = qc.get_client()
        click.echo(f"qdask cluster {qc.scheduler_address}, {len(client.nthreads())} worker(s)")
        monitor = qc.start_monitoring(MonitoringConfig(sampling_interval=0.25))
        sampler = Sampler(client, seed=seed, progress=progress)
        t1 = time.perf_counter()
        results = sampler.run_batch(circuits, repetitions=200)
        quantum_s = time.perf_counter() - t1
        stats = sampler.engine.last
        # Classical post-processing on the same cluster.
        entropies = client.gather(client.map(_entropy, [r[0].histogram(key="m") for r in results], pure=False))
        wall = time.perf_counter() - t0
        click.echo(
            f"\n{len(circuits)} circuits ({min(widths)}-{max(widths)} qubits) sampled in {quantum_s:.2f} s "
            f"as {stats.tasks} Dask tasks; per circuit {stats.circuit_bytes_per_circuit:.0f} bytes out, "
            f"{stats.bytes_per_circuit:.0f} bytes back"
        )
        click.echo("backends: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.backends.items())))
        for w, n in sorted(stats.workers.items()):
            click.echo(f"  {w}: {n} circuits")
        click.echo(f"mean output entropy {np.mean(entropies):.2f} bits (classical tasks)")
        click.echo(f"wall time {wall:.2f} s")
        click.echo("\n" + summary(client))
        if keep:
            # The monitor keeps sampling, so the dashboard shows the cluster as it idles.
            click.echo(f"dashboard: {qc.dashboard_link}  (qdask page: /qdask)")
            click.echo("cluster and dashboard kept up: Ctrl-C to stop")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                click.echo("stopping")
        elif address is not None:
            # Not ours: the scheduler and its dashboard stay up after we detach.
            click.echo(f"dashboard: {qc.dashboard_link}  (qdask page: /qdask)")
        else:
            click.echo("(run with --keep to look at the dashboard before the cluster closes)")
        monitor.stop()
