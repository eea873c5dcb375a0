"""Differential conformance: the same calls on qdask and on qsimcirq / cirq, side by side, on a real cluster.

Each case makes one call on ``qdask.Simulator`` / ``qdask.Sampler`` (two
worker processes) and the same call on ``qsimcirq.QSimSimulator`` (or
``cirq.Simulator`` where qsim cannot run the circuit) in this process, and
compares:

* bit for bit where the reference is deterministic under a seed (qdask draws
  the seeds a serial simulator would draw, in the same order);
* with a chi-square test at fixed seeds where only the distribution is
  defined (cirq's simulator against exact probabilities);
* by exception type where the reference raises.

Cases come from the public contracts of ``cirq.Sampler``,
``cirq.SimulatesSamples``, ``cirq.SimulatesAmplitudes``,
``cirq.SimulatesFinalState``, ``cirq.SimulatesExpectationValues`` and
qsimcirq's documented options (``docs/from-qsimcirq.md`` maps each of them).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import cirq
import dask
import duet
import numpy as np
import pytest
import qsimcirq
import sympy

import qdask
from qdask._compat import scheduler_workers
from qdask.quantum.backends import QSimGateTooWideError

#: Seconds this module takes in `make test`: longest first (tests/conftest.py).
pytestmark = pytest.mark.long(30)

SEED = 1234
Q = cirq.LineQubit.range(12)
T = sympy.Symbol("t")


@pytest.fixture(scope="module")
def client(cluster2):
    return cluster2.get_client()


def _random(n: int, depth: int = 8, seed: int = 0, measure: bool = True) -> cirq.Circuit:
    """A random circuit that is not Clifford (a T gate), so that "auto" runs it on qsim as a serial user would."""
    q = Q[:n]
    c = cirq.testing.random_circuit(q, n_moments=depth, op_density=0.8, random_state=seed) + cirq.T(q[0])
    return c + cirq.measure(*q, key="m") if measure else c


def _first_seed(seed: int = SEED) -> int:
    """The seed qdask hands a backend that takes one per call (stim, cirq): the serial stream's first draw."""
    return int(np.random.RandomState(seed).randint(2**31 - 1))


def _chi2(counts: dict[int, int], probs: np.ndarray) -> float:
    n = sum(counts.values())
    expected = probs * n
    keep = expected > 0
    observed = np.array([counts.get(i, 0) for i in range(len(probs))])
    assert observed[~keep].sum() == 0, "an outcome of probability 0 was sampled"
    return float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())


# Chi-square bounds at p = 0.001 by degrees of freedom.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 7: 24.32, 8: 26.12}


# == cirq.Sampler / SimulatesSamples: bit for bit against QSimSimulator(seed=...) ====================
class _Drop(cirq.NoiseModel):
    """A user-defined noise model: amplitude damping after every operation."""

    def noisy_operation(self, operation: cirq.Operation) -> Any:
        return [operation, *(cirq.amplitude_damp(0.1).on(q) for q in operation.qubits)]


