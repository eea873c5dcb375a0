"""Pure logic of the quantum layer: analysis, cost model, planning, packing, backends."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import warnings

import cirq
import dask
import numpy as np
import pytest
import sympy

from qdask.quantum import backends as bk
from qdask.quantum.analysis import analyze
from qdask.quantum.annotation import TaskAnnotation
from qdask.quantum.cost import CostModel
from qdask.quantum.pickling import Shared, dump_tasks, load_tasks
from qdask.quantum.plan import ClusterView, SeedSource, build_jobs, make_chunks, resolve_priority, target_chunk_seconds
from qdask.quantum.task import pack_records, unpack_records

COST = CostModel(per_circuit=2e-4, per_op=3e-5, per_amp_op=4e-10)
VIEW = ClusterView(
    slots=2, max_statevector_bytes=2**30, backends=frozenset(bk.backend_names()), cost=COST, big_threads=1
)


def _random(n, depth=10, seed=0, measure=True):
    q = cirq.LineQubit.range(n)
    c = cirq.testing.random_circuit(q, n_moments=depth, op_density=0.8, random_state=seed)
    return c + cirq.measure(*q, key="m") if measure else c


def test_analysis_facts():
    q = cirq.LineQubit.range(3)
    theta = sympy.Symbol("theta")
    c = cirq.Circuit(cirq.H(q[0]), cirq.CNOT(q[0], q[1]), cirq.rx(theta).on(q[2]), cirq.measure(*q, key="m"))
    info = analyze(c)
    assert (info.num_qubits, info.depth, info.num_ops, info.two_qubit_ops) == (3, 3, 4, 2)
    assert info.unresolved == ("theta",) and not info.is_clifford
    assert info.has_measurements and info.terminal_measurements and info.measurement_keys == ("m",)
    bell = cirq.Circuit(cirq.H(q[0]), cirq.CNOT(q[0], q[1]), cirq.measure(q[0], q[1], key="b"))
    assert analyze(bell).is_clifford
    noisy = cirq.Circuit(cirq.H(q[0]), cirq.depolarize(0.1).on(q[0]), cirq.measure(q[0], key="m"))
    assert analyze(noisy).has_noise and analyze(noisy).per_repetition
    mid = cirq.Circuit(cirq.H(q[0]), cirq.measure(q[0], key="a"), cirq.H(q[0]), cirq.measure(q[0], key="b"))
    assert not analyze(mid).terminal_measurements and analyze(mid).per_repetition


def _mixed(seed):
    """A random circuit with measurements anywhere, noise and parameters: every kind analyze tells apart."""
    rng = np.random.default_rng(seed)
    q = cirq.LineQubit.range(int(rng.integers(1, 6)))
    extra = []
    for _ in range(int(rng.integers(0, 5))):
        target = q[int(rng.integers(len(q)))]
        extra.append(
            [
                cirq.measure(target, key=f"k{rng.integers(3)}"),
                cirq.measure(*q, key="all"),
                cirq.depolarize(0.1).on(target),
                cirq.rx(sympy.Symbol("t")).on(target),
                cirq.X(target).with_tags("tagged"),
            ][int(rng.integers(5))]
        )
    before = cirq.testing.random_circuit(q, n_moments=int(rng.integers(0, 8)), op_density=0.7, random_state=seed)
    after = cirq.testing.random_circuit(q, n_moments=int(rng.integers(0, 3)), op_density=0.5, random_state=seed + 1)
    return before + cirq.Circuit(extra) + after


def test_analysis_agrees_with_cirq_on_random_circuits():
    # analyze walks moments backwards and caches gate facts by object: check
    # every fact against cirq's own (slower) answer, on circuits where each matters.
    for seed in range(300):
        c = _mixed(seed)
        info = analyze(c)
        ops = list(c.all_operations())
        assert info.num_qubits == len(c.all_qubits()) and info.depth == len(c) and info.num_ops == len(ops), seed
        assert info.two_qubit_ops == sum(len(op.qubits) >= 2 for op in ops), seed
        assert info.terminal_measurements == c.are_all_measurements_terminal(), seed
        keys = [k for op in ops if cirq.is_measurement(op) for k in sorted(cirq.measurement_key_names(op))]
        assert info.measurement_keys == tuple(dict.fromkeys(keys)), seed
        assert info.has_noise == any(not cirq.has_unitary(op) and not cirq.is_measurement(op) and
                                     not cirq.is_parameterized(op) for op in ops), seed
        assert info.unresolved == tuple(sorted(cirq.parameter_names(c))), seed
        assert info.is_clifford == all(
            cirq.is_measurement(op)
            or (not cirq.is_parameterized(op) and cirq.has_unitary(op) and bool(cirq.has_stabilizer_effect(op)))
            for op in ops
        ), seed
        assert sum(info.gate_counts.values()) == len(ops), seed
    # Equal gates that are distinct objects, and a gate seen first inside a tagged operation.
    g1, g2 = cirq.rx(0.25), cirq.rx(0.25)
    assert g1 is not g2
    q = cirq.LineQubit(0)
    for c in (cirq.Circuit(g1(q), g2(q)), cirq.Circuit(cirq.depolarize(0.2).on(q)), cirq.Circuit(g1(q))):
        info = analyze(c)
        assert info.gate_counts == {type(c[0].operations[0].gate).__name__: len(c)}
        assert info.has_noise == (len(c) == 1 and not cirq.has_unitary(c[0].operations[0]))


def test_unsupported_gate_is_found():
    class Opaque(cirq.Gate):
        def _num_qubits_(self):
            return 1

    q = cirq.LineQubit(0)
    info = analyze(cirq.Circuit(Opaque().on(q)))
    assert info.unsupported_gates == ("Opaque",)


def test_cost_model_grows_with_width_and_repetitions():
    small, big = analyze(_random(6)), analyze(_random(20))
    assert COST.estimate(big) > 10 * COST.estimate(small)
    assert COST.estimate(big, threads=2) < COST.estimate(big)
    noisy = analyze(cirq.Circuit(cirq.H(cirq.LineQubit(0)), cirq.depolarize(0.1).on(cirq.LineQubit(0))))
    assert COST.estimate(noisy, repetitions=100) > 20 * COST.estimate(noisy, repetitions=1)
    assert CostModel.from_dict(COST.to_dict()) == COST


def test_calibration_measures_something():
    m = CostModel.calibrate(repeats=1)
    assert m.per_circuit > 0 and m.per_op > 0 and m.per_amp_op > 0 and m.per_amp_term > 0
    assert CostModel.from_dict(m.to_dict()) == m


def test_expectation_estimates_count_the_observables_terms():
    model = CostModel(per_circuit=2e-4, per_op=3e-5, per_amp_op=4e-10, per_amp_term=4e-9)
    info = analyze(_random(16, measure=False))
    assert model.estimate(info, terms=10) == pytest.approx(model.estimate(info) + 10 * 4e-9 * 2**16)
    q = cirq.LineQubit.range(16)
    zz = cirq.PauliSum.from_pauli_strings([cirq.Z(q[i]) * cirq.Z(q[i + 1]) for i in range(10)])
    view = ClusterView(
        slots=2, max_statevector_bytes=2**30, backends=frozenset(bk.backend_names()), cost=model, big_threads=1
    )
    (job,) = build_jobs([_random(16, measure=False)], [None], [1], work="expectation", simulator="qsim", view=view,
                        seeds=SeedSource(1), extra=[{"observables": [zz], "qubit_order": q}])
    assert job.est_seconds == pytest.approx(model.estimate(info, terms=10))
    # A worker model from before terms were measured still loads.
    assert CostModel.from_dict({"per_circuit": 1, "per_op": 1, "per_amp_op": 1}).per_amp_term == 0


def test_priority_classes():
    levels = [resolve_priority(name) for name in ("low", "normal", "high", "critical")]
    assert levels == sorted(set(levels))
    assert resolve_priority(7) == 7
    with pytest.raises(ValueError, match="priority='urgent'"):
        resolve_priority("urgent")


def test_small_jobs_are_packed_and_big_ones_run_alone_longest_first():
    circuits = [_random(5, seed=i) for i in range(40)] + [_random(22, seed=99)]
    jobs = build_jobs(
        circuits, [None] * 41, [100] * 41, work="sample", simulator="qsim", view=VIEW, seeds=SeedSource(1)
    )
    target = 0.02
    chunks = make_chunks(jobs, VIEW, target)
    assert len(chunks[0].tasks) == 1 and chunks[0].qubits == 22  # biggest first
    assert [c.est_seconds for c in chunks] == sorted((c.est_seconds for c in chunks), reverse=True)
    small_chunks = chunks[1:]
    assert 1 < len(small_chunks) < 40
    assert sorted(t.index for c in chunks for t in c.tasks) == list(range(41))
    ann = chunks[0].annotation(priority=10)
    assert ann.kind == "circuit" and ann.qubits == 22 and ann.priority == 10 and ann.est_seconds > 0
    assert TaskAnnotation.from_dict(ann.to_dict()) == ann  # what the scheduler side reads back
    assert TaskAnnotation.from_dict({"qubits": 20, "gpu": 1}) is None  # a user's task: not a circuit task
    assert chunks[0].cost_class != small_chunks[-1].cost_class


def test_chunks_per_slot_and_short_chunks_for_low_priority_backlogs():
    circuits = [_random(12, depth=20, seed=i) for i in range(400)]
    jobs = build_jobs(
        circuits, [None] * 400, [100] * 400, work="sample", simulator="qsim", view=VIEW, seeds=SeedSource(1)
    )
    total = sum(j.est_seconds for j in jobs)
    with dask.config.set({"qdask.quantum.max-chunk-duration": "1h", "qdask.quantum.chunks-per-slot": 8}):
        normal = target_chunk_seconds(jobs, VIEW)
        assert normal == pytest.approx(total / (8 * VIEW.slots))
        sizes = [c.est_seconds for c in make_chunks(jobs, VIEW, normal)]
        # About 16 chunks of `normal`; the batch ends with chunks tapering to
        # min-chunk-duration (50 ms), so no slot idles for a whole chunk.
        assert sizes[0] == pytest.approx(normal, rel=0.1) and sizes[12] > 0.9 * normal
        assert all(s <= 0.05 * 1.2 for s in sizes[-4:])
        assert sum(sizes) == pytest.approx(total) and 16 <= len(sizes) <= 16 + 2 * VIEW.slots + 1
        # Below normal priority: min-chunk-duration, so urgent work overtakes it quickly.
        low = target_chunk_seconds(jobs, VIEW, priority=resolve_priority("low"))
    assert low == 0.05 < normal
    assert len(make_chunks(jobs, VIEW, low)) == pytest.approx(total / low, abs=2) and total / low > 32
    # As a ceiling (the engine's backlogs): no chunk of several circuits runs past it.
    backlog = make_chunks(jobs, VIEW, low, ceiling=True)
    assert all(c.est_seconds <= low for c in backlog if len(c.tasks) > 1)
    assert sum(c.est_seconds for c in backlog) == pytest.approx(total) and len(backlog) <= 1.6 * total / low
    # Circuits of over half the ceiling run one per chunk: an urgent one waits for one of them at most.
    wide = build_jobs([_random(16, depth=20, seed=i) for i in range(6)], [None] * 6, [10] * 6, work="sample",
                      simulator="qsim", view=VIEW, seeds=SeedSource(1))
    each = min(j.est_seconds for j in wide)
    assert [len(c.tasks) for c in make_chunks(wide, VIEW, 1.9 * each, ceiling=True)] == [1] * 6
    assert max(len(c.tasks) for c in make_chunks(wide, VIEW, 1.9 * each)) == 2


def test_per_repetition_jobs_split_into_seeded_blocks():
    q = cirq.LineQubit.range(4)
    noisy = cirq.Circuit(cirq.H.on_each(*q), cirq.depolarize(0.05).on_each(*q), cirq.measure(*q, key="m"))
    jobs = build_jobs([noisy], [None], [1000], work="sample", simulator="auto", view=VIEW, seeds=SeedSource(3))
    assert jobs[0].backend == "qsim-trajectories" and len(jobs[0].seeds) == 1000  # one seed per repetition
    chunks = make_chunks(jobs, VIEW, target=jobs[0].est_seconds / 4)
    blocks = sorted((t.start, t.repetitions) for c in chunks for t in c.tasks)
    assert len(blocks) == 4 and sum(r for _, r in blocks) == 1000
    seeds = np.concatenate([t.seeds for c in sorted(chunks, key=lambda c: c.tasks[0].start) for t in c.tasks])
    assert np.array_equal(seeds, jobs[0].seeds)


def test_seed_source_matches_qsim_draws():
    a, b = SeedSource(5), np.random.RandomState(5)
    assert list(a.draw(3)) == [b.randint(2**31 - 1) for _ in range(3)]


def _qsim_records(circuit, repetitions, seed):
    import qsimcirq

    result = qsimcirq.QSimSimulator(seed=seed).run(circuit, repetitions=repetitions)
    return {k: np.asarray(v, dtype=np.int8) for k, v in result.records.items()}


def test_final_state_sampling_equals_qsimcirq_bit_for_bit():
    """qdask's sampling path for terminal measurements gives QSimSimulator(seed).run's records exactly."""
    grid = cirq.GridQubit.rect(2, 3)
    body = cirq.testing.random_circuit(grid, n_moments=8, op_density=0.8, random_state=3)
    line = cirq.LineQubit.range(5)
    circuits = [
        # invert masks, a key measured twice, qubits out of order, one moment with two keys
        body
        + cirq.Moment([cirq.measure(grid[0], grid[4], key="a", invert_mask=(True,)), cirq.measure(grid[2], key="b")])
        + cirq.measure(grid[3], grid[1], key="a"),
        body + cirq.measure(*grid[::-1], key="m"),
        # a qubit only measured; qubit 0 unused
        cirq.Circuit(cirq.H.on_each(*line[1:4]), cirq.CZ(line[1], line[3]), cirq.measure(line[4], line[2], key="z")),
        _random(12, depth=12, seed=5),
    ]
    for i, circuit in enumerate(circuits):
        for seed in (1, 2**30 + 7):
            drawn = SeedSource(seed).draw(1)
            got = bk.QSimBackend().sample(circuit, 257, bk.RunOptions(seeds=drawn))
            want = _qsim_records(circuit, 257, seed)
            assert got.keys() == want.keys(), i
            for key in want:
                assert got[key].dtype == np.int8 and np.array_equal(got[key], want[key]), (i, key)
    confused = cirq.Circuit(cirq.H(line[0]), cirq.measure(line[0], key="c", confusion_map={(0,): np.eye(2)}))
    with pytest.raises(ValueError):  # refused as qsimcirq refuses it
        _qsim_records(confused, 10, 1)
    with pytest.raises(ValueError):
        bk.QSimBackend().sample(confused, 10, bk.RunOptions(seeds=np.array([1])))


class _UnitaryOnly(cirq.Gate):
    """A gate qsimcirq knows only by its unitary (translated as a matrix gate)."""

    def _num_qubits_(self):
        return 2

    def _unitary_(self):
        return cirq.unitary(cirq.CZ ** 0.3) @ np.kron(cirq.unitary(cirq.H), np.eye(2))


def _gate_kinds(rng):
    """Every kind of operation the compact form takes, with random parameters: (qubits, factory)."""
    t = lambda: float(rng.uniform(-2, 2))  # noqa: E731
    one = [cirq.H, cirq.X, cirq.Y, cirq.Z, cirq.S, cirq.T, cirq.I]
    return [
        (1, lambda q: rng.choice(one)(*q)),
        (1, lambda q: (cirq.X ** t())(*q)), (1, lambda q: (cirq.Y ** t())(*q)), (1, lambda q: (cirq.Z ** t())(*q)),
        (1, lambda q: cirq.rx(t())(*q)), (1, lambda q: cirq.ry(t())(*q)), (1, lambda q: cirq.rz(t())(*q)),
        (1, lambda q: cirq.HPowGate(exponent=t(), global_shift=t())(*q)),
        (1, lambda q: cirq.PhasedXPowGate(phase_exponent=t(), exponent=t())(*q)),
        (1, lambda q: cirq.PhasedXZGate(x_exponent=t(), z_exponent=t(), axis_phase_exponent=t())(*q)),
        (1, lambda q: cirq.MatrixGate(cirq.testing.random_unitary(2, random_state=int(rng.integers(2**31))))(*q)),
        (1, lambda q: cirq.Z(*q).with_tags("tagged")),
        (2, lambda q: rng.choice([cirq.CZ, cirq.CNOT, cirq.SWAP, cirq.ISWAP, cirq.XX, cirq.YY, cirq.ZZ])(*q)),
        (2, lambda q: (rng.choice([cirq.CZ, cirq.CNOT, cirq.SWAP, cirq.ISWAP, cirq.XX, cirq.YY, cirq.ZZ]) ** t())(*q)),
        (2, lambda q: cirq.CXPowGate(exponent=t(), global_shift=-0.5)(*q)),
        (2, lambda q: cirq.PhasedISwapPowGate(phase_exponent=t(), exponent=t())(*q)),
        (2, lambda q: cirq.FSimGate(theta=t(), phi=t())(*q)),
        (2, lambda q: cirq.TwoQubitDiagonalGate(list(rng.uniform(-3, 3, 4)))(*q)),
        (2, lambda q: cirq.MatrixGate(cirq.testing.random_unitary(4, random_state=int(rng.integers(2**31))))(*q)),
        (2, lambda q: cirq.X(q[1]).controlled_by(q[0])),
        (2, lambda q: cirq.givens(t())(*q)), (2, lambda q: cirq.riswap(t())(*q)),
        (2, lambda q: cirq.QuantumFourierTransformGate(2)(*q)),  # decomposed
        (2, lambda q: _UnitaryOnly()(*q)),  # qsimcirq's fallback: a matrix gate
        (3, lambda q: cirq.ThreeQubitDiagonalGate(list(rng.uniform(-3, 3, 8)))(*q)),
        (3, lambda q: rng.choice([cirq.CCZ, cirq.CCX, cirq.CSWAP])(*q)),
        (3, lambda q: (rng.choice([cirq.CCZ, cirq.CCX]) ** t())(*q)),
        (3, lambda q: cirq.ControlledGate(cirq.Y ** 0.5, num_controls=2, control_values=[0, 1])(*q)),
        (3, lambda q: cirq.MatrixGate(cirq.testing.random_unitary(8, random_state=int(rng.integers(2**31))))(*q)),
        (3, lambda q: cirq.qft(*q)),  # a decomposed CircuitOperation-free sequence
    ]


def _random_compact_circuit(rng, kinds):
    n = int(rng.integers(3, 8))
    qubits = cirq.GridQubit.rect(1, n) if rng.random() < 0.3 else cirq.LineQubit.range(n)
    ops = []
    for _ in range(int(rng.integers(5, 30))):
        width, make = kinds[int(rng.integers(len(kinds)))]
        ops.append(make(list(rng.choice(qubits, size=width, replace=False))))
    circuit = cirq.Circuit(ops)
    if rng.random() < 0.2:
        circuit.insert(int(rng.integers(len(circuit) + 1)), cirq.Moment())
    # 1-3 keys on disjoint subsets, inverted bits, a key measured twice, in one or two final moments;
    # a qubit may be only measured.
    measured = list(rng.permutation(qubits)) + ([cirq.LineQubit(50)] if rng.random() < 0.2 else [])
    width = max(1, len(measured) // 4)
    keys = []
    for k, start in enumerate(range(0, len(measured) - width + 1, width)):
        subset = measured[start : start + width]
        invert = tuple(bool(b) for b in rng.integers(0, 2, len(subset)))
        keys.append(cirq.measure(*subset, key=f"k{min(k, int(rng.integers(1, 4)))}", invert_mask=invert))
    split = int(rng.integers(1, len(keys) + 1))
    return circuit + cirq.Moment(keys[:split]) + cirq.Moment(keys[split:])


def _compact_records(circuit, repetitions, seed, resolver=None):
    from qdask.quantum import qsim_fast

    compact = qsim_fast.encode(circuit)
    assert compact is not None
    module, options = bk._qsim_settings(bk.QSimBackend, 1, 2)
    table = qsim_fast.GateTable.for_circuits([compact])
    # The table travels to the worker pickled: send it (and the circuit) as Dask would.
    table, compact = pickle.loads(pickle.dumps((table, compact)))
    return qsim_fast.sample(module, options, compact, table, repetitions, int(SeedSource(seed).draw(1)[0]), resolver)


def test_compact_sampling_equals_qsimcirq_bit_for_bit_on_random_circuits():
    """300 random circuits over every gate kind the compact form takes: the records of QSimSimulator(seed).run."""
    rng = np.random.default_rng(23)
    kinds = _gate_kinds(rng)
    seen = set()
    for i in range(300):
        circuit = _random_compact_circuit(rng, kinds)
        seen.update(type(op.gate).__name__ for op in circuit.all_operations())
        reps = int(rng.integers(2, 40))
        got = _compact_records(circuit, reps, i)
        want = _qsim_records(circuit, reps, i)
        assert got.keys() == want.keys(), i
        for key in want:
            assert got[key].dtype == np.int8 and np.array_equal(got[key], want[key]), (i, key, circuit)
    assert len(seen) >= 30, sorted(seen)


def test_compact_sweep_binds_only_its_parameterised_gates():
    """A QAOA-like circuit is encoded once; each point's records equal qsimcirq's run of the resolved circuit."""
    from qdask.quantum import qsim_fast

    q = cirq.LineQubit.range(6)
    gamma, beta = sympy.symbols("gamma beta")
    layer = [cirq.H.on_each(*q), [cirq.ZZ(a, b) ** gamma for a, b in zip(q, q[1:])], cirq.rx(2 * beta).on_each(*q)]
    circuit = cirq.Circuit(layer * 2, cirq.measure(*q, key="m"))
    compact = qsim_fast.encode(circuit)
    assert compact.parameterized and qsim_fast.encode(circuit) is compact  # cached
    for i, (g, b) in enumerate([(0.1, 0.2), (0.7, -0.3), (1.0, 0.25)]):
        resolver = cirq.ParamResolver({"gamma": g, "beta": b})
        got = _compact_records(circuit, 64, i, resolver)
        want = _qsim_records(cirq.resolve_parameters(circuit, resolver), 64, i)
        assert np.array_equal(got["m"], want["m"]), i


def test_compact_form_refuses_what_qsimcirq_refuses():
    """No compact form where qsimcirq raises: the cirq path then raises the same error."""
    from qdask.quantum import qsim_fast

    q = cirq.LineQubit.range(3)
    confused = cirq.Circuit(cirq.H(q[0]), cirq.measure(q[0], key="c", confusion_map={(0,): np.eye(2)}))
    widths = cirq.Circuit(cirq.H(q[0]), cirq.measure(q[0], key="a"), cirq.measure(q[1], q[2], key="a"))
    wide = cirq.Circuit(cirq.MatrixGate(cirq.testing.random_unitary(128, random_state=1))(*cirq.LineQubit.range(7)),
                        cirq.measure(q[0], key="m"))
    class Broken(cirq.Gate):  # its unitary raises: the error comes from the worker, in its circuit's result
        def _num_qubits_(self):
            return 1

        def _unitary_(self):
            raise ValueError("broken gate")

    broken = cirq.Circuit(Broken()(q[0]), cirq.measure(q[0], key="m"))
    for circuit in (confused, widths, wide, broken):
        assert qsim_fast.encode(circuit) is None
        with pytest.raises((ValueError, NotImplementedError)):
            _qsim_records(circuit, 10, 1)
        with pytest.raises((ValueError, NotImplementedError)):
            bk.QSimBackend().sample(circuit, 10, bk.RunOptions(seeds=np.array([1])))


def test_planner_sends_the_compact_form_only_where_one_simulation_serves_every_repetition():
    """Compact: sampled qsim circuits measured at the end, >1 repetition. Else, or with noisy devices: cirq."""
    from dataclasses import replace

    from qdask.quantum.qsim_fast import CompactCircuit

    q = cirq.LineQubit.range(3)
    body = cirq.Circuit(cirq.H(q[0]), cirq.rx(0.3)(q[1]), cirq.CZ(q[0], q[2]) ** 0.5)
    plain = body + cirq.measure(*q, key="m")
    mid = cirq.Circuit(cirq.H(q[0]), cirq.measure(q[0], key="a"), cirq.CNOT(q[0], q[1]), cirq.measure(q[1], key="b"))
    noisy = body + cirq.depolarize(0.1).on_each(*q) + cirq.measure(*q, key="m")

    def paths(circuits, reps=10, view=VIEW, simulator="auto"):
        jobs = build_jobs(circuits, [cirq.ParamResolver()] * len(circuits), [reps] * len(circuits), work="sample",
                          simulator=simulator, view=view, seeds=SeedSource(1))
        chunks = make_chunks(jobs, view, 10.0)
        tasks = [t for c in chunks for t in c.tasks]
        return [isinstance(t.circuit, CompactCircuit) for t in sorted(tasks, key=lambda t: t.index)]

    assert paths([plain, mid, noisy]) == [True, False, False]
    assert paths([plain], reps=1) == [False]  # qsimcirq simulates a single repetition on its own
    assert paths([plain], view=replace(VIEW, noisy_devices=True)) == [False]
    assert not ClusterView.from_rows([{"worker": "w", "resources": {"quantum": 1}, "error_rate": 0.0}]).noisy_devices
    assert ClusterView.from_rows([{"worker": "w", "resources": {"quantum": 1}, "error_rate": 0.01}]).noisy_devices


def test_a_compact_circuit_is_refused_by_a_worker_whose_device_noise_came_after_planning(monkeypatch):
    """Noise needs the cirq circuit the compact form no longer carries: a clear error, not noiseless samples."""
    from qdask.hybrid import noise
    from qdask.quantum import qsim_fast

    circuit = _random(3, depth=4, seed=1)
    compact = qsim_fast.encode(circuit)
    table = qsim_fast.GateTable.for_circuits([compact])
    opts = bk.RunOptions(seeds=np.array([5]))
    assert bk.QSimBackend().sample_compact(compact, table, cirq.ParamResolver(), 10, opts)["m"].shape == (10, 1, 3)
    monkeypatch.setattr(noise, "device_noise", lambda: noise.DeviceNoise(gate_error=0.01))
    with pytest.raises(RuntimeError, match="submit the batch again"):
        bk.QSimBackend().sample_compact(compact, table, cirq.ParamResolver(), 10, opts)


def test_analysis_and_compact_form_are_reused_until_the_circuit_changes():
    from qdask.quantum import qsim_fast

    circuit = _random(4, depth=6, seed=2)
    info, compact = analyze(circuit), qsim_fast.encode(circuit)
    assert analyze(circuit) is info and qsim_fast.encode(circuit) is compact
    assert analyze(circuit.copy()) == info  # an equal circuit is analysed on its own
    circuit.insert(0, cirq.X(cirq.LineQubit(0)))  # changed in place: its moments are other objects
    assert analyze(circuit).num_ops == info.num_ops + 1
    assert qsim_fast.encode(circuit) is not compact and len(qsim_fast.encode(circuit).ops) > len(compact.ops)
    # Full, the memo drops the least recently used circuit: new circuits do not evict one in use.
    from qdask.quantum.analysis import CircuitMemo

    memo, circuits = CircuitMemo(size=3), [_random(2, depth=2, seed=s) for s in range(4)]
    for c in circuits[:3]:
        memo.put(c, c)
    assert memo.get(circuits[0]) is circuits[0]
    memo.put(circuits[3], circuits[3])
    assert memo.get(circuits[1]) is None and all(memo.get(c) is c for c in (circuits[0], circuits[2], circuits[3]))


def test_hand_off_holds_the_next_chunk_until_the_result_is_fetched_or_the_limit():
    import threading
    import time
    from types import SimpleNamespace

    from qdask.quantum.gil import HandOff

    worker, hand_off = SimpleNamespace(transfer_outgoing_count_total=3), HandOff()
    t0 = time.monotonic()
    hand_off.wait(worker)  # not armed: no wait
    assert time.monotonic() - t0 < 1
    hand_off.arm(worker, limit=30)
    threading.Timer(0.05, lambda: setattr(worker, "transfer_outgoing_count_total", 4)).start()
    t0 = time.monotonic()
    hand_off.wait(worker)  # released by the fetch, long before the limit
    assert 0.04 <= time.monotonic() - t0 < 20
    hand_off.arm(worker, limit=0.05)
    t0 = time.monotonic()
    hand_off.wait(worker)  # nothing fetched: released at the limit, then disarmed
    assert time.monotonic() - t0 >= 0.05 and hand_off.deadline == 0.0


def test_inbox_lets_the_event_loop_handle_a_message_before_the_next_circuit_holds_the_gil():
    """A message needs several turns of the worker's loop; qsim holds the GIL through each circuit."""
    import asyncio
    import socket
    import threading
    import time
    from types import SimpleNamespace

    import qsimcirq

    from qdask.quantum.gil import Inbox

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    scheduler_end, worker_end = socket.socketpair()
    worker_end.setblocking(False)
    handled: list[float] = []

    def read() -> None:  # like Dask's comm: read, then two more turns to handle the message
        worker_end.recv(64)
        loop.call_soon(loop.call_soon, lambda: handled.append(time.perf_counter()))

    registered = threading.Event()
    loop.call_soon_threadsafe(lambda: (loop.add_reader(worker_end, read), registered.set()))
    assert registered.wait(10)
    turns: list[int] = []

    def add_callback(fn, *args):
        turns.append(1)
        loop.call_soon_threadsafe(fn, *args)

    worker = SimpleNamespace(loop=SimpleNamespace(add_callback=add_callback, asyncio_loop=loop),
                             batched_stream=SimpleNamespace(comm=SimpleNamespace(stream=SimpleNamespace(socket=worker_end))))
    circuit = _random(21, depth=12, seed=3)
    sim = qsimcirq.QSimSimulator()
    try:
        inbox = Inbox.of(worker)
        inbox.after_circuit()  # after a short circuit: no wait
        assert not turns
        sim.run(circuit, repetitions=1)  # a long circuit with nothing to read after it: one turn
        inbox.after_circuit()
        assert len(turns) == 1
        scheduler_end.send(b"compute-task")
        sim.run(circuit, repetitions=1)  # the message arrives during a circuit (GIL held)
        inbox.after_circuit()
        started = time.perf_counter()
        sim.run(circuit, repetitions=1)  # the next circuit
        # Handled (three turns of the loop) before the next circuit took the GIL.
        assert handled and handled[0] < started, (turns, handled, started)
        assert 2 <= len(turns) <= 1 + Inbox.TURNS
        with dask.config.set({"qdask.quantum.inbox-after": None}):
            assert Inbox.of(worker) is None  # turned off: no inbox, no turn
        assert Inbox.of(None) is None  # outside a worker
    finally:
        loop.call_soon_threadsafe(loop.stop)
        scheduler_end.close()
        worker_end.close()


