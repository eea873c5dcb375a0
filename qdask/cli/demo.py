"""``qdask demo``: the main job, a batch of random circuits of mixed width."""

from __future__ import annotations

import time
from collections import Counter

import click
import cirq
import numpy as np
from distributed import as_completed, get_worker
from tqdm import tqdm

from qdask.deploy.cluster import QuantumCluster
from qdask.worker.discovery import QUANTUM, STATEVECTOR_BYTES, statevector_bytes


def random_circuits(n: int, seed: int, widths: tuple[int, int] = (4, 16), depth: int = 10) -> list[cirq.Circuit]:
    """``n`` seeded random circuits with widths in ``widths`` and final measurements."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        q = cirq.LineQubit.range(int(rng.integers(widths[0], widths[1] + 1)))
        c = cirq.testing.random_circuit(q, n_moments=depth, op_density=0.8, random_state=int(rng.integers(2**31)))
        out.append(c + cirq.measure(*q, key="m"))
    return out


def _sample(circuit: cirq.Circuit, repetitions: int, seed: int) -> tuple[str, np.ndarray]:
    import qsimcirq

    result = qsimcirq.QSimSimulator(seed=seed).run(circuit, repetitions=repetitions)
    return get_worker().address, result.measurements["m"]


def run_demo(*, address: str | None, n_circuits: int, seed: int, progress: bool) -> None:
    circuits = random_circuits(n_circuits, seed)
    t0 = time.perf_counter()
    with QuantumCluster(address=address) as qc:
        client = qc.get_client()
        click.echo(f"qdask cluster {qc.scheduler_address}, {len(client.nthreads())} worker(s)")
        futures = [
            client.submit(
                _sample, c, 100, seed + i, pure=False,
                resources={QUANTUM: 1, STATEVECTOR_BYTES: statevector_bytes(len(c.all_qubits()))},
            )
            for i, c in enumerate(circuits)
        ]
        per_worker: Counter[str] = Counter()
        with tqdm(total=len(futures), desc="circuits", unit="circ", disable=not progress) as bar:
            for fut in as_completed(futures):
                worker, _ = fut.result()
                per_worker[worker] += 1
                bar.update()
        wall = time.perf_counter() - t0
        click.echo(f"\n{len(circuits)} circuits ({min(len(c.all_qubits()) for c in circuits)}-"
                   f"{max(len(c.all_qubits()) for c in circuits)} qubits) in {wall:.2f} s")
        for w, n in sorted(per_worker.items()):
            click.echo(f"  {w}: {n} circuits")
        click.echo(f"dashboard: {qc.dashboard_link}")
