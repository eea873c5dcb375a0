"""Durable circuit results: a content-addressed checkpoint store on any fsspec filesystem.

Dask keeps results in worker memory only: when the client, the scheduler or
every worker dies, finished work is gone (dask/distributed#1072). With fault
tolerance enabled, :class:`qdask.quantum.engine.Engine` stores each circuit's
result here as it arrives and, when the same work is submitted again, loads
it instead of recomputing it.

Key
    :func:`content_keys` hashes (SHA-256) everything that determines a result:
    the kind of work, the circuit with its parameters resolved (each gate as
    ``cirq.to_json``), the resolved parameters, the repetitions, the seeds drawn
    for it (when the result depends on them: sampling, noise, measurements),
    the backend's name and ``version()``, and the work's options (qubit order,
    observables, bitstrings, initial state).
File
    ``<root>/<key[:2]>/<key>.npz``: a NumPy ``.npz`` (never pickle) holding the
    result arrays, a JSON header (``__header__``) describing the blocks and the
    SHA-256 of every array, and the SHA-256 of the header (``__sha256__``).
    Written to a temporary name, then renamed: a reader sees a whole file or none.
Reading
    A file that does not load, whose header or arrays fail their checksum, or
    that names another key is *corrupt*: it is counted, logged and treated as
    missing, so the circuit is recomputed and the file replaced.
Buffering
    :meth:`CheckpointStore.put` buffers; a background thread flushes every
    ``checkpoint_interval`` seconds, and :meth:`CheckpointStore.close` flushes
    what is left. A crash loses at most the last interval of results.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import cirq
import fsspec
import numpy as np

from qdask.quantum import backends as bk
from qdask.quantum.execute import TaskResult

if TYPE_CHECKING:
    from qdask.quantum.plan import Job

logger = logging.getLogger(__name__)

#: Version of the key material and file layout; part of every key.
FORMAT = 1
HEADER = "__header__"
HEADER_SHA = "__sha256__"

#: { gate: its cirq.to_json } -- batches reuse a few gate objects, and
#: serializing each operation anew costs ~10x more than the lookup.
_GATE_JSON: dict[cirq.Gate, str] = {}
_GATE_JSON_MAX = 4096


class Uncacheable(Exception):
    """A job whose result cannot be keyed (a value without a JSON form); it always runs."""


def _gate_json(gate: cirq.Gate) -> str:
    try:
        return _GATE_JSON[gate]
    except KeyError:
        text = cirq.to_json(gate, indent=None)
    except TypeError:  # unhashable gate
        return cirq.to_json(gate, indent=None)
    if len(_GATE_JSON) < _GATE_JSON_MAX:
        _GATE_JSON[gate] = text
    return text


def _circuit_material(circuit: cirq.AbstractCircuit) -> list[list[Any]]:
    """The circuit, moment by moment, as ``cirq.to_json`` text of each gate and its qubits."""
    moments = []
    for moment in circuit:
        ops = []
        for op in moment:
            if isinstance(op, cirq.GateOperation):
                ops.append([_gate_json(op.gate), [repr(q) for q in op.qubits]])
            else:  # tagged, controlled, classically controlled: the whole operation
                ops.append([cirq.to_json(op, indent=None)])
        moments.append(ops)
    return moments


def seeds_matter(job: Job) -> bool:
    """Whether the job's result depends on its seeds (else they stay out of the key)."""
    return job.work == "sample" or job.info.has_noise or job.info.has_measurements