def test_dask_sizes_a_result_by_its_payload():
    from dask.sizeof import sizeof

    from qdask.quantum.task import TaskResult, _nbytes

    state = np.zeros(2**20, dtype=np.complex64)  # what a 20-qubit final state holds: 8 MiB
    assert sizeof([TaskResult(0, 0, "qsim", 0.1, "w", state, _nbytes(state))] * 3) >= 3 * state.nbytes


def test_pack_unpack_roundtrip_is_compact():
    rng = np.random.default_rng(0)
    rec = {"m": rng.integers(0, 2, size=(1000, 1, 20)).astype(np.int8), "q": np.full((1000, 1, 1), 2, np.int8)}
    packed = pack_records(rec)
    assert packed["m"][0].nbytes * 6 < rec["m"].nbytes
    back = unpack_records(packed)
    assert all(np.array_equal(back[k], rec[k]) for k in rec)


MAIN_GATE = textwrap.dedent(
    """
    import sys
    import cirq
    from qdask.quantum.pickling import dump_tasks

    class Shifted(cirq.Gate):  # lives in __main__: no worker can import it
        def _num_qubits_(self):
            return 1
        def _unitary_(self):
            return cirq.unitary(cirq.X)

    q = cirq.LineQubit(0)
    sys.stdout.buffer.write(dump_tasks([cirq.Circuit(Shifted().on(q), cirq.measure(q, key="m"))]))
    """
)