_a = Q[:3]
SAMPLE_CASES: dict[str, tuple[Callable[[], cirq.Circuit], Any, Any, Any]] = {
    # name: (circuit, params, repetitions, noise)
    **{f"random-{n}q": ((lambda n=n: _random(n, seed=n)), None, 100, None) for n in range(1, 13)},
    "repeated-key": (
        lambda: cirq.Circuit(cirq.H(_a[0]), cirq.measure(_a[0], key="k"), cirq.H(_a[0]), cirq.measure(_a[0], key="k")),
        None, 50, None,
    ),
    "mid-circuit": (
        lambda: cirq.Circuit(cirq.H(_a[0]), cirq.measure(_a[0], key="a"), cirq.CNOT(_a[0], _a[1]), cirq.T(_a[1]),
                             cirq.H(_a[1]), cirq.measure(*_a[:2], key="b")),
        None, 60, None,
    ),
    "invert-mask": (
        lambda: _random(3, seed=5, measure=False) + cirq.measure(*_a, key="m", invert_mask=(True, False, True)),
        None, 40, None,
    ),
    "several-keys": (
        lambda: _random(3, seed=6, measure=False)
        + cirq.Moment(cirq.measure(_a[0], key="x"), cirq.measure(_a[2], _a[1], key="y")),
        None, 40, None,
    ),
    "zero-repetitions": (lambda: _random(3, seed=7), None, 0, None),
    "one-repetition": (lambda: _random(3, seed=8), None, 1, None),
    "sweep-linspace": (
        lambda: cirq.Circuit(
            cirq.H.on_each(*_a), cirq.rz(T).on_each(*_a), cirq.H.on_each(*_a), cirq.measure(*_a, key="m")
        ),
        cirq.Linspace(T, 0, np.pi, 5), 30, None,
    ),
    "sweep-points": (
        lambda: cirq.Circuit(cirq.rx(T).on(_a[0]), cirq.CNOT(_a[0], _a[1]), cirq.measure(*_a[:2], key="m")),
        cirq.Points("t", [0.1, 1.0, 2.5]), 30, None,
    ),
    "sweep-zip": (
        lambda: cirq.Circuit(
            cirq.rx(T).on(_a[0]), cirq.ry(sympy.Symbol("u")).on(_a[1]), cirq.measure(*_a[:2], key="m")
        ),
        cirq.Points("t", [0.3, 0.9]) + cirq.Points("u", [1.1, 0.2]), 30, None,
    ),
    "sweep-product": (
        lambda: cirq.Circuit(
            cirq.rx(T).on(_a[0]), cirq.ry(sympy.Symbol("u")).on(_a[1]), cirq.measure(*_a[:2], key="m")
        ),
        cirq.Points("t", [0.3, 0.9]) * cirq.Points("u", [1.1, 0.2]), 20, None,
    ),
    "sweep-dicts": (
        lambda: cirq.Circuit(cirq.rx(T).on(_a[0]), cirq.measure(_a[0], key="m")),
        [{"t": 0.5}, {"t": 2.0}], 30, None,
    ),
    "noise-depolarize": (lambda: _random(4, seed=9), None, 50, cirq.depolarize(0.05)),
    "noise-bit-flip": (lambda: _random(3, seed=10), None, 50, cirq.bit_flip(0.1)),
    "noise-amplitude-damp": (lambda: _random(3, seed=11), None, 50, cirq.amplitude_damp(0.2)),
    "noise-phase-damp": (lambda: _random(3, seed=12), None, 50, cirq.phase_damp(0.3)),
    "noise-asymmetric-depolarize": (lambda: _random(3, seed=13), None, 50, cirq.asymmetric_depolarize(0.05, 0.1, 0.02)),
    "noise-generalized-amplitude-damp": (
        lambda: _random(3, seed=14), None, 50, cirq.generalized_amplitude_damp(0.3, 0.2)
    ),
    "noise-constant-model": (lambda: _random(3, seed=15), None, 50, cirq.ConstantQubitNoiseModel(cirq.depolarize(0.1))),
    "noise-custom-model": (lambda: _random(3, seed=16), None, 50, _Drop()),
    "noise-mid-circuit": (
        lambda: cirq.Circuit(
            cirq.H(_a[0]), cirq.measure(_a[0], key="a"), cirq.CNOT(_a[0], _a[1]), cirq.measure(_a[1], key="b")
        ),
        None, 50, cirq.depolarize(0.1),
    ),
    "noise-sweep": (
        lambda: cirq.Circuit(cirq.rx(T).on_each(*_a), cirq.CZ(_a[0], _a[1]), cirq.measure(*_a, key="m")),
        cirq.Linspace(T, 0, 1, 3), 30, cirq.bit_flip(0.05),
    ),
    "channels-in-circuit": (
        lambda: cirq.Circuit(cirq.H(_a[0]), cirq.amplitude_damp(0.4).on(_a[0]), cirq.CNOT(_a[0], _a[1]),
                             cirq.measure(*_a[:2], key="m")),
        None, 50, None,
    ),
    "unnormalised-kraus": (
        lambda: cirq.Circuit(cirq.H(_a[0]), cirq.KrausChannel([np.eye(2) * 0.5, np.eye(2) * 0.5]).on(_a[0]),
                             cirq.measure(_a[0], key="m")),
        None, 50, None,
    ),
    # qsim resets qubits right (a channel, by trajectories): the serial samples, bit for bit.
    "reset-entangled": (
        lambda: cirq.Circuit(cirq.H(_a[0]), cirq.CNOT(_a[0], _a[1]), cirq.reset(_a[0]), cirq.H(_a[0]),
                             cirq.measure(*_a[:2], key="m")),
        None, 80, None,
    ),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_run_sweep_equals_qsim(client, case):
    make, params, reps, noise = SAMPLE_CASES[case]
    circuit = make()
    got = qdask.Sampler(client, seed=SEED, noise=noise).run_sweep(circuit, params, repetitions=reps)
    ref = qsimcirq.QSimSimulator(seed=SEED, noise=noise).run_sweep(circuit, params, repetitions=reps)
    assert [r.params for r in got] == [r.params for r in ref]
    assert list(got) == list(ref)
    backend = got[0].metadata["backend"]
    channels = noise is not None or case in ("channels-in-circuit", "unnormalised-kraus", "reset-entangled")
    assert backend == ("qsim-trajectories" if channels else "qsim")


def test_run_batch_with_repetitions_per_program(client):
    circuits = [_random(n, seed=20 + n) for n in (2, 3, 4)]
    sweeps = [None, cirq.Points("t", [0.0]), [{}]]
    got = qdask.Sampler(client, seed=SEED).run_batch(circuits, sweeps, repetitions=[5, 10, 15])
    ref = qsimcirq.QSimSimulator(seed=SEED).run_batch(circuits, sweeps, repetitions=[5, 10, 15])
    assert [list(g) for g in got] == [list(r) for r in ref]


def test_sample_dataframe_equals_qsim(client):
    c = cirq.Circuit(cirq.rx(T).on(_a[0]), cirq.CNOT(_a[0], _a[1]), cirq.measure(*_a[:2], key="m"))
    sweep = cirq.Points("t", [0.4, 1.2])
    got = qdask.Sampler(client, seed=SEED).sample(c, repetitions=20, params=sweep)
    ref = qsimcirq.QSimSimulator(seed=SEED).sample(c, repetitions=20, params=sweep)
    assert got.equals(ref)


def test_sample_expectation_values_equals_qsim(client):
    c = _random(3, seed=30, measure=False)
    obs = [cirq.Z(_a[0]) * cirq.Z(_a[1]), cirq.X(_a[2]), 0.5 * cirq.Y(_a[1])]
    got = qdask.Sampler(client, seed=SEED).sample_expectation_values(c, obs, num_samples=200)
    ref = qsimcirq.QSimSimulator(seed=SEED).sample_expectation_values(c, obs, num_samples=200)
    assert got == ref


def test_async_twins_equal_qsim(client):
    c = _random(4, seed=31)
    sampler = qdask.Sampler(client, seed=SEED)

    async def both():
        return await sampler.run_async(c, repetitions=25), await sampler.run_batch_async([c, c], repetitions=25)

    one, batch = duet.run(both)
    ref = qsimcirq.QSimSimulator(seed=SEED).run_batch([c, c, c], repetitions=25)
    assert one == ref[0][0] and [b[0] for b in batch] == [ref[1][0], ref[2][0]]


def test_submit_future_with_noise_equals_qsim(client):
    c = _random(3, seed=32)
    got = qdask.Sampler(client, seed=SEED, noise=cirq.depolarize(0.1)).submit(c, repetitions=40).result()
    assert got == qsimcirq.QSimSimulator(seed=SEED, noise=cirq.depolarize(0.1)).run(c, repetitions=40)


@pytest.mark.parametrize(
    "options",
    [
        qsimcirq.QSimOptions(max_fused_gate_size=4),
        {"f": 3, "t": 2},
        {"max_fused_gate_size": 1, "ev_noisy_repetitions": 3},
    ],
    ids=["QSimOptions", "short-keys", "field-names"],
)
def test_qsim_options_sample_equal_and_reported(client, options):
    c = _random(6, seed=33)
    sampler = qdask.Sampler(client, seed=SEED, qsim_options=options)
    # qsimcirq takes short keys only: field names translated as QSimOptions.as_dict() does.
    names = (f.name for f in qsimcirq.QSimOptions.__dataclass_fields__.values())
    short = dict(zip(names, qsimcirq.QSimOptions().as_dict()))
    ref_sim = qsimcirq.QSimSimulator(
        {short.get(k, k): v for k, v in options.items()} if isinstance(options, dict) else options,
        seed=SEED,
    )
    assert sampler.qsim_options == ref_sim.qsim_options  # reported back as qsimcirq reports them
    assert sampler.run(c, repetitions=30) == ref_sim.run(c, repetitions=30)


# == SimulatesFinalState =============================================================================
STATE_CASES: dict[str, tuple[Callable[[], cirq.Circuit], dict[str, Any]]] = {
    **{f"random-{n}q": ((lambda n=n: _random(n, seed=40 + n, measure=False)), {}) for n in range(1, 11)},
    "qubit-order": (lambda: _random(4, seed=51, measure=False), {"qubit_order": [Q[3], Q[1], Q[0], Q[2]]}),
    "initial-int": (lambda: _random(4, seed=52, measure=False), {"initial_state": 5}),
    "initial-vector": (
        lambda: _random(3, seed=53, measure=False),
        {"initial_state": cirq.testing.random_superposition(8, random_state=1).astype(np.complex64)},
    ),
    "initial-vector-unnormalised": (
        lambda: _random(2, seed=54, measure=False), {"initial_state": np.ones(4, np.complex64)}
    ),
    "noise-trajectory": (lambda: _random(4, seed=55, measure=False), {"noise": cirq.depolarize(0.2)}),
    "noise-amplitude-damp": (lambda: _random(3, seed=56, measure=False), {"noise": cirq.amplitude_damp(0.3)}),
    "noise-initial-vector": (
        lambda: _random(2, seed=57, measure=False),
        {"noise": cirq.bit_flip(0.3), "initial_state": np.array([0.6, 0, 0, 0.8], np.complex64)},
    ),
    "unnormalised-kraus": (
        lambda: cirq.Circuit(cirq.H(_a[0]), cirq.KrausChannel([np.eye(2) * 0.5, np.eye(2) * 0.5]).on(_a[0])), {},
    ),
    "qsim-options": (
        lambda: _random(6, seed=58, measure=False), {"qsim_options": qsimcirq.QSimOptions(max_fused_gate_size=4)}
    ),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_simulate_equals_qsim(client, case):
    make, kw = STATE_CASES[case]
    circuit = make()
    noise, options = kw.get("noise"), kw.get("qsim_options")
    call = {k: v for k, v in kw.items() if k in ("qubit_order", "initial_state")}
    got = qdask.Simulator(client, seed=SEED, noise=noise, qsim_options=options).simulate(circuit, **call)
    ref = qsimcirq.QSimSimulator(options, seed=SEED, noise=noise).simulate(circuit, **call)
    assert got.qubit_map == ref.qubit_map
    with warnings.catch_warnings():
        # cirq's result objects warn on an unnormalised state (both sides alike); qsim keeps it as it is.
        warnings.filterwarnings("ignore", "final state vector's norm", UserWarning)
        np.testing.assert_array_equal(got.final_state_vector, ref.final_state_vector)
        np.testing.assert_array_equal(got.state_vector(), ref.state_vector())
        assert got.dirac_notation() == ref.dirac_notation()
    trajectories = noise is not None or case == "unnormalised-kraus"
    assert got.metadata["backend"] == ("qsim-trajectories" if trajectories else "qsim")


def test_simulate_sweep_noisy_equals_qsim(client):
    c = cirq.Circuit(cirq.rx(T).on_each(*_a), cirq.CNOT(_a[0], _a[1]))
    sweep = cirq.Linspace(T, 0, 2, 4)
    got = qdask.Simulator(client, seed=SEED, noise=cirq.depolarize(0.2)).simulate_sweep(c, sweep)
    ref = qsimcirq.QSimSimulator(seed=SEED, noise=cirq.depolarize(0.2)).simulate_sweep(c, sweep)
    for g, r in zip(got, ref, strict=True):
        assert g.params == r.params
        np.testing.assert_array_equal(g.final_state_vector, r.final_state_vector)


def test_simulate_into_1d_array_equals_qsim(client):
    c = cirq.Circuit(cirq.rx(T).on(_a[0]), cirq.CNOT(_a[0], _a[2]))
    got = qdask.Simulator(client).simulate_into_1d_array(c, {"t": 0.7}, qubit_order=[_a[2], _a[0]])
    ref = qsimcirq.QSimSimulator().simulate_into_1d_array(c, {"t": 0.7}, qubit_order=[_a[2], _a[0]])
    assert got[0] == ref[0] and tuple(got[2]) == tuple(ref[2])
    np.testing.assert_array_equal(got[1], ref[1])


def test_initial_vector_is_never_modified_nor_aliased(client):
    v = cirq.testing.random_superposition(8, random_state=3).astype(np.complex64)
    keep = v.copy()
    c = _random(3, seed=59, measure=False)
    result = qdask.Simulator(client).simulate(c, initial_state=v)
    np.testing.assert_array_equal(v, keep)
    assert not np.shares_memory(result.final_state_vector, v)
    result.final_state_vector[:] = 0  # the caller may scribble on a result
    np.testing.assert_array_equal(v, keep)
    np.testing.assert_array_equal(qsimcirq.QSimSimulator().simulate(c, initial_state=v).final_state_vector,
                                  qdask.Simulator(client).simulate(c, initial_state=v).final_state_vector)


def test_density_matrix_only_by_name_equals_cirq(client):
    c = _random(3, seed=60, measure=False)
    noise = cirq.NoiseModel.from_noise_model_like(cirq.amplitude_damp(0.2))
    got = qdask.Simulator(client, noise=noise, simulator="density-matrix").simulate(c)
    # qdask applies noise as qsimcirq does (noisy_moments of the circuit, before simulating); cirq's own
    # DensityMatrixSimulator(noise=...) places non-unital noise differently, so the reference is given that circuit.
    noisy = cirq.Circuit(noise.noisy_moments(c, sorted(c.all_qubits())))
    ref = cirq.DensityMatrixSimulator(dtype=np.complex64).simulate(noisy)
    assert got.metadata["backend"] == "density-matrix"
    np.testing.assert_allclose(got.final_density_matrix, ref.final_density_matrix, atol=1e-6)


# == SimulatesExpectationValues ======================================================================
def _observables(n: int, seed: int) -> list[cirq.PauliSum]:
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(3):
        terms = [
            float(rng.uniform(-1, 1))
            * cirq.PauliString({q: [cirq.X, cirq.Y, cirq.Z][rng.randint(3)] for q in Q[:n] if rng.rand() < 0.6})
            for _ in range(2)
        ]
        out.append(cirq.PauliSum.from_pauli_strings(terms))
    return out


EV_CASES: dict[str, tuple[Callable[[], cirq.Circuit], Callable[[], Any], dict[str, Any]]] = {
    **{f"random-{n}q": ((lambda n=n: _random(n, seed=70 + n, measure=False)), (lambda n=n: _observables(n, n)), {})
       for n in (2, 3, 5, 7, 9)},
    "single-observable": (lambda: _random(3, seed=80, measure=False), lambda: cirq.Z(_a[0]) * cirq.X(_a[1]), {}),
    "qubit-order": (
        lambda: _random(3, seed=81, measure=False), lambda: _observables(3, 9), {"qubit_order": [Q[2], Q[0], Q[1]]}
    ),
    "initial-int": (lambda: _random(3, seed=82, measure=False), lambda: _observables(3, 10), {"initial_state": 6}),
    "initial-vector": (
        lambda: _random(3, seed=83, measure=False), lambda: _observables(3, 11),
        {"initial_state": cirq.testing.random_superposition(8, random_state=2).astype(np.complex64)},
    ),
    # Point 3: H then measure gives <Z> = +-1 in cirq and qsim, never 0.
    "terminal-measurement": (
        lambda: cirq.Circuit(cirq.H(_a[0]), cirq.measure(_a[0], key="m")), lambda: cirq.Z(_a[0]),
        {"permit_terminal_measurements": True},
    ),
    "terminal-measurement-entangled": (
        lambda: cirq.Circuit(cirq.H(_a[0]), cirq.CNOT(_a[0], _a[1]), cirq.measure(_a[0], key="m")),
        lambda: [cirq.Z(_a[1]), cirq.Z(_a[0]) * cirq.Z(_a[1]), cirq.X(_a[1])], {"permit_terminal_measurements": True},
    ),
    "mid-circuit-measurement": (
        lambda: cirq.Circuit(cirq.H(_a[0]), cirq.measure(_a[0], key="m"), cirq.H(_a[0]), cirq.CNOT(_a[0], _a[1])),
        lambda: [cirq.Z(_a[0]), cirq.X(_a[0])], {},
    ),
    **{f"noisy-{r}-trajectories": ((lambda: _random(4, seed=84, measure=False)), (lambda: _observables(4, 12)),
                                   {"noise": cirq.depolarize(0.05), "qsim_options": {"r": r}}) for r in (1, 10, 300)},
    "noisy-amplitude-damp": (
        lambda: _random(3, seed=85, measure=False), lambda: _observables(3, 13),
        {"noise": cirq.amplitude_damp(0.2), "qsim_options": qsimcirq.QSimOptions(ev_noisy_repetitions=50)},
    ),
}


@pytest.mark.parametrize("case", list(EV_CASES))
def test_expectation_values_equal_qsim(client, case):
    make, obs, kw = EV_CASES[case]
    circuit, observables = make(), obs()
    noise, options = kw.get("noise"), kw.get("qsim_options")
    call = {k: v for k, v in kw.items() if k not in ("noise", "qsim_options")}
    for seed in (SEED, SEED + 1):
        got = qdask.Simulator(client, seed=seed, noise=noise, qsim_options=options).simulate_expectation_values(
            circuit, observables, **call
        )
        ref = qsimcirq.QSimSimulator(options, seed=seed, noise=noise).simulate_expectation_values(
            circuit, observables, **call
        )
        # qsim's own sums (float32); trajectories averaged in blocks agree to rounding.
        np.testing.assert_allclose(got, ref, atol=1e-6 if noise is None else 2e-6)
    if case.startswith("terminal-measurement"):
        assert abs(got[0]) == pytest.approx(1.0, abs=1e-6)  # cirq's answer too: the measured state, not 0


def test_expectation_sweep_equals_qsim(client):
    c = cirq.Circuit(cirq.rx(T).on_each(*_a), cirq.CZ(_a[0], _a[1]), cirq.ry(T).on(_a[2]))
    obs = [cirq.Z(_a[0]), cirq.X(_a[1]) * cirq.Y(_a[2])]
    sweep = cirq.Linspace(T, 0, 3, 6)
    for noise, options in ((None, None), (cirq.depolarize(0.05), {"r": 40})):
        got = qdask.Simulator(client, seed=SEED, noise=noise, qsim_options=options).simulate_expectation_values_sweep(
            c, obs, sweep
        )
        ref = qsimcirq.QSimSimulator(options, seed=SEED, noise=noise).simulate_expectation_values_sweep(c, obs, sweep)
        np.testing.assert_allclose(got, ref, atol=2e-6)


def test_noisy_expectation_trajectories_spread_over_workers_equal_qsim(client):
    """1,000 trajectories in several tasks on both workers; the average is qsim's own.

    qsim seeds trajectory i with seed + i.
    """
    c = _random(6, seed=86, measure=False)
    obs = _observables(6, 14)
    noise, options = cirq.depolarize(0.02), qsimcirq.QSimOptions(ev_noisy_repetitions=1000)
    with dask.config.set({"qdask.quantum.chunk-duration": "1ms"}):
        sim = qdask.Simulator(client, seed=SEED, noise=noise, qsim_options=options)
        got = sim.simulate_expectation_values(c, obs)
    assert sim.engine.last.tasks > 2 and len(sim.engine.last.workers) == 2
    ref = qsimcirq.QSimSimulator(options, seed=SEED, noise=noise).simulate_expectation_values(c, obs)
    np.testing.assert_allclose(got, ref, atol=2e-6)


@pytest.mark.parametrize("observables", ["one", "list"])
def test_moment_expectation_values_equal_qsim(client, observables):
    c = _random(4, depth=6, seed=87, measure=False)
    obs: Any = (
        cirq.Z(Q[0]) * cirq.Z(Q[1]) if observables == "one" else [cirq.X(Q[2]), cirq.Z(Q[3]) + 0.5 * cirq.Y(Q[0])]
    )
    got = qdask.Simulator(client).simulate_moment_expectation_values(c, obs, cirq.ParamResolver())
    ref = qsimcirq.QSimSimulator().simulate_moment_expectation_values(c, obs, cirq.ParamResolver())
    assert len(got) == len(ref) == len(c)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_moment_expectation_values_of_some_moments_equal_cirq(client):
    # Beyond qsim: qsimcirq returns 0 for <Z> after moment 2 here (measured: [[0j], [0j]]).
    c = cirq.Circuit(cirq.H(_a[0]), cirq.CNOT(_a[0], _a[1]), cirq.X(_a[1]))
    indexed = {2: [cirq.Z(_a[1]), cirq.X(_a[0])], 0: cirq.Z(_a[0])}
    got = qdask.Simulator(client).simulate_moment_expectation_values(c, indexed, None)
    sim = cirq.Simulator()
    ref = [sim.simulate_expectation_values(c[:1], [cirq.Z(_a[0])]),
           sim.simulate_expectation_values(c[:3], [cirq.Z(_a[1]), cirq.X(_a[0])])]
    np.testing.assert_allclose(got[0], ref[0], atol=1e-6)
    np.testing.assert_allclose(got[1], ref[1], atol=1e-6)


# == SimulatesAmplitudes =============================================================================
AMP_CASES: dict[str, tuple[Callable[[], cirq.Circuit], dict[str, Any]]] = {
    **{f"random-{n}q": ((lambda n=n: _random(n, seed=90 + n, measure=False)), {}) for n in (2, 4, 6, 8, 10)},
    "qubit-order": (lambda: _random(4, seed=96, measure=False), {"qubit_order": [Q[1], Q[3], Q[0], Q[2]]}),
    "noisy-trajectory": (lambda: _random(4, seed=97, measure=False), {"noise": cirq.depolarize(0.2)}),
}


@pytest.mark.parametrize("case", list(AMP_CASES))
def test_amplitudes_equal_qsim(client, case):
    make, kw = AMP_CASES[case]
    c = make()
    n = len(c.all_qubits())
    bits = sorted({0, 1, 2 ** n - 1, 2 ** (n - 1), 5 % 2**n})
    noise = kw.get("noise")
    call = {k: v for k, v in kw.items() if k != "noise"}
    got = qdask.Simulator(client, seed=SEED, noise=noise).compute_amplitudes(c, bits, **call)
    ref = qsimcirq.QSimSimulator(seed=SEED, noise=noise).compute_amplitudes(c, bits, **call)
    np.testing.assert_array_equal(np.asarray(got, np.complex64), np.asarray(ref, np.complex64))


def test_amplitudes_sweep_equals_qsim(client):
    c = cirq.Circuit(cirq.rx(T).on_each(*_a), cirq.CNOT(_a[0], _a[1]))
    sweep = cirq.Linspace(T, 0, 1.5, 3)
    got = qdask.Simulator(client).compute_amplitudes_sweep(c, [0, 3, 7], sweep)
    ref = qsimcirq.QSimSimulator().compute_amplitudes_sweep(c, [0, 3, 7], sweep)
    np.testing.assert_array_equal(np.asarray(got, np.complex64), np.asarray(ref, np.complex64))


# == Errors: the same exception type as the reference =================================================
def _gate7() -> cirq.Circuit:
    return cirq.Circuit(cirq.MatrixGate(cirq.testing.random_unitary(2**7, random_state=1)).on(*Q[:7]))


def _controlled5() -> cirq.Circuit:
    """A controlled gate on 5 targets: 6 qubits in all, but qsim controls gates of up to 4 targets."""
    target = cirq.MatrixGate(cirq.testing.random_unitary(2**5, random_state=2))
    return cirq.Circuit(cirq.X(Q[0]), target.on(*Q[1:6]).controlled_by(Q[0]))


def _feedback() -> cirq.Circuit:
    return cirq.Circuit(cirq.H(_a[0]), cirq.measure(_a[0], key="a"), cirq.X(_a[1]).with_classical_controls("a"),
                        cirq.measure(_a[1], key="b"))


_qt = cirq.LineQid.range(2, dimension=3)
_confused = cirq.Circuit(
    cirq.H(_a[0]), cirq.measure(_a[0], _a[1], key="m", confusion_map={(0,): np.array([[0.8, 0.2], [0.3, 0.7]])})
)
_terminal = cirq.Circuit(cirq.H(_a[0]), cirq.measure(_a[0], key="m"))
_unitary2 = cirq.Circuit(cirq.H(_a[0]), cirq.CNOT(_a[0], _a[1]))
_param = cirq.Circuit(cirq.rx(T).on(_a[0]), cirq.measure(_a[0], key="m"))
_repeated_sizes = cirq.Circuit(
    cirq.measure(_a[0], key="k"), cirq.H(_a[1]), cirq.T(_a[1]), cirq.measure(_a[1], _a[2], key="k")
)
_repeated_sizes_mid = cirq.Circuit(
    cirq.H(_a[0]), cirq.measure(_a[0], key="k"), cirq.T(_a[0]), cirq.measure(_a[1], _a[2], key="k")
)

ERROR_CASES: dict[str, tuple[dict[str, Any], Callable[[Any], Any]]] = {
    # name: (constructor keywords, call on a simulator); both run on qdask and on QSimSimulator.
    "terminal-measurements-without-permit": ({}, lambda s: s.simulate_expectation_values(_terminal, cirq.Z(_a[0]))),
    "initial-vector-float64": ({}, lambda s: s.simulate(_unitary2, initial_state=np.ones(4) / 2)),
    "initial-vector-wrong-size": ({}, lambda s: s.simulate(_unitary2, initial_state=np.ones(8, np.complex64) / 8**0.5)),
    "initial-state-list": ({}, lambda s: s.simulate(_unitary2, initial_state=[0.5] * 4)),
    "ev-initial-vector-wrong-size": (
        {}, lambda s: s.simulate_expectation_values(_unitary2, cirq.Z(_a[0]), initial_state=np.ones(2, np.complex64)),
    ),
    "reserved-qsim-option": ({"qsim_options": {"s": 3}}, lambda s: s.simulate(_unitary2)),
    "gate-on-7-qubits": ({"simulator": "qsim"}, lambda s: s.simulate(_gate7())),
    "controlled-gate-on-5-targets": ({"simulator": "qsim"}, lambda s: s.simulate(_controlled5())),
    "classical-control-on-qsim": ({"simulator": "qsim"}, lambda s: s.run(_feedback(), repetitions=3)),
    "qudits-on-qsim": (
        {"simulator": "qsim"}, lambda s: s.run(cirq.Circuit(cirq.measure(*_qt, key="m")), repetitions=3)
    ),
    "confusion-map-on-qsim": ({"simulator": "qsim"}, lambda s: s.run(_confused, repetitions=3)),
    "no-measurements": ({}, lambda s: s.run(_unitary2, repetitions=3)),
    "unresolved-symbol": ({}, lambda s: s.run(_param, repetitions=3)),
    "batch-params-length": ({}, lambda s: s.run_batch([_param, _param], [{"t": 1}], repetitions=2)),
    "batch-repetitions-length": ({}, lambda s: s.run_batch([_param, _param], [{"t": 1}] * 2, repetitions=[1, 2, 3])),
    "negative-repetitions": ({}, lambda s: s.run(_param, {"t": 1}, repetitions=-1)),
    "qubit-order-missing-a-qubit": ({}, lambda s: s.simulate(_unitary2, qubit_order=[_a[0]])),
    "ev-qubit-order-missing-a-qubit": (
        {}, lambda s: s.simulate_expectation_values(_unitary2, cirq.Z(_a[0]), qubit_order=[_a[0]])
    ),
    # Raised on a worker (qdask.BatchError, also an instance of the worker's exception type).
    "repeated-key-sizes": ({}, lambda s: s.run(_repeated_sizes, repetitions=2)),
    "repeated-key-sizes-mid-circuit": ({}, lambda s: s.run(_repeated_sizes_mid, repetitions=2)),
    "observable-on-a-qubit-not-in-the-circuit": ({}, lambda s: s.simulate_expectation_values(_unitary2, cirq.Z(_a[2]))),
}
#: cirq's own errors, raised as cirq raises them (no qdask fix added).
_CIRQ_OWN = {"qubit-order-missing-a-qubit", "ev-qubit-order-missing-a-qubit"}
_ON_A_WORKER = {"repeated-key-sizes", "repeated-key-sizes-mid-circuit", "observable-on-a-qubit-not-in-the-circuit"}


def _raised(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return e
    raise AssertionError("no exception raised")


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_have_the_reference_type(client, case):
    kw, call = ERROR_CASES[case]
    ref_kw = {"qsim_options": kw["qsim_options"]} if "qsim_options" in kw else {}
    ref = _raised(lambda: call(qsimcirq.QSimSimulator(**ref_kw)))
    before = sorted(scheduler_workers(client))
    assert len(before) == 2
    got = _raised(lambda: call(qdask.Simulator(client, **kw)))
    assert isinstance(got, type(ref)), f"qdask raised {type(got).__mro__}, qsimcirq {type(ref)}: {got}"
    if case not in _CIRQ_OWN:
        assert "Fix" in str(got), got
    assert isinstance(got, qdask.BatchError) == (case in _ON_A_WORKER), type(got).__mro__
    assert sorted(scheduler_workers(client)) == before  # no worker died or was replaced


@pytest.mark.skipif(
    qsimcirq.qsim_simulator.qsim_gpu is not None, reason="this qsimcirq has a GPU build: nothing to refuse"
)
def test_use_gpu_without_a_gpu_build_has_qsims_error_type(client):
    ref = _raised(lambda: qsimcirq.QSimSimulator(qsimcirq.QSimOptions(use_gpu=True)).simulate(_unitary2))
    got = _raised(lambda: qdask.Simulator(client, qsim_options=qsimcirq.QSimOptions(use_gpu=True)).simulate(_unitary2))
    assert isinstance(got, type(ref)) and "qsim-gpu" in str(got), got


def test_qsim_options_qsim_does_not_have_are_refused_with_the_fix(client):
    # qsimcirq passes unknown keys on silently (and they do nothing); qdask names them.
    with pytest.raises(ValueError, match=r"unknown keys \['max_fused'\].*Fix: pass qsimcirq.QSimOptions"):
        qdask.Simulator(client, qsim_options={"max_fused": 4})
    with pytest.raises(TypeError, match="qsim_options must be a qsimcirq.QSimOptions or a dict"):
        qdask.Sampler(client, qsim_options=4)


def test_gate_on_7_qubits_is_refused_before_any_worker(client):
    with pytest.raises(QSimGateTooWideError, match="a gate on 7 qubits"):
        qdask.Simulator(client, simulator="qsim").simulate(_gate7())


# == Beyond qsim: where cirq's simulator works and qsim does not ======================================
# qdask runs these on cirq's simulator with the first seed of the serial stream:
# bit for bit cirq.Simulator(seed=that draw), and statistically right.
def _cirq_ref() -> cirq.Simulator:
    return cirq.Simulator(dtype=np.complex64, seed=_first_seed())


class _Cycle3(cirq.Gate):
    """Qutrit X: |k> -> |k+1 mod 3>."""

    def _qid_shape_(self):
        return (3,)

    def _unitary_(self):
        return np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]])


