"""``QuantumCluster``: a Dask cluster with qdask's scheduler and worker plugins."""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Any

from distributed import Client, LocalCluster
from distributed.security import Security

from qdask.config import ClusterConfig, HybridConfig
from qdask.deploy import spec
from qdask.table import Table
from qdask.scheduler.plugin import NAME as SCHEDULER_PLUGIN

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
        address: str | None = None,
        security: Security | None = None,
        **cluster_kwargs: Any,
    ) -> None:
        self.config = config if config is not None else ClusterConfig()
        self.hybrid = hybrid
        self.cluster: LocalCluster | None = None
        self._client: Client | None = None
        self._tmpdir: str | None = None
        if address is not None:
            self.security = security
            self._client = Client(address, security=security)
            self._ensure_plugins(self._client)
            return
        self.security = self._security(security)
        self._tmpdir = tempfile.mkdtemp(prefix="qdask-")
        try:
            self.cluster = self._start_local(**cluster_kwargs)
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise

    # -- construction ------------------------------------------------------------
    def _security(self, security: Security | None) -> Security | None:
        if security is None and self.config.protocol == "tls":
            return Security.temporary()
        return security

    def _start_local(self, **cluster_kwargs: Any) -> LocalCluster:
        lay = spec.layout(self.config, self.hybrid)
        inproc = self.config.protocol == "inproc"
        protocol = self.config.protocol or ("tls" if self.security else None)
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
            scheduler_kwargs={"plugins": spec.scheduler_plugins()},
            plugins=spec.worker_plugins("quantum"),
        )
        kwargs.update(cluster_kwargs)
        cluster = LocalCluster(**kwargs)
        try:
            if lay.classical:
                template = cluster.new_spec
                for i in range(lay.classical):
                    options = {**template["options"], "plugins": spec.worker_plugins("classical")}
                    cluster.worker_spec[f"classical-{i}"] = {"cls": template["cls"], "options": options}
                cluster.scale(len(cluster.worker_spec))
            with Client(cluster, set_as_default=False) as c:
                c.wait_for_workers(lay.total, timeout=120)
        except BaseException:
            cluster.close()
            raise
        return cluster

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
        if self.cluster is not None:
            return self.cluster.scheduler_address
        assert self._client is not None
        return self._client.scheduler.address

    @property
    def dashboard_link(self) -> str | None:
        client = self.get_client()
        return client.dashboard_link

    def get_client(self) -> Client:
        """The client of this cluster (one per ``QuantumCluster``, created on first use)."""
        if self._client is None:
            assert self.cluster is not None
            self._client = Client(self.cluster, security=self.security)
        return self._client

    def resources(self) -> Table:
        """Per-worker capabilities and what is in use now, as a table.

        Columns: worker, name, role, nthreads, memory_limit, max_qubits, qsim
        build, GPUs, resources (total) and used_resources.
        """
        client = self.get_client()
        rows = client.sync(client.scheduler.qdask_resources)
        return Table(rows)

    def registry_events(self) -> list[dict[str, Any]]:
        """Joins and leaves seen by the scheduler: time, action, worker, cause."""
        client = self.get_client()
        return client.sync(client.scheduler.qdask_registry_events)

    # -- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        """Close the client and, for an embedded cluster, every worker and the scheduler.

        Leaves no child process, thread or temporary file behind.
        """
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

