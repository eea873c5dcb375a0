"""The one door to Dask's, distributed's and qsimcirq's internals.

qdask relies on a few behaviours of its dependencies that are not public
API: private attributes and functions, the layout of internal state, the
names of internal callbacks and stimuli. Every such use goes through a named
function or constant here, and nowhere else (``tests/test_compat.py`` greps
``qdask/`` and ``plugins/`` for private names outside this module and fails
naming the line). Each entry says what it relies on and the version it was
read in; each has a **canary** in ``tests/test_compat.py`` that exercises the
behaviour and fails with "distributed X.Y no longer ...; qdask relies on it
for ..." when an upgrade changes it. ``make test-compat`` runs the canaries
against the newest releases the package index serves.

Read in dask/distributed 2026.7.1 and 2026.8.0, qsimcirq 0.22.1.

Heavy libraries (qsimcirq, stimcirq, Bokeh) are imported inside the functions
that use them, for start-up cost: the scheduler imports this module too.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from distributed.nanny import WorkerProcess
from distributed.scheduler import heartbeat_interval

if TYPE_CHECKING:
    from distributed import Client, Scheduler, Worker
    from distributed.scheduler import TaskPrefix, TaskState, WorkerState

__all__ = [
    "FIND_MISSING_STIMULUS",
    "QSIM_DIAGONAL_ANGLES",
    "QSIM_PRIVATE",
    "WORKER_TTL_CALLBACK",
    "WORKER_TTL_STIMULUS",
    "WorkerProcess",
    "add_dashboard_application",
    "add_suspicious",
    "asyncio_ready_queue",
    "dashboard_nav_pages",
    "dashboard_serves",
    "declare_resources_before_registration",
    "heartbeat_interval",
    "prefix_duration",
    "qsim_circuit_module",
    "qsim_control_details",
    "qsim_gate_kind",
    "qsim_has_gate_kind",
    "qsim_module_of",
    "refresh_unrunnable",
    "restore_worker_objective",
    "scheduler_workers",
    "set_no_workers_timeout",
    "set_qsim_prng",
    "set_stealing_interval",
    "set_suspicious",
    "set_worker_forkserver_preload",
    "shadow_worker_objective",
    "stim_circuit_data",
    "style_dashboard_doc",
    "user_priority",
    "with_priority",
]

# == distributed: the scheduler ======================================================

# ``TaskState.suspicious`` counts the workers that died while the task was
# processing on them: ``Scheduler.remove_worker`` adds 1 on an unexpected
# removal (before the plugins' ``remove_worker`` hook) and errs the task with
# ``KilledWorker`` once it exceeds ``distributed.scheduler.allowed-failures``.
# qdask's fault tolerance corrects the count (a chunk that only waited for a
# slot did not kill its worker) and carries it across resubmissions.
# Read in distributed 2026.7.1 (scheduler.py, ``_remove_worker``).


def add_suspicious(ts: TaskState, delta: int) -> None:
    """Add ``delta`` (may be negative) to the worker deaths Dask counts against ``ts``."""
    ts.suspicious += delta


def set_suspicious(ts: TaskState, count: int) -> None:
    """Set the worker deaths Dask counts against ``ts`` (a resubmitted task's failures so far)."""
    ts.suspicious = count


# ``Scheduler.unrunnable`` is an insertion-ordered ``{TaskState: monotonic()
# time it became no-worker}``; ``_check_unrunnable_task_timeouts`` walks it in
# order and stops at the first task younger than ``no-workers-timeout``.
# Moving a task to the end with a fresh time restarts its clock: qdask keeps
# tasks held for manual recovery clear of the timeout. Read in 2026.7.1.


def refresh_unrunnable(scheduler: Scheduler, ts: TaskState) -> None:
    """Restart ``ts``'s ``no-workers-timeout`` clock (``ts`` is in state "no-worker")."""
    scheduler.unrunnable.pop(ts, None)
    scheduler.unrunnable[ts] = monotonic()


# ``Scheduler.worker_objective(ts, ws)`` ranks the valid workers of a
# restricted or non-root-ish task; ``decide_worker_non_rootish`` and
# ``decide_worker_rootish_queuing_disabled`` look it up on the instance each
# time, so an instance attribute shadows the method (distributed has no
# placement hook for plugins: dask/distributed#7900, open, asks for a custom
# scheduler; #4864 short-circuits decide_worker in a plugin). It returns ``(start_time, nbytes)``, or
# ``(len(actors), start_time, nbytes)`` for actors. Read in 2026.7.1.


def shadow_worker_objective(scheduler: Scheduler, objective: Callable[[TaskState, WorkerState], tuple]) -> Callable:
    """Make ``scheduler`` rank workers with ``objective``; returns Dask's own method (for delegation)."""
    original = scheduler.worker_objective
    scheduler.worker_objective = objective  # type: ignore[method-assign,assignment]
    return original


def restore_worker_objective(scheduler: Scheduler) -> None:
    """Undo :func:`shadow_worker_objective` (idempotent)."""
    scheduler.__dict__.pop("worker_objective", None)


# ``TaskState.priority`` is ``(-user priority, generation, graph order)``: the
# generation counts ``update_graph`` calls (later graphs run after earlier
# ones at equal user priority), smaller tuples run first. qdask rewrites it in
# ``update_graph`` (before the task is queued: heap keys are fixed after) to
# put recovered chunks first and long circuits first. Read in 2026.7.1.


def user_priority(ts: TaskState) -> int:
    """The ``priority=`` ``ts`` was submitted with (0 when it has none yet)."""
    return -int(ts.priority[0]) if ts.priority else 0


def with_priority(
    priority: tuple, *, user: float | None = None, generation: float | None = None, order: float | None = None
) -> tuple:
    """``priority`` (a ``TaskState.priority``) with its user priority, generation or graph order replaced."""
    first, second, *rest = priority
    return (
        first if user is None else -user,
        second if generation is None else generation,
        *(rest if order is None else (order, *rest[1:])),
    )


# ``Scheduler.no_workers_timeout`` (seconds or None) is read from
# ``distributed.scheduler.no-workers-timeout`` in ``__init__`` and checked by
# ``periodic_callbacks["no-workers-timeout"]`` (always running) every 250 ms:
# setting it on a running scheduler takes effect. Read in 2026.7.1.


def set_no_workers_timeout(scheduler: Scheduler, seconds: float | None) -> None:
    """Make tasks no worker can run err after ``seconds`` in "no-worker" (None: wait forever)."""
    scheduler.no_workers_timeout = seconds


# ``Scheduler._get_prefix_duration(prefix)``: the prefix's average duration,
# else ``default-task-durations``/``unknown-task-duration``: what Dask's
# occupancy and work stealing count a queued task as. Read in 2026.7.1.


def prefix_duration(scheduler: Scheduler, prefix: TaskPrefix) -> float:
    """Seconds Dask expects a task of ``prefix`` to compute (as its occupancy counts it)."""
    return float(scheduler._get_prefix_duration(prefix))


# ``WorkStealing._callback_time`` (seconds) is read by ``WorkStealing.start``
# to build ``periodic_callbacks["stealing"]``: set between stop() and start()
# it changes how often Dask balances (no public setter; the config key
# ``work-stealing-interval`` is read only in ``__init__``). Read in 2026.7.1.


def set_stealing_interval(stealing: Any, seconds: float) -> None:
    """Make the next ``stealing.start()`` balance every ``seconds`` (call after ``stop()``)."""
    stealing._callback_time = seconds


# Dask's own worker-TTL check runs as ``scheduler.periodic_callbacks["worker-ttl"]``
# (only when ``worker_ttl`` is set) with the stimulus ``check-worker-ttl-<time>``;
# ``heartbeat_interval(n)`` (module function of distributed.scheduler, not
# exported) is its floor on the TTL. qdask replaces the callback with its own
# check and recognises (and issues) that stimulus. Read in 2026.7.1.
WORKER_TTL_CALLBACK = "worker-ttl"
WORKER_TTL_STIMULUS = "check-worker-ttl"

# A worker that cannot fetch a key asks the scheduler with the stimulus
# ``find-missing-<time>`` (``Worker.find_missing``): qdask reads it as a sign
# of a lost peer. Read in 2026.7.1.
FIND_MISSING_STIMULUS = "find-missing"

# == distributed: the worker and the nanny ===========================================

# A worker registers with ``worker.state.total_resources``; until it has
# registered (``Status.init``, e.g. in a WorkerPlugin's setup run by
# ``Worker.start``) writing there and to ``available_resources`` declares
# resources as ``--resources`` would, without ``Worker.set_resources`` (which
# needs the scheduler connection). Read in 2026.7.1.


def declare_resources_before_registration(worker: Worker, resources: dict[str, float]) -> None:
    """Add ``resources`` to those ``worker`` (not registered yet) declares to the scheduler."""
    for k, v in resources.items():
        worker.state.total_resources[k] = v
        worker.state.available_resources[k] = v


# A worker's heartbeat (``Worker.heartbeat``, run by ``periodic_callbacks["heartbeat"]``)
# is a call to the scheduler over the worker's connection pool ``worker.rpc``, whose
# ``occupied[address]`` holds the connections in use (the batched stream is not one
# of them). ``Worker.close`` stops the periodic callbacks and then closes the pool,
# which fails a heartbeat still in flight with CommClosedError: the worker logs it as
# an error, with its traceback ("Failed to communicate with scheduler during
# heartbeat."), on an ordinary close. Read in 2026.7.1.


async def let_heartbeat_finish(worker: Worker, timeout: float) -> None:
    """Stop ``worker``'s heartbeats and wait, at most ``timeout`` seconds, for its calls to the scheduler in flight."""
    heartbeat = worker.periodic_callbacks.get("heartbeat")
    if heartbeat is not None:
        heartbeat.stop()
    address = worker.scheduler.address
    deadline = monotonic() + timeout
    while worker.rpc.occupied.get(address) and monotonic() < deadline:
        await asyncio.sleep(0.01)


# ``distributed.utils.get_mp_context()`` (internal) returns the multiprocessing
# context of ``distributed.worker.multiprocessing-method`` and, at its first
# call with "forkserver" only, sets Dask's own forkserver preload list: a list
# set after that call is the one the server starts with. Read in 2026.7.1.


def set_worker_forkserver_preload(modules: list[str]) -> None:
    """Make the forkserver Dask's local workers fork from import ``modules`` first (method "forkserver")."""
    from distributed.utils import get_mp_context

    get_mp_context().set_forkserver_preload(list(modules))


# ``asyncio.BaseEventLoop._ready``: the deque of callbacks due now (in every
# CPython since 3.4). Read only: qdask's GIL inbox polls whether the worker's
# loop has work waiting while qsim holds the GIL. Not a Dask name, but the
# loop is Dask's (``worker.loop.asyncio_loop``).


def asyncio_ready_queue(loop: Any) -> Any:
    """The callbacks due now on a Tornado loop's asyncio loop (empty tuple when unknown)."""
    return getattr(getattr(loop, "asyncio_loop", None), "_ready", ())


# ``distributed.nanny.WorkerProcess`` (not exported): the worker process a
# Nanny holds as ``nanny.process``, assigned by ``Nanny.instantiate`` and
# started with ``WorkerProcess.start()`` (raises when the process dies before
# reporting in); it has ``status``, ``is_alive()``, ``stopped`` (an
# ``asyncio.Event``) and ``pid``. qdask's nanny restarts failed starts. Read in 2026.7.1.
# (imported above)

# == distributed: the client ========================================================

# ``Client.scheduler_info()`` (sync) fetches ``identity(n_workers=-1)`` into the
# client's cached identity and then returns that cache, which the client's
# periodic refresh (every 2 s, ``identity(n_workers=0)``: no workers) can
# overwrite in between: under load it came back with no workers while both were
# up. The scheduler's ``identity`` handler with ``n_workers=-1`` lists every
# worker. Read in 2026.7.1 (client.py, ``scheduler_info``, ``_update_scheduler_info``).


def scheduler_workers(client: Client) -> dict[str, dict[str, Any]]:
    """``{address: info}`` of every worker, asked of the scheduler now (a synchronous client)."""
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]


