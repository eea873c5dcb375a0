"""GPU workers through dask-cuda: one builder for ``LocalCUDACluster`` and ``dask cuda worker``.

:func:`cuda_options` resolves a :class:`~qdask.config.MultiGPUConfig` and a
:class:`~qdask.config.ClusterConfig` against the GPUs that NVML reports into
:class:`CUDAOptions`, validating the combination once. The same object renders
keyword arguments for ``dask_cuda.LocalCUDACluster``
(:meth:`CUDAOptions.cluster_kwargs`, used by :func:`start_cuda_cluster` and
``QuantumCluster(gpu=...)``) and the command line of ``dask cuda worker``
(:meth:`CUDAOptions.worker_command`), so both start identical workers.

dask-cuda runs one worker process per GPU. ``MultiGPUConfig.enable_nvlink`` and
``enable_p2p`` both select UCX's ``cuda_ipc`` transport (dask-cuda's
``enable_nvlink``), which moves device buffers over NVLink where the GPUs have
it and over PCIe peer-to-peer otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from dask.utils import format_bytes
from distributed import Client

from qdask.config import ClusterConfig, ConfigError, MultiGPUConfig
from qdask.deploy import spec
from qdask.resources import GPU, GPUInfo, detect_gpus

if TYPE_CHECKING:
    from distributed import LocalCluster
    from distributed.security import Security

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: What to install for GPU workers (dask-cuda, UCX, RMM, CuPy, NVML bindings).
GPU_EXTRA = "pip install 'qdask[gpu]'"
#: Preload that installs qdask's worker plugin on ``dask cuda worker``.
WORKER_PRELOAD = "qdask.plugins.worker"


@dataclass(frozen=True)
class CUDAOptions:
    """dask-cuda settings resolved from qdask's configs: one worker per GPU.

    Attributes
    ----------
    devices : tuple of int
        GPU indices (NVML numbering) of the workers, one GPU each.
    protocol : {None, "tcp", "tls", "ucx"}
        Comm protocol; None means tcp.
    enable_tcp_over_ucx, enable_nvlink, enable_infiniband, enable_rdmacm : bool or None
        UCX transports; None leaves the choice to UCX.
    rmm_pool_size : int or None
        RMM pool each worker preallocates on its GPU; None: no pool.
    device_memory_limit : int or str
        Device bytes a worker holds before spilling to host; "default" is
        dask-cuda's (80 % of the GPU).
    threads_per_worker : int
        Threads per worker (quantum slots; qsim holds the GIL).
    memory_limit : int or str
        Host memory limit per worker; "auto" splits system memory over the workers.
    """

    devices: tuple[int, ...]
    protocol: str | None
    enable_tcp_over_ucx: bool | None
    enable_nvlink: bool | None
    enable_infiniband: bool | None
    enable_rdmacm: bool | None
    rmm_pool_size: int | None
    device_memory_limit: int | str
    threads_per_worker: int
    memory_limit: int | str

    def ucx_kwargs(self) -> dict[str, bool | None]:
        """The UCX transport switches, as dask-cuda names them (``LocalCUDACluster``, ``get_ucx_config``)."""
        return {
            "enable_tcp_over_ucx": self.enable_tcp_over_ucx,
            "enable_infiniband": self.enable_infiniband,
            "enable_nvlink": self.enable_nvlink,
            "enable_rdmacm": self.enable_rdmacm,
        }

    def cluster_kwargs(
        self, *, local_directory: str | None = None, security: Security | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for ``dask_cuda.LocalCUDACluster``.

        Parameters
        ----------
        local_directory : str or None, default None
            Scratch space of the workers.
        security : distributed.Security or None, default None
            TLS settings for ``protocol="tls"``.

        Examples
        --------
        >>> opts = cuda_options(ClusterConfig(), MultiGPUConfig(num_gpus=1), gpus=[
        ...     GPUInfo(index=0, name="H200", total_memory=2**37, free_memory=2**37)])
        >>> opts.cluster_kwargs()["CUDA_VISIBLE_DEVICES"]
        [0]
        """
        return dict(
            CUDA_VISIBLE_DEVICES=list(self.devices),
            n_workers=len(self.devices),
            threads_per_worker=self.threads_per_worker,
            memory_limit=self.memory_limit,
            device_memory_limit=self.device_memory_limit,
            rmm_pool_size=self.rmm_pool_size,
            protocol=self.protocol,
            **self.ucx_kwargs(),
            host=LOOPBACK,
            dashboard_address=f"{LOOPBACK}:0",
            local_directory=local_directory,
            security=security,
            # dask-cuda gives each worker every GPU in a rotated
            # CUDA_VISIBLE_DEVICES and uses the first: declared, this beats
            # discovery (which would count them all) so each worker offers one.
            resources={GPU: 1},
            scheduler_kwargs={"plugins": spec.scheduler_plugins()},
            plugins=spec.worker_plugins("quantum", local=True),
        )

    def worker_command(
        self, scheduler_address: str, *, host: str | None = LOOPBACK
    ) -> tuple[list[str], dict[str, str]]:
        """``dask cuda worker`` arguments and environment for the same workers.

        Parameters
        ----------
        scheduler_address : str
            Address of a scheduler started with ``--preload qdask.plugins.scheduler``.
        host : str or None, default "127.0.0.1"
            Interface the workers (and their dashboards) bind; None lets Dask pick,
            for workers other hosts must reach.

        Returns
        -------
        argv : list of str
            Starts with ``"dask"``; where entry-point scripts are not on PATH run
            ``python -m dask`` with ``argv[1:]``.
        env : dict
            ``CUDA_VISIBLE_DEVICES`` to add to the environment (dask-cuda reads
            the GPUs from it, one worker each).

        Examples
        --------
        >>> opts = cuda_options(ClusterConfig(), MultiGPUConfig(num_gpus=1), gpus=[
        ...     GPUInfo(index=3, name="H200", total_memory=2**37, free_memory=2**37)])
        >>> argv, env = opts.worker_command("tcp://127.0.0.1:8786")
        >>> argv[:4], env
        (['dask', 'cuda', 'worker', 'tcp://127.0.0.1:8786'], {'CUDA_VISIBLE_DEVICES': '3'})
        """
        argv = [
            "dask", "cuda", "worker", scheduler_address,
            "--nthreads", str(self.threads_per_worker),
            "--memory-limit", str(self.memory_limit),
            "--device-memory-limit", str(self.device_memory_limit),
            "--resources", f"{GPU}=1",
            "--preload", WORKER_PRELOAD,
        ]  # fmt: skip
        if self.rmm_pool_size is not None:
            argv += ["--rmm-pool-size", str(self.rmm_pool_size)]
        if self.protocol is not None:
            argv += ["--protocol", self.protocol]
        for name, value in self.ucx_kwargs().items():
            if value is not None:
                flag = name.replace("_", "-")
                argv.append(f"--{flag}" if value else "--" + flag.replace("enable-", "disable-", 1))
        if host is not None:
            argv += ["--host", host, "--dashboard-address", f"{host}:0"]
        return argv, {"CUDA_VISIBLE_DEVICES": ",".join(map(str, self.devices))}


