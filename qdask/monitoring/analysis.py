"""Rules that turn recorded samples into bottlenecks and recommendations.

Each rule is a pure function of the sample records (see ``docs/monitoring.md``)
and of :class:`Thresholds` (``qdask.monitoring.analysis.*`` in dask config),
so it can be tested with synthetic samples as well as on a live cluster.
Conditions that describe a state rather than a total (queues, idle GPUs) must
hold on a share ``persistence`` of the samples where the state could arise, so
a batch's ramp-up and tail alone do not fire them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from dask.utils import format_bytes

from qdask import config as qconfig
from qdask.config import parse_duration
from qdask.monitoring.aggregate import covered, mean
from qdask.monitoring.results import AnalysisResult, Bottleneck

Samples = list[dict[str, Any]]


@dataclass(frozen=True)
class Thresholds:
    """When each rule fires (defaults from ``qdask.monitoring.analysis.*``).

    Attributes
    ----------
    tiny_task : float
        Seconds of compute per task below which tasks are "tiny".
    min_tasks : int
        Finished tasks needed before the tiny-task rule judges.
    imbalance_ratio : float
        A worker's mean load this many times its peers' is an imbalance.
    min_load : float
        ... provided it has at least this many seconds of queued work per thread.
    queue_per_slot : float
        Circuit tasks waiting per quantum slot that make a long queue.
    memory_fraction : float
        Worker memory / memory limit counted as near the limit.
    transfer_ratio : float
        Transfer time / compute time above which transfers dominate.
    min_transfer : float
        ... provided at least this many seconds went to transfers.
    gpu_idle : float
        GPU utilization (percent) below which a GPU counts as idle.
    persistence : float
        Share of the relevant samples on which a state condition must hold.
    """

    tiny_task: float
    min_tasks: int
    imbalance_ratio: float
    min_load: float
    queue_per_slot: float
    memory_fraction: float
    transfer_ratio: float
    min_transfer: float
    gpu_idle: float
    persistence: float

    @classmethod
    def from_config(cls, **overrides: Any) -> Thresholds:
        durations = {"tiny_task", "min_load", "min_transfer"}
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = overrides.get(f.name, qconfig.get(f"monitoring.analysis.{f.name.replace('_', '-')}"))
            values[f.name] = parse_duration(raw) if f.name in durations else raw
        return cls(**values)


def analyze(samples: Samples, thresholds: Thresholds | None = None) -> AnalysisResult:
    """Run every rule over ``samples`` (oldest first).

    Examples
    --------
    >>> analyze([]).healthy
    True
    """
    t = thresholds or Thresholds.from_config()
    found = [b for rule in RULES if samples and (b := rule(samples, t)) is not None]
    return AnalysisResult(
        bottlenecks=found,
        recommendations=[b.recommendation for b in found],
        window=covered(samples),
        samples=len(samples),
    )


def task_groups(samples: Samples) -> dict[str, dict[str, float]]:
    """Finished tasks, compute seconds and circuits per task prefix over ``samples``.

    A prefix is what Dask groups tasks by (``inc``, ``qdask_sample_c0``: qdask
    names circuit tasks by their kind of work and cost class). Records without
    ``tasks.groups`` (older schedulers) contribute nothing.
    """
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        for prefix, g in (s["tasks"].get("groups") or {}).items():
            acc = out.setdefault(prefix, {"finished": 0, "compute": 0.0, "circuits": 0})
            for k in acc:
                acc[k] += g.get(k, 0)
    return out


def _batching_advice(prefix: str, circuits_per_task: float | None, t: Thresholds) -> str:
    """How to give each task of group ``prefix`` more work."""
    if circuits_per_task is not None and circuits_per_task < 1.5:
        return (
            f"Batch the circuits of {prefix}: each task ran one circuit, as a Sampler.submit(circuit) "
            "call per circuit does. Collect the circuits and submit them as one batch: "
            "sampler.run_batch(circuits, repetitions=...) (run_batch_async from async code; "
            "run_sweep for one circuit over many parameters), which packs them into tasks of about "
            "qdask.quantum.chunk-duration each; keep Sampler.submit for the few circuits that "
            "classical tasks must consume as futures."
        )
    if circuits_per_task is not None or prefix.startswith("qdask_"):
        return (
            f"Raise the chunk size of {prefix}: pack more circuits into each task (raise "
            "qdask.quantum.min-chunk-duration or set qdask.quantum.chunk-duration), so that a task "
            f"computes for well over {t.tiny_task * 1e3:.3g} ms."
        )
    return (
        f"Batch the {prefix} tasks: give each task more work (client.map over chunks of inputs instead "
        f"of single items, bigger partitions for dask.bag/array/dataframe), so that a task computes for "
        f"well over {t.tiny_task * 1e3:.3g} ms."
    )


def scheduler_bound(samples: Samples, t: Thresholds) -> Bottleneck | None:
    """Tiny tasks: the scheduler's per-task cost dominates the work done.

    Judged per group of tasks (task prefix) first, so a flood of tiny tasks
    is found even when heavier work in the same window raises the mean; then
    over the whole window (many small groups of tiny tasks).
    """
    span = max(covered(samples), 1e-9)
    tiny = [
        (prefix, g) for prefix, g in task_groups(samples).items()
        if g["finished"] >= t.min_tasks and g["compute"] / g["finished"] < t.tiny_task
    ]
    if tiny:
        prefix, g = max(tiny, key=lambda pg: pg[1]["finished"])
        finished = int(g["finished"])
        per_task = g["compute"] / finished
        per_circuit = g["circuits"] / finished if g["circuits"] else None
        what = f"{finished} {prefix} tasks" + (
            f" ({per_circuit:.3g} circuit(s) each)" if per_circuit is not None else "")
        return Bottleneck(
            rule="scheduler-bound",
            message=(
                f"{what} averaged {per_task * 1e3:.3g} ms of compute each ({finished / span:.0f} tasks/s): "
                "the scheduler's overhead per task (about a millisecond) outweighs their work"
            ),
            recommendation=_batching_advice(prefix, per_circuit, t),
            evidence={"group": prefix, "finished": finished, "mean_task_seconds": per_task,
                      "tasks_per_second": finished / span, "circuits_per_task": per_circuit},
        )
    finished = sum(s["tasks"]["finished"] for s in samples)
    compute = sum(s["tasks"]["compute"] for s in samples)
    if finished < t.min_tasks or compute / finished >= t.tiny_task:
        return None
    per_task = compute / finished
    rate = finished / span
    return Bottleneck(
        rule="scheduler-bound",
        message=(
            f"{finished} tasks averaged {per_task * 1e3:.3g} ms of compute each ({rate:.0f} tasks/s): "
            "the scheduler's overhead per task (about a millisecond) outweighs the work"
        ),
        recommendation=(
            "Raise the chunk size: pack more circuits into each task (raise "
            "qdask.quantum.min-chunk-duration or set qdask.quantum.chunk-duration) and use bigger "
            f"partitions for classical work, so that a task computes for well over {t.tiny_task * 1e3:.3g} ms."
        ),
        evidence={"finished": finished, "mean_task_seconds": per_task, "tasks_per_second": rate},
    )


def imbalance(samples: Samples, t: Thresholds) -> Bottleneck | None:
    """One worker holds far more queued work than its peers of the same role."""
    for role in ("quantum", "classical"):
        active = [s for s in samples if any(w["role"] == role and w["processing"] for w in s["workers"].values())]
        loads: dict[str, float] = {}
        waiting: dict[str, float] = {}
        for s in active:
            for addr, w in s["workers"].items():
                if w["role"] == role:
                    loads[addr] = loads.get(addr, 0.0) + w["load"] / len(active)
                    waiting[addr] = waiting.get(addr, 0.0) + (w["processing"] - w["busy_threads"]) / len(active)
        if len(loads) < 2:
            continue
        worst = max(loads, key=loads.__getitem__)
        peers = mean(v for a, v in loads.items() if a != worst) or 0.0
        # A long task alone is not an imbalance: something must wait there that a peer could run.
        if loads[worst] >= t.min_load and loads[worst] >= t.imbalance_ratio * peers and waiting[worst] >= 1:
            return Bottleneck(
                rule="imbalance",
                message=(
                    f"{role} worker {worst} averaged {loads[worst]:.3g} s of queued work per thread "
                    f"({waiting[worst]:.3g} tasks waiting) while its {len(loads) - 1} peer(s) averaged {peers:.3g} s"
                ),
                recommendation=(
                    "Enable the load balancer (QuantumCluster.start_load_balancer(LoadBalancerConfig())) "
                    "or, if it runs, lower its threshold and check_interval; avoid pinning tasks to one "
                    "worker with workers=[...]."
                ),
                evidence={"worker": worst, "role": role, "load": loads[worst], "peer_load": peers,
                          "waiting": waiting[worst]},
            )
    return None


def quantum_queue(samples: Samples, t: Thresholds) -> Bottleneck | None:
    """Circuit tasks wait for quantum slots while classical workers sit idle."""
    relevant, hits, idle, queued = 0, 0, 0, []
    for s in samples:
        total = s["total"]
        classical = [w for w in s["workers"].values() if w["role"] == "classical"]
        if not classical or not total["quantum_slots"]:
            continue
        if not (total["quantum_busy"] or total["quantum_queued"]):
            continue
        relevant += 1
        idle_now = [w for w in classical if not w["processing"]]
        if total["quantum_queued"] >= t.queue_per_slot * total["quantum_slots"] and len(idle_now) == len(classical):
            hits += 1
            idle = max(idle, len(idle_now))
            queued.append(total["quantum_queued"])
    if not relevant or hits / relevant < t.persistence:
        return None
    waiting = sum(queued) / len(queued)
    return Bottleneck(
        rule="quantum-queue",
        message=(
            f"on average {waiting:.3g} circuit tasks waited for a quantum slot while {idle} classical "
            f"worker(s) sat idle ({hits} of {relevant} samples with quantum work)"
        ),
        recommendation=(
            "Add quantum workers: give more workers the quantum role (HybridConfig(quantum_nodes=...) "
            "or ClusterConfig(quantum_devices=...)), or enable elastic scaling."
        ),
        evidence={"queued": waiting, "idle_classical_workers": idle, "share": hits / relevant},
    )


def memory_pressure(samples: Samples, t: Thresholds) -> Bottleneck | None:
    """A quantum worker's memory came near its limit."""
    peak, where, at = 0.0, None, None
    for s in samples:
        for addr, w in s["workers"].items():
            if w["role"] == "quantum" and w["memory_limit"]:
                frac = w["memory"] / w["memory_limit"]
                if frac > peak:
                    peak, where, at = frac, addr, w
    if at is None or peak < t.memory_fraction:
        return None
    fraction = qconfig.get("worker.statevector-fraction")
    return Bottleneck(
        rule="memory-pressure",
        message=(
            f"quantum worker {where} used {format_bytes(at['memory'])} of its "
            f"{format_bytes(at['memory_limit'])} limit ({peak:.0%})"
        ),
        recommendation=(
            "Run fewer wide circuits at once: lower qdask.worker.statevector-fraction "
            f"(now {fraction}) so fewer state vectors fit on a worker together, or give workers "
            "more memory (ClusterConfig(memory_per_node=...))."
        ),
        evidence={"worker": where, "memory": at["memory"], "memory_limit": at["memory_limit"], "fraction": peak},
    )