# == distributed: the dashboard =====================================================

# ``distributed.dashboard.scheduler.applications``: {route: make_doc(scheduler,
# extra, doc)}, read when a Scheduler starts its dashboard (so add before).
# Read in 2026.7.1.


def add_dashboard_application(route: str, make_doc: Callable[..., None]) -> bool:
    """Serve ``make_doc`` at ``route`` on every scheduler dashboard started from now on; False without Bokeh."""
    try:
        from distributed.dashboard import scheduler as dashboard
    except ImportError:
        return False
    dashboard.applications.setdefault(route, make_doc)
    return True


# ``scheduler.http_application.applications``: the Bokeh servers the
# dashboard runs, each with Bokeh's private ``BokehTornado._applications``
# {route: Application}. Read in distributed 2026.7.1 / Bokeh 3.9.


def dashboard_serves(scheduler: Scheduler, route: str) -> bool:
    """Whether ``scheduler``'s dashboard serves ``route``."""
    http = getattr(scheduler, "http_application", None)
    return any(route in getattr(app, "_applications", {}) for app in getattr(http, "applications", ()))


# ``distributed.dashboard.scheduler.template_variables(scheduler)`` is
# memoized per scheduler and shared with its running Bokeh pages: appending
# to its ``"pages"`` adds a link to the navigation bar. Read in 2026.7.1.