def select_gpus(num_gpus: int | str, gpus: list[GPUInfo]) -> list[GPUInfo]:
    """The GPUs to use: all of them for "auto", else the ``num_gpus`` with most free memory.

    Parameters
    ----------
    num_gpus : int or "auto"
        ``MultiGPUConfig.num_gpus``.
    gpus : list of GPUInfo
        The visible GPUs (:func:`qdask.worker.discovery.detect_gpus`).

    Returns
    -------
    list of GPUInfo
        In the order the GPUs were given (NVML / ``CUDA_VISIBLE_DEVICES`` order).

    Raises
    ------
    ConfigError
        When no GPU is visible, or fewer than ``num_gpus``.
    """
    visible = ", ".join(f"{g.index}: {g.name} {format_bytes(g.free_memory)} free" for g in gpus)
    if not gpus:
        raise ConfigError(
            "MultiGPUConfig", "num_gpus", num_gpus,
            "at most 0 GPUs: NVML reports none in this process",
            f"run on a host with an NVIDIA driver and the NVML bindings ({GPU_EXTRA}), "
            "check CUDA_VISIBLE_DEVICES, or leave out gpu= to start CPU workers.",
        )  # fmt: skip
    if num_gpus == "auto":
        return list(gpus)
    count = int(num_gpus)
    if count > len(gpus):
        raise ConfigError(
            "MultiGPUConfig", "num_gpus", num_gpus,
            f"at most {len(gpus)} (visible GPUs: {visible})",
            f"pass MultiGPUConfig(num_gpus={len(gpus)}) or num_gpus='auto'.",
        )  # fmt: skip
    # Stable sort: equal free memory keeps the lower index.
    chosen = {g.index for g in sorted(gpus, key=lambda g: -g.free_memory)[:count]}
    return [g for g in gpus if g.index in chosen]


