"""The hybrid layer on a real cluster: 1 classical + 2 quantum worker processes on loopback."""

from __future__ import annotations

import functools
import os
import signal
import time

import cirq
import networkx as nx
import numpy as np
import pytest
import qsimcirq
from distributed import get_worker

import qdask
from qdask import ClusterConfig, HybridConfig, QuantumCluster
from qdask.hybrid import schrodinger_feynman as sf
from qdask.hybrid.noise import DeviceNoise, set_device_noise
from qdask.hybrid.variational import minimize, qaoa_maxcut
from qdask.quantum.validate import CircuitTooWideError

try:
    import mitiq

    from qdask.hybrid import mitigation
except ImportError:  # mitiq is installed apart (docs/hybrid.md)
    mitiq = None


@pytest.fixture(scope="module")
def qc():
    hybrid = HybridConfig(classical_nodes=1, quantum_nodes=2, optimization_level="basic")
    with QuantumCluster(ClusterConfig(memory_per_node="1GiB"), hybrid=hybrid) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(qc):
    return qc.get_client()


def _roles(qc):
    return {r["worker"]: r for r in qc.resources()}


def _where(*_: object) -> str:
    return get_worker().address


# -- roles ------------------------------------------------------------------------------------
def test_roles_are_visible_and_classical_tasks_prefer_classical_workers(qc, client):
    rows = _roles(qc)
    classical = [a for a, r in rows.items() if r["role"] == "classical"]
    quantum = [a for a, r in rows.items() if r["role"] == "quantum"]
    assert len(classical) == 1 and len(quantum) == 2
    assert rows[classical[0]]["error_rate"] is None and all(rows[a]["error_rate"] == 0.0 for a in quantum)
    # Plain tasks (one each, and a map wide enough to be root-ish) run on the classical worker...
    assert {client.submit(_where, pure=False).result() for _ in range(4)} == set(classical)
    # The map's tasks share the prefix of the calls above, so Dask knows they take milliseconds;
    # a prefix new to it counts 0.5 s a task, and its stealing may then move some (the
    # restrictions are loose) to an idle quantum worker.
    assert set(client.gather(client.map(_where, range(20)))) == set(classical)
    # ... but only preferably (loose), and quantum requests still go to quantum workers.
    fut = client.submit(_where, pure=False)
    fut.result()
    loose = client.run_on_scheduler(lambda dask_scheduler, key=fut.key: dask_scheduler.tasks[key].loose_restrictions)
    assert loose is True
    assert client.submit(_where, resources={"quantum": 1}, pure=False).result() in quantum
    # Circuits (and a classical task consuming their result) land where their role says.
    q = cirq.LineQubit.range(4)
    c = cirq.Circuit(cirq.H.on_each(*q), cirq.measure(*q, key="m"))
    sampler = qdask.Sampler(client, seed=1)
    assert set(sampler.run(c, repetitions=10).metadata["workers"]) <= set(quantum)
    post = client.submit(lambda r: (len(r.measurements["m"]), get_worker().address), sampler.submit(c, repetitions=7))
    assert post.result() == (7, classical[0])


def test_the_cluster_level_reaches_the_engine(client):
    assert qdask.Sampler(client).engine.context()[1].level == "basic"
    engine = qdask.Sampler(client).engine
    engine.optimization_level = "aggressive"
    assert engine.context()[1].sf_fallback


# -- Schrödinger-Feynman ---------------------------------------------------------------------------
def _layers(qubits, depth, seed, family=(cirq.CZ,)):
    rng = np.random.default_rng(seed)
    c = cirq.Circuit()
    for d in range(depth):
        c.append(
            cirq.PhasedXZGate(x_exponent=rng.random(), z_exponent=rng.random(), axis_phase_exponent=rng.random())(x)
            for x in qubits
        )
        c.append(family[(d + i) % len(family)](qubits[i], qubits[i + 1]) for i in range(d % 2, len(qubits) - 1, 2))
    return c


def test_qsimh_amplitudes_equal_state_vector_amplitudes(client, qc):
    q = cirq.LineQubit.range(16)
    c = _layers(q, 6, seed=4, family=(cirq.CZ, cirq.ISWAP**0.5, cirq.FSimGate(0.4, 0.1), cirq.CNOT))
    bitstrings = [0, 1, 2**15 + 3, 2**16 - 1, 40_000]
    ref = qsimcirq.QSimSimulator().compute_amplitudes(c, bitstrings)
    sim = qdask.Simulator(client, simulator="qsimh")
    got = sim.compute_amplitudes(c, bitstrings)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert sim.engine.last.backends == {"qsimh": 1}
    # The prefix paths ran on both quantum workers (8 tasks over 2 slots).
    (workers,) = sim.engine.last.workers
    quantum = {a for a, r in _roles(qc).items() if r["role"] == "quantum"}
    assert set(workers.split(",")) == quantum
    np.testing.assert_allclose(sf.compute_amplitudes(client, c, bitstrings, tasks=3), ref, atol=1e-6)


