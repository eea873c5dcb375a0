"""Canaries of the private Dask/distributed/qsimcirq behaviours qdask relies on (``qdask/_compat.py``).

Each test exercises one entry of ``qdask._compat`` cheaply (in-process
``Scheduler``/``Worker`` through ``gen_cluster``, or the object itself) and
fails with "<library> <version> no longer ...; qdask relies on it for ...".
``make test-compat`` runs them against the newest releases the index serves.
The last test keeps the door single: no private Dask/qsimcirq name outside
``qdask/_compat.py``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import io
import logging
import re
import threading
import tokenize
from pathlib import Path

import cirq
import numpy as np
import pytest
from distributed import Worker, WorkerPlugin
from distributed.core import Status
from distributed.scheduler import KilledWorker, Scheduler
from distributed.utils_test import captured_logger, gen_cluster

from qdask import _compat
from qdask.worker.plugin import QuantumWorkerPlugin

ROOT = Path(__file__).resolve().parents[1]


def version(dist: str) -> str:
    return importlib.metadata.version(dist)


def canary(ok: object, dist: str, behaviour: str, reason: str) -> None:
    """Fail, naming the library version, the behaviour and what qdask uses it for."""
    assert ok, f"{dist} {version(dist)} no longer {behaviour}; qdask relies on it for {reason} (see qdask/_compat.py)"


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting for the scheduler"
        await asyncio.sleep(0.01)


# -- distributed: the scheduler -----------------------------------------------------

# Tasks that block in a worker thread until the test lets them go (in-process
# workers import this module, so they see the same threading.Event).
_RELEASE = threading.Event()


def _block(x: int) -> int:
    _RELEASE.wait(10)
    return x


@pytest.mark.parametrize("credit", [0, -1])
def test_worker_death_adds_one_to_suspicious_and_allowed_failures_compares_it(credit):
    """An unexpected worker removal adds 1 to ``ts.suspicious``; past ``allowed-failures`` the task errs."""

    @gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2, config={"distributed.scheduler.allowed-failures": 0})
    async def run(c, s, a, b):
        _RELEASE.clear()
        fut = c.submit(_block, 1, key="blocked")
        await _until(lambda: "blocked" in s.tasks and s.tasks["blocked"].state == "processing")
        ts = s.tasks["blocked"]
        _compat.set_suspicious(ts, 0)
        _compat.add_suspicious(ts, credit)
        await s.remove_worker(ts.processing_on.address, stimulus_id="canary", expected=False)
        _RELEASE.set()
        canary(
            ts.suspicious == credit + 1,
            "distributed",
            f"adds 1 to TaskState.suspicious when a worker dies under a task (got {ts.suspicious} from {credit})",
            "fault tolerance's count of the worker deaths a circuit chunk caused",
        )
        if credit == 0:  # 1 > allowed-failures 0
            canary(ts.state == "erred", "distributed", "errs a task once suspicious > allowed-failures",
                   "max_failures of a circuit chunk")
            with pytest.raises(KilledWorker):
                await fut
        else:  # the credit kept it at 0: Dask reschedules it
            canary(ts.state != "erred", "distributed", "compares suspicious (not deaths) with allowed-failures",
                   "the credit of a chunk that only waited for a slot")
            assert await fut == 1

    run()


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], config={"distributed.scheduler.no-workers-timeout": None})
async def test_refreshing_unrunnable_restarts_the_no_workers_timeout(c, s, a):
    """``Scheduler.unrunnable`` is {task: time}, timed out in insertion order; re-inserting restarts the clock.

    The timeout is set on the running scheduler, as qdask's placement does.
    """
    # 2 s, refreshed every 0.05 s for 5 s: a loaded machine's event loop once slept past a 1 s timeout.
    _compat.set_no_workers_timeout(s, 2.0)
    fut = c.submit(int, 1, key="unrunnable-canary", resources={"NOWHERE": 1})
    await _until(lambda: "unrunnable-canary" in s.tasks and s.tasks["unrunnable-canary"].state == "no-worker")
    ts = s.tasks["unrunnable-canary"]
    canary(isinstance(s.unrunnable, dict) and ts in s.unrunnable, "distributed",
           "keeps no-worker tasks in the dict Scheduler.unrunnable", "holding recovered chunks for manual recovery")
    for _ in range(100):
        _compat.refresh_unrunnable(s, ts)
        await asyncio.sleep(0.05)
    canary(ts.state == "no-worker", "distributed",
           "restarts a task's no-workers-timeout when it is re-inserted in Scheduler.unrunnable",
           "keeping held chunks clear of no-workers-timeout")
    await _until(lambda: ts.state == "erred", timeout=10)  # left alone, it times out as Dask says
    del fut


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_priority_is_user_generation_order(c, s, a):
    """``TaskState.priority`` is ``(-user priority, generation, graph order)``; each graph a later generation."""
    first = c.submit(int, 1, key="priority-1", priority=3, resources={"NOWHERE": 1}, fifo_timeout=0)
    await _until(lambda: "priority-1" in s.tasks)
    second = c.submit(int, 2, key="priority-2", priority=3, resources={"NOWHERE": 1}, fifo_timeout=0)
    await _until(lambda: {"priority-1", "priority-2"} <= set(s.tasks))
    one, two = s.tasks["priority-1"], s.tasks["priority-2"]
    canary(len(one.priority) == 3 and _compat.user_priority(one) == 3 and one.priority[1] < two.priority[1],
           "distributed", f"orders tasks by (-user priority, generation, order) (got {one.priority}, {two.priority})",
           "running recovered chunks and long circuits first")
    assert _compat.with_priority(one.priority, generation=-1) < two.priority
    del first, second


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1, {"resources": {"R": 1}})] * 2)
async def test_an_instance_worker_objective_places_restricted_tasks(c, s, a, b):
    """``Scheduler.worker_objective`` looked up on the instance ranks the workers of a restricted task."""
    for target in (a, b):
        ranked = lambda ts, ws, target=target: (0,) if ws.address == target.address else (1,)  # noqa: E731
        original = _compat.shadow_worker_objective(s, ranked)
        try:
            key = f"objective-{target.name}"
            fut = c.submit(_block, 1, key=key, resources={"R": 1})
            _RELEASE.set()
            await fut
            canary(s.tasks[key].who_has == {s.workers[target.address]}, "distributed",
                   "asks the Scheduler instance's worker_objective where a restricted task goes",
                   "placing circuit chunks on the smallest state-vector capacity that fits")
        finally:
            _compat.restore_worker_objective(s)
        canary("worker_objective" not in s.__dict__, "distributed",
               "lets an instance attribute shadow worker_objective",
               "placement's objective (and undoing it)")
        ts, ws = s.tasks[key], s.workers[a.address]
        base = original(ts, ws)
        canary(isinstance(base, tuple) and len(base) == 2, "distributed",
               f"returns (start_time, nbytes) from worker_objective (got {base!r})",
               "inserting the state-vector capacity just before nbytes")


@gen_cluster(
    client=True,
    nthreads=[("127.0.0.1", 1)],
    config={"distributed.scheduler.default-task-durations": {"compatprefix": "7s"}},
)
async def test_prefix_duration_is_what_dask_expects_of_a_prefix(c, s, a):
    """``Scheduler._get_prefix_duration`` gives the configured default for a prefix never run."""
    fut = c.submit(int, 1, key="compatprefix-1", resources={"NOWHERE": 1})
    await _until(lambda: "compatprefix-1" in s.tasks)
    duration = _compat.prefix_duration(s, s.tasks["compatprefix-1"].prefix)
    canary(duration == 7.0, "distributed", f"estimates a prefix's duration with _get_prefix_duration (got {duration})",
           "the load balancer's occupancy arithmetic")
    del fut


@gen_cluster(nthreads=[])
async def test_stealing_interval_is_read_by_start(s):
    """``WorkStealing._callback_time`` (seconds) becomes ``periodic_callbacks["stealing"]``'s interval at start."""
    stealing = s.extensions["stealing"]
    await stealing.stop()
    _compat.set_stealing_interval(stealing, 0.25)
    await stealing.start()
    pc = s.periodic_callbacks.get("stealing")
    canary(pc is not None and pc.callback_time == 250, "distributed",
           "reads WorkStealing._callback_time (seconds) when work stealing starts",
           "qdask.scheduler.load-balancer check-interval")


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
async def test_worker_ttl_callback_and_its_stimulus(c, s, a):
    """Dask's TTL check is ``periodic_callbacks["worker-ttl"]``; its removals carry ``check-worker-ttl-*``."""
    canary(_compat.WORKER_TTL_CALLBACK in s.periodic_callbacks, "distributed",
           f'runs its worker-TTL check as periodic_callbacks["{_compat.WORKER_TTL_CALLBACK}"]',
           "replacing it with qdask's TTL check")
    canary(_compat.heartbeat_interval(1) > 0, "distributed", "has distributed.scheduler.heartbeat_interval(n)",
           "the floor of qdask's TTL check")
    s.workers[a.address].last_seen = 0  # silent since 1970
    await s.check_worker_ttl()
    removals = [msg for _, msg in s.get_events("all") if isinstance(msg, dict) and msg.get("action") == "remove-worker"]
    canary(any(str(m.get("stimulus_id", "")).startswith(_compat.WORKER_TTL_STIMULUS) for m in removals), "distributed",
           f"removes a silent worker with the stimulus {_compat.WORKER_TTL_STIMULUS}-<time> (got {removals})",
           "telling a heartbeat loss from a crash")