def test_expectation_points_of_a_chunk_run_as_one_qsimcirq_sweep(monkeypatch):
    import qsimcirq

    from qdask.quantum.execute import run_chunk

    q = cirq.LineQubit.range(6)
    a, b = sympy.symbols("a b")
    circuit = cirq.Circuit(cirq.H.on_each(*q), [cirq.ZZ(q[i], q[i + 1]) ** a for i in range(5)], cirq.rx(b).on_each(*q))
    obs = cirq.Z(q[0]) * cirq.Z(q[1]) + 0.5 * cirq.X(q[2])
    points = [cirq.ParamResolver({"a": 0.1 * i, "b": 0.3 - 0.05 * i}) for i in range(7)]
    jobs = build_jobs([circuit], [points], [1], work="expectation", simulator="qsim", view=VIEW, seeds=SeedSource(5),
                      extra=[{"observables": [cirq.PauliSum.wrap(obs)], "qubit_order": q, "initial_state": 0}])
    (chunk,) = make_chunks(jobs, VIEW, target=1.0)
    blob = dump_tasks(chunk.tasks)
    assert b"cloudpickle" not in blob  # PauliSum goes by its terms, through the fast pickler
    # cirq's default qubit order holds a lambda: it goes by name, and loads as the same object.
    default_extra = [{"observables": [obs], "qubit_order": cirq.QubitOrder.DEFAULT, "initial_state": 0}]
    default_jobs = build_jobs([circuit], [points], [1], work="expectation", simulator="qsim", view=VIEW,
                              seeds=SeedSource(5), extra=default_extra)
    (default,) = make_chunks(default_jobs, VIEW, target=1.0)
    default_blob = dump_tasks(default.tasks)
    assert b"cloudpickle" not in default_blob
    assert load_tasks(default_blob)[0].extra["qubit_order"] is cirq.QubitOrder.DEFAULT
    calls = []
    sweep = bk.QSimBackend.expectation_sweep
    monkeypatch.setattr(
        bk.QSimBackend, "expectation_sweep", lambda self, *args: calls.append(args) or sweep(self, *args)
    )
    results = run_chunk(blob)
    assert len(calls) == 1 and len(calls[0][2]) == 7  # one call, seven points
    serial = qsimcirq.QSimSimulator(seed=5).simulate_expectation_values_sweep(circuit, [obs], points)
    assert [r.index for r in results] == list(range(7))
    assert np.array_equal([r.payload[0] for r in results], [v[0] for v in serial])  # the same numbers, not just close

    def broken(self, *args):
        raise RuntimeError("sweep failed")

    monkeypatch.setattr(bk.QSimBackend, "expectation_sweep", broken)
    # A failing sweep reruns its points one by one: each failure names its circuit and keeps its type.
    failed = run_chunk(blob)
    assert [r.index for r in failed] == list(range(7))
    assert all(type(r.payload.error) is RuntimeError for r in failed)
    assert "circuit 0 failed on backend 'qsim'" in failed[0].payload.error.__notes__[-1]


