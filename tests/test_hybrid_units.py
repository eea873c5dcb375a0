"""Pure logic of the hybrid layer: levels, planning switches, S-F cuts, parameter shift, noise, mitiq glue."""

from __future__ import annotations

import functools

import cirq
import networkx as nx
import numpy as np
import pytest
import qsimcirq
import sympy

from qdask.hybrid import schrodinger_feynman as sf
from qdask.hybrid.levels import OptimizationPolicy
from qdask.hybrid.noise import DeviceNoise
from qdask.hybrid.routing import LOWEST_ERROR
from qdask.hybrid.variational import (
    NotShiftableError,
    Objective,
    diagonal_expectation,
    expectation_estimator,
    qaoa_maxcut,
)
from qdask.quantum import backends as bk
from qdask.quantum.analysis import analyze
from qdask.quantum.cost import CostModel
from qdask.quantum.plan import ClusterView, SeedSource, build_jobs, make_chunks
from qdask.quantum.validate import CircuitTooWideError, UnsupportedGateError

COST = CostModel(per_circuit=2e-4, per_op=3e-5, per_amp_op=4e-10)
VIEW = ClusterView(
    slots=2, max_statevector_bytes=2**30, backends=frozenset(bk.backend_names()), cost=COST, big_threads=1
)
POLICIES = {level: OptimizationPolicy.for_level(level) for level in ("none", "basic", "aggressive")}


def _plan(circuits, *, work="sample", reps=100, policy, view=VIEW, extra=None, target=0.05):
    jobs = build_jobs(
        circuits, [None] * len(circuits), [reps] * len(circuits), work=work, simulator="auto", view=view,
        seeds=SeedSource(1), extra=extra, policy=policy,
    )
    return jobs, make_chunks(jobs, view, target, policy)


