"""The ``/qdask`` dashboard page in headless Chromium, and the internal dashboard API it uses.

One hybrid cluster (a quantum and a classical worker) started with
``ClusterConfig(enable_monitoring=True)`` serves the page. The browser is
driven over the DevTools protocol with Tornado's websocket client (Tornado
comes with distributed). A batch of circuit tasks, longer than one quantum
slot can absorb, makes the page move and triggers the quantum-queue rule;
killing the classical worker meanwhile puts a node failure on the page.

Set ``QDASK_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to keep the screenshot
taken during the batch.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import dask
import pytest
from PIL import Image
from tornado.websocket import websocket_connect

from qdask import ClusterConfig, HybridConfig, QuantumCluster
from qdask.monitoring import dashboard
from qdask.worker.discovery import QUANTUM, STATEVECTOR_BYTES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FIGURES = {"qdask-utilization", "qdask-priority", "qdask-capacity-slots", "qdask-capacity-sv",
           "qdask-capacity-gpus", "qdask-failures", "qdask-scaling", "qdask-rate", "qdask-backends",
           "qdask-durations", "qdask-widths"}

pytestmark = [
    pytest.mark.long(15),  # seconds in `make test`: longest first (tests/conftest.py)
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"),
        reason="Chromium missing: apt-get install -y chromium (.ci/run installs it; CI fails without it)",
    ),
]


class Page:
    """One browser tab, spoken to over the Chrome DevTools Protocol."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self.ids)
        await self.ws.write_message(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            raw = await self.ws.read_message()
            assert raw is not None, "DevTools connection closed"
            msg = json.loads(raw)
            if msg.get("id") == i:
                assert "error" not in msg, msg
                return msg["result"]
            self.events.append(msg)

    async def js(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_js(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"{expression!r} stayed falsy for {timeout} s")

    async def screenshot(self) -> bytes:
        shot = await self.send("Page.captureScreenshot", format="png", optimizeForSpeed=True)
        return base64.b64decode(shot["data"])

    def console_errors(self) -> list[dict[str, Any]]:
        errors = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                errors.append(p)
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                errors.append(p)
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                errors.append(p)
        return errors


async def open_page(port: int, url: str) -> Page:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
    target = json.loads(urllib.request.urlopen(req, timeout=30).read())
    page = Page(await websocket_connect(target["webSocketDebuggerUrl"], max_message_size=64 * 2**20))
    for domain in ("Runtime", "Log", "Page"):
        await page.send(f"{domain}.enable")
    await page.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
    await page.send("Page.navigate", url=url)
    await page.wait_js("!!(window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].roots().length)")
    return page


def div_text(name: str) -> str:
    """JS for the text a named Div shows in the page (its rendered DOM)."""
    return (f"[...Bokeh.index.all_views()].filter(v => v.model.name == '{name}')"
            ".map(v => (v.shadow_el || v.el).textContent).join()")


def source(name: str, column: str) -> str:
    """JS for a column of a named ColumnDataSource of the page."""
    return f"Bokeh.documents[0].get_model_by_name('{name}').data['{column}']"


RENDERED_FIGURES = (
    "[...Bokeh.index.all_views()].filter(v => v.model.type == 'Figure' && v.canvas_view"
    " && v.canvas_view.bbox.width > 0 && v.canvas_view.bbox.height > 0).map(v => v.model.name)"
)


def not_blank(png: bytes) -> bool:
    """More than a background: many colours and a good share of non-background pixels."""
    image = Image.open(io.BytesIO(png)).convert("RGB").resize((350, 250))
    n = image.width * image.height
    colors = image.getcolors(maxcolors=n)  # [(count, colour)]
    background = max(count for count, _ in colors)
    return len(colors) > 50 and n - background > 0.05 * n


@pytest.fixture(scope="module")
def hybrid():
    # The quantum worker emulates a noisy device (the config travels to the worker processes).
    noise = {"gate_error": 0.01, "readout_error": 0.02}
    with dask.config.set({"qdask.monitoring.sampling-interval": "100ms", "qdask.worker.noise": noise}):
        config = ClusterConfig(enable_monitoring=True, memory_per_node="1GiB")
        with QuantumCluster(config, hybrid=HybridConfig(classical_nodes=1, quantum_nodes=1)) as qc:
            yield qc


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """A headless Chromium with its DevTools port; yields the port."""
    assert CHROMIUM, "Chromium is not installed: apt-get install -y chromium"
    profile = tmp_path_factory.mktemp("chromium")
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and active.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "Chromium did not start"
            time.sleep(0.1)
        yield int(active.read_text().split()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def stay_dead(dask_worker: Any) -> None:
    """Run on a nanny: when its worker process exits, close instead of restarting it."""
    from distributed.core import Status

    dask_worker.status = Status.closing_gracefully


def base_url(qc: QuantumCluster) -> str:
    return qc.dashboard_link.rsplit("/", 1)[0]


# -- distributed's internal dashboard API, as dashboard.py uses it -------------------------
def test_page_is_registered_served_and_linked_from_dask_pages(hybrid):
    from distributed.dashboard.scheduler import applications, template_variables

    scheduler = hybrid.cluster.scheduler
    # ClusterConfig(enable_monitoring=True): sampling from the start, at the configured interval.
    monitor = scheduler.extensions["qdask"].monitor
    assert monitor.sampling and monitor.config.sampling_interval == 0.1
    assert applications[dashboard.ROUTE] is dashboard.qdask_doc
    assert dashboard.page_served(scheduler)
    assert dashboard.PAGE in template_variables(scheduler)["pages"]
    status = urllib.request.urlopen(base_url(hybrid) + "/status", timeout=30).read().decode()
    assert f'href="{dashboard.PAGE}"' in status
    with urllib.request.urlopen(base_url(hybrid) + dashboard.ROUTE, timeout=30) as response:
        assert response.status == 200
        assert "bokeh" in response.read().decode().lower()


# -- the page in a browser -------------------------------------------------------------------
def test_page_renders_without_errors_and_follows_a_batch(hybrid, chromium):
    client = hybrid.get_client()
    # As qdask's engine annotates a chunk of a batch of 10 tasks.
    annotation = {"kind": "circuit", "circuits": 1, "qubits": 16, "backend": "qsim", "est_seconds": 0.6,
                  "statevector_bytes": 2**20, "batch": "b-dashboard", "batch_tasks": 10}

    async def drive() -> None:
        page = await open_page(chromium, base_url(hybrid) + dashboard.ROUTE)
        rendered = await page.wait_js(f"(names => names.length == {len(FIGURES)} && names)({RENDERED_FIGURES})")
        assert set(rendered) == FIGURES
        # The workers table: roles and the emulated device's error rates, rendered as a table.
        roles = await page.wait_js(f"(r => r.length == 2 && r)({source('qdask-workers-source', 'role')})")
        assert roles == ["classical", "quantum"]
        assert await page.js(source("qdask-workers-source", "error_rate")) == ["-", 0.01]
        assert await page.js(source("qdask-workers-source", "readout_error")) == ["-", 0.02]
        table = await page.js(
            "[...Bokeh.index.all_views()].filter(v => v.model.name == 'qdask-workers')"
            ".map(v => v.shadow_el.textContent).join()"
        )
        assert "gate error" in table and "readout error" in table and "0.01" in table
        await asyncio.sleep(1.0)
        idle = await page.screenshot()
        assert not_blank(idle)
        points = await page.js(f"{source('qdask-utilization-source', 'time')}.length")

        # No GPU on this machine: the GPU panel says so in words.
        gpus = sum(r["gpus"] for r in hybrid.resources())
        no_gpus = await page.js("Bokeh.documents[0].get_model_by_name('qdask-no-gpus').text")
        assert no_gpus == ("" if gpus else dashboard.NO_GPUS)

        t0 = time.time()
        futures = []
        for priority in (10, 7):  # a class ("high") and a number
            with dask.annotate(qdask={**annotation, "priority": priority}):
                futures += [client.submit(time.sleep, 0.6, resources={QUANTUM: 1, STATEVECTOR_BYTES: 2**20},
                                          priority=priority, pure=False) for _ in range(5)]
        # While the batch runs: the slot is in use, circuits wait by priority, utilization rises.
        await page.wait_js(f"{source('qdask-capacity-source', 'slots_busy')}.some(v => v > 0)")
        await page.wait_js(f"(p => p.includes(10) && p.includes(7))({source('qdask-priority-source', 'priority')})")
        assert await page.js(source("qdask-priority-source", "label")) == ["7", "high"]
        await page.wait_js(f"{source('qdask-utilization-source', 'quantum')}.some(v => v > 0)")
        # State-vector use in percent of the budget (1 MiB of 1 GiB x fraction is visible as a number > 0).
        sv = await page.wait_js(f"(p => p.some(v => v > 0) && p)({source('qdask-capacity-source', 'sv_pct')})")
        assert all(0 <= v <= 100 for v in sv)
        # The progress line: running and waiting circuit tasks, the estimate left, the ETA.
        # (Running once the worker reports the task executing; waiting until then.)
        progress = await page.wait_js(f"(t => t.includes('circuit tasks: 1 running') && t)"
                                      f"({div_text('qdask-progress')})")
        assert "waiting" in progress and "done in ~" in progress, progress
        # The batch's own row as the page shows it: tasks done of 10, one running, the rest waiting, an ETA.
        cells = ("[...Bokeh.index.all_views()].filter(v => v.model.name == 'qdask-batches')"
                 ".flatMap(v => [...v.shadow_el.querySelectorAll('tr')]"
                 ".map(r => [...r.children].map(c => c.textContent)))")
        rows = await page.wait_js(f"(r => r.length == 2 && r[1][4] == '1' && r)({cells})")
        assert rows[0] == ["batch", "kind", "tasks done", "circuits done", "running", "waiting", "elapsed", "ETA"]
        assert rows[1][0] == "b-dashboard" and rows[1][2].endswith("/10") and rows[1][7].startswith("~"), rows

        # The idle classical worker dies meanwhile, for good (its nanny told not to restart it, as
        # for a lost machine; a restart racing the cluster's close makes the close time out).
        classical = [r["worker"] for r in hybrid.resources() if r["role"] == "classical"][0]
        client.run(stay_dead, workers=[classical], nanny=True)
        pid = client.run(os.getpid, workers=[classical])[classical]
        os.kill(pid, signal.SIGKILL)
        kinds = await page.wait_js(f"(k => k.length && k)({source('qdask-failures-source', 'kind')})")
        assert kinds == ["node_failure"]
        busy = await page.screenshot()
        assert not_blank(busy) and busy != idle
        if os.environ.get("QDASK_DASHBOARD_SCREENSHOT"):
            Path(os.environ["QDASK_DASHBOARD_SCREENSHOT"]).write_bytes(busy)

        await asyncio.get_running_loop().run_in_executor(None, client.gather, futures)
        assert await page.js(f"{source('qdask-utilization-source', 'time')}.length") > points
        # What ran: 10 circuits of qsim, 16 qubits wide, each 0.6 s (the <=1s bucket), at some circuits/s.
        await page.wait_js(f"(c => c.length == 1 && c[0] >= 10)({source('qdask-backends-source', 'circuits')})")
        assert await page.js(source("qdask-backends-source", "backend")) == ["qsim"]
        assert await page.js(source("qdask-widths-source", "qubits")) == ["16q"]
        assert await page.js(source("qdask-widths-source", "circuits")) == [10]
        buckets = await page.js(source("qdask-durations-source", "bucket"))
        counts = await page.js(source("qdask-durations-source", "circuits"))
        assert dict(zip(buckets, counts))["<=1s"] == 10, (buckets, counts)
        assert await page.js(f"{source('qdask-rate-source', 'rate')}.some(v => v > 0)")
        # The utilization curve is a rolling mean: between the 0 and 100 % of single samples.
        raw = await page.js(source("qdask-utilization-source", "quantum_raw"))
        smooth = await page.js(source("qdask-utilization-source", "quantum"))
        assert set(raw) <= {0.0, 100.0} and any(0 < v < 100 for v in smooth), (raw, smooth)
        assert "10 circuits finished" in await page.js(div_text("qdask-progress"))
        rows = await page.wait_js(f"(r => r.length == 2 && r[1][7] == 'done' && r)({cells})")
        assert rows[1][2:4] == ["10/10", "10"] and rows[1][4:6] == ["0", "0"], rows

        assert hybrid.error_statistics().node_failures == 1
        (failure,) = hybrid.cluster.scheduler.extensions["qdask"].events.since(t0, ("node_failure",))
        assert failure.worker == classical and failure.cause == "died"
        # One quantum slot, ten circuits, an idle classical worker (while it lived): the analysis says so.
        result = hybrid.analyze(window=time.time() - t0)
        assert [b.rule for b in result.bottlenecks] == ["quantum-queue"]
        assert page.console_errors() == []

    asyncio.run(drive())
