"""Client script of ``tests/test_mpi.py``, run on MPI rank 1 by ``python -m qdask.mpi``.

Usage: ``mpiexec -n 4 python -m qdask.mpi tests/mpi_client.py REPORT.json``. Writes what
the client saw (workers and their capabilities, a batch of circuit results, the
listening sockets of every rank) to REPORT.json for the test to check.
"""

from __future__ import annotations

import json
import sys

import cirq
import psutil
from distributed import get_client, get_worker
from mpi4py import MPI

from qdask import QuantumCluster
from qdask.worker.discovery import QUANTUM

GHZ_QUBITS = 5


def ghz(seed: int) -> tuple[str, list[int]]:
    """Sample a GHZ circuit with qsim; return the worker and the distinct outcomes."""
    import qsimcirq

    qubits = cirq.LineQubit.range(GHZ_QUBITS)
    circuit = cirq.Circuit(
        cirq.H(qubits[0]),
        *(cirq.CNOT(a, b) for a, b in zip(qubits, qubits[1:])),
        cirq.measure(*qubits, key="m"),
    )
    result = qsimcirq.QSimSimulator(seed=seed).run(circuit, repetitions=200)
    return get_worker().address, sorted({int(v) for v in result.data["m"]})


def listening_ips() -> list[str]:
    """IP addresses this process listens on (Dask servers and MPI's own sockets)."""
    return sorted({c.laddr.ip for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN})


def main(report: str) -> None:
    client = get_client()
    with QuantumCluster(address=client.scheduler.address) as qc:
        rows = [
            {k: row[k] for k in ("worker", "name", "role", "memory_limit", "max_qubits", "resources")}
            for row in qc.resources()
        ]
        batch = client.gather(client.map(ghz, range(8), resources={QUANTUM: 1}, pure=False))
    listeners = {
        "client": listening_ips(),
        "scheduler": client.run_on_scheduler(listening_ips),
        "workers": client.run(listening_ips),
    }
    with open(report, "w") as f:
        json.dump({"rank": MPI.COMM_WORLD.Get_rank(), "workers": rows, "batch": batch,
                   "listeners": listeners, "argv": sys.argv}, f)


if __name__ == "__main__":
    main(sys.argv[1])