class _Fourier3(cirq.Gate):
    def _qid_shape_(self):
        return (3,)

    def _unitary_(self):
        w = np.exp(2j * np.pi / 3)
        return np.array([[1, 1, 1], [1, w, w**2], [1, w**2, w**4]]) / np.sqrt(3)


BEYOND_SAMPLE_CASES: dict[str, Callable[[], cirq.Circuit]] = {
    "classical-control": _feedback,
    "feedback-active-reset": lambda: cirq.Circuit(
        cirq.H(_a[0]),
        cirq.measure(_a[0], key="a"),
        cirq.X(_a[0]).with_classical_controls("a"),
        cirq.measure(_a[0], key="b"),
    ),
    "feedback-two-keys": lambda: cirq.Circuit(
        cirq.H.on_each(*_a[:2]), cirq.measure(_a[0], key="a"), cirq.measure(_a[1], key="b"),
        cirq.X(_a[2]).with_classical_controls("a", "b"), cirq.measure(_a[2], key="c"),
    ),
    "qutrits": lambda: cirq.Circuit(_Fourier3().on(_qt[0]), _Cycle3().on(_qt[1]), cirq.measure(*_qt, key="m")),
    "qutrit-invert-mask": lambda: cirq.Circuit(_Cycle3().on(_qt[0]), cirq.measure(*_qt, key="m", invert_mask=(True,))),
    "qutrit-reset": lambda: cirq.Circuit(_Cycle3().on(_qt[0]), cirq.ResetChannel(3).on(_qt[0]), _Fourier3().on(_qt[1]),
                                         cirq.measure(*_qt, key="m")),
    "confusion-map": lambda: _confused,
    "gate-on-7-qubits": lambda: _gate7() + cirq.measure(*Q[:7], key="m"),
    "controlled-gate-on-5-targets": lambda: _controlled5() + cirq.measure(*Q[:6], key="m"),
}