def test_find_missing_stimulus():
    """A worker asks the scheduler for missing keys with the stimulus ``find-missing-<time>``."""
    source = inspect.getsource(Worker.find_missing)
    canary(f'stimulus_id=f"{_compat.FIND_MISSING_STIMULUS}-' in source, "distributed",
           f"names Worker.find_missing's stimulus {_compat.FIND_MISSING_STIMULUS}-<time>",
           "reading a refresh-who-has as a lost peer")


# -- distributed: the worker and the nanny ------------------------------------------


class _Declare(WorkerPlugin):
    name = "compat-declare"

    def setup(self, worker):
        self.status = worker.status
        _compat.declare_resources_before_registration(worker, {"COMPAT": 2.0})


@gen_cluster(nthreads=[])
async def test_resources_declared_before_registration_reach_the_scheduler(s):
    """A WorkerPlugin's setup runs before registration; the resources it declares register with the worker."""
    plugin = _Declare()
    async with Worker(s.address, nthreads=1, plugins=[plugin]) as w:
        canary(plugin.status == Status.init, "distributed", "runs WorkerPlugin.setup before the worker registers",
               "declaring discovered resources (QPU, GPU, state-vector bytes) at registration")
        canary(s.workers[w.address].resources.get("COMPAT") == 2.0, "distributed",
               "registers a worker with worker.state.total_resources",
               "declaring discovered resources at registration")
        canary(w.state.available_resources.get("COMPAT") == 2.0, "distributed",
               "keeps worker.state.available_resources", "declaring discovered resources")