def transfer_bound(samples: Samples, t: Thresholds) -> Bottleneck | None:
    """Moving task data between workers took longer than computing it."""
    transfer = sum(s["tasks"]["transfer"] for s in samples)
    compute = sum(s["tasks"]["compute"] for s in samples)
    if transfer < t.min_transfer or transfer < t.transfer_ratio * compute:
        return None
    return Bottleneck(
        rule="transfer-bound",
        message=f"tasks waited {transfer:.3g} s for their inputs to arrive and computed for {compute:.3g} s",
        recommendation=(
            "Keep results on workers: hand futures to the tasks that use them instead of gathering "
            "and resubmitting, run dependent work where its inputs are, and scatter shared inputs once "
            "(client.scatter(..., broadcast=True))."
        ),
        evidence={"transfer_seconds": transfer, "compute_seconds": compute},
    )


def gpu_idle(samples: Samples, t: Thresholds) -> Bottleneck | None:
    """GPUs stay idle while circuit tasks queue for CPU slots."""
    relevant, hits, utils, queued = 0, 0, [], []
    for s in samples:
        total = s["total"]
        if not total["gpus"] or total["gpu_utilization"] is None or not total["quantum_queued"]:
            continue
        relevant += 1
        if total["gpu_utilization"] < t.gpu_idle and total["gpus_busy"] < total["gpus"]:
            hits += 1
            utils.append(total["gpu_utilization"])
            queued.append(total["quantum_queued"])
    if not relevant or hits / relevant < t.persistence:
        return None
    util, waiting = sum(utils) / len(utils), sum(queued) / len(queued)
    return Bottleneck(
        rule="gpu-idle",
        message=(
            f"GPUs averaged {util:.3g}% utilization while {waiting:.3g} circuit tasks waited for CPU "
            f"slots ({hits} of {relevant} samples)"
        ),
        recommendation=(
            "Route wider circuits to the GPU: lower qdask.gpu.min-qubits (now "
            f"{qconfig.get('gpu.min-qubits', 'unset')}) so that simulator='auto' sends them to "
            "qsim-gpu, or submit them with simulator='qsim-gpu'."
        ),
        evidence={"gpu_utilization": util, "queued": waiting, "share": hits / relevant},
    )


#: Every rule, in the order findings are reported.
RULES: list[Callable[[Samples, Thresholds], Bottleneck | None]] = [
    scheduler_bound,
    imbalance,
    quantum_queue,
    memory_pressure,
    transfer_bound,
    gpu_idle,
]