@pytest.mark.parametrize("case", list(BEYOND_SAMPLE_CASES))
def test_beyond_qsim_samples_equal_cirq(client, case):
    c = BEYOND_SAMPLE_CASES[case]()
    got = qdask.Sampler(client, seed=SEED).run(c, repetitions=200)
    assert got.metadata["backend"] == "cirq"
    assert got == _cirq_ref().run(c, repetitions=200)


def test_beyond_qsim_runs_at_optimization_level_none_too(client):
    # "none" picks only what a serial QSimSimulator would, and cirq's simulator where qsim cannot run it.
    sim = qdask.Simulator(client, seed=SEED)
    sim.engine.optimization_level = "none"
    got = sim.run(_feedback(), repetitions=50)
    assert got.metadata["backend"] == "cirq" and got == _cirq_ref().run(_feedback(), repetitions=50)
    state = qdask.Simulator(client, seed=SEED)
    state.engine.optimization_level = "none"
    assert state.simulate(BEYOND_STATE_CASES["measured-superposition"]()).measurements.keys() == {"m"}


def test_classical_control_is_sampled_correctly_at_scale(client):
    """Feedback X on a measured 1 copies the bit: b == a on every shot, a fair coin, over many circuits."""
    circuits = [_feedback()] * 20
    with dask.config.set({"qdask.quantum.chunk-duration": "1us"}):  # a task per circuit, as a big batch would have
        results = qdask.Sampler(client, seed=SEED).run_batch(circuits, repetitions=500)
    a = np.concatenate([r[0].measurements["a"][:, 0] for r in results])
    b = np.concatenate([r[0].measurements["b"][:, 0] for r in results])
    assert (a == b).all()
    assert _chi2({0: int((a == 0).sum()), 1: int((a == 1).sum())}, np.array([0.5, 0.5])) < CHI2_999[1]
    assert len({r[0].metadata["workers"][0] for r in results}) == 2  # spread over both workers
    assert {r[0].metadata["backend"] for r in results} == {"cirq"}