@gen_cluster(nthreads=[("127.0.0.1", 1)])
async def test_asyncio_ready_queue_holds_the_callbacks_due(s, a):
    """``worker.loop.asyncio_loop._ready``: the callbacks due now (read by qdask's GIL inbox)."""
    due = _compat.asyncio_ready_queue(a.loop)
    before = len(due)
    a.loop.add_callback(lambda: None)
    canary(len(due) == before + 1, "distributed",
           "runs workers on a Tornado loop whose asyncio_loop._ready holds the callbacks due",
           "letting the worker's event loop turn while qsim holds the GIL")


HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"


async def close_during_a_slow_heartbeat(s: Scheduler, plugins: list[WorkerPlugin]) -> tuple[bool, str]:
    """Close a worker while its heartbeat waits on the scheduler: (was it in flight, the worker's log)."""
    answer = s.handlers["heartbeat_worker"]

    async def slow(**kwargs):
        await asyncio.sleep(0.5)
        return answer(**kwargs)

    with captured_logger("distributed.worker", level=logging.ERROR) as log:
        w = await Worker(s.address, nthreads=1, heartbeat_interval="1h", plugins=plugins)
        s.handlers["heartbeat_worker"] = slow
        try:
            idle = not w.rpc.occupied.get(s.address)
            beat = asyncio.create_task(w.heartbeat())
            for _ in range(1000):  # connected within milliseconds; bounded at 5 s
                if w.rpc.occupied.get(s.address):
                    break
                await asyncio.sleep(0.005)
            in_flight = idle and bool(w.rpc.occupied.get(s.address))
            await w.close()
            await beat
        finally:
            s.handlers["heartbeat_worker"] = answer
    return in_flight, log.getvalue()


@gen_cluster(nthreads=[])
async def test_a_close_fails_the_heartbeat_in_flight_unless_it_may_finish(s):
    """``Worker.close`` cuts a heartbeat in flight (logged with a traceback); qdask's worker plugin lets it finish."""
    in_flight, log = await close_during_a_slow_heartbeat(s, [])
    canary(in_flight, "distributed", "makes heartbeats on the worker.rpc pool (occupied[scheduler] while in flight)",
           "a closing worker's wait for its last heartbeat")
    canary(HEARTBEAT_FAILED in log and "Traceback" in log, "distributed",
           "logs a heartbeat cut by Worker.close as an error with its traceback",
           "a closing worker's wait for its last heartbeat (else it is not needed)")

    in_flight, log = await close_during_a_slow_heartbeat(s, [QuantumWorkerPlugin()])  # its teardown waits
    assert in_flight and log == "", log


