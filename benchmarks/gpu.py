"""qsim on the GPU against qsim on every CPU core, through qdask's backends.

For each width: one random circuit (``cirq.testing.random_circuit``, seeded)
of ``--depth`` moments, measured at the end and sampled ``--repetitions``
times, timed on ``qsim-gpu`` (best of ``--runs`` after a CUDA warm-up) and on
``qsim`` with all cores (one run: the wide ones take long). The table gives the
ratio CPU/GPU; the width from which the GPU wins at every wider one is the suggested
``qdask.gpu.min-qubits``. Correctness: the final state of a ``--check-qubits``
circuit on the GPU against the CPU (atol 1e-5).

Needs a GPU and a CUDA build of qsimcirq (``make qsim-gpu``); without them it
says so and exits 0, so ``make bench`` runs everywhere. On the lent H200 it runs
from ``scripts/gpu_check.sh``.

    python benchmarks/gpu.py --widths 20 24 28 30 --depth 20 --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import cirq
import numpy as np

from qdask.quantum.backends import QSimBackend, QSimGPUBackend, RunOptions
from qdask.worker.discovery import detect_gpus

#: The acceptance target of issue 9: 30 qubits, depth 20, on the H200.
TARGET_SECONDS = 1.0


def random_circuit(num_qubits: int, depth: int, seed: int, measure: bool = True) -> cirq.Circuit:
    """A seeded random circuit on a line of qubits, measured at the end if ``measure``."""
    qubits = cirq.LineQubit.range(num_qubits)
    circuit = cirq.testing.random_circuit(qubits, n_moments=depth, op_density=0.9, random_state=seed)
    return circuit + cirq.measure(*qubits, key="m") if measure else circuit


def _time(backend: QSimBackend, circuit: cirq.Circuit, repetitions: int, opts: RunOptions, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.sample(circuit, repetitions, opts)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 20, 24, 28, 30])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--repetitions", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="GPU runs per width (best is kept)")
    parser.add_argument("--cpu-max-qubits", type=int, default=30, help="widest circuit also timed on the CPU")
    parser.add_argument("--check-qubits", type=int, default=22)
    parser.add_argument("--fuse", type=int, default=4, help="qsim max_fused_gate_size on the GPU")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    gpu, cpu = QSimGPUBackend(), QSimBackend()
    why = gpu.gpu_problem(max(args.widths))
    if why is not None:
        print(f"benchmarks/gpu.py: skipped, {why}")
        return 0
    gpus = detect_gpus()
    threads = len(os.sched_getaffinity(0))
    gpu_opts = RunOptions(max_fused_gate_size=args.fuse)
    cpu_opts = RunOptions(threads=threads)
    print(f"GPU: {gpus[0].name}; CPU: {threads} threads; depth {args.depth}, {args.repetitions} samples, "
          f"seed {args.seed}")

    # CUDA context and module load happen on the first GPU call: keep them out of the timings.
    gpu.sample(random_circuit(4, 2, args.seed), 1, gpu_opts)

    check = random_circuit(args.check_qubits, args.depth, args.seed, measure=False)
    order = cirq.LineQubit.range(args.check_qubits)
    diff = float(np.max(np.abs(gpu.state(check, order, gpu_opts) - cpu.state(check, order, cpu_opts))))
    print(f"state of a {args.check_qubits}-qubit circuit, GPU vs CPU: max |diff| = {diff:.2e} (atol 1e-5)")

    rows: list[dict[str, Any]] = []
    print(f"\n{'qubits':>6} {'qsim-gpu s':>11} {'qsim cpu s':>11} {'cpu/gpu':>8}")
    for n in args.widths:
        circuit = random_circuit(n, args.depth, args.seed)
        t_gpu = _time(gpu, circuit, args.repetitions, gpu_opts, args.runs)
        t_cpu = _time(cpu, circuit, args.repetitions, cpu_opts, 1) if n <= args.cpu_max_qubits else None
        ratio = t_cpu / t_gpu if t_cpu is not None else None
        rows.append({"qubits": n, "gpu_s": t_gpu, "cpu_s": t_cpu, "cpu_over_gpu": ratio})
        cpu_s = f"{t_cpu:11.3f}" if t_cpu is not None else f"{'-':>11}"
        print(f"{n:>6} {t_gpu:11.3f} {cpu_s} {ratio:8.1f}" if ratio else f"{n:>6} {t_gpu:11.3f} {cpu_s} {'-':>8}")

    # The narrowest width from which the GPU wins at every wider width timed on both.
    crossover = None
    for r in sorted((r for r in rows if r["cpu_over_gpu"] is not None), key=lambda r: -r["qubits"]):
        if r["cpu_over_gpu"] <= 1:
            break
        crossover = r["qubits"]
    widest = max(rows, key=lambda r: r["qubits"])
    print(f"\nsuggested qdask.gpu.min-qubits: {crossover} (the GPU wins from this width on)")
    verdict = "meets" if widest["gpu_s"] < TARGET_SECONDS else "misses"
    print(f"{widest['qubits']} qubits on the GPU: {widest['gpu_s']:.3f} s, {verdict} the {TARGET_SECONDS} s target")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"gpu": gpus[0].name, "cpu_threads": threads, "depth": args.depth, "repetitions": args.repetitions,
                 "seed": args.seed, "check_qubits": args.check_qubits, "check_max_abs_diff": diff,
                 "rows": rows, "suggested_min_qubits": crossover},
                f, indent=2,
            )  # fmt: skip
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