def test_dump_tasks_sends_classes_from_main_by_value():
    # The fast standard pickler would refer to __main__.Shifted, which a worker cannot load.
    blob = subprocess.run([sys.executable, "-c", MAIN_GATE], capture_output=True, check=True).stdout
    (circuit,) = load_tasks(blob)
    np.testing.assert_allclose(cirq.unitary(circuit[:1]), cirq.unitary(cirq.X))


def test_dump_tasks_falls_back_for_local_classes_and_keeps_module_ones_fast():
    class Local(cirq.Gate):
        def _num_qubits_(self):
            return 1

        def _unitary_(self):
            return cirq.unitary(cirq.Z)

    q = cirq.LineQubit(0)
    local = cirq.Circuit(Local().on(q))
    assert cirq.unitary(load_tasks(dump_tasks([local]))[0]) == pytest.approx(cirq.unitary(cirq.Z))
    plain = [cirq.Circuit(cirq.H(q), cirq.measure(q, key="m"))]
    blob = dump_tasks(plain)
    assert b"cloudpickle" not in blob and load_tasks(blob) == plain


def test_a_batch_pickles_its_shared_circuit_and_observable_once_and_a_worker_loads_them_once():
    q = cirq.LineQubit.range(4)
    t = sympy.Symbol("t")
    circuit = cirq.Circuit(cirq.H.on_each(*q), [cirq.ZZ(a, b) ** t for a, b in zip(q, q[1:])])
    obs = cirq.PauliSum.from_pauli_strings([cirq.Z(a) * cirq.Z(b) for a, b in zip(q, q[1:])])
    points = [cirq.ParamResolver({t: 0.1 * i}) for i in range(8)]
    jobs = build_jobs([circuit], [points], [1], work="expectation", simulator="qsim", view=VIEW, seeds=SeedSource(5),
                      extra=[{"observables": [obs], "qubit_order": cirq.QubitOrder.DEFAULT}])
    chunks = [c.tasks for c in make_chunks(jobs, VIEW, target=jobs[0].est_seconds * 2.5)]
    assert len(chunks) >= 3
    other = build_jobs([_random(5, seed=9)], [None], [1], work="sample", simulator="qsim", view=VIEW,
                       seeds=SeedSource(1))
    chunks[0] += make_chunks(other, VIEW, target=1.0)[0].tasks  # in one chunk only: inline, in its pickle memo
    shared = Shared(chunks)
    blobs = [dump_tasks(c, shared) for c in chunks]
    assert len(shared.blobs) == 2 and id(other[0].circuit) not in shared.objects  # one circuit, one observable
    loaded = [load_tasks(b) for b in blobs]
    tasks = [t for chunk in loaded for t in chunk if t.work == "expectation"]
    assert all(t.circuit is tasks[0].circuit for t in tasks)  # loaded once on this "worker"
    assert tasks[0].circuit == circuit and tasks[-1].extra["observables"][0] == obs
    assert [t.resolver for t in tasks] == [t.resolver for c in chunks for t in c if t.work == "expectation"]
    assert loaded[0][-1].circuit == other[0].circuit