def test_worker_process_of_a_nanny():
    """``distributed.nanny.WorkerProcess``: assigned to ``Nanny.process`` by ``instantiate``, started by ``start``."""
    from distributed import Nanny

    canary(all(hasattr(_compat.WorkerProcess, n) for n in ("start", "is_alive", "kill")), "distributed",
           "has WorkerProcess.start/is_alive/kill", "the nanny that restarts failed worker starts")
    canary("self.process = WorkerProcess(" in inspect.getsource(Nanny.instantiate), "distributed",
           "assigns Nanny.process = WorkerProcess(...) in Nanny.instantiate",
           "the nanny that restarts failed worker starts (its process property)")


def test_forkserver_preload_set_after_dasks_first_call_stays():
    """``get_mp_context`` sets Dask's forkserver preload at its first call only; a list set after it stays."""
    import multiprocessing.forkserver as fs

    import dask.config
    from distributed.utils import get_mp_context

    before = list(fs._forkserver._preload_modules)
    try:
        with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
            _compat.set_worker_forkserver_preload(["qdask.compat_canary"])
            get_mp_context()  # Dask's next call, when it starts a worker
            after = list(fs._forkserver._preload_modules)
    finally:
        fs._forkserver._preload_modules = before
    canary(after == ["qdask.compat_canary"], "distributed",
           f"keeps a forkserver preload list set after get_mp_context's first call (got {after})",
           "workers forked with cirq and qsim already imported")


# -- distributed: the client --------------------------------------------------------
@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2)
async def test_scheduler_identity_lists_every_worker_on_request(c, s, a, b):
    """``scheduler_workers`` asks ``identity(n_workers=-1)``; the client's refresh asks ``n_workers=0``."""
    every = await c.scheduler.identity(n_workers=-1)
    canary(sorted(every["workers"]) == sorted([a.address, b.address]), "distributed",
           "lists every worker in the scheduler's identity(n_workers=-1)",
           "the worker table of QuantumCluster's card (_compat.scheduler_workers)")
    # Why not scheduler_info(): the cache it returns is what the periodic refresh fetched.
    none = await c.scheduler.identity(n_workers=0)
    assert none["workers"] == {} and none["n_workers"] == 2


# -- distributed: the dashboard -----------------------------------------------------


def _compat_doc(scheduler, extra, doc):  # a Bokeh application of the canary
    pass


@gen_cluster(
    nthreads=[],
    scheduler_kwargs={"dashboard": True, "dashboard_address": "127.0.0.1:0"},
)
async def test_dashboard_applications_and_navigation(s):
    """Applications added to the table are served by schedulers built later; the nav bar's pages are shared."""
    pytest.importorskip("bokeh")
    from distributed.dashboard import scheduler as dashboard

    try:
        assert _compat.add_dashboard_application("/compat-canary", _compat_doc)
        async with Scheduler(dashboard=True, dashboard_address="127.0.0.1:0", port=0, host="127.0.0.1") as s2:
            canary(_compat.dashboard_serves(s2, "/compat-canary"), "distributed",
                   "serves the Bokeh apps of distributed.dashboard.scheduler.applications"
                   " (seen in BokehTornado._applications)",
                   "the /qdask dashboard page")
            pages = _compat.dashboard_nav_pages(s2)
            canary(isinstance(pages, list) and pages is _compat.dashboard_nav_pages(s2), "distributed",
                   "memoizes template_variables(scheduler)['pages'] as one list per scheduler",
                   "the /qdask link in the dashboard's navigation bar")
        canary(not _compat.dashboard_serves(s, "/compat-canary"), "distributed",
               "reads the applications table only when a dashboard starts", "registering /qdask before the Scheduler")
    finally:
        dashboard.applications.pop("/compat-canary", None)


def test_dashboard_template_and_theme():
    pytest.importorskip("bokeh")
    from bokeh.document import Document

    class Component:
        def update(self) -> None:
            pass

    doc, component = Document(), Component()
    _compat.style_dashboard_doc(doc, {"canary": 1}, component, 1000)
    canary(doc.template is not None and doc.template_variables.get("canary") == 1 and doc.theme is not None,
           "distributed", "has the dashboard's simple.html template, BOKEH_THEME and add_periodic_callback",
           "styling /qdask like Dask's own pages")