def test_forty_qubit_amplitude_on_the_local_cluster(client):
    q = cirq.LineQubit.range(40)
    half = _layers(q, 3, seed=1)  # one CZ across the middle: U U^-1 has 4 paths
    c = half + cirq.inverse(half)  # U U^-1: <0|.|0> = 1, every other amplitude 0
    with pytest.raises(CircuitTooWideError, match="simulator='qsimh'"):
        qdask.Simulator(client).compute_amplitudes(c, [0])  # basic: no fallback
    sim = qdask.Simulator(client)
    sim.engine.optimization_level = "aggressive"
    amps = sim.compute_amplitudes(c, [0, 1, 2**39])
    np.testing.assert_allclose(amps, [1, 0, 0], atol=1e-5)
    assert sim.engine.last.backends == {"qsimh": 1}


# -- variational loops ----------------------------------------------------------------------------
def test_variational_run_equals_a_serial_run(client):
    problem = qaoa_maxcut(nx.random_regular_graph(3, 6, seed=3), layers=1)
    x0 = [0.2, 0.3]
    options = {"maxiter": 3}
    cluster = minimize(problem.objective(qdask.Simulator(client)), x0, method="BFGS", options=options)
    serial = minimize(problem.objective(qsimcirq.QSimSimulator()), x0, method="BFGS", options=options)
    np.testing.assert_allclose(cluster.x, serial.x, atol=1e-6)
    assert cluster.fun < cluster.history[0][1]  # it optimized
    assert cluster.batches == cluster.nfev  # value + gradient: one batch per evaluation
    # Sampled objective with a gradient-free optimizer: same seed, same samples, same path.
    kw = {"method": "COBYLA", "options": {"maxiter": 8}}
    sampled = minimize(problem.objective(qdask.Sampler(client, seed=5), repetitions=200), x0, **kw)
    reference = minimize(problem.objective(qsimcirq.QSimSimulator(seed=5), repetitions=200), x0, **kw)
    np.testing.assert_allclose(sampled.x, reference.x, atol=1e-6)


def test_one_gradient_is_one_batch_over_the_quantum_workers(client):
    problem = qaoa_maxcut(nx.random_regular_graph(3, 10, seed=1), layers=1)
    sim = qdask.Simulator(client)
    objective = problem.objective(sim)
    value, grad = objective.value_and_gradient([0.4, 0.2])
    uses = len(problem.graph.edges) + len(problem.graph.nodes)
    assert objective.batches == 1 and sim.engine.last.circuits == 1 + 2 * uses
    serial = problem.objective(qsimcirq.QSimSimulator()).value_and_gradient([0.4, 0.2])
    assert value == pytest.approx(serial[0], abs=1e-6)
    np.testing.assert_allclose(grad, serial[1], atol=1e-6)


# -- error mitigation -------------------------------------------------------------------------------
@pytest.mark.skipif(mitiq is None, reason="mitiq: pip install --no-deps mitiq==1.1.0 (docs/hybrid.md)")
def test_zne_and_readout_mitigation_in_one_distributed_batch(client):
    from mitiq import rem, zne
    from mitiq.zne.inference import RichardsonFactory
    from mitiq.zne.scaling import fold_gates_at_random

    q = cirq.LineQubit.range(3)
    c = cirq.Circuit(cirq.H(q[0]), cirq.CNOT(q[0], q[1]), cirq.CNOT(q[1], q[2]), cirq.rz(0.3).on_each(*q),
                     cirq.CNOT(q[1], q[2]), cirq.CNOT(q[0], q[1]), cirq.H(q[0]))
    obs = cirq.Z(q[0]) * cirq.Z(q[1]) + 0.5 * cirq.Z(q[1]) * cirq.Z(q[2])
    ideal = cirq.Simulator().simulate_expectation_values(c, [obs])[0].real
    noise = DeviceNoise(gate_error=0.02, readout_error=0.05)
    scale = functools.partial(fold_gates_at_random, seed=2)
    np.random.seed(7)  # mitiq's REM resamples with numpy's global generator
    sampler = qdask.Sampler(client, seed=11)
    ours = mitigation.execute_with_zne(c, obs, sampler, repetitions=2000, factory=RichardsonFactory([1, 2, 3]),
                                       scale_noise=scale, noise=noise)
    assert ours.batches == 1 and ours.circuits == 2 + 3  # calibration + one circuit per scale factor
    assert sampler.engine.last.circuits == 5
    assert abs(ours.value - ideal) < abs(ours.unmitigated - ideal)

    # mitiq's own serial pipeline, same seeds: calibration first, then ZNE over a REM executor.
    sim = qsimcirq.QSimSimulator(seed=11)
    np.random.seed(7)
    cal = [mitigation.to_measurement_result(sim.run(x.with_noise(noise), repetitions=2000))
           for x in mitigation.calibration_circuits(q)]
    icm = mitigation.inverse_confusion_matrix(mitigation.confusion_matrices(*cal), range(3))

    def serial(circuit) -> mitiq.MeasurementResult:
        return mitigation.to_measurement_result(sim.run(circuit.with_noise(noise), repetitions=2000))

    theirs = zne.execute_with_zne(c, rem.mitigate_executor(serial, inverse_confusion_matrix=icm),
                                  mitigation.to_mitiq_observable(obs, q), factory=RichardsonFactory([1, 2, 3]),
                                  scale_noise=scale)
    assert ours.value == pytest.approx(float(np.real(theirs)), abs=1e-12)


