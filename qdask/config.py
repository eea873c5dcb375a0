"""Typed, validated configuration for qdask.

Every default lives in ``qdask/qdask.yaml`` (checked against
``qdask/qdask-schema.yaml``) and is read through :mod:`dask.config`, so the
usual Dask mechanisms apply: YAML files in ``~/.config/dask``,
``dask.config.set({"qdask.elastic.max-nodes": 8})`` or environment variables
such as ``DASK_QDASK__ELASTIC__MAX_NODES=8``.

The dataclasses below are frozen and validated on construction: a bad value
raises :class:`ConfigError` naming the field, the value, the allowed range and
a fix. A field left out takes its value from ``dask.config`` at construction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import dask.config
import yaml
from dask.utils import parse_bytes, parse_timedelta

__all__ = [
    "ConfigError",
    "ClusterConfig",
    "MultiGPUConfig",
    "HybridConfig",
    "MonitoringConfig",
    "ElasticConfig",
    "LoadBalancerConfig",
    "FaultToleranceConfig",
    "get",
]

_HERE = Path(__file__).parent
CONFIG_PATH = _HERE / "qdask.yaml"
SCHEMA_PATH = _HERE / "qdask-schema.yaml"


def _load_defaults() -> None:
    with open(CONFIG_PATH) as f:
        defaults = yaml.safe_load(f)
    # update_defaults keeps what the user already set (files, env vars).
    dask.config.update_defaults(defaults)


_load_defaults()


def get(key: str, default: Any = None) -> Any:
    """Read ``qdask.<key>`` from dask.config (``key`` like ``"worker.statevector-fraction"``).

    Examples
    --------
    >>> qdask.config.get("worker.statevector-fraction")  # doctest: +SKIP
    0.75
    """
    return dask.config.get(f"qdask.{key}", default=default)


def parse_duration(value: float | str) -> float:
    """Seconds from a number or a string such as ``"100ms"``, ``"5min"``, ``"2h"``.

    Dask's ``parse_timedelta`` plus the ``min`` unit (Dask reads ``"5m"`` but
    not ``"5min"``, which the contract promises).

    Examples
    --------
    >>> parse_duration("5min"), parse_duration("100ms"), parse_duration(2)
    (300.0, 0.1, 2.0)
    """
    if isinstance(value, str):
        stripped = value.strip()
        for suffix in ("mins", "min"):
            if stripped.endswith(suffix):
                stripped = stripped[: -len(suffix)] + "minutes"
                break
        value = stripped
    seconds = parse_timedelta(value, default="seconds")
    if seconds is None:
        raise ValueError("no duration given")
    return float(seconds)


class ConfigError(ValueError):
    """A configuration value is out of range.

    Attributes
    ----------
    field : str
        ``Class.field`` that was wrong.
    value : object
        The value received.
    allowed : str
        What would have been accepted.

    Examples
    --------
    >>> try:
    ...     ClusterConfig(num_nodes=0)
    ... except ConfigError as e:
    ...     print(e.field, e.value)
    ClusterConfig.num_nodes 0
    """

    def __init__(self, cls: str, name: str, value: Any, allowed: str, fix: str) -> None:
        self.field = f"{cls}.{name}"
        self.value = value
        self.allowed = allowed
        super().__init__(f"{self.field}={value!r} is invalid: allowed {allowed}. Fix: {fix}")


class _FromConfig:
    """Marker: take the field's value from dask.config at construction."""

    def __repr__(self) -> str:
        return "<from dask.config>"


FROM_CONFIG: Any = _FromConfig()