def test_a_worker_keeps_few_shared_objects():
    from qdask.quantum.pickling import _Loaded

    loaded = _Loaded(size=2, max_bytes=10_000)
    blobs = [dump_tasks([i]) for i in range(3)]
    assert [loaded.get(b) for b in blobs] == [[0], [1], [2]] and list(loaded.objects) == blobs[1:]
    big = dump_tasks([bytes(20_000)])
    assert loaded.get(big)[0] == bytes(20_000) and list(loaded.objects) == [big]  # over the bytes: only the newest
    assert loaded.get(big) is loaded.get(big) and loaded.nbytes == len(big)


def test_backend_choice():
    q = cirq.LineQubit.range(6)
    clifford = analyze(cirq.Circuit(cirq.H.on_each(*q), cirq.CNOT(q[0], q[1]), cirq.measure(*q, key="m")))
    assert bk.choose(clifford, "sample") == "stim"
    assert bk.choose(clifford, "state") == "cirq"  # simulate() returns its measurement values, as cirq's does
    noisy = analyze(cirq.Circuit(cirq.H(q[0]), cirq.amplitude_damp(0.1).on(q[0]), cirq.measure(q[0], key="m")))
    assert bk.choose(noisy, "sample") == "qsim-trajectories"
    # A noisy state is one trajectory, as qsimcirq gives it; the density matrix only by name.
    unmeasured = analyze(cirq.Circuit(cirq.H(q[0]), cirq.amplitude_damp(0.1).on(q[0])))
    assert bk.choose(unmeasured, "state") == "qsim-trajectories"
    assert bk.choose(analyze(_random(8)), "sample") == "qsim"
    wide_noisy = analyze(cirq.Circuit(cirq.depolarize(0.1).on_each(*cirq.LineQubit.range(14))))
    with pytest.raises(ValueError, match="density-matrix limit"):
        bk.choose(wide_noisy, "state", allowed=["density-matrix"])
    # What qsim cannot run goes to cirq's simulator, as do states of circuits that measure.
    feedback = analyze(cirq.Circuit(cirq.measure(q[0], key="a"), cirq.X(q[1]).with_classical_controls("a")))
    assert feedback.classical_control and bk.choose(feedback, "sample") == "cirq"
    qutrits = analyze(cirq.Circuit(cirq.measure(*cirq.LineQid.range(2, dimension=3), key="m")))
    assert qutrits.max_dimension == 3 and bk.choose(qutrits, "sample") == "cirq"
    assert bk.choose(analyze(_random(4, measure=False)), "state") == "qsim"