def _mixed_circuit(n, depth=5, seed=0):
    """Every gate family qsimh cuts, plus ones it must decompose (CCZ, a 4x4 matrix, a controlled H)."""
    q = cirq.LineQubit.range(n)
    rng = np.random.default_rng(seed)
    family = [cirq.CZ, cirq.ISWAP**0.5, cirq.FSimGate(0.3, 0.2), cirq.CNOT, cirq.SWAP, cirq.ZZ**0.3,
              cirq.MatrixGate(cirq.testing.random_unitary(4, random_state=seed)), cirq.ControlledGate(cirq.H)]
    c = cirq.Circuit()
    for d in range(depth):
        c.append(
            cirq.PhasedXZGate(x_exponent=rng.random(), z_exponent=rng.random(), axis_phase_exponent=rng.random())(x)
            for x in q
        )
        c.append(family[(d + i) % len(family)](q[i], q[i + 1]) for i in range(d % 2, n - 1, 2))
    return c + cirq.CCZ(q[0], q[n // 2], q[-1])


# -- levels ------------------------------------------------------------------------------
def test_levels_switch_table():
    none, basic, aggr = POLICIES["none"], POLICIES["basic"], POLICIES["aggressive"]
    assert not none.auto_backend and not none.batching and not none.split_paths
    assert basic.auto_backend and basic.batching and basic.split_paths and not basic.sf_fallback
    assert not basic.noise_routing and not basic.split_shots and basic.fusion_for(30) == 2
    assert aggr.sf_fallback and aggr.noise_routing and aggr.split_shots
    assert aggr.fusion_for(aggr.fusion_min_qubits) == aggr.fused_gate_size and aggr.fusion_for(4) == 2
    with pytest.raises(ValueError, match="optimization_level='fast'.*allowed"):
        OptimizationPolicy.for_level("fast")


def test_none_is_one_task_per_circuit_with_the_serial_backends():
    q = cirq.LineQubit.range(5)
    clifford = cirq.Circuit(cirq.H(q[0]), [cirq.CNOT(q[0], x) for x in q[1:]], cirq.measure(*q, key="m"))
    circuits = [clifford] * 6
    jobs, chunks = _plan(circuits, policy=POLICIES["none"])
    assert {j.backend for j in jobs} == {"qsim"}  # what QSimSimulator runs, not stim
    assert len(chunks) == 6 and all(len(c.tasks) == 1 for c in chunks)
    jobs, chunks = _plan(circuits, policy=POLICIES["basic"])
    assert {j.backend for j in jobs} == {"stim"} and len(chunks) < 6  # automatic choice, packed
    noisy = cirq.Circuit(cirq.H(q[0]), cirq.depolarize(0.1).on(q[0]), cirq.measure(q[0], key="m"))
    # A noisy state is one trajectory, as QSimSimulator gives it (the exact density matrix only by name).
    jobs, _ = _plan([noisy[:-1]], work="state", policy=POLICIES["none"], extra=[{"qubit_order": [q[0]]}])
    assert {j.backend for j in jobs} == {"qsim-trajectories"}


def test_aggressive_spreads_shots_fuses_wide_circuits_and_routes_samples():
    q = cirq.LineQubit.range(6)
    noisy = cirq.Circuit(cirq.H.on_each(*q), cirq.depolarize(0.05).on_each(*q), cirq.measure(*q, key="m"))
    view = ClusterView(slots=4, max_statevector_bytes=2**30, backends=VIEW.backends, cost=COST, big_threads=1)
    # Cheap enough to be one chunk at basic; spread over every slot at aggressive.
    _, basic = _plan([noisy], reps=2000, policy=POLICIES["basic"], view=view, target=10.0)
    jobs, aggr = _plan([noisy], reps=2000, policy=POLICIES["aggressive"], view=view, target=10.0)
    assert len(basic) == 1 and len(aggr) == 4
    assert sorted(t.start for c in aggr for t in c.tasks) == [0, 500, 1000, 1500]
    assert np.array_equal(np.concatenate([c.tasks[0].seeds for c in sorted(aggr, key=lambda c: c.tasks[0].start)]),
                          jobs[0].seeds)  # same seed stream: same samples as unsplit
    assert all(c.annotation(0).route == LOWEST_ERROR for c in aggr)
    assert "route" not in basic[0].annotation(0).to_dict()
    wide = cirq.Circuit(cirq.H.on_each(*cirq.LineQubit.range(18)), cirq.measure(*cirq.LineQubit.range(18), key="m"))
    for level, size in (("basic", 2), ("aggressive", POLICIES["aggressive"].fused_gate_size)):
        _, chunks = _plan([wide], policy=POLICIES[level])
        assert {t.fused_gate_size for c in chunks for t in c.tasks} == {size}


def test_too_wide_amplitudes_fall_back_to_qsimh_at_aggressive_only():
    q = cirq.LineQubit.range(30)
    c = cirq.Circuit(cirq.H.on_each(*q), [cirq.CZ(a, b) for a, b in zip(q, q[1:])])
    view = ClusterView(slots=2, max_statevector_bytes=2**28, backends=VIEW.backends, cost=COST, big_threads=1)
    extra = [{"qubit_order": q, "bitstrings": [0]}]
    with pytest.raises(CircuitTooWideError, match="simulator='qsimh'.*optimization_level='aggressive'"):
        _plan([c], work="amplitudes", policy=POLICIES["basic"], view=view, extra=extra)
    jobs, _ = _plan([c], work="amplitudes", policy=POLICIES["aggressive"], view=view, extra=extra)
    assert jobs[0].backend == bk.QSIMH and jobs[0].memory <= view.max_statevector_bytes
    q60 = cirq.LineQubit.range(60)
    with pytest.raises(CircuitTooWideError):  # even the halves do not fit
        _plan([cirq.Circuit(cirq.H.on_each(*q60))], work="amplitudes", policy=POLICIES["aggressive"], view=view,
              extra=[{"qubit_order": q60, "bitstrings": [0]}])


# -- Schrödinger-Feynman ----------------------------------------------------------------------
@pytest.mark.parametrize("n", [6, 11])
def test_path_sums_equal_state_vector_amplitudes(n):
    c = _mixed_circuit(n, seed=n)
    order = cirq.LineQubit.range(n)
    ref = cirq.final_state_vector(c, qubit_order=order, dtype=np.complex128)
    bitstrings = [0, 1, 5, 2**n - 1, 1234 % 2**n]
    prep = sf.prepare(c, order)
    cut = sf.plan_cut(prep, max_part=n // 2 + 1, tasks=8)
    assert cut.prefixes >= 8 and max(cut.sizes) <= n // 2 + 1
    # Any split of the prefix values sums to the whole.
    halves = [sf.path_amplitudes(prep, cut, bitstrings, a, b)[0] for a, b in ((0, 3), (3, cut.prefixes))]
    np.testing.assert_allclose(sum(halves) * prep.phase, ref[bitstrings], atol=1e-6)
    np.testing.assert_allclose(sf.serial_amplitudes(prep, cut, bitstrings), ref[bitstrings], atol=1e-6)


def test_cut_follows_the_fewest_gates_and_reversed_qubit_order():
    # Two 4-qubit blocks joined by one CZ: the cut goes between them, one Schmidt bit.
    q = cirq.LineQubit.range(8)

    def block(qs):
        return [cirq.H.on_each(*qs), [cirq.CNOT(a, b) for a, b in zip(qs, qs[1:])], cirq.T.on_each(*qs)]

    c = cirq.Circuit(block(q[:4]), block(q[4:]), cirq.CZ(q[3], q[4]), block(q[:4]), block(q[4:]))
    order = list(reversed(q))
    prep = sf.prepare(c, order)
    cut = sf.plan_cut(prep, max_part=6)
    assert cut.cut_bits == 1 and cut.sizes == (4, 4)
    ref = cirq.final_state_vector(c, qubit_order=order, dtype=np.complex128)
    np.testing.assert_allclose(sf.serial_amplitudes(prep, cut, range(0, 256, 17)), ref[list(range(0, 256, 17))],
                               atol=1e-6)


def test_prepare_rejects_what_paths_cannot_sum():
    q = cirq.LineQubit.range(3)
    with pytest.raises(UnsupportedGateError, match="not unitary"):
        sf.prepare(cirq.Circuit(cirq.H(q[0]), cirq.depolarize(0.1).on(q[1]), cirq.CZ(q[0], q[2])))
    with pytest.raises(UnsupportedGateError, match="mid-circuit"):
        sf.prepare(cirq.Circuit(cirq.measure(q[0]), cirq.H(q[0])))
    prep = sf.prepare(cirq.Circuit(cirq.H.on_each(*q), cirq.CZ(q[0], q[1]), cirq.CZ(q[1], q[2])))
    with pytest.raises(CircuitTooWideError, match="two parts of at most 1 qubits"):
        sf.plan_cut(prep, max_part=1)


def test_qsimh_backend_serial_amplitudes():
    c = _mixed_circuit(8, seed=3)
    amps = bk.get_backend(bk.QSIMH).amplitudes(c, [0, 7, 255], cirq.LineQubit.range(8), bk.RunOptions())
    ref = qsimcirq.QSimSimulator().compute_amplitudes(c, [0, 7, 255], qubit_order=cirq.LineQubit.range(8))
    np.testing.assert_allclose(amps, ref, atol=1e-6)
    info = analyze(c)
    assert "amplitudes only" in bk.get_backend(bk.QSIMH).unsupported(info, "sample")
    assert bk.choose(info, "amplitudes") == "qsim"  # never chosen automatically


# -- variational -----------------------------------------------------------------------------
def test_parameter_shift_gradient_matches_finite_differences():
    problem = qaoa_maxcut(nx.random_regular_graph(3, 6, seed=2), layers=2)
    objective = problem.objective(cirq.Simulator(dtype=np.complex128))
    x = np.array([0.3, 0.7, 0.2, 0.4])
    value, grad = objective.value_and_gradient(x)
    eps = 1e-5
    fd = [(objective.value(x + eps * e) - objective.value(x - eps * e)) / (2 * eps) for e in np.eye(4)]
    np.testing.assert_allclose(grad, fd, atol=1e-6)
    assert objective.batches == 1 + 8  # one batch for value and gradient, one per finite-difference point
    ref = cirq.Simulator().simulate_expectation_values(problem.circuit, [problem.observable],
                                                       dict(zip(problem.symbols, x)))[0].real
    assert value == pytest.approx(ref, abs=1e-5)


def test_gradient_needs_shiftable_gates_but_values_do_not():
    q = cirq.LineQubit.range(2)
    t = sympy.Symbol("t")
    c = cirq.Circuit(cirq.H.on_each(*q), cirq.FSimGate(t, 0.3).on(*q))
    objective = Objective(c, expectation_estimator(cirq.Simulator(), cirq.X(q[0])))
    assert np.isfinite(objective.value([0.4]))
    with pytest.raises(NotShiftableError, match="COBYLA"):
        objective.gradient([0.4])
    with pytest.raises(ValueError, match="one value per symbol"):
        objective.value([0.1, 0.2])


def test_qaoa_pieces():
    graph = nx.cycle_graph(4)
    problem = qaoa_maxcut(graph)
    assert problem.cut_value([0, 1, 0, 1]) == 4 and problem.cut_value([0, 0, 0, 0]) == 0
    q = problem.qubits
    bits = np.array([[0, 1, 0, 1], [0, 0, 0, 0]])
    # -cut of each row, averaged: (-4 + 0) / 2
    assert diagonal_expectation(problem.observable, bits, q) == pytest.approx(-2.0)


# -- noise -------------------------------------------------------------------------------------
def test_device_noise_model():
    with pytest.raises(ValueError, match="gate_error=1.5.*probability"):
        DeviceNoise(gate_error=1.5)
    noise = DeviceNoise.coerce({"gate_error": 0.01, "readout_error": 0.2})
    assert noise == DeviceNoise(0.01, 0.2) and DeviceNoise.coerce(None) is None
    q = cirq.LineQubit.range(2)
    noisy = cirq.Circuit(cirq.CNOT(*q), cirq.measure(*q, key="m")).with_noise(noise)
    kinds = [type(op.gate).__name__ for m in noisy for op in m]
    assert kinds == ["CXPowGate", "DepolarizingChannel", "DepolarizingChannel", "BitFlipChannel", "BitFlipChannel",
                     "MeasurementGate"]
    # A 0.2 readout error flips about a fifth of |1> readings.
    r = qsimcirq.QSimSimulator(seed=1).run(cirq.Circuit(cirq.X(q[0]), cirq.measure(q[0], key="m")).with_noise(
        DeviceNoise(readout_error=0.2)), repetitions=2000)
    assert 0.15 < 1 - r.measurements["m"].mean() < 0.25


# -- mitiq glue ------------------------------------------------------------------------------
try:
    import mitiq

    from qdask.hybrid import mitigation
except ImportError:  # mitiq is installed apart (docs/hybrid.md)
    mitiq = None
needs_mitiq = pytest.mark.skipif(mitiq is None, reason="mitiq: pip install --no-deps mitiq==1.1.0 (docs/hybrid.md)")


@needs_mitiq
def test_confusion_matrices_and_observable_conversion():
    zeros = mitiq.MeasurementResult([[0, 0], [0, 1], [0, 0], [0, 0]])
    ones = mitiq.MeasurementResult([[1, 1], [1, 1], [0, 1], [1, 1]])
    m0, m1 = mitigation.confusion_matrices(zeros, ones)
    np.testing.assert_allclose(m0, [[1, 0.25], [0, 0.75]])
    np.testing.assert_allclose(m1, [[0.75, 0], [0.25, 1]])
    inv = mitigation.inverse_confusion_matrix([m0, m1], [1])
    np.testing.assert_allclose(inv @ m1, np.eye(2), atol=1e-12)
    q = cirq.GridQubit.rect(1, 3)
    obs = mitigation.to_mitiq_observable(0.5 * cirq.Z(q[2]) * cirq.Z(q[0]) + cirq.X(q[1]), q)
    state = cirq.final_density_matrix(cirq.Circuit(cirq.H(q[1]), cirq.X(q[2])), qubit_order=q)
    assert obs._expectation_from_density_matrix(state) == pytest.approx(-0.5 + 1.0)


@needs_mitiq
def test_zne_with_readout_mitigation_equals_mitiqs_own_serial_pipeline():
    from mitiq import rem, zne
    from mitiq.zne.inference import LinearFactory
    from mitiq.zne.scaling import fold_gates_at_random

    q = cirq.LineQubit.range(3)
    c = cirq.Circuit(cirq.H(q[0]), cirq.CNOT(q[0], q[1]), cirq.CNOT(q[1], q[2]), cirq.rz(0.4).on_each(*q),
                     cirq.CNOT(q[1], q[2]), cirq.CNOT(q[0], q[1]), cirq.H(q[0]))
    obs = cirq.Z(q[0]) * cirq.Z(q[1]) * cirq.Z(q[2])
    noise = DeviceNoise(gate_error=0.02, readout_error=0.05)
    scale = functools.partial(fold_gates_at_random, seed=3)
    np.random.seed(7)  # mitiq's REM resamples with numpy's global generator
    ours = mitigation.execute_with_zne(c, obs, qsimcirq.QSimSimulator(seed=4), repetitions=1000,
                                       factory=LinearFactory([1, 3]), scale_noise=scale, noise=noise)
    sim = qsimcirq.QSimSimulator(seed=4)
    np.random.seed(7)
    cal = [mitigation.to_measurement_result(sim.run(x.with_noise(noise), repetitions=1000))
           for x in mitigation.calibration_circuits(q)]
    icm = mitigation.inverse_confusion_matrix(mitigation.confusion_matrices(*cal), range(3))

    def serial(circuit) -> mitiq.MeasurementResult:
        return mitigation.to_measurement_result(sim.run(circuit.with_noise(noise), repetitions=1000))

    theirs = zne.execute_with_zne(c, rem.mitigate_executor(serial, inverse_confusion_matrix=icm),
                                  mitigation.to_mitiq_observable(obs, q), factory=LinearFactory([1, 3]),
                                  scale_noise=scale)
    assert ours.value == pytest.approx(float(np.real(theirs)), abs=1e-12)
    assert ours.batches == 1 and ours.circuits == 2 + 2
