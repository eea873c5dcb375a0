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
    SHA-256 of every array, and an HMAC-SHA256 of the header (``__hmac__``)
    under the store's secret. Written to a temporary name, then renamed: a
    reader sees a whole file or none.
Authentication
    A plain checksum only catches accidents: anyone who can write the store
    can recompute it and have a forged result returned as a hit (issue 24).
    The HMAC's secret is 32 random bytes in ``<root>/qdask-hmac.key``, created
    with the store (mode 0600), or the ``secret`` the caller passes (e.g.
    derived from the cluster's TLS key with :func:`secret_from_file`). A file
    written under another secret, by another store or by hand, fails its HMAC.
Permissions (local stores)
    The store's directories are created 0700 and its files 0600; a store
    directory owned by another user, or writable by anyone but its owner, is
    refused with :class:`InsecureStoreError` (another user could replace
    files, or the key). The default store lives in a per-user directory
    (:func:`qdask.fault.client.default_checkpoint_url`).
Reading
    A file that does not load, whose HMAC or array checksums fail, or that
    names another key is *corrupt*: it is counted, logged and treated as
    missing, so the circuit is recomputed and the file replaced.
Buffering
    :meth:`CheckpointStore.put` buffers; a background thread flushes every
    ``checkpoint_interval`` seconds, and :meth:`CheckpointStore.close` flushes
    what is left. A crash loses at most the last interval of results.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import stat
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
from qdask.quantum.task import TaskResult

if TYPE_CHECKING:
    from qdask.quantum.plan import Job

logger = logging.getLogger(__name__)

#: Version of the key material and file layout; part of every key.
#: 2: the header is authenticated by an HMAC (1 had a plain SHA-256).
FORMAT = 2
HEADER = "__header__"
HEADER_MAC = "__hmac__"
#: Name of the store's secret, in its root.
KEY_FILE = "qdask-hmac.key"
SECRET_BYTES = 32

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
                "seeds": job.seeds.tolist() if seeds_matter(job) and not hasattr(job.seeds, "key") else None,
                "backend": job.backend,
                "version": versions[job.backend],
                "extra": extras[id(job.extra)],
            }
            if hasattr(job.seeds, "key"):  # a SeedRange: its stream state, not 10**8 numbers
                doc["seeds"] = job.seeds.key() if seeds_matter(job) else None
            if job.blocks > 1:  # split by shot admission: each block samples with its own seed
                doc["blocks"] = job.blocks
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


def _mac(secret: bytes, header: bytes) -> bytes:
    return hmac.new(secret, header, hashlib.sha256).hexdigest().encode()


def encode(key: str, results: list[TaskResult], secret: bytes) -> bytes:
    """The ``.npz`` bytes of one circuit's results (all its blocks, in repetition order), under ``secret``."""
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
    # The blocks' arrays are named b<i>[r<j>], never like the header's two.
    members: dict[str, Any] = {
        HEADER: np.frombuffer(header, dtype=np.uint8),
        HEADER_MAC: np.frombuffer(_mac(secret, header), dtype=np.uint8),
        **arrays,
    }
    np.savez(buf, **members)
    return buf.getvalue()


class CorruptCheckpoint(ValueError):
    """A checkpoint file failed to load or to verify."""