@dataclass(frozen=True)
class _Config:
    """Base: fills unset fields from ``qdask.<section>.*`` and validates."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) is FROM_CONFIG:
                object.__setattr__(self, f.name, get(f"{self.section}.{_key(f.name)}"))
        self._validate()

    def _validate(self) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the (validated, parsed) field values."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # -- validators: each parses, stores the parsed value, or raises -------------
    def _fail(self, name: str, allowed: str, example: Any) -> ConfigError:
        cls = type(self).__name__
        key = f"qdask.{self.section}.{_key(name)}"
        env = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
        fix = f"pass {cls}({name}={example!r}) or set {key!r} in dask config ({env})."
        return ConfigError(cls, name, getattr(self, name), allowed, fix)

    def _store(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_bool(self, name: str) -> None:
        if not isinstance(getattr(self, name), bool):
            raise self._fail(name, "True or False", True)

    def _check_choice(self, name: str, choices: tuple[Any, ...]) -> None:
        if getattr(self, name) not in choices:
            raise self._fail(name, f"one of {choices}", choices[0])

    def _check_int(
        self, name: str, minimum: int, *, auto: bool = False, example: int | str | None = None
    ) -> None:
        value = getattr(self, name)
        if auto and value == "auto":
            return
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        if not ok:
            allowed = f"an integer >= {minimum}" + (' or "auto"' if auto else "")
            raise self._fail(name, allowed, example if example is not None else max(minimum, 1))

    def _check_number(
        self, name: str, *, gt: float | None = None, le: float | None = None, example: float
    ) -> None:
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and gt is not None:
            ok = value > gt
        if ok and le is not None:
            ok = value <= le
        if not ok:
            lo = f"> {gt}" if gt is not None else ""
            hi = f"<= {le}" if le is not None else ""
            raise self._fail(name, "a number " + " and ".join(s for s in (lo, hi) if s), example)
        self._store(name, float(value))

    def _check_duration(self, name: str, *, positive: bool = True, example: str = "1s") -> None:
        value = getattr(self, name)
        try:
            seconds: float | None = parse_duration(value)
        except (ValueError, TypeError, KeyError):
            seconds = None
        if seconds is None or seconds < 0 or (positive and seconds == 0) or isinstance(value, bool):
            allowed = "a duration " + ("> 0" if positive else ">= 0") + ' (seconds or "100ms", "5min")'
            raise self._fail(name, allowed, example)
        self._store(name, float(seconds))

    def _check_size(self, name: str, *, optional: bool, auto: bool = False) -> None:
        value = getattr(self, name)
        if (optional and value is None) or (auto and value == "auto"):
            return
        try:
            nbytes = parse_bytes(value)
        except (ValueError, TypeError):
            nbytes = -1
        if isinstance(value, bool) or nbytes <= 0:
            allowed = 'a size > 0 (bytes or "8GiB")' + (" or None" if optional else "")
            allowed += ' or "auto"' if auto else ""
            raise self._fail(name, allowed, "8GiB")
        self._store(name, int(nbytes))

    def _check_path(self, name: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise self._fail(name, "a file path or None", "qdask.jsonl")
        self._store(name, str(value))


def _key(name: str) -> str:
    return name.replace("_", "-")


Auto = Literal["auto"]


@dataclass(frozen=True)
class ClusterConfig(_Config):
    """Shape of a qdask cluster.

    Parameters
    ----------
    num_nodes : int or "auto", default from ``qdask.cluster.num-nodes``
        Worker processes; "auto" = usable cores.
    gpu_per_node : int or "auto"
        GPUs per worker; "auto" = what NVML reports.
    quantum_devices : int or "auto"
        How many workers expose quantum slots; "auto" = all of them.
    enable_monitoring : bool
        Start the metrics sampler with the cluster.
    protocol : {None, "tcp", "tls", "ucx", "inproc"}
        Comm protocol; None means tcp.
    threads_per_node : int
        Threads per worker process, i.e. quantum slots per worker.
    memory_per_node : int, str or "auto"
        Memory limit per worker; "auto" = system memory / num_nodes.

    Examples
    --------
    >>> ClusterConfig(num_nodes=2, quantum_devices=1).num_nodes
    2
    """

    section: ClassVar[str] = "cluster"
    num_nodes: int | Auto = FROM_CONFIG
    gpu_per_node: int | Auto = FROM_CONFIG
    quantum_devices: int | Auto = FROM_CONFIG
    enable_monitoring: bool = FROM_CONFIG
    protocol: str | None = FROM_CONFIG
    threads_per_node: int = FROM_CONFIG
    memory_per_node: int | str = FROM_CONFIG

    def _validate(self) -> None:
        self._check_int("num_nodes", 1, auto=True, example=2)
        self._check_int("gpu_per_node", 0, auto=True, example=0)
        self._check_int("quantum_devices", 0, auto=True, example=1)
        self._check_bool("enable_monitoring")
        self._check_choice("protocol", (None, "tcp", "tls", "ucx", "inproc"))
        self._check_int("threads_per_node", 1, example=1)
        self._check_size("memory_per_node", optional=False, auto=True)
        if (
            isinstance(self.num_nodes, int)
            and isinstance(self.quantum_devices, int)
            and self.quantum_devices > self.num_nodes
        ):
            raise self._fail(
                "quantum_devices", f"at most num_nodes ({self.num_nodes})", self.num_nodes
            )


@dataclass(frozen=True)
class MultiGPUConfig(_Config):
    """GPU workers through dask-cuda's ``LocalCUDACluster``.

    Parameters
    ----------
    num_gpus : int or "auto"
        "auto" = every visible GPU; an int picks the GPUs with the most free memory.
    memory_per_gpu : int, str or None
        RMM pool size / device memory limit per GPU.
    enable_p2p : bool
        CUDA peer-to-peer (CUDA IPC) transfers over UCX.
    enable_nvlink : bool
        NVLink transport over UCX.

    Examples
    --------
    >>> MultiGPUConfig(num_gpus=2, memory_per_gpu="16GiB").memory_per_gpu
    17179869184
    """

    section: ClassVar[str] = "gpu"
    num_gpus: int | Auto = FROM_CONFIG
    memory_per_gpu: int | str | None = FROM_CONFIG
    enable_p2p: bool = FROM_CONFIG
    enable_nvlink: bool = FROM_CONFIG

    def _validate(self) -> None:
        self._check_int("num_gpus", 1, auto=True, example="auto")
        self._check_size("memory_per_gpu", optional=True)
        self._check_bool("enable_p2p")
        self._check_bool("enable_nvlink")


@dataclass(frozen=True)
class HybridConfig(_Config):
    """Classical and quantum worker groups in one cluster.

    Parameters
    ----------
    classical_nodes : int
        Workers that run classical tasks only.
    quantum_nodes : int
        Workers that run circuits.
    gpu_per_node : int
        GPUs per quantum worker.
    optimization_level : {"none", "basic", "aggressive"}
        How much qdask decides for the user.

    Examples
    --------
    >>> HybridConfig(classical_nodes=2, quantum_nodes=1).quantum_nodes
    1
    """

    section: ClassVar[str] = "hybrid"
    classical_nodes: int = FROM_CONFIG
    quantum_nodes: int = FROM_CONFIG
    gpu_per_node: int = FROM_CONFIG
    optimization_level: str = FROM_CONFIG

    def _validate(self) -> None:
        self._check_int("classical_nodes", 0, example=1)
        self._check_int("quantum_nodes", 0, example=1)
        self._check_int("gpu_per_node", 0, example=0)
        self._check_choice("optimization_level", ("none", "basic", "aggressive"))
        if self.classical_nodes + self.quantum_nodes == 0:
            raise self._fail("quantum_nodes", "at least one node in total", 1)


@dataclass(frozen=True)
class MonitoringConfig(_Config):
    """Scheduler-side sampling of metrics.

    Parameters
    ----------
    collect_metrics : bool
        Sample metrics every ``sampling_interval``.
    sampling_interval : float or str
        Seconds (or "100ms") between samples; stored as seconds.
    log_file : str or None
        JSON-lines file with one record per sample.
    log_max_bytes : int, str or None, default "100MiB"
        Size at which the log file is rotated (``log_file`` -> ``log_file.1`` ...,
        Python's ``RotatingFileHandler``); None never rotates.
    log_backups : int, default 5
        Rotated files kept beside the log (``log_file.1`` to ``log_file.<n>``), >= 1.
    enable_tracing : bool
        Record one span per circuit task.
    trace_file : str or None
        Chrome trace-event JSON file for the spans.

    Examples
    --------
    >>> MonitoringConfig(sampling_interval="250ms").sampling_interval
    0.25
    """

    section: ClassVar[str] = "monitoring"
    collect_metrics: bool = FROM_CONFIG
    sampling_interval: float = FROM_CONFIG
    log_file: str | None = FROM_CONFIG
    log_max_bytes: int | str | None = FROM_CONFIG
    log_backups: int = FROM_CONFIG
    enable_tracing: bool = FROM_CONFIG
    trace_file: str | None = FROM_CONFIG

    def _validate(self) -> None:
        self._check_bool("collect_metrics")
        self._check_duration("sampling_interval", example="100ms")
        self._check_path("log_file")
        self._check_size("log_max_bytes", optional=True)
        self._check_int("log_backups", 1, example=5)
        self._check_bool("enable_tracing")
        self._check_path("trace_file")
        if self.enable_tracing and self.trace_file is None:
            raise self._fail("trace_file", "a path when enable_tracing=True", "qdask-trace.json")


@dataclass(frozen=True)
class ElasticConfig(_Config):
    """Adaptive scaling bounds and pace.

    Parameters
    ----------
    min_nodes, max_nodes : int
        Bounds on the number of workers (``min_nodes <= max_nodes``).
    scale_factor : float
        Growth per step, > 1 (2 gives 1 -> 2 -> 4).
    cooldown_period : float or str
        Wait between scaling actions in the same direction; stored as seconds.
    target_duration : float or str
        Queued quantum work should drain within this time; stored as seconds.

    Examples
    --------
    >>> ElasticConfig(min_nodes=1, max_nodes=8, cooldown_period="30s").cooldown_period
    30.0
    """

    section: ClassVar[str] = "elastic"
    min_nodes: int = FROM_CONFIG
    max_nodes: int = FROM_CONFIG
    scale_factor: float = FROM_CONFIG
    cooldown_period: float = FROM_CONFIG
    target_duration: float = FROM_CONFIG

    def _validate(self) -> None:
        self._check_int("min_nodes", 0, example=1)
        self._check_int("max_nodes", 1, example=4)
        if self.min_nodes > self.max_nodes:
            raise self._fail("min_nodes", f"at most max_nodes ({self.max_nodes})", self.max_nodes)
        self._check_number("scale_factor", gt=1.0, example=2.0)
        self._check_duration("cooldown_period", positive=False, example="30s")
        self._check_duration("target_duration", example="5s")


@dataclass(frozen=True)
class LoadBalancerConfig(_Config):
    """Dynamic load balancing on top of Dask's work stealing.

    Parameters
    ----------
    algorithm : {"dynamic", "static"}
        "dynamic" migrates queued tasks; "static" places once and never migrates.
    threshold : float
        In (0, 1]: a worker whose share of the cluster's queued work exceeds it sheds work.
    check_interval : float or str
        Time between balancing passes; stored as seconds.
    enable_migration : bool
        Allow moving queued tasks between workers.

    Examples
    --------
    >>> LoadBalancerConfig(algorithm="dynamic", check_interval="500ms").check_interval
    0.5
    """

    section: ClassVar[str] = "load-balancer"
    algorithm: str = FROM_CONFIG
    threshold: float = FROM_CONFIG
    check_interval: float = FROM_CONFIG
    enable_migration: bool = FROM_CONFIG

    def _validate(self) -> None:
        self._check_choice("algorithm", ("dynamic", "static"))
        self._check_number("threshold", gt=0.0, le=1.0, example=0.8)
        self._check_duration("check_interval", example="1s")
        self._check_bool("enable_migration")


@dataclass(frozen=True)
class FaultToleranceConfig(_Config):
    """Replication, checkpoints and failure limits.

    Parameters
    ----------
    replication_factor : int
        Workers that hold each finished result (>= 1).
    checkpoint_interval : float or str
        How often buffered results are flushed; stored as seconds.
    checkpoint_url : str or None
        fsspec URL of the checkpoint store.
    recovery_mode : {"automatic", "manual"}
        "automatic" redistributes; "manual" holds affected work for the user.
    max_failures : int
        Worker deaths a task may cause before it fails (>= 1).

    Examples
    --------
    >>> FaultToleranceConfig(replication_factor=2, max_failures=3).recovery_mode
    'automatic'
    """

    section: ClassVar[str] = "fault-tolerance"
    replication_factor: int = FROM_CONFIG
    checkpoint_interval: float = FROM_CONFIG
    checkpoint_url: str | None = FROM_CONFIG
    recovery_mode: str = FROM_CONFIG
    max_failures: int = FROM_CONFIG

    def _validate(self) -> None:
        self._check_int("replication_factor", 1, example=2)
        self._check_duration("checkpoint_interval", example="5s")
        if self.checkpoint_url is not None and (
            not isinstance(self.checkpoint_url, (str, os.PathLike)) or not str(self.checkpoint_url)
        ):
            raise self._fail("checkpoint_url", "an fsspec URL or path, or None", "file:///tmp/qdask-ckpt")
        if self.checkpoint_url is not None:
            self._store("checkpoint_url", str(self.checkpoint_url))
        self._check_choice("recovery_mode", ("automatic", "manual"))
        self._check_int("max_failures", 1, example=3)