# -- noise-aware routing --------------------------------------------------------------------------
def test_noise_aware_routing_picks_the_lowest_error_device(qc, client):
    quantum = sorted(a for a, r in _roles(qc).items() if r["role"] == "quantum")
    noisy, better = quantum
    set_device_noise(client, {noisy: DeviceNoise(gate_error=0.05, readout_error=0.3), better: {"readout_error": 0.1}})
    try:
        rows = _roles(qc)
        assert (rows[noisy]["error_rate"], rows[noisy]["readout_error"]) == (0.05, 0.3)
        assert (rows[better]["error_rate"], rows[better]["readout_error"]) == (0.0, 0.1)
        q = cirq.LineQubit(0)
        ones = [cirq.Circuit(cirq.X(q), cirq.measure(q, key="m"))] * 12
        sampler = qdask.Sampler(client, seed=2)
        sampler.engine.optimization_level = "aggressive"
        results = sampler.run_batch(ones, repetitions=400)
        assert {w for r in results for w in r[0].metadata["workers"]} == {better}
        # The device's readout error is what the samples show (10%, not 30%, not 0).
        flips = 1 - np.mean([r[0].measurements["m"].mean() for r in results])
        assert 0.07 < flips < 0.13
        # Exact quantities are not sampled on the device: no noise, no routing.
        assert qdask.Simulator(client).simulate(ones[0][:-1]).final_state_vector[1] == pytest.approx(1)
    finally:
        set_device_noise(client, {noisy: None, better: None})
    assert all(r["error_rate"] == 0.0 for r in _roles(qc).values() if r["role"] == "quantum")


@pytest.mark.slow
def test_routed_tasks_move_to_the_best_remaining_device_when_theirs_dies(qc, client):
    best, other = sorted(a for a, r in _roles(qc).items() if r["role"] == "quantum")
    set_device_noise(client, {best: {"readout_error": 0.01}, other: {"readout_error": 0.2}})
    q = cirq.LineQubit.range(8)
    noisy = cirq.Circuit(cirq.H.on_each(*q), cirq.depolarize(0.01).on_each(*q), cirq.measure(*q, key="m"))
    sampler = qdask.Sampler(client, seed=3)
    sampler.engine.optimization_level = "aggressive"
    futures = [sampler.submit(noisy, repetitions=2000) for _ in range(6)]

    def routed(dask_scheduler):
        return [sorted(devices) for devices in dask_scheduler.extensions["qdask"].routing.routed.values()]

    deadline = time.monotonic() + 120
    while not client.run_on_scheduler(routed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.run_on_scheduler(routed) and all(d == [best] for d in client.run_on_scheduler(routed))
    os.kill(client.run(os.getpid, workers=[best])[best], signal.SIGKILL)
    results = client.gather(futures)
    assert [len(r.measurements["m"]) for r in results] == [2000] * 6  # none stuck on the dead device
    assert all(best not in d for d in client.run_on_scheduler(routed))
    # The Nanny restarts the killed worker (noiseless); the next test sees two quantum workers again.
    while sum(r["role"] == "quantum" for r in _roles(qc).values()) < 2 and time.monotonic() < deadline + 120:
        time.sleep(0.1)
    set_device_noise(client, {other: None})