def content_keys(jobs: Iterable[Job]) -> dict[int, str]:
    """``{job index: content key}``; jobs that cannot be keyed are left out (and always run).

    Examples
    --------
    The key changes with anything that changes the result (here the seeds)::

        keys = content_keys(jobs)
    """
    versions: dict[str, str] = {}
    extras: dict[int, str] = {}
    out: dict[int, str] = {}
    for job in jobs:
        try:
            if job.backend not in versions:
                versions[job.backend] = bk.get_backend(job.backend).version()
            if id(job.extra) not in extras:
                extras[id(job.extra)] = cirq.to_json(job.extra, indent=None) if job.extra else ""
            params = job.resolver.param_dict
            circuit = cirq.resolve_parameters(job.circuit, job.resolver) if params else job.circuit
            doc = {
                "format": FORMAT,
                "work": job.work,
                "circuit": _circuit_material(circuit),
                "params": {str(k): _param(v) for k, v in params.items()},
                "repetitions": job.repetitions,
                "seeds": [int(s) for s in job.seeds] if seeds_matter(job) else None,
                "backend": job.backend,
                "version": versions[job.backend],
                "extra": extras[id(job.extra)],
            }
        except Exception as e:  # no JSON form, backend library missing on the client, ...
            logger.info("circuit %d is not checkpointed: %s: %s", job.index, type(e).__name__, e)
            continue
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        out[job.index] = hashlib.sha256(text.encode()).hexdigest()
    return out


def _param(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):  # complex or symbolic values
        return str(value)


