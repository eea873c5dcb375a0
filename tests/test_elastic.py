"""Elastic scaling on real local clusters: a burst grows 1 -> 2 -> 4, idle returns to
``min_nodes``, and no result is lost or recomputed across the scale events."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import cirq
import dask
import pytest
import qsimcirq
from _polling import wait_for
from distributed import Event, WorkerPlugin, wait

import qdask
from qdask import ClusterConfig, ConfigError, ElasticConfig, QuantumCluster
from qdask._compat import scheduler_workers
from qdask.deploy.elastic import ElasticAdaptive, ScalingEvent, enable, next_size
from qdask.monitoring.events import EventStore
from qdask.scheduler.elastic import ElasticSupport, desired_nodes
from qdask.worker.discovery import QUANTUM

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(40)

SEED = 2024
COOLDOWN = 2.0
REPETITIONS = 50
# 21 qubits: several seconds of work for one node, so the burst outlasts the
# first step and its cooldown even where a new worker starts in 0.2 s (forked
# with cirq imported, qdask.deploy.forkserver); at 16 qubits the second node
# was done with all of it before the cooldown ended, and the cluster never
# stepped to 4. Built by the burst, not at import: every pytest-xdist worker imports this module.
BURST_SIZE = 60


def burst_circuits() -> list[cirq.Circuit]:
    q = cirq.LineQubit.range(21)
    return [cirq.testing.random_circuit(q, n_moments=16, op_density=0.8, random_state=s) + cirq.measure(*q, key="m")
            for s in range(BURST_SIZE)]
EXECUTIONS = "qdask-test-executions"


class ExecutionLog(WorkerPlugin):
    """Reports each task execution to the scheduler, so runs on since-retired workers still count."""

    name = EXECUTIONS
    idempotent = True

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish == "executing":
            self.worker.log_event(EXECUTIONS, {"key": str(key), "worker": self.worker.address})


# -- pure logic ----------------------------------------------------------------------
def test_steps_multiply_by_the_factor_and_never_pass_the_target():
    assert [next_size(n, 4, 2.0) for n in (1, 2, 4)] == [2, 4, 4]
    assert [next_size(n, 1, 2.0) for n in (4, 3, 2, 1)] == [2, 2, 1, 1]  # never by more than the factor
    assert next_size(1, 3, 2.0) == 2 and next_size(2, 3, 2.0) == 3  # capped at the target
    assert [next_size(n, 10, 1.5) for n in (1, 2, 3, 4)] == [2, 3, 4, 6]  # at least one node per step
    assert next_size(0, 1, 2.0) == 1


def test_nodes_follow_estimated_seconds_not_task_counts():
    assert desired_nodes(1.0, 100, 5.0, 1) == 1  # a hundred tiny circuits: one node
    assert desired_nodes(40.0, 10, 5.0, 1) == 8  # ten long ones: eight
    assert desired_nodes(40.0, 10, 5.0, 2) == 4  # two slots per node halve it
    assert desired_nodes(40.0, 3, 5.0, 1) == 3  # but no more nodes than tasks to run
    assert desired_nodes(0.0, 0, 5.0, 1, fixed=2) == 2  # classical workers are kept, not sized


def test_scaling_events_keep_from_to_and_count_nodes():
    store = EventStore()
    support = ElasticSupport(None, store)  # recording needs no scheduler
    support.record("scale_up", 2, 4, "12.0 s of queued circuit work", when=1.0)
    support.record("scale_down", 4, 1, "idle", when=2.0)
    store.record("migration", worker="tcp://127.0.0.1:1")  # not a scaling event
    events = [ScalingEvent.from_event(e) for e in support.history()]
    assert events == [ScalingEvent(1.0, "scale_up", 2, 4, "12.0 s of queued circuit work"),
                      ScalingEvent(2.0, "scale_down", 4, 1, "idle")]
    assert store.totals["scale_up"] == 2 and store.totals["scale_down"] == 3  # nodes, for Prometheus
    assert [e.kind for e in map(ScalingEvent.from_event, support.history(since=1.5))] == ["scale_down"]
    with pytest.raises(ValueError, match="scaling kind"):
        support.record("migration", 1, 2, "no")


# -- on a real cluster --------------------------------------------------------------
@pytest.fixture(scope="module")
def qc():
    """One node, shared: every test leaves it at one node with elastic scaling stopped."""
    with QuantumCluster(ClusterConfig(num_nodes=1, memory_per_node="1GiB")) as cluster:
        yield cluster


def _hold(name: str) -> int:
    Event(name).wait()
    return 1


def _unfinished(dask_scheduler: Any) -> int:
    return sum(ts.state in ("queued", "processing", "no-worker") for ts in dask_scheduler.tasks.values())


def test_scheduler_sizes_by_estimated_seconds(qc):
    client = qc.get_client()
    release = Event("qdask-test-release", client=client)
    futures = []
    # Two long circuits, twenty short ones and a classical task, all held unfinished.
    for i, est in enumerate([3.0, 3.0] + [0.01] * 20):
        with dask.annotate(qdask={"kind": "circuit", "est_seconds": est}):
            futures.append(client.submit(_hold, release.name, key=f"held-circuit-{i}", pure=False))
    futures.append(client.submit(_hold, release.name, key="held-classical", pure=False))
    try:
        wait_for(lambda: client.run_on_scheduler(_unfinished) == len(futures), 30, what="the held tasks")
        info = client.sync(client.scheduler.qdask_elastic_target, target_duration=1.0)
        assert info["work"] == pytest.approx(6.2) and info["tasks"] == 22
        assert info["desired"] == 7  # 6.2 s / 1 s; 22 tasks would have asked for far more
        assert info["slots_per_node"] == 1 and info["fixed"] == 0
    finally:
        release.set()
    wait(futures, timeout=60)
    assert client.sync(client.scheduler.qdask_elastic_target, target_duration=1.0)["desired"] == 0


def test_min_above_max_is_rejected_through_enable_elastic_scaling(qc):
    before = qc.cluster._adaptive
    with dask.config.set({"qdask.elastic.min-nodes": 5, "qdask.elastic.max-nodes": 2}):
        with pytest.raises(ConfigError, match="min_nodes"):
            qc.enable_elastic_scaling()
    assert qc.cluster._adaptive is before  # no Adaptive was started


def test_attached_cluster_needs_its_manager(qc):
    with QuantumCluster(address=qc.scheduler_address) as attached:
        with pytest.raises(ValueError, match="cluster=slurm_cluster"):
            attached.enable_elastic_scaling(ElasticConfig(min_nodes=1, max_nodes=1))
        es = attached.enable_elastic_scaling(ElasticConfig(min_nodes=1, max_nodes=1), cluster=qc.cluster)
        try:
            assert qc.cluster._adaptive is es.adaptive and es.config.max_nodes == 1
            wait_for(lambda: es.running, 30, what="the adaptive loop to start")
        finally:
            es.stop()
        assert not es.running


def test_dask_jobqueue_manager_is_accepted_with_one_process_per_job():
    jobqueue = pytest.importorskip("dask_jobqueue")
    options = dict(cores=1, memory="1GiB", walltime="00:10:00", interface="lo",
                   worker_extra_args=["--preload", "qdask.plugins.worker"],
                   scheduler_options={"preload": ["qdask.plugins.scheduler"], "dashboard_address": "127.0.0.1:0"})
    # No SLURM here: min_nodes=0 and no work, so no job is ever submitted.
    with jobqueue.SLURMCluster(processes=1, **options) as cluster:
        es = enable(cluster, ElasticConfig(min_nodes=0, max_nodes=2), interval="100ms")
        try:
            wait_for(lambda: es.running, 30, what="the adaptive loop to start")
            assert isinstance(cluster._adaptive, ElasticAdaptive)
            assert es.events() == []
        finally:
            es.stop()
    with jobqueue.SLURMCluster(processes=2, **options) as cluster:
        with pytest.raises(ValueError, match="processes=1"):
            enable(cluster, ElasticConfig(min_nodes=0, max_nodes=2))


# -- the burst ---------------------------------------------------------------------
@dataclass
class Burst:
    circuits: list[cirq.Circuit]
    events: list[ScalingEvent]
    results: list[cirq.Result]
    result_keys: list[str]
    executions: list[dict[str, str]]  # one {"key", "worker"} per task run, in order
    removals: list[dict[str, Any]]
    workers_after: int
    plan_after: int


@pytest.fixture(scope="module")
def burst(qc: QuantumCluster) -> Burst:
    config = ElasticConfig(min_nodes=1, max_nodes=4, scale_factor=2, cooldown_period=COOLDOWN,
                           target_duration="50ms")
    client = qc.get_client()
    client.register_plugin(ExecutionLog())
    since = time.time()

    def executed() -> list[dict[str, str]]:
        return [msg for _, msg in client.get_events(EXECUTIONS)]

    # A long job holds the first node's quantum slot until the cluster has grown,
    # so the burst outlasts both steps however slowly workers start on a loaded box.
    gate = Event("qdask-test-gate", client=client)
    held = client.submit(_hold, gate.name, resources={QUANTUM: 1}, key="held-long-job", pure=False)
    wait_for(lambda: any(m["key"] == held.key for m in executed()), 60, what="the long job to start")
    es = qc.enable_elastic_scaling(config, interval="200ms", wait_count=2)
    try:
        sampler = qdask.Sampler(client, seed=SEED, simulator="qsim")
        circuits = burst_circuits()
        futures = [sampler.submit(c, repetitions=REPETITIONS) for c in circuits]
        try:
            wait_for(lambda: any(e.to_nodes == 4 for e in es.events(since)), 240, what="the step to 4 nodes")
        finally:
            gate.set()
        wait([held, *futures], timeout=300)
        # The results stay on the workers (held by `futures`) while idle workers retire.
        wait_for(lambda: es.events(since)[-1].to_nodes == 1 and len(scheduler_workers(client)) == 1,
                 180, what="the cluster to return to min_nodes")
        results = client.gather(futures)
    finally:
        es.stop()
    return Burst(
        circuits=circuits,
        events=es.events(since),
        results=results,
        result_keys=[str(f.key) for f in futures],
        executions=executed(),
        removals=[msg for t, msg in client.get_events("all") if t >= since and msg.get("action") == "remove-worker"],
        workers_after=len(scheduler_workers(client)),
        plan_after=len(qc.cluster.plan),
    )


def test_burst_grows_by_the_factor_respecting_cooldown(burst):
    ups = [e for e in burst.events if e.kind == "scale_up"]
    assert [(e.from_nodes, e.to_nodes) for e in ups] == [(1, 2), (2, 4)]
    assert ups[1].time - ups[0].time >= COOLDOWN - 0.01  # wall clock read with the cooldown's
    assert all("queued circuit work" in e.reason for e in ups)


def test_idle_returns_to_min_nodes_stepwise(burst):
    downs = [e for e in burst.events if e.kind == "scale_down"]
    steps = [(e.from_nodes, e.to_nodes) for e in downs]
    assert steps[0][0] == 4 and steps[-1][1] == 1
    assert all(old / 2 <= new < old for old, new in steps)  # by the factor at most, never below min_nodes
    for (_, new), (old, _) in zip(steps, steps[1:]):
        assert old == new  # one chain, 4 -> ... -> 1
    assert all(b.time - a.time >= COOLDOWN - 0.01 for a, b in zip(downs, downs[1:]))
    assert burst.workers_after == burst.plan_after == 1
    assert max(e.to_nodes for e in burst.events) == 4  # never above max_nodes


def test_no_result_lost_or_recomputed(burst):
    runs = Counter(m["key"] for m in burst.executions)
    assert {k: n for k, n in runs.items() if n > 1} == {}  # nothing ran twice
    assert sum(k.startswith("qdask_sample_") for k in runs) == BURST_SIZE
    assert set(burst.result_keys) <= set(runs)
    # Every leave was a retirement, and no computed result went with it ...
    assert len(burst.removals) == 3
    assert all(r["expected"] and not r["lost-computed-tasks"] for r in burst.removals)
    # ... though results computed on retired workers were still held: they were moved.
    retired = {r["worker"] for r in burst.removals}
    ran_on = {m["key"]: m["worker"] for m in burst.executions}
    assert any(ran_on[k] in retired for k in burst.result_keys)


def test_results_equal_a_serial_qsim_run(burst):
    ref = qsimcirq.QSimSimulator(seed=SEED).run_batch(burst.circuits, repetitions=REPETITIONS)
    assert burst.results == [r[0] for r in ref]
