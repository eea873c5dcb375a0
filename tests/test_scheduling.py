"""Resource-aware placement, fail-fast, bounded waits and load balancing.

Everything here is decided on the scheduler, so the tests run in one process
(``gen_cluster``, as distributed's own tests do): a ``Scheduler`` with qdask's
scheduler plugin and ``Worker``s with qdask's worker plugin, whose discovery
advertises the ``quantum`` and ``statevector_bytes`` resources and the
capabilities (``max_qubits``) as it does on a real cluster. A worker joins
mid-test with ``async with Worker(s.address, ...)``, where a real cluster scaled
up. Nothing here needs a process of its own (kills, forkserver, MPI and TLS are
tested in tests/test_cluster.py, test_fault*.py, test_mpi.py, test_security.py).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

import dask
import pytest
from distributed import Client, Worker, get_worker
from distributed.scheduler import NoValidWorkerError
from distributed.utils_test import async_poll_for, gen_cluster

from qdask import LoadBalancerConfig
from qdask.deploy import spec
from qdask.scheduler.placement import UnsatisfiableError, requirements
from qdask.worker.discovery import QUANTUM, STATEVECTOR_BYTES

GiB = 2**30

#: In-process workers share this process's memory: Dask's memory monitor would
#: compare the whole test process with each worker's limit (and pause them).
#: The limits stay: discovery derives the state-vector budget from them.
NO_MEMORY_MANAGEMENT = {f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause", "terminate")}


def worker(memory: int = GiB, role: str = "quantum") -> dict[str, Any]:
    """Keyword arguments of a single-threaded qdask worker (as ``QuantumCluster`` starts them)."""
    return {"nthreads": 1, "memory_limit": memory, "plugins": spec.worker_plugins(role)}


def quantum_cluster(*workers: dict[str, Any], config: dict[str, Any] | None = None) -> Callable:
    """``gen_cluster(client=True)`` with qdask's scheduler plugin and the given ``worker()`` s.

    The test gets ``(c, s, *workers)``. The scheduler plugin holds the
    cluster's state (event store, balancer), so each run (each parameter of a
    parametrized test) gets a new one, installed at scheduler construction as
    ``QuantumCluster`` installs it.
    """
    nthreads = [("127.0.0.1", w["nthreads"], {k: v for k, v in w.items() if k != "nthreads"}) for w in workers]

    def decorator(func: Callable) -> Callable:
        def run(*args: Any, **kwargs: Any) -> Any:
            return gen_cluster(
                client=True,
                nthreads=nthreads,
                scheduler_kwargs={"plugins": spec.scheduler_plugins()},
                config={**NO_MEMORY_MANAGEMENT, **(config or {})},
            )(func)(*args, **kwargs)

        # What pytest injects: the test's parameters after the cluster's (as gen_cluster does).
        sig = inspect.signature(func)
        run.__signature__ = sig.replace(parameters=list(sig.parameters.values())[2 + len(workers) :])  # type: ignore[attr-defined]
        run.__name__, run.__qualname__, run.__doc__ = func.__name__, func.__qualname__, func.__doc__
        run.__module__ = func.__module__
        return run

    return decorator


def where(delay: float = 0.0) -> str:
    time.sleep(delay)
    return get_worker().address


# Tasks that wait in a worker thread until the test lets them go, and what ran in
# which order (the in-process workers run this module's functions: they share these).
RELEASE = threading.Event()
RAN: list[str] = []


def hold() -> str:
    RELEASE.wait(30)
    return get_worker().address


def record(block: bool = False) -> None:
    if block:
        RELEASE.wait(30)
    RAN.append(str(get_worker().get_current_task()))


async def resources(c: Client) -> dict[str, dict[str, Any]]:
    """``QuantumCluster.resources()`` rows by worker address."""
    return {r["worker"]: r for r in await c.scheduler.qdask_resources()}


async def start_balancer(c: Client, **config: Any) -> dict[str, Any]:
    """What ``QuantumCluster.start_load_balancer`` asks of the scheduler."""
    return await c.scheduler.qdask_balancer_configure(config=LoadBalancerConfig(**config).to_dict())


def test_requirements_from_annotations():
    assert requirements({"qubits": 20}) == {QUANTUM: 1, STATEVECTOR_BYTES: 8 * 2**20}
    assert requirements({"qubits": 20, "work": "state"})[STATEVECTOR_BYTES] == 2 * 8 * 2**20
    assert requirements({"gpu": 1}) == {"gpu": 1.0}


# One small (1 GiB: 26 qubits) and one big (4 GiB: 28 qubits) worker.
HETERO = (worker(GiB), worker(4 * GiB))


@quantum_cluster(*HETERO)
async def test_placement_by_memory_fit_and_best_fit(c, s, small, big):
    caps = {w: r["max_qubits"] for w, r in (await resources(c)).items()}
    assert caps == {small.address: 26, big.address: 28}
    with dask.annotate(qdask={"qubits": 27}):
        wide = c.submit(where, pure=False)
    assert await wide == big.address  # only the big worker holds 27 qubits
    with dask.annotate(qdask={"qubits": 10}):
        narrow = c.submit(where, pure=False)
    assert await narrow == small.address  # both idle: the smallest that fits wins


@quantum_cluster(*HETERO, config={"qdask.scheduler.no-worker-timeout": "30s"})
async def test_unsatisfiable_request_fails_fast_with_a_clear_error(c, s, small, big):
    t0 = time.monotonic()
    with dask.annotate(qdask={"qubits": 40}):
        fut = c.submit(where, pure=False)
    with pytest.raises(UnsatisfiableError) as info:
        await fut
    # Judged on arrival, not after the no-worker timeout (which would raise NoValidWorkerError).
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert "statevector_bytes=8.00 TiB" in msg and "workers offer" in msg and "Fix:" in msg
    plain = c.submit(where, resources={"QPU": 1}, pure=False)
    with pytest.raises(UnsatisfiableError, match="QPU=1"):
        await plain


@quantum_cluster(*HETERO, config={"qdask.scheduler.no-worker-timeout": "1s"})
async def test_waiting_tasks_fail_after_capable_workers_leave(c, s, small, big):
    RELEASE.clear()
    with dask.annotate(qdask={"qubits": 27}):
        running = c.submit(hold, pure=False)
        waiting = c.submit(hold, pure=False)
    try:
        # Retire only once both are on the scheduler, one running on the big worker: they
        # were satisfiable when they arrived (else they fail fast with UnsatisfiableError).
        await async_poll_for(
            lambda: (
                waiting.key in s.tasks
                and running.key in big.state.tasks
                and big.state.tasks[running.key].state == "executing"
            ),
            timeout=10,
        )
        assert s.tasks[waiting.key].state == "processing"
        await c.retire_workers([big.address])  # gracefully retire the only capable worker
        assert big.address not in s.workers
        assert s.tasks[waiting.key].state == "no-worker"  # it waits for a capable worker to return...
        with pytest.raises(NoValidWorkerError):  # ...up to the no-worker timeout, then fails
            await asyncio.wait_for(waiting, 20)
    finally:
        RELEASE.set()
    await c.cancel(running)


@quantum_cluster(worker(GiB))
async def test_priority_class_annotation_reaches_the_queue(c, s, a):
    RELEASE.clear()
    RAN.clear()
    with dask.annotate(qdask={"qubits": 10}):
        blocker = c.submit(record, True, pure=False, key="blocker")
        low = [c.submit(record, pure=False, key=f"low-{i}") for i in range(5)]
    with dask.annotate(qdask={"qubits": 10, "priority": "high"}):
        high = c.submit(record, pure=False, key="high-0")  # submitted last, in a later graph
    try:
        # All of them wait on the worker behind the blocker: the order is the queue's.
        await async_poll_for(lambda: {"high-0", *(f.key for f in low)} <= set(a.state.tasks), timeout=10)
    finally:
        RELEASE.set()
    await c.gather([blocker, *low, high])
    assert s.tasks["high-0"].priority < s.tasks["low-0"].priority  # smaller tuple runs first
    # The high one ran next, before every low one submitted ahead of it.
    assert RAN[:2] == ["blocker", "high-0"] and sorted(RAN[2:]) == [f"low-{i}" for i in range(5)]


def held(delay: float) -> str:
    """``where``, once the test lets the batch go."""
    RELEASE.wait(30)
    return where(delay)


async def run_with_joining_worker(
    c: Client, s, *, moves: bool, n: int = 16, delay: float = 0.05
) -> tuple[list[str], str]:
    """Submit ``n`` tasks to the one worker, let a second worker join mid-batch; where each ran.

    The batch is held until the new worker runs (its first task blocks the only
    thread, the others wait on that worker), and, where work ``moves``, until the
    new worker was given some; then each task takes ``delay``, a window in which
    the balancer's periodic passes run as well.
    """
    RELEASE.clear()
    with dask.annotate(qdask={"qubits": 10}):
        futures = [c.submit(held, delay, pure=False) for _ in range(n)]
    try:
        await async_poll_for(lambda: sum(len(ws.processing) for ws in s.workers.values()) == n, timeout=10)
        async with Worker(s.address, **worker(GiB)) as new:
            if moves:
                await async_poll_for(lambda: s.workers[new.address].processing, timeout=10)
            RELEASE.set()
            ran_on = await c.gather(futures)
    finally:
        RELEASE.set()
    return ran_on, new.address


@pytest.mark.parametrize("algorithm", ["dynamic", "static"])
@quantum_cluster(worker(GiB))
async def test_worker_joining_mid_batch_gets_work_only_when_dynamic(c, s, a, algorithm):
    await start_balancer(c, algorithm=algorithm, check_interval="200ms")
    ran_on, new = await run_with_joining_worker(c, s, moves=algorithm == "dynamic")
    status = await c.scheduler.qdask_balancer_status()
    if algorithm == "dynamic":
        assert ran_on.count(new) > 0 and status["stealing_active"]
        assert status["dask_steals"] + status["migrations"] > 0
    else:
        assert ran_on.count(new) == 0 and not status["stealing_active"]
    await c.scheduler.qdask_balancer_stop()
    assert (await c.scheduler.qdask_balancer_status())["stealing_active"]  # Dask's default stealing is back


@quantum_cluster(worker(GiB))
async def test_a_joining_worker_is_balanced_to_at_once_not_at_the_next_check(c, s, a):
    # An interval far beyond the batch: no periodic pass (qdask's or Dask's
    # stealing) runs, so only the pass the join triggers can hand work over.
    await start_balancer(c, check_interval="10min")
    ran_on, new = await run_with_joining_worker(c, s, moves=True)
    assert ran_on.count(new) > 0
    assert (await c.scheduler.qdask_balancer_stop())["migrations"] > 0


def paced(delay: float, straggler: str) -> str:
    """``where``, on a cluster where the worker ``straggler`` runs four times slower."""
    me = get_worker().address
    time.sleep(delay * (4 if me == straggler else 1))
    return me


@pytest.mark.parametrize("algorithm", ["dynamic", "static"])
@quantum_cluster(worker(GiB), worker(GiB))
async def test_a_straggler_sheds_its_queue_only_when_dynamic(c, s, slow, fast, algorithm):
    # Dynamic: the fast worker idles while a move is on its way, which costs it about one
    # task in 0.1 s; static: nothing moves however long the tasks, so shorter ones will do
    # (the fast worker still idles 0.6 s, a dozen balancer intervals, beside a loaded one).
    delay = 0.1 if algorithm == "dynamic" else 0.025
    await start_balancer(c, algorithm=algorithm, check_interval="50ms")
    with dask.annotate(qdask={"qubits": 10}):
        futures = [c.submit(paced, delay, slow.address, pure=False) for _ in range(16)]
    ran_on = await c.gather(futures)
    status = await c.scheduler.qdask_balancer_stop()
    moved = status["dask_steals"] + status["migrations"]
    # Placed evenly (8 each), as the equal occupancies say; only moves change that.
    if algorithm == "dynamic":
        # Ideal: 12.8 on the fast worker; the slow one ran ~2 by the time the fast one's 8 were done.
        assert ran_on.count(fast.address) >= 11 and moved > 0
    else:
        # Placed by occupancy as they are submitted: a task the fast worker finished meanwhile
        # (a loaded machine submits slowly) tips one or two its way, never the dynamic outcome.
        assert moved == 0 and ran_on.count(slow.address) >= 6


@quantum_cluster(*HETERO)
async def test_migration_respects_restrictions(c, s, small, big):
    await start_balancer(c, threshold=0.5, check_interval="50ms")
    with dask.annotate(qdask={"qubits": 27}):
        wide = [c.submit(where, 0.05, pure=False) for _ in range(10)]
    # The balancer ran all along (qdask's rule and Dask's stealing), the small worker idle...
    status = await c.scheduler.qdask_balancer_status()
    assert status["config"]["threshold"] == 0.5 and status["stealing_active"]
    assert set(await c.gather(wide)) == {big.address}  # ...yet it could never take them
    await c.scheduler.qdask_balancer_stop()


def chunk_states(s) -> list[tuple[str, bool]]:
    return [
        (ts.state, bool(ts.resource_restrictions)) for ts in s.tasks.values() if str(ts.key).startswith("qdask_sample_")
    ]


@quantum_cluster(worker(GiB), worker(GiB))
async def test_circuit_chunks_are_pulled_by_free_workers_and_restricted_again_when_an_incapable_one_joins(
    c, s, a, b, monkeypatch
):
    import cirq
    import tqdm

    import qdask

    # The Sampler's (disabled) progress bar starts tqdm's process-wide monitor
    # thread, which outlives the test: gen_cluster's thread-leak check would fail.
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
    RELEASE.clear()
    # Both quantum threads busy: the batch's chunks must wait somewhere.
    with dask.annotate(qdask={"qubits": 10}):
        blockers = [c.submit(hold, pure=False, key=f"blocker-{i}") for i in range(2)]
    try:
        await async_poll_for(lambda: all(len(ws.processing) == 1 for ws in s.workers.values()), timeout=10)
        q = cirq.LineQubit.range(8)
        circuits = [
            cirq.testing.random_circuit(q, 10, 0.8, random_state=i) + cirq.measure(*q, key="m") for i in range(60)
        ]

        def run_batch() -> Any:
            # qdask.Sampler drives a synchronous Client (it plans the batch with
            # blocking scheduler calls), so it runs in a thread, as a user's script would.
            with Client(s.address, set_as_default=False) as sync_client:
                return qdask.Sampler(sync_client, seed=1).run_batch(circuits, repetitions=10)

        # Below any circuit's estimate, however fast the machine: a chunk per circuit.
        with dask.config.set({"qdask.quantum.chunk-duration": "1us"}):
            pending = asyncio.create_task(asyncio.to_thread(run_batch))
            await async_poll_for(lambda: sum(st == "queued" for st, _ in chunk_states(s)) >= 50, timeout=20)
        states = chunk_states(s)
        # Every worker can run them: no restrictions, so Dask queued them on the
        # scheduler (all but the first few, sent before their group looked root-ish).
        assert not any(r for st, r in states if st == "queued")
        # Each worker holds its blocker and at least one pulled chunk: resources() counts both.
        assert all(r["used_resources"][QUANTUM] >= 2 for r in (await resources(c)).values())
        # A classical worker joins: it could not run them, so they are restricted again.
        async with Worker(s.address, **worker(GiB, role="classical")) as classical:
            assert (await resources(c))[classical.address]["role"] == "classical"
            states = chunk_states(s)
            assert sum(r for _, r in states) >= 40  # the queued ones, now sent to capable workers
            assert all(r or st in ("processing", "memory") for st, r in states)  # none left queued unrestricted
            RELEASE.set()
            results = await asyncio.wait_for(pending, 60)
            assert classical.state.executed_count == 0
        assert len(results) == 60 and not any(classical.address in r[0].metadata["workers"] for r in results)
    finally:
        RELEASE.set()
    await c.gather(blockers)