# -- qsimcirq and stimcirq -----------------------------------------------------------


def test_qsimcirq_translation_helpers():
    """qsimcirq's private translation decisions give what qdask's compact circuits copy."""
    qc = _compat.qsim_circuit_module()
    missing = [name for name in _compat.QSIM_PRIVATE if not hasattr(qc, name)]
    canary(not missing, "qsimcirq", f"has qsimcirq.qsim_circuit.{missing}",
           "compact circuits (qdask/quantum/qsim_fast.py)")
    canary(set(qc.GATE_PARAMS) >= {"exponent", "global_shift", "phase_exponent", "theta", "phi"}, "qsimcirq",
           f"lists the gate fields it passes to qsim in GATE_PARAMS (got {qc.GATE_PARAMS})", "compact circuits")
    q = cirq.LineQubit.range(3)
    matrix = cirq.MatrixGate(np.eye(2))
    canary(_compat.qsim_gate_kind(cirq.X) == qc.qsim.kX and _compat.qsim_gate_kind(matrix) is not None,
           "qsimcirq", "maps a cirq gate to its qsim GateKind with _cirq_gate_kind", "compact circuits")
    qft = cirq.QuantumFourierTransformGate(3).on(*q)
    canary(_compat.qsim_has_gate_kind(cirq.X(q[0])) and not _compat.qsim_has_gate_kind(qft), "qsimcirq",
           "decides which operations it keeps with _has_cirq_gate_kind", "compact circuits' decomposition")
    details = _compat.qsim_control_details(cirq.ControlledGate(cirq.X, num_controls=2, control_values=[0, 1]), [0, 1])
    canary(tuple(map(list, details)) == ([0, 1], [0, 1]), "qsimcirq",
           f"reads a controlled gate's controls with _control_details (got {details})", "compact circuits")
    canary(hasattr(cirq.TwoQubitDiagonalGate([0, 0, 0, 0]), _compat.QSIM_DIAGONAL_ANGLES), "cirq-core",
           f"gives diagonal gates {_compat.QSIM_DIAGONAL_ANGLES} (which qsimcirq hands qsim)", "compact circuits")


def test_qsim_simulator_module_and_seed_stream():
    """``QSimSimulator._sim_module`` is the qsim module it calls; its seeds come from ``_prng``."""
    import qsimcirq

    sim = qsimcirq.QSimSimulator()
    canary(_compat.qsim_module_of(sim) is _compat.qsim_circuit_module().qsim, "qsimcirq",
           "keeps the qsim module a QSimSimulator calls in _sim_module", "qdask's direct qsim calls with its options")
    _compat.set_qsim_prng(sim, np.random.RandomState(7))
    canary(sim.get_seed() == np.random.RandomState(7).randint(2**31 - 1), "qsimcirq",
           "draws a QSimSimulator's seeds from _prng", "seeding each block of noisy trajectories")


def test_stimcirq_converter():
    pytest.importorskip("stimcirq")
    q = cirq.LineQubit.range(2)
    stim_circuit, ranges = _compat.stim_circuit_data(cirq.Circuit(cirq.H(q[0]), cirq.measure(*q, key="m")))
    canary(stim_circuit.num_measurements == 2 and [(str(k), n) for k, n in ranges] == [("m", 2)], "stimcirq",
           f"converts with _cirq_to_stim.cirq_circuit_to_stim_data (got {ranges})", "the seeded stim backend")


# -- one door -------------------------------------------------------------------------