def dashboard_nav_pages(scheduler: Scheduler) -> list[str]:
    """The navigation bar's page list of ``scheduler``'s dashboard (mutable, shared)."""
    from distributed.dashboard.scheduler import template_variables

    return template_variables(scheduler)["pages"]


# ``distributed.dashboard.components``: ``add_periodic_callback(doc, component,
# interval_ms)`` (stopped with the session) and, in ``.scheduler``, the Jinja
# ``env`` with Dask's ``simple.html`` page template and ``BOKEH_THEME``.
# Read in 2026.7.1.


def style_dashboard_doc(doc: Any, extra: dict[str, Any], component: Any, interval_ms: int) -> None:
    """Give ``doc`` Dask's page template and theme and refresh ``component`` every ``interval_ms``."""
    from distributed.dashboard.components import add_periodic_callback
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    add_periodic_callback(doc, component, interval_ms)
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)
    doc.theme = BOKEH_THEME


# == qsimcirq =======================================================================

# ``qsimcirq.qsim_circuit``'s translation decisions are private functions:
# ``_cirq_gate_kind(gate)`` (the qsim GateKind or None), ``_has_cirq_gate_kind(op)``
# (qsimcirq's ``keep`` for ``cirq.decompose``), ``_control_details(gate, qubits)``
# (the controls that count and their values), plus ``GATE_PARAMS`` and the
# selected pybind module ``qsim``. Diagonal gates hand qsim cirq's private
# ``_diag_angles_radians``. qdask's compact circuits (qdask/quantum/qsim_fast.py)
# translate each distinct gate once with them, bit-identical to qsimcirq.
# Read in qsimcirq 0.22.1 (and 0.22.0).
QSIM_PRIVATE = ("_cirq_gate_kind", "_has_cirq_gate_kind", "_control_details", "GATE_PARAMS", "qsim")
QSIM_DIAGONAL_ANGLES = "_diag_angles_radians"