def gpu_assignment(lay: spec.Layout, gpus: list[GPUInfo]) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each quantum worker of a hybrid layout with GPUs.

    Each quantum worker gets ``gpu_per_node`` GPUs of its own, taken from
    those with the most free memory (:func:`select_gpus`),
    in index order.

    Raises
    ------
    ConfigError
        When fewer GPUs are visible than the quantum workers need.

    Examples
    --------
    >>> gpus = [GPUInfo(i, "H200", 2**37, 2**37) for i in range(4)]
    >>> gpu_assignment(spec.Layout(2, 1, 1, 2**30, gpu_per_node=2), gpus)
    ['0,1', '2,3']
    """
    need = lay.quantum * lay.gpu_per_node
    visible = ", ".join(f"{g.index}: {g.name}" for g in gpus) or "none (NVML)"
    if need > len(gpus):
        raise ConfigError(
            "HybridConfig", "gpu_per_node", lay.gpu_per_node,
            f"at most {len(gpus) // max(lay.quantum, 1)} for {lay.quantum} quantum worker(s) "
            f"(visible GPUs: {visible})",
            "pass HybridConfig(gpu_per_node=0) for CPU quantum workers, fewer quantum_nodes, "
            "or run where NVML sees enough GPUs (check CUDA_VISIBLE_DEVICES).",
        )  # fmt: skip
    chosen = [g.index for g in select_gpus(need, gpus)]
    per = lay.gpu_per_node
    return [",".join(map(str, chosen[i * per:(i + 1) * per])) for i in range(lay.quantum)]


def cuda_options(
    config: ClusterConfig, gpu: MultiGPUConfig, gpus: list[GPUInfo] | None = None
) -> CUDAOptions:
    """Resolve and validate qdask's configs into :class:`CUDAOptions`.

    Parameters
    ----------
    config : ClusterConfig
        ``protocol``, ``threads_per_node`` and ``memory_per_node`` apply to the
        GPU workers; ``num_nodes`` does not (one worker per GPU).
    gpu : MultiGPUConfig
        Which GPUs, how much of their memory, and the UCX transports.
    gpus : list of GPUInfo, optional
        Visible GPUs; by default what NVML reports (no CUDA context is created).

    Raises
    ------
    ConfigError
        For a combination dask-cuda cannot run: NVLink or P2P over tcp/tls,
        the inproc protocol, more GPUs than visible, more memory than a GPU has,
        or ``gpu_per_node`` other than 1.
    """
    if config.protocol == "inproc":
        raise ConfigError(
            "ClusterConfig", "protocol", "inproc",
            'None, "tcp", "tls" or "ucx" with gpu=: dask-cuda runs one process per GPU',
            "pass ClusterConfig(protocol='ucx') (or None for tcp).",
        )  # fmt: skip
    if config.gpu_per_node not in ("auto", 1):
        raise ConfigError(
            "ClusterConfig", "gpu_per_node", config.gpu_per_node,
            '1 or "auto" with gpu=: dask-cuda gives each worker one GPU',
            "pass ClusterConfig(gpu_per_node='auto') and choose the GPUs with MultiGPUConfig(num_gpus=N).",
        )  # fmt: skip
    cuda_ipc = gpu.enable_nvlink or gpu.enable_p2p
    protocol = config.protocol
    if cuda_ipc:
        if protocol not in (None, "ucx"):
            name = "enable_nvlink" if gpu.enable_nvlink else "enable_p2p"
            raise ConfigError(
                "MultiGPUConfig", name, True,
                f"only with protocol 'ucx' (ClusterConfig.protocol is {protocol!r}): "
                "GPU-to-GPU transports are UCX transports",
                f"pass ClusterConfig(protocol='ucx') or MultiGPUConfig({name}=False).",
            )  # fmt: skip
        protocol = "ucx"

    chosen = select_gpus(gpu.num_gpus, detect_gpus() if gpus is None else gpus)
    # MultiGPUConfig parsed a size given as a string into bytes.
    memory_per_gpu = cast("int | None", gpu.memory_per_gpu)
    if memory_per_gpu is not None:
        smallest = min(chosen, key=lambda g: g.total_memory)
        if memory_per_gpu > smallest.total_memory:
            raise ConfigError(
                "MultiGPUConfig", "memory_per_gpu", memory_per_gpu,
                f"at most {format_bytes(smallest.total_memory)} "
                f"(GPU {smallest.index}, {smallest.name}, has that much)",
                f"pass MultiGPUConfig(memory_per_gpu={format_bytes(int(smallest.total_memory * 0.8))!r}) or None.",
            )  # fmt: skip
    return CUDAOptions(
        devices=tuple(g.index for g in chosen),
        protocol=protocol,
        # NVLink/P2P: TCP over UCX stays on for control messages and host
        # buffers; InfiniBand and RDMA-CM are off rather than auto-probed.
        enable_tcp_over_ucx=True if cuda_ipc else None,
        enable_nvlink=True if cuda_ipc else None,
        enable_infiniband=False if cuda_ipc else None,
        enable_rdmacm=False if cuda_ipc else None,
        rmm_pool_size=memory_per_gpu,
        device_memory_limit=memory_per_gpu if memory_per_gpu is not None else "default",
        threads_per_worker=config.threads_per_node,
        memory_limit=config.memory_per_node,
    )


def _cuda_cluster_class() -> type[LocalCluster]:
    """``LocalCUDACluster`` that keeps qdask's worker plugins (imports dask-cuda)."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as e:
        raise ImportError(
            f"GPU workers need dask-cuda, which does not import here ({e}). "
            f"Fix: {GPU_EXTRA} on a host with an NVIDIA driver."
        ) from e

    class QuantumCUDACluster(LocalCUDACluster):
        """``LocalCUDACluster`` whose workers also carry qdask's worker plugins."""

        def new_worker_spec(self) -> dict[str, Any]:
            specs = super().new_worker_spec()
            # dask-cuda replaces options["plugins"] with its own per-GPU set
            # (LocalCUDACluster.new_worker_spec); the plugins passed as
            # LocalCluster(plugins=...) are still in new_spec: add them back.
            ours = self.new_spec["options"].get("plugins", ())
            for worker in specs.values():
                worker["options"]["plugins"] = {*worker["options"].get("plugins", ()), *ours}
            return specs

    return QuantumCUDACluster