#: What a private Dask/distributed/qsimcirq/stimcirq access looks like outside _compat.
#: Named: the internals qdask is known to use, some without an underscore
#: (state it writes, internal module attributes, callback and stimulus names).
NAMED = [
    r"\._get_prefix_duration\b", r"\._callback_time\b", r"\._ready\b", r"\._applications\b",
    r"\._cirq_gate_kind\b", r"\._has_cirq_gate_kind\b", r"\._control_details\b", r"_diag_angles_radians",
    r"\._sim_module\b", r"\._prng\b", r"\.suspicious\s*[-+]?=", r"\.unrunnable\s*\[", r"\.unrunnable\.(pop|move)",
    r"\.worker_objective\s*=", r"""__dict__\.pop\(\s*["']worker_objective""", r"\bapplications\.setdefault",
    r"\bdashboard\.applications\b", r"\btemplate_variables\(", r"bulk_schedule_unrunnable_after_adding_worker",
    r"\.state\.(available|total)_resources\[[^]]*\]\s*=", r"distributed\.nanny import",
    r"(?<!_compat\.)\bheartbeat_interval\b",
    r"distributed\.dashboard\.(components|scheduler)", r"""["']worker-ttl["']""", r"""["']check-worker-ttl""",
    r"""["']find-missing""", r"BOKEH_THEME", r"\bget_mp_context\b",
]
#: Any ``import`` of a private module of these libraries, or of a private name from them.
PRIVATE_IMPORT = re.compile(
    r"^\s*(from|import)\s+(dask|distributed|qsimcirq|stimcirq)\b[\w.]*\._\w+"
    r"|^\s*from\s+(dask|distributed|qsimcirq|stimcirq)\b[\w.]*\s+import\s+.*\b_[a-z]\w*"
)
#: ``obj._name`` for any ``_name`` qdask does not define itself: a private name of some library.
PRIVATE_ATTRIBUTE = re.compile(r"(?<![\w])[\w\])]+\.(_[a-z]\w*)\b")
#: The same through ``getattr(obj, "_name", ...)`` and its kin.
PRIVATE_GETATTR = re.compile(r"\b(?:getattr|hasattr|setattr|delattr)\(.*?,\s*[\"'](_[a-z]\w*)[\"']")
#: Private names of other libraries that are not Dask's or qsimcirq's (their own door is out of this
#: test's scope; listed so that a new one shows up): cirq's EigenGate hooks, numpy's bit
#: generator, CPython's frame, IPython's display protocol.
OTHER_LIBRARIES = {"_eigen_shifts", "_with_exponent", "_bit_generator", "_getframe", "_repr_html_"}


def _sources() -> list[Path]:
    return sorted(p for d in ("qdask", "plugins") for p in (ROOT / d).rglob("*.py"))


def _code(text: str) -> list[str]:
    """``text``'s lines with comments and docstrings blanked (string literals in code stay)."""
    lines = text.splitlines()
    previous = tokenize.NEWLINE
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        statement = tok.type == tokenize.STRING and previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        if tok.type == tokenize.COMMENT or statement:
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):
                line = lines[r - 1]
                a, b = (c0 if r == r0 else 0), (c1 if r == r1 else len(line))
                lines[r - 1] = line[:a] + " " * (b - a) + line[b:]
        if tok.type not in (tokenize.NL, tokenize.COMMENT):
            previous = tok.type
    return lines


def _own_private_names() -> set[str]:
    """Private names qdask defines itself: functions, classes, attributes and variables it assigns."""
    define = re.compile(r"\b(?:def|class)\s+(_\w+)|(?<![\w.])(?:\w+\.)?(_[a-z]\w*)\s*(?::[^=\n]+)?=(?!=)")
    names = {path.stem for path in _sources() if path.stem.startswith("_")}  # its private modules
    for path in _sources():
        for m in define.finditer("\n".join(_code(path.read_text()))):
            names.update(g for g in m.groups() if g)
    return names


def private_uses(paths: list[Path]) -> list[str]:
    """'file:line: text' of every private Dask/qsimcirq access in ``paths`` (``_compat.py`` excepted)."""
    own = _own_private_names()
    named = [re.compile(p) for p in NAMED]
    found = []
    for path in paths:
        if path.name == "_compat.py":
            continue
        text = path.read_text()
        for n, (line, code) in enumerate(zip(text.splitlines(), _code(text), strict=True), 1):
            hits = [p.pattern for p in named if p.search(code)]
            if PRIVATE_IMPORT.search(code):
                hits.append("private import")
            hits += [
                m.group(1)
                for pattern in (PRIVATE_ATTRIBUTE, PRIVATE_GETATTR)
                for m in pattern.finditer(code)
                if m.group(1) not in own | OTHER_LIBRARIES and not m.group(0).startswith(("self.", "cls."))
            ]
            if hits:
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{where}:{n}: {line.strip()}  [{', '.join(hits)}]")
    return found


def test_no_private_dask_or_qsimcirq_name_outside_compat():
    """Every private Dask/distributed/qsimcirq access goes through qdask/_compat.py."""
    found = private_uses(_sources())
    assert not found, (
        "Private Dask/distributed/qsimcirq access outside qdask/_compat.py: route it through a named,"
        " commented function there with a canary in tests/test_compat.py:\n" + "\n".join(found)
    )