@functools.cache
def qsim_circuit_module() -> Any:
    """``qsimcirq.qsim_circuit`` (its ``qsim`` is the pybind module for this CPU, ``GATE_PARAMS`` the gate fields)."""
    from qsimcirq import qsim_circuit

    return qsim_circuit


def qsim_gate_kind(gate: Any) -> Any:
    """qsimcirq's GateKind for ``gate``, or None where qsim has none."""
    return qsim_circuit_module()._cirq_gate_kind(gate)


def qsim_has_gate_kind(op: Any) -> bool:
    """Whether qsimcirq translates ``op`` directly (its ``keep`` when it decomposes)."""
    return qsim_circuit_module()._has_cirq_gate_kind(op)


def qsim_control_details(gate: Any, qubits: list[Any]) -> tuple[list[Any], list[Any]]:
    """(effective control qubits, their values) of a ``cirq.ControlledGate`` as qsimcirq reads them."""
    return qsim_circuit_module()._control_details(gate, qubits)


# ``QSimSimulator._sim_module`` is the pybind module it calls (CPU, GPU or
# cuStateVec), chosen from its options; ``QSimSimulator._prng`` is the
# RandomState ``get_seed()`` draws each call's seed from (qsim seeds
# trajectory i with seed + i). Read in qsimcirq 0.22.1.


def qsim_module_of(simulator: Any) -> Any:
    """The qsim pybind module ``simulator`` (a ``QSimSimulator``) calls."""
    return simulator._sim_module


def set_qsim_prng(simulator: Any, prng: Any) -> None:
    """Make ``simulator`` draw its seeds from ``prng`` (anything with ``randint``)."""
    simulator._prng = prng


# == stimcirq (the Clifford backend) ================================================

# ``stimcirq._cirq_to_stim.cirq_circuit_to_stim_data(circuit, flatten=True)``
# returns (stim.Circuit, measurement key ranges): stimcirq.StimSampler takes
# no seed, its converter plus stim's seeded sampler does. Read in stimcirq 1.16.


def stim_circuit_data(circuit: Any) -> tuple[Any, Any]:
    """(stim circuit, [(measurement key, record length)]) of ``circuit``, as ``stimcirq.StimSampler`` builds them."""
    from stimcirq._cirq_to_stim import cirq_circuit_to_stim_data

    return cirq_circuit_to_stim_data(circuit, flatten=True)