def test_one_big_feedback_circuit_is_spread_over_the_workers_reproducibly(client):
    # 10,000 shots, each a simulation of its own: blocks of 4,096 (the same on any cluster) on both workers.
    runs = []
    for chunk in ("1us", "10s"):
        with dask.config.set({"qdask.quantum.chunk-duration": chunk}):
            sampler = qdask.Sampler(client, seed=SEED)
            runs.append(sampler.run(_feedback(), repetitions=10_000))
    assert runs[0] == runs[1]
    assert sampler.engine.last.tasks == 3 and len(sampler.engine.last.workers) == 2
    a, b = runs[0].measurements["a"][:, 0], runs[0].measurements["b"][:, 0]
    assert (a == b).all()
    assert _chi2({0: int((a == 0).sum()), 1: int((a == 1).sum())}, np.array([0.5, 0.5])) < CHI2_999[1]


def test_qutrit_distribution_matches_exact_probabilities(client):
    c = BEYOND_SAMPLE_CASES["qutrits"]()
    result = qdask.Sampler(client, seed=SEED).run(c, repetitions=3000)
    probs = np.abs(cirq.Simulator().simulate(c[:-1], qubit_order=_qt).final_state_vector) ** 2
    counts = result.histogram(key="m", fold_func=lambda bits: int(bits[0]) * 3 + int(bits[1]))
    assert _chi2(dict(counts), probs) < CHI2_999[8]