def decode(key: str, data: bytes, index: int, secret: bytes) -> list[TaskResult]:
    """Verify (under ``secret``) and read a file written by :func:`encode`; raises :class:`CorruptCheckpoint`."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            stored = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise CorruptCheckpoint(f"unreadable: {type(e).__name__}: {e}") from e
    if HEADER not in stored or HEADER_MAC not in stored:
        raise CorruptCheckpoint("no authenticated header (a file of another qdask version, or not qdask's)")
    header_bytes = stored.pop(HEADER).tobytes()
    if not hmac.compare_digest(_mac(secret, header_bytes), stored.pop(HEADER_MAC).tobytes()):
        raise CorruptCheckpoint("header HMAC mismatch (altered, or written under another store's secret)")
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


# -- keys and permissions -------------------------------------------------------------
class InsecureStoreError(PermissionError):
    """A local checkpoint store (or its key) that another user could write or read."""


def secret_from_file(path: str | os.PathLike[str]) -> bytes:
    """A store secret derived from a file only its owners can read, e.g. the cluster's TLS key.

    Every client that has the file gets the same secret, so they share one
    store without copying ``qdask-hmac.key``::

        CheckpointStore(url, secret=secret_from_file("client-key.pem"))
    """
    with open(path, "rb") as f:
        return hmac.new(b"qdask-checkpoint-secret", f.read(), hashlib.sha256).digest()


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def check_private(path: str, *, directory: bool) -> None:
    """Refuse a store directory (or key file) owned by another user or open to others.

    A directory must be owned by this user and writable by no one else; a key
    file also readable by no one else. Raises :class:`InsecureStoreError`
    naming what, why and the fix.
    """
    st = os.stat(path)
    what = "checkpoint store directory" if directory else "checkpoint key file"
    uid = os.getuid()
    if st.st_uid != uid:
        raise InsecureStoreError(
            f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {uid}): its owner could replace "
            "results and have them returned as yours. Fix: use a directory of your own (checkpoint_url=None "
            "gives a private per-user one), or have it chowned to you."
        )
    mode = stat.S_IMODE(st.st_mode)
    forbidden = 0o022 if directory else 0o077
    if mode & forbidden:
        who = "others than its owner can write it" if directory else "others than its owner can read or write it"
        raise InsecureStoreError(
            f"{what} {path} has mode {mode:04o}: {who}, so they could forge results. "
            f"Fix: chmod {'700' if directory else '600'} {path}"
        )


def _makedirs_private(path: str) -> None:
    # The mode applies to the directories created here (umask can only narrow it).
    os.makedirs(path, mode=0o700, exist_ok=True)


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
    secret : bytes, optional
        Key of the files' HMAC; None: the store's own ``qdask-hmac.key``
        (created with it, mode 0600). See :func:`secret_from_file`.
    **storage_options
        Passed to ``fsspec.core.url_to_fs`` (credentials, ...).

    Raises
    ------
    InsecureStoreError
        A local store directory owned by another user or writable by others,
        or a key file others can read or write.

    Attributes
    ----------
    stats : collections.Counter
        ``hits``, ``misses``, ``corrupt`` (files rejected: damaged, forged or
        of another store), ``written``, ``write_errors``.

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

    def __init__(
        self, url: str, interval: float | None = None, *, secret: bytes | None = None, **storage_options: Any
    ) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)
        self.local = _is_local(self.fs)
        if self.local:
            _makedirs_private(self.root)
            check_private(self.root, directory=True)
        else:
            self.fs.makedirs(self.root, exist_ok=True)
        self.secret = secret if secret is not None else self._load_secret()
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

    def _load_secret(self) -> bytes:
        """The store's HMAC key: read from its key file, created (0600) by the first store to open it."""
        path = f"{self.root.rstrip('/')}/{KEY_FILE}"
        if self.local:
            if not os.path.exists(path):
                tmp = f"{path}.{uuid.uuid4().hex}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(SECRET_BYTES))
                try:
                    os.link(tmp, path)  # atomic, and never over a key another process made meanwhile
                except FileExistsError:
                    pass
                finally:
                    os.unlink(tmp)
            check_private(path, directory=False)
            with open(path, "rb") as f:
                secret = f.read()
        else:
            # Object stores have no modes: their access control is the bucket's.
            if not self.fs.exists(path):
                self.fs.pipe_file(path, secrets.token_bytes(SECRET_BYTES))
            secret = self.fs.cat_file(path)
        if len(secret) < 16:
            raise InsecureStoreError(
                f"checkpoint key file {path} holds {len(secret)} bytes, too few for a secret (at least 16). "
                "Fix: delete it (the store's files then count as corrupt and are recomputed once)."
            )
        return secret

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
            results = decode(key, data, index, self.secret)
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
                self._write(key, encode(key, results, self.secret))
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
        tmp = f"{final}.{uuid.uuid4().hex}.tmp"
        if self.local:
            _makedirs_private(final.rsplit("/", 1)[0])
            # Created 0600: never readable by others, not even until a chmod.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, final)  # a rename: readers see the old file, or the whole new one
            return
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
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