# -- file format --------------------------------------------------------------------
def _digest(arr: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def encode(key: str, results: list[TaskResult]) -> bytes:
    """The ``.npz`` bytes of one circuit's results (all its blocks, in repetition order)."""
    arrays: dict[str, np.ndarray] = {}
    blocks = []
    for b, r in enumerate(results):
        if isinstance(r.payload, dict):  # measurement records: {key: (packed, shape, binary)}
            records = []
            for i, (mkey, (data, shape, binary)) in enumerate(r.payload.items()):
                name = f"b{b}r{i}"
                arrays[name] = np.asarray(data)
                records.append({"key": mkey, "array": name, "shape": list(shape), "binary": bool(binary)})
            payload: dict[str, Any] = {"kind": "records", "records": records}
        else:
            name = f"b{b}"
            arrays[name] = np.asarray(r.payload)
            payload = {"kind": "array", "array": name}
        blocks.append(
            {"start": r.start, "backend": r.backend, "seconds": r.seconds, "worker": r.worker, "nbytes": r.nbytes,
             "payload": payload}
        )
    header = json.dumps(
        {"format": FORMAT, "key": key, "blocks": blocks, "sha256": {n: _digest(a) for n, a in arrays.items()}},
        sort_keys=True,
    ).encode()
    buf = io.BytesIO()
    np.savez(
        buf,
        **{HEADER: np.frombuffer(header, dtype=np.uint8),
           HEADER_SHA: np.frombuffer(hashlib.sha256(header).hexdigest().encode(), dtype=np.uint8)},
        **arrays,
    )
    return buf.getvalue()


class CorruptCheckpoint(ValueError):
    """A checkpoint file failed to load or to verify."""


def decode(key: str, data: bytes, index: int) -> list[TaskResult]:
    """Verify and read a file written by :func:`encode`; raises :class:`CorruptCheckpoint`."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            stored = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise CorruptCheckpoint(f"unreadable: {type(e).__name__}: {e}") from e
    if HEADER not in stored or HEADER_SHA not in stored:
        raise CorruptCheckpoint("no header")
    header_bytes = stored.pop(HEADER).tobytes()
    if hashlib.sha256(header_bytes).hexdigest().encode() != stored.pop(HEADER_SHA).tobytes():
        raise CorruptCheckpoint("header checksum mismatch")
    header = json.loads(header_bytes)
    if header.get("format") != FORMAT or header.get("key") != key:
        raise CorruptCheckpoint(f"file holds key {header.get('key')!r}, format {header.get('format')!r}")
    digests = header["sha256"]
    if set(digests) != set(stored):
        raise CorruptCheckpoint(f"arrays {sorted(stored)} differ from the header's {sorted(digests)}")
    for name, arr in stored.items():
        if _digest(arr) != digests[name]:
            raise CorruptCheckpoint(f"array {name!r} checksum mismatch")
    results = []
    for block in header["blocks"]:
        p = block["payload"]
        if p["kind"] == "records":
            payload: Any = {
                rec["key"]: (stored[rec["array"]], tuple(rec["shape"]), rec["binary"]) for rec in p["records"]
            }
        else:
            payload = stored[p["array"]]
        results.append(
            TaskResult(index, block["start"], block["backend"], block["seconds"], block["worker"], payload,
                       block["nbytes"])
        )
    return results


# -- the store ----------------------------------------------------------------------
class CheckpointStore:
    """Circuit results on an fsspec filesystem, under their content keys.

    Parameters
    ----------
    url : str
        fsspec URL or local path of the store's root (created if missing).
    interval : float, optional
        Seconds between background flushes of buffered results; None flushes
        only on :meth:`flush` and :meth:`close`.
    **storage_options
        Passed to ``fsspec.core.url_to_fs`` (credentials, ...).

    Attributes
    ----------
    stats : collections.Counter
        ``hits``, ``misses``, ``corrupt`` (files rejected), ``written``, ``write_errors``.

    Examples
    --------
    >>> store = CheckpointStore("memory://qdask-doc")
    >>> r = TaskResult(0, 0, "qsim", 0.1, "", np.arange(4, dtype=np.complex64), 32)
    >>> store.put("ab12", [r]); store.flush()
    1
    >>> store.get("ab12", index=7)[0].payload.tolist()
    [0j, (1+0j), (2+0j), (3+0j)]
    >>> store.close()
    """

    def __init__(self, url: str, interval: float | None = None, **storage_options: Any) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)
        self.fs.makedirs(self.root, exist_ok=True)
        self.stats: Counter[str] = Counter()
        self._buffer: dict[str, list[TaskResult]] = {}
        self._lock = threading.Lock()  # the buffer
        # One flush at a time: a flush returns once everything put before it is written,
        # including what a concurrent background flush had taken.
        self._flushing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval is not None:
            self._thread = threading.Thread(
                target=self._flush_every, args=(interval,), name="qdask-checkpoint-flusher", daemon=True
            )
            self._thread.start()

    def path(self, key: str) -> str:
        """Where the result of ``key`` lives."""
        return f"{self.root.rstrip('/')}/{key[:2]}/{key}.npz"

    # -- reading -------------------------------------------------------------------
    def get(self, key: str, index: int) -> list[TaskResult] | None:
        """The verified results of ``key`` (with circuit ``index``), or None (missing or corrupt)."""
        with self._lock:
            buffered = self._buffer.get(key)
        if buffered is not None:
            self.stats["hits"] += 1
            return [TaskResult(index, r.start, r.backend, r.seconds, r.worker, r.payload, r.nbytes) for r in buffered]
        path = self.path(key)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            self.stats["misses"] += 1
            return None
        try:
            results = decode(key, data, index)
        except CorruptCheckpoint as e:
            self.stats["corrupt"] += 1
            logger.warning("checkpoint %s is corrupt (%s); circuit %d is recomputed", path, e, index)
            return None
        self.stats["hits"] += 1
        return results

    def keys(self) -> list[str]:
        """Content keys of every stored result (files whose name is a key)."""
        return sorted(p.rsplit("/", 1)[-1][: -len(".npz")] for p in self.fs.glob(f"{self.root.rstrip('/')}/*/*.npz"))

    # -- writing -------------------------------------------------------------------
    def put(self, key: str, results: list[TaskResult]) -> None:
        """Buffer one circuit's results; written by the next flush."""
        with self._lock:
            self._buffer[key] = results

    def flush(self) -> int:
        """Write every buffered result (atomically, one file each); returns how many were written."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> int:
        with self._lock:
            pending, self._buffer = self._buffer, {}
        written = 0
        for key, results in pending.items():
            try:
                self._write(key, encode(key, results))
                written += 1
            except Exception:
                # A full disk or a lost connection must not fail the batch: the
                # result is still returned, only not durable.
                self.stats["write_errors"] += 1
                logger.warning("could not write checkpoint %s", self.path(key), exc_info=True)
        self.stats["written"] += written
        return written

    def _write(self, key: str, data: bytes) -> None:
        final = self.path(key)
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{final}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        # A rename: readers see the old file, or the whole new one.
        self.fs.mv(tmp, final)

    def _flush_every(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.flush()
            except Exception:  # keep flushing on the next tick
                logger.warning("checkpoint flush failed", exc_info=True)

    def close(self) -> None:
        """Stop the background flusher and write what is still buffered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def __repr__(self) -> str:
        return f"<CheckpointStore {self.url} {dict(self.stats)}>"