def test_confusion_map_distribution_matches_cirq(client):
    result = qdask.Sampler(client, seed=SEED).run(_confused, repetitions=4000)
    # q0 = H|0> (fair), q1 = |0>; the map confuses q0 with [[0.8, 0.2], [0.3, 0.7]]: P(q0 read 1) = 0.5*0.2 + 0.5*0.7.
    ones = result.measurements["m"][:, 0].mean()
    assert abs(ones - 0.45) < 4 * np.sqrt(0.45 * 0.55 / 4000)
    assert (result.measurements["m"][:, 1] == 0).all()


BEYOND_STATE_CASES: dict[str, Callable[[], cirq.Circuit]] = {
    "measured-superposition": lambda: cirq.Circuit(
        cirq.H(_a[0]), cirq.CNOT(_a[0], _a[1]), cirq.measure(_a[0], key="m")
    ),
    "classical-control": _feedback,
    "qutrits": lambda: cirq.Circuit(_Fourier3().on(_qt[0]), _Cycle3().on(_qt[1])),
    "gate-on-7-qubits": _gate7,
    "controlled-gate-on-5-targets": _controlled5,
}


@pytest.mark.parametrize("case", list(BEYOND_STATE_CASES))
def test_beyond_qsim_simulate_equals_cirq(client, case):
    c = BEYOND_STATE_CASES[case]()
    got = qdask.Simulator(client, seed=SEED).simulate(c)
    ref = _cirq_ref().simulate(c)
    assert got.metadata["backend"] == "cirq"
    assert got.measurements.keys() == ref.measurements.keys()  # simulate() returns the measurement values, as cirq
    for key in ref.measurements:
        np.testing.assert_array_equal(got.measurements[key], ref.measurements[key])
    np.testing.assert_allclose(got.final_state_vector, ref.final_state_vector, atol=1e-6)