def start_cuda_cluster(
    config: ClusterConfig,
    gpu: MultiGPUConfig,
    *,
    local_directory: str | None = None,
    security: Security | None = None,
    gpus: list[GPUInfo] | None = None,
    **cluster_kwargs: Any,
) -> LocalCluster:
    """Start a ``LocalCUDACluster`` with qdask's plugins and wait for its workers.

    Parameters
    ----------
    config : ClusterConfig
        Protocol, threads and host memory of the workers.
    gpu : MultiGPUConfig
        GPUs, device memory and UCX transports.
    local_directory : str or None, default None
        Scratch space of the workers.
    security : distributed.Security or None, default None
        TLS settings for ``protocol="tls"``.
    gpus : list of GPUInfo, optional
        Visible GPUs; by default what NVML reports.
    **cluster_kwargs
        Passed on to ``LocalCUDACluster`` over the built ones (e.g. ``silence_logs``).

    Raises
    ------
    ConfigError
        For a combination dask-cuda cannot run (see :func:`cuda_options`).
    ImportError
        When dask-cuda is not installed (``pip install 'qdask[gpu]'``).

    Examples
    --------
    >>> cluster = start_cuda_cluster(ClusterConfig(protocol="ucx"),
    ...                              MultiGPUConfig(num_gpus=1, enable_nvlink=True))  # doctest: +SKIP
    """
    opts = cuda_options(config, gpu, gpus)
    cls = _cuda_cluster_class()
    kwargs = opts.cluster_kwargs(local_directory=local_directory, security=security)
    kwargs.update(cluster_kwargs)
    logger.info(
        "Starting %d GPU worker(s) on GPU(s) %s over %s",
        len(opts.devices), list(opts.devices), kwargs["protocol"] or "tcp",
    )  # fmt: skip
    cluster = cls(**kwargs)
    try:
        with Client(cluster, set_as_default=False) as c:
            c.wait_for_workers(len(opts.devices), timeout=120)
    except BaseException:
        cluster.close()
        raise
    return cluster
