"""``QuantumCluster``: a Dask cluster with qdask's scheduler and worker plugins."""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Any

import dask.config
from distributed import Client, LocalCluster
from distributed.security import Security

from qdask import _compat
from qdask.config import (
    ClusterConfig,
    ConfigError,
    ElasticConfig,
    FaultToleranceConfig,
    HybridConfig,
    LoadBalancerConfig,
    MonitoringConfig,
    MultiGPUConfig,
)
from qdask.deploy import elastic, forkserver, guard, mpi, nannies, spec
from qdask.deploy.card import cluster_card
from qdask.deploy.connect import connect_client
from qdask.deploy.gpu import gpu_assignment, start_cuda_cluster
from qdask.fault import client as fault
from qdask.fault.events import NetworkError, NodeFailure, QuantumError, RecoveryEvent
from qdask.fault.handlers import FailureHandlers, Handler
from qdask.monitoring import client as monitoring
from qdask.monitoring.results import AnalysisResult, DetailedMetrics, ErrorStatistics, ResourceMetrics
from qdask.resources import detect_gpus
from qdask.scheduler import balancer
from qdask.scheduler.plugin import NAME as SCHEDULER_PLUGIN
from qdask.table import RESOURCES_SUMMARY, Table

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class QuantumCluster:
    """A Dask cluster that runs quantum circuits next to classical tasks.

    Parameters
    ----------
    config : ClusterConfig, optional
        Shape of the embedded cluster; defaults come from ``qdask.cluster.*``.
    hybrid : HybridConfig, optional
        Explicit classical and quantum worker groups.
    gpu : MultiGPUConfig, optional
        Start GPU workers through dask-cuda's ``LocalCUDACluster`` instead, one
        per GPU (see :mod:`qdask.deploy.gpu`; needs ``pip install 'qdask[gpu]'``).
    address : str, optional
        Attach to a running scheduler (``dask scheduler --preload
        qdask.plugins.scheduler``) instead of starting one.
    security : distributed.Security, optional
        TLS settings; ``protocol="tls"`` without it uses temporary certificates.
    **cluster_kwargs
        Passed on to ``LocalCluster`` (e.g. ``silence_logs``).

    Examples
    --------
    >>> with QuantumCluster(ClusterConfig(num_nodes=2)) as qc:  # doctest: +SKIP
    ...     client = qc.get_client()
    ...     print(qc.resources())
    """

    def __init__(
        self,
        config: ClusterConfig | None = None,
        *,
        hybrid: HybridConfig | None = None,
        gpu: MultiGPUConfig | None = None,
        address: str | None = None,
        security: Security | None = None,
        **cluster_kwargs: Any,
    ) -> None:
        self.config = config if config is not None else ClusterConfig()
        self.hybrid = hybrid
        self.gpu = gpu
        if gpu is not None and (hybrid is not None or address is not None):
            raise ValueError(
                "QuantumCluster(gpu=...) starts its own GPU workers and takes neither hybrid= nor "
                "address=. Fix: drop one; for classical and quantum groups with GPUs use "
                "HybridConfig(gpu_per_node=N); to add GPU workers to a running scheduler use "
                "qdask.deploy.gpu.cuda_options(config, gpu).worker_command(address)."
            )
        self.cluster: LocalCluster | None = None
        self._client: Client | None = None
        self._tmpdir: str | None = None
        self._failure_handlers: FailureHandlers | None = None
        self._elastic: elastic.ElasticScaling | None = None
        if address is not None:
            self.security = security
            self._client = connect_client(address, security)
            self._ensure_plugins(self._client)
            self._monitor_if_configured()
            return
        if self.config.protocol != "inproc" and dask.config.get(forkserver.METHOD_KEY) != "fork":
            # Before any process starts: an unguarded script would otherwise hang (see guard.py).
            guard.check_main_guarded("QuantumCluster()")
        self.security = self._security(security)
        self._tmpdir = tempfile.mkdtemp(prefix="qdask-")
        try:
            if gpu is None:
                self.cluster = self._start_local(**cluster_kwargs)
            else:
                self.cluster = start_cuda_cluster(
                    self.config, gpu, local_directory=self._tmpdir, security=self.security, **cluster_kwargs
                )
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        self._monitor_if_configured()

    @classmethod
    def from_mpi(cls, config: ClusterConfig | None = None, **mpi_kwargs: Any) -> QuantumCluster:
        """Start qdask across the ranks of ``mpiexec`` and attach to it on the client rank.

        Rank 0 becomes the scheduler, ranks 2 and up the workers; they serve
        until the client rank's process exits and never return from this call.
        Rank 1 gets the cluster once every worker has registered.

        Parameters
        ----------
        config : ClusterConfig, optional
            Shape of the cluster (see :func:`qdask.deploy.mpi.initialize`).
        **mpi_kwargs
            Passed on to :func:`qdask.deploy.mpi.initialize` (``interface``,
            ``local_directory``, ``comm``, ...).

        Examples
        --------
        In ``script.py``, run as ``mpiexec -n 4 python script.py``:

        >>> qc = QuantumCluster.from_mpi(ClusterConfig())  # doctest: +SKIP
        >>> len(qc.resources())  # doctest: +SKIP
        2
        """
        mpi.initialize(config, exit=True, **mpi_kwargs)
        qc = cls(config, address=dask.config.get("scheduler_address"))
        try:
            qc.get_client().wait_for_workers(mpi.worker_ranks(mpi_kwargs.get("comm")), timeout=120)
        except BaseException:
            qc.close()
            raise
        return qc

    # -- construction ------------------------------------------------------------
    def _security(self, security: Security | None) -> Security | None:
        if security is None and self.config.protocol == "tls":
            return Security.temporary()
        return security

    def _start_local(self, **cluster_kwargs: Any) -> LocalCluster:
        lay = spec.layout(self.config, self.hybrid)
        inproc = self.config.protocol == "inproc"
        protocol = self.config.protocol or ("tls" if self.security else None)
        # The cluster's optimization level lives on its scheduler (docs/hybrid.md).
        level = self.hybrid.optimization_level if self.hybrid is not None else None
        kwargs: dict[str, Any] = dict(
            n_workers=lay.quantum,
            threads_per_worker=lay.threads_per_node,
            memory_limit=lay.memory_per_node,
            processes=not inproc,
            host=None if inproc else LOOPBACK,
            protocol=protocol,
            security=self.security,
            dashboard_address=f"{LOOPBACK}:0",
            local_directory=self._tmpdir,
            scheduler_kwargs={"plugins": spec.scheduler_plugins(level)},
            plugins=spec.worker_plugins("quantum", local=True),
        )
        if not inproc:
            kwargs["worker_class"] = nannies.QuantumNanny  # a worker's close cannot hang
        kwargs.update(cluster_kwargs)
        devices = self._gpu_devices(lay, inproc)
        if devices:
            kwargs["n_workers"] = 0  # quantum workers added below, each with its own GPUs
        elif not inproc:
            forkserver.use_preloaded_forkserver()
        cluster = LocalCluster(**kwargs)
        try:
            template = cluster.new_spec
            for i, visible in enumerate(devices):
                # The Nanny starts the worker process with this environment: discovery
                # (NVML) and CUDA then see only this worker's GPUs.
                options = {**template["options"], "env": {"CUDA_VISIBLE_DEVICES": visible}}
                cluster.worker_spec[f"quantum-{i}"] = {"cls": template["cls"], "options": options}
            for i in range(lay.classical):
                options = {**template["options"], "plugins": spec.worker_plugins("classical")}
                cluster.worker_spec[f"classical-{i}"] = {"cls": template["cls"], "options": options}
            if devices or lay.classical:
                cluster.scale(len(cluster.worker_spec))
            with Client(cluster, set_as_default=False) as c:
                c.wait_for_workers(lay.total, timeout=120)
        except BaseException:
            cluster.close()
            raise
        return cluster

    @staticmethod
    def _gpu_devices(lay: spec.Layout, inproc: bool) -> list[str]:
        """``CUDA_VISIBLE_DEVICES`` per quantum worker for ``HybridConfig(gpu_per_node=N)``; [] without GPUs."""
        if not lay.gpu_per_node:
            return []
        if inproc:
            raise ConfigError(
                "HybridConfig", "gpu_per_node", lay.gpu_per_node,
                "0 with protocol 'inproc' (threads of one process cannot see different GPUs)",
                "use protocol 'tcp' (the default), or HybridConfig(gpu_per_node=0).",
            )  # fmt: skip
        return gpu_assignment(lay, detect_gpus())

    @staticmethod
    def _ensure_plugins(client: Client) -> None:
        """Install qdask on a scheduler that was started without the preload."""

        def has_qdask(dask_scheduler: Any) -> bool:
            return SCHEDULER_PLUGIN in dask_scheduler.plugins

        if not client.run_on_scheduler(has_qdask):
            logger.info(
                "Scheduler at %s has no qdask preload; registering the qdask plugins "
                "(start it with `dask scheduler --preload qdask.plugins.scheduler` to skip this)",
                client.scheduler.address,
            )
            for plugin in spec.scheduler_plugins():
                client.register_plugin(plugin)
            for wplugin in spec.worker_plugins("quantum"):
                client.register_plugin(wplugin)

    # -- access ------------------------------------------------------------------
    @property
    def scheduler_address(self) -> str:
        """The scheduler's address (``tcp://127.0.0.1:PORT`` for the embedded cluster).

        Examples
        --------
        >>> qc.scheduler_address  # doctest: +SKIP
        'tcp://127.0.0.1:40123'
        """
        if self.cluster is not None:
            return self.cluster.scheduler_address
        assert self._client is not None
        return self._client.scheduler.address

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's address (qdask's page is ``/qdask`` under it), or None without Bokeh.

        Examples
        --------
        >>> qc.dashboard_link  # doctest: +SKIP
        'http://127.0.0.1:8787/status'
        """
        client = self.get_client()
        return client.dashboard_link

    def get_client(self) -> Client:
        """The client of this cluster (one per ``QuantumCluster``, created on first use).

        Examples
        --------
        >>> client = qc.get_client()  # doctest: +SKIP
        >>> client.submit(sum, [1, 2]).result()  # doctest: +SKIP
        3
        """
        if self._client is None:
            assert self.cluster is not None
            self._client = Client(self.cluster, security=self.security)
        return self._client

    def resources(self) -> Table:
        """Per-worker capabilities and what is in use now, as a table.

        Columns: worker, name, role, nthreads, memory_limit, max_qubits, qsim
        build, GPUs, resources (total) and used_resources, and more. ``print()``
        shows a compact form within 100 columns in human units (slots and
        state-vector bytes as used/total); ``to_frame()`` every field.

        Examples
        --------
        >>> print(qc.resources())  # doctest: +SKIP
        worker                 name  role     threads  memory    qubits  gpus  slots  statevector ...
        tcp://127.0.0.1:33243  1     quantum  1        11.77 GiB 30      0     0/1    0 B/8.83 GiB ...
        >>> qc.resources().to_frame().set_index("name")["max_qubits"]  # doctest: +SKIP
        """
        client = self.get_client()
        rows = client.sync(client.scheduler.qdask_resources)
        return Table(rows, summary=RESOURCES_SUMMARY)

    def registry_events(self) -> list[dict[str, Any]]:
        """Joins and leaves seen by the scheduler: dicts of ``time``, ``action``
        ("join", "leave", "capabilities"), ``worker``, ``cause`` and ``tasks`` (running at a leave).

        Examples
        --------
        >>> [(e["action"], e["worker"]) for e in qc.registry_events()]  # doctest: +SKIP
        [('join', 'tcp://127.0.0.1:40213'), ('capabilities', 'tcp://127.0.0.1:40213')]
        """
        client = self.get_client()
        return client.sync(client.scheduler.qdask_registry_events)

    # -- scheduling (qdask.scheduler) ----------------------------------------------
    def start_load_balancer(self, config: LoadBalancerConfig | None = None) -> balancer.LoadBalancing:
        """Balance queued circuit work across workers (Dask work stealing, extended).

        Calling it again reconfigures. ``algorithm="static"`` stops migration.

        Parameters
        ----------
        config : LoadBalancerConfig, optional
            Defaults from ``qdask.load-balancer.*``.

        Returns
        -------
        qdask.scheduler.balancer.LoadBalancing
            Handle with ``.config``, ``.status()`` (migrations, steals) and ``.stop()``.

        Examples
        --------
        >>> lb = qc.start_load_balancer(LoadBalancerConfig(threshold=0.6, check_interval="500ms"))  # doctest: +SKIP
        >>> lb.status()["migrations"]  # doctest: +SKIP
        """
        return balancer.start(self.get_client(), config)

    # -- elastic scaling (qdask.deploy.elastic) ------------------------------------
    def enable_elastic_scaling(
        self, config: ElasticConfig | None = None, *, cluster: Any = None, **adaptive_kwargs: Any
    ) -> elastic.ElasticScaling:
        """Grow and shrink the cluster with its queued quantum work (Dask's ``Adaptive``).

        The target is the number of nodes that drains the cost model's
        estimated seconds of unfinished circuit tasks within
        ``target_duration``; each step multiplies or divides the node count by
        ``scale_factor``, within ``[min_nodes, max_nodes]``, at most once per
        ``cooldown_period`` in each direction. Only idle workers leave, after
        Dask copied the results they hold. Calling it again reconfigures. See
        ``docs/elastic.md``.

        Parameters
        ----------
        config : ElasticConfig, optional
            Defaults from ``qdask.elastic.*``.
        cluster : distributed.deploy.Cluster, optional
            The cluster manager to scale; needed when this ``QuantumCluster``
            was attached by ``address`` (e.g. dask-jobqueue's ``SLURMCluster``).
        **adaptive_kwargs
            Passed on to Dask's ``Adaptive``: ``interval``, ``wait_count``.

        Returns
        -------
        qdask.deploy.elastic.ElasticScaling
            Handle with ``.config``, ``.events()`` (time, from, to, reason) and ``.stop()``.

        Examples
        --------
        >>> es = qc.enable_elastic_scaling(ElasticConfig(min_nodes=1, max_nodes=4,  # doctest: +SKIP
        ...                                              cooldown_period="10s"))
        >>> [(e.kind, e.from_nodes, e.to_nodes) for e in es.events()]  # doctest: +SKIP
        [('scale_up', 1, 2), ('scale_up', 2, 4), ('scale_down', 4, 2), ('scale_down', 2, 1)]
        >>> es.stop()  # doctest: +SKIP
        """
        # Read before looking at the manager, so a bad qdask.elastic.* setting
        # fails with its ConfigError first.
        cfg = config if config is not None else ElasticConfig()
        manager = cluster if cluster is not None else self.cluster
        if manager is None:
            raise ValueError(
                f"this QuantumCluster is attached to {self.scheduler_address} and cannot start or stop its "
                "workers. Fix: pass the cluster manager that can, e.g. "
                "qc.enable_elastic_scaling(config, cluster=slurm_cluster)."
            )
        self._elastic = elastic.enable(manager, cfg, **adaptive_kwargs)
        return self._elastic

    # -- monitoring (qdask.monitoring) ---------------------------------------------
    def _monitor_if_configured(self) -> None:
        if self.config.enable_monitoring:
            try:
                self.start_monitoring()
            except BaseException:
                self.close()
                raise

    def start_monitoring(self, config: MonitoringConfig | None = None) -> monitoring.Monitoring:
        """Sample metrics on the scheduler, log them and trace circuit tasks.

        Calling it again reconfigures the running monitor. See ``docs/monitoring.md``.

        Parameters
        ----------
        config : MonitoringConfig, optional
            Sampling interval, JSON-lines log, Chrome trace; defaults from ``qdask.monitoring.*``.

        Returns
        -------
        qdask.monitoring.Monitoring
            Handle with ``.config``, ``.samples()`` and ``.stop()``.

        Examples
        --------
        >>> mon = qc.start_monitoring(MonitoringConfig(sampling_interval="100ms",  # doctest: +SKIP
        ...                                            enable_tracing=True, trace_file="trace.json"))
        >>> mon.stop()  # doctest: +SKIP
        """
        return monitoring.start(self.get_client(), config)

    def metrics(self, window: float | str | None = None) -> ResourceMetrics:
        """Node and quantum utilization (percent) and network bandwidth (bytes/s).

        Averaged over the samples of the last ``window`` (default
        ``qdask.monitoring.window``); a reading taken now when monitoring is off.

        Examples
        --------
        >>> qc.metrics().quantum_utilization  # doctest: +SKIP
        87.5
        """
        return monitoring.metrics(self.get_client(), window)

    def detailed_metrics(self, window: float | str | None = None) -> DetailedMetrics:
        """Cluster totals (load, bandwidth, latency, memory, CPU, ...) and per-worker detail.

        Examples
        --------
        >>> d = qc.detailed_metrics()  # doctest: +SKIP
        >>> d.active_nodes, d.latency  # doctest: +SKIP
        (2, 0.0011)
        """
        return monitoring.detailed_metrics(self.get_client(), window)

    def error_statistics(self) -> ErrorStatistics:
        """Node failures, network and quantum errors, mean recovery time since the scheduler started.

        Examples
        --------
        >>> qc.error_statistics().node_failures  # doctest: +SKIP
        0
        """
        return monitoring.error_statistics(self.get_client())

    def analyze(self, window: float | str | None = None) -> AnalysisResult:
        """Bottlenecks in the recent samples, with a recommendation for each.

        Examples
        --------
        >>> for b in qc.analyze().bottlenecks:  # doctest: +SKIP
        ...     print(b.message, "->", b.recommendation)
        """
        return monitoring.analyze(self.get_client(), window)

    # -- fault tolerance (qdask.fault) ---------------------------------------------
    def enable_fault_tolerance(self, config: FaultToleranceConfig | None = None) -> fault.FaultTolerance:
        """Replicas, checkpoints, a failure limit per task and the recovery mode.

        Calling it again reconfigures; ``stop()`` on the handle goes back to
        Dask's defaults. See ``docs/fault-tolerance.md``.

        Parameters
        ----------
        config : FaultToleranceConfig, optional
            Defaults from ``qdask.fault-tolerance.*``; ``checkpoint_url=None``
            stores checkpoints in a private per-user directory,
            ``<temporary-directory>/qdask-checkpoints-<uid>`` (mode 0700).

        Returns
        -------
        qdask.fault.client.FaultTolerance
            Handle with ``.config``, ``.checkpoints``, ``.held()``, ``.resubmit()``,
            ``.cancel()`` and ``.stop()``.

        Examples
        --------
        >>> ft = qc.enable_fault_tolerance(FaultToleranceConfig(  # doctest: +SKIP
        ...     replication_factor=2, checkpoint_url="file:///data/qdask-ckpt", max_failures=3))
        >>> ft.stop()  # doctest: +SKIP
        """
        return fault.enable(self.get_client(), config)

    def _handlers(self) -> FailureHandlers:
        if self._failure_handlers is None:
            self._failure_handlers = FailureHandlers(self.get_client())
        return self._failure_handlers

    def on_node_failure(self, handler: Handler) -> Handler:
        """Call ``handler(event)`` with a :class:`~qdask.fault.NodeFailure` whenever a worker dies.

        Handlers run in the client process, one at a time, in a thread of their
        own; one that raises is logged. Returns ``handler``, so it also works as
        a decorator.

        Examples
        --------
        >>> @qc.on_node_failure  # doctest: +SKIP
        ... def lost(event):
        ...     print(event.worker, event.cause, len(event.keys), event.recovery.rescheduled)
        """
        return self._handlers().add(NodeFailure.kind, handler)

    def on_network_error(self, handler: Handler) -> Handler:
        """Call ``handler(event)`` with a :class:`~qdask.fault.NetworkError` for failed comms
        and transfers (see :meth:`on_node_failure`).

        Examples
        --------
        >>> @qc.on_network_error  # doctest: +SKIP
        ... def comm(event):
        ...     print(event.cause, event.worker, event.peers)
        """
        return self._handlers().add(NetworkError.kind, handler)

    def on_quantum_error(self, handler: Handler) -> Handler:
        """Call ``handler(event)`` with a :class:`~qdask.fault.QuantumError` when a backend fails
        on a circuit: out of memory, rejected circuit, other error (see :meth:`on_node_failure`).

        Examples
        --------
        >>> @qc.on_quantum_error  # doctest: +SKIP
        ... def failed(event):
        ...     print(event.cause, event.backend, event.circuit, event.detail)
        """
        return self._handlers().add(QuantumError.kind, handler)

    def on_recovery(self, handler: Handler) -> Handler:
        """Call ``handler(event)`` with a :class:`~qdask.fault.RecoveryEvent` once every task a
        worker's death affected runs again, with the recovery time (see :meth:`on_node_failure`).

        Examples
        --------
        >>> @qc.on_recovery  # doctest: +SKIP
        ... def recovered(event):
        ...     print(f"{event.worker}: work running again after {event.duration:.1f} s")
        """
        return self._handlers().add(RecoveryEvent.kind, handler)

    # -- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        """Close the client and, for an embedded cluster, every worker and the scheduler.

        Leaves no child process, thread or temporary file behind. The context
        manager calls it on exit.

        Examples
        --------
        >>> qc = QuantumCluster()  # doctest: +SKIP
        >>> qc.close()  # doctest: +SKIP
        """
        if self._elastic is not None:
            # Before the workers go, so the adaptive loop cannot resize the cluster as it closes.
            self._elastic.stop()
            self._elastic = None
        if self._failure_handlers is not None:
            self._failure_handlers.close()
            self._failure_handlers = None
        if self._client is not None and (ft := fault.active(self._client)) is not None:
            ft.stop()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> QuantumCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.cluster is None and self._client is None:
            return "<QuantumCluster closed>"
        return f"<QuantumCluster {self.scheduler_address}>"

    def _repr_html_(self) -> str:
        """Dask's cluster card (Jupyter): workers, quantum slots, memory, GPUs and the dashboard link."""
        if self.cluster is None and self._client is None:
            return "<p>QuantumCluster (closed)</p>"
        client = self.get_client()
        return cluster_card(
            scheduler_address=self.scheduler_address,
            dashboard_link=self.dashboard_link,
            workers=_compat.scheduler_workers(client),
            resources=list(self.resources()),
        )