def test_simulate_measurement_values_agree_with_the_state(client):
    c = BEYOND_STATE_CASES["measured-superposition"]()
    for seed in range(6):
        result = qdask.Simulator(client, seed=seed).simulate(c)
        m = int(result.measurements["m"][0])
        # The collapsed state is |mm>: the measured value is the one the state holds.
        assert abs(result.final_state_vector[3 * m]) == pytest.approx(1.0, abs=1e-6)


def test_beyond_qsim_expectation_values_equal_cirq(client):
    c = cirq.Circuit(cirq.X(_a[0]), cirq.measure(_a[0], key="a"), cirq.X(_a[1]).with_classical_controls("a"))
    obs = [cirq.Z(_a[1]), cirq.Z(_a[0]) * cirq.Z(_a[1])]
    got = qdask.Simulator(client, seed=SEED).simulate_expectation_values(c, obs, permit_terminal_measurements=True)
    ref = _cirq_ref().simulate_expectation_values(c, obs, permit_terminal_measurements=True)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(got, [-1, 1], atol=1e-6)


def test_qutrit_amplitudes_equal_cirq(client):
    c = BEYOND_STATE_CASES["qutrits"]()
    got = qdask.Simulator(client).compute_amplitudes(c, [0, 1, 4, 8])
    ref = cirq.Simulator(dtype=np.complex64).compute_amplitudes(c, [0, 1, 4, 8])
    np.testing.assert_allclose(got, ref, atol=1e-6)