def test_unknown_backend_lists_installed():
    with pytest.raises(ValueError, match=r"installed backends are \[.*'qsim'"):
        bk.get_backend("qiskit")


def test_builtin_backends_come_from_entry_points():
    assert {"qsim", "qsim-trajectories", "stim", "density-matrix"} <= set(bk.backend_names())


def test_broken_backend_plugin_warns_instead_of_failing(monkeypatch):
    class EP:
        name, value = "broken", "nowhere:Nothing"

        def load(self):
            raise ImportError("no module named nowhere")

    class Good:
        name = "third-party"

        def available(self):
            return True

        def unsupported(self, info, work):
            return None

        def memory_bytes(self, info, work):
            return 1

        def version(self):
            return "1.0"

    class GoodEP:
        name, value = "third-party", "pkg:Good"

        def load(self):
            return Good

    monkeypatch.setattr(bk, "_REGISTRY", None)
    monkeypatch.setattr(bk, "entry_points", lambda group: [EP(), GoodEP()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = bk.backend_names()
    assert names == ["third-party"]
    assert any("broken" in str(w.message) for w in caught)
    monkeypatch.setattr(bk, "_REGISTRY", None)


def test_chunk_resources_ask_for_a_gpu_only_for_gpu_circuits():
    jobs = build_jobs([_random(5)], [None], [10], work="sample", simulator="qsim", view=VIEW, seeds=SeedSource(1))
    chunk = make_chunks(jobs, VIEW, target=1.0)[0]
    assert chunk.resources() == {"quantum": 1.0, "statevector_bytes": float(8 * 2**5)}
    chunk.tasks[0].backend = "qsim-gpu"
    assert chunk.resources()["gpu"] == 1.0


class _Done:
    """A completed future as ``Engine._completed`` sees one: a key and a status."""

    def __init__(self, key: str, status: str = "finished") -> None:
        self.key, self.status = key, status


class _Gatherer:
    """A client whose ``gather`` records its calls (and fails if told to)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def gather(self, futures: list[_Done]) -> list[str]:
        self.calls.append([f.key for f in futures])
        if self.fail:
            raise OSError("worker lost")
        return [f"result of {f.key}" for f in futures]


class _Batches:
    def __init__(self, batches: list[list[_Done]]) -> None:
        self._batches = batches

    def batches(self):
        yield from self._batches


def _engine(client: _Gatherer):
    from qdask.quantum.engine import Engine

    engine = Engine.__new__(Engine)  # only .client is used
    engine.client = client
    return engine


def test_collect_fetches_the_results_of_tasks_finished_meanwhile_in_one_gather():
    # One fut.result() each, the fetches queued behind one another and a batch ended with up
    # to 20 still to make (~70 ms of benchmarks/balance.py's 2 s mixed batch).
    client = _Gatherer()
    a, b, err, c = _Done("a"), _Done("b"), _Done("e", "error"), _Done("c")
    out = list(_engine(client)._completed(_Batches([[a, b, err], [c]]), fetch=True))
    assert client.calls == [["a", "b"]]  # one gather for the batch's finished ones; a lone one alone
    assert out == [(a, "result of a"), (b, "result of b"), (err, None), (c, None)]  # None: fut.result() raises/fetches
    # The guard fetches its own; a failed gather leaves each future to fetch alone (its own error).
    assert [r for _, r in _engine(_Gatherer())._completed(_Batches([[a, b]]), fetch=False)] == [None, None]
    assert [r for _, r in _engine(_Gatherer(fail=True))._completed(_Batches([[a, b]]), fetch=True)] == [None, None]
