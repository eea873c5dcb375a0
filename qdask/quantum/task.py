"""What travels between client and worker: the task a worker runs and the result it returns.

Measurement records travel bit-packed (``numpy.packbits``), states and
expectation values as plain numpy arrays: no Python objects per shot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from dask.sizeof import sizeof

if TYPE_CHECKING:
    import cirq

    from qdask.quantum.qsim_fast import CompactCircuit, GateTable


class Seeds(Protocol):
    """A block's seed draws: an int64 array, or a ``plan.SeedRange`` made on the worker."""

    def __len__(self) -> int: ...

    def __getitem__(self, item: Any) -> Any: ...

    def tolist(self) -> Any: ...


@dataclass
class Task:
    """What travels to the worker for one job, or one block of its repetitions."""

    index: int
    start: int  # first repetition of this block
    circuit: cirq.AbstractCircuit | CompactCircuit  # compact: sampled from it on the worker (qsim_fast)
    resolver: cirq.ParamResolver
    work: str
    backend: str
    repetitions: int
    seeds: Seeds
    threads: int
    extra: dict[str, Any]
    fused_gate_size: int = 2  # qsim max_fused_gate_size (optimization level)
    gates: GateTable | None = None  # the batch's gate table, for a compact circuit (Engine.submit)


@dataclass
class TaskResult:
    """The outcome of one task, as sent back to the client."""

    index: int
    start: int
    backend: str
    seconds: float
    worker: str
    payload: Any  # {key: (packed bits, shape)} | ndarray
    nbytes: int
    path: str = "cirq"  # "compact": sampled from the compact form (qsim_fast), never a cirq circuit


def pack_records(
    records: dict[str, np.ndarray], binary: bool | None = None
) -> dict[str, tuple[np.ndarray, tuple[int, ...], bool]]:
    """Bit-pack 0/1 measurement records along the qubit axis (8x smaller).

    ``binary=True``: the caller knows every value is 0 or 1 (qubits measured
    by qsim), so they are not checked.
    """
    out = {}
    for key, arr in records.items():
        bits = binary or arr.size == 0 or (arr.min() >= 0 and arr.max() <= 1)
        as_uint8 = arr.view(np.uint8) if arr.dtype == np.int8 else arr.astype(np.uint8)
        out[key] = (np.packbits(as_uint8, axis=-1) if bits else arr, arr.shape, bool(bits))
    return out


def unpack_records(packed: dict[str, tuple[np.ndarray, tuple[int, ...], bool]]) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_records`: int8 arrays (repetitions, instances, qubits)."""
    out = {}
    for key, (data, shape, binary) in packed.items():
        if binary:
            out[key] = np.unpackbits(data, axis=-1, count=shape[-1]).astype(np.int8).reshape(shape)
        else:
            out[key] = np.asarray(data, dtype=np.int8).reshape(shape)
    return out


@sizeof.register(TaskResult)
def _sizeof_result(result: TaskResult) -> int:
    # Dask sizes a result to account worker memory (spilling, pausing): without
    # this it walks a chunk's results generically on the worker's event loop
    # and counts a held state vector as a few hundred bytes.
    return result.nbytes + 200


def _nbytes(payload: Any) -> int:
    if isinstance(payload, np.ndarray):
        return int(payload.nbytes)
    if isinstance(payload, dict):
        return int(sum(v[0].nbytes for v in payload.values()))
    return 0