# == Seeded reproducibility (point 7) ===============================================================
def test_seeded_runs_are_reproducible_whatever_the_backend_and_chunking(client):
    ghz = cirq.Circuit(cirq.H(Q[0]), *[cirq.CNOT(Q[i], Q[i + 1]) for i in range(6)], cirq.measure(*Q[:7], key="g"))
    circuits = [ghz, _random(5, seed=99), _feedback(), BEYOND_SAMPLE_CASES["qutrits"](), _random(3, seed=98)]
    runs = []
    for chunk in ("1us", "10s"):  # one task per circuit vs one task for all
        with dask.config.set({"qdask.quantum.chunk-duration": chunk}):
            runs.append(qdask.Sampler(client, seed=SEED, noise=None).run_batch(circuits, repetitions=100))
    assert runs[0] == runs[1]
    assert [r[0].metadata["backend"] for r in runs[0]] == ["stim", "qsim", "cirq", "cirq", "qsim"]
    # Where qsim runs the circuit, the samples are a serial QSimSimulator's (stim draws one seed, as qsim
    # does for it, so the stream stays aligned); stim's own samples differ (documented in qdask.Sampler).
    serial = qsimcirq.QSimSimulator(seed=SEED).run_batch(circuits[:2], repetitions=100)
    assert runs[0][1][0] == serial[1][0] and runs[0][0][0] != serial[0][0]
    assert qdask.Sampler(client, seed=SEED, simulator="qsim").run_batch(circuits[:2], repetitions=100) == serial
