"""qdask.Sampler / qdask.Simulator on a real two-worker cluster against serial cirq/qsim."""

from __future__ import annotations

import sys

import cirq
import dask
import duet
import numpy as np
import pytest
import qsimcirq
import sympy

import qdask
from qdask import ClusterConfig, QuantumCluster
from qdask._compat import scheduler_workers
from qdask.quantum import validate as v


def _random(n, depth=10, seed=0, measure=True):
    q = cirq.LineQubit.range(n)
    c = cirq.testing.random_circuit(q, n_moments=depth, op_density=0.8, random_state=seed)
    return c + cirq.measure(*q, key="m") if measure else c


@pytest.fixture(scope="module")
def client(cluster2):
    return cluster2.get_client()


def test_seeded_samples_equal_a_serial_qsim_run(client):
    circuits = [_random(n, seed=n) for n in range(3, 13)]
    sampler = qdask.Sampler(client, seed=42, simulator="qsim")
    got = sampler.run_batch(circuits, repetitions=200)
    ref = qsimcirq.QSimSimulator(seed=42).run_batch(circuits, repetitions=200)
    assert [g[0] for g in got] == [r[0] for r in ref]
    assert {g[0].metadata["path"] for g in got} == {"compact"}  # sent without cirq objects (qsim_fast)
    # The sampler's stream continues like the serial simulator's.
    assert sampler.run(circuits[3], repetitions=50) == qsimcirq.QSimSimulator(seed=42).run_batch(
        circuits + [circuits[3]], repetitions=[200] * len(circuits) + [50]
    )[-1][0]


def test_sweeps_come_back_in_order_and_equal_serial(client):
    q = cirq.LineQubit.range(4)
    t = sympy.Symbol("t")
    c = cirq.Circuit(cirq.H.on_each(*q), cirq.rz(t).on_each(*q), cirq.H.on_each(*q), cirq.measure(*q, key="m"))
    sweep = cirq.Linspace("t", 0, np.pi, 12)
    got = qdask.Sampler(client, seed=3).run_sweep(c, sweep, repetitions=100)
    ref = qsimcirq.QSimSimulator(seed=3).run_sweep(c, sweep, repetitions=100)
    assert [r.params for r in got] == [r.params for r in ref]
    assert list(got) == list(ref)
    assert {r.metadata["path"] for r in got} == {"compact"}  # translated once, rz(t) bound per point


def test_same_seed_same_samples_whatever_the_chunking(client):
    q = cirq.LineQubit.range(5)
    noisy = cirq.Circuit(cirq.H.on_each(*q), cirq.depolarize(0.05).on_each(*q), cirq.CNOT(q[0], q[1]),
                         cirq.measure(*q, key="m"))
    mid = cirq.Circuit(cirq.H(q[0]), cirq.measure(q[0], key="a"), cirq.CNOT(q[0], q[1]), cirq.measure(q[1], key="b"))
    circuits = [noisy, mid] + [_random(6, seed=s) for s in range(20)]
    results = []
    for chunk in ("1ms", "10s"):  # many split blocks vs one task
        with dask.config.set({"qdask.quantum.chunk-duration": chunk}):
            sampler = qdask.Sampler(client, seed=11)
            results.append(sampler.run_batch(circuits, repetitions=300))
            if chunk == "1ms":
                assert sampler.engine.last.tasks > len(circuits)  # repetitions were split across tasks
    assert results[0] == results[1]
    ref = qsimcirq.QSimSimulator(seed=11).run_batch(circuits[:2], repetitions=300)
    assert results[0][0][0] == ref[0][0] and results[0][1][0] == ref[1][0]
    # Each repetition a simulation of its own: today's path, circuit by circuit.
    assert results[0][0][0].metadata["path"] == results[0][1][0].metadata["path"] == "cirq"


def test_same_seed_on_a_one_worker_cluster():
    circuits = [_random(6, seed=s) for s in range(30)]
    with QuantumCluster(ClusterConfig(num_nodes=1, memory_per_node="1GiB")) as qc:
        one = qdask.Sampler(qc.get_client(), seed=5, simulator="qsim").run_batch(circuits, repetitions=64)
    ref = qsimcirq.QSimSimulator(seed=5).run_batch(circuits, repetitions=64)
    assert one == ref


def test_state_vectors_and_amplitudes(client):
    sim = qdask.Simulator(client)
    circuits = [_random(n, seed=n, measure=False) for n in (6, 9, 12)]
    for c in circuits:
        ref = qsimcirq.QSimSimulator().simulate(c).final_state_vector
        got = sim.simulate(c)
        np.testing.assert_allclose(got.final_state_vector, ref, atol=1e-5)
        assert got.metadata["backend"] == "qsim"
        bits = [0, 1, 5, 2 ** len(c.all_qubits()) - 1]
        np.testing.assert_allclose(sim.compute_amplitudes(c, bits), ref[bits], atol=1e-5)


def test_state_sweep_with_qubit_order_and_initial_state(client):
    q = cirq.LineQubit.range(3)
    t = sympy.Symbol("t")
    c = cirq.Circuit(cirq.rx(t).on(q[0]), cirq.CNOT(q[0], q[2]))
    order = [q[2], q[0], q[1]]
    sweep = cirq.Points("t", [0.1, 0.7, 2.0])
    got = qdask.Simulator(client).simulate_sweep(c, sweep, qubit_order=order, initial_state=2)
    ref = cirq.Simulator().simulate_sweep(c, sweep, qubit_order=order, initial_state=2)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g.final_state_vector, r.final_state_vector, atol=1e-5)


def test_expectation_values(client):
    q = cirq.LineQubit.range(4)
    c = _random(4, seed=7, measure=False)
    obs = [cirq.Z(q[0]) * cirq.Z(q[1]), 0.5 * cirq.X(q[2]) + cirq.Y(q[3])]
    got = qdask.Simulator(client).simulate_expectation_values(c, obs)
    ref = cirq.Simulator().simulate_expectation_values(c, obs)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    with pytest.raises(ValueError, match="permit_terminal_measurements"):
        qdask.Simulator(client).simulate_expectation_values(c + cirq.measure(*q), obs)


def test_noisy_state_is_exact_density_matrix_when_asked(client):
    q = cirq.LineQubit.range(3)
    c = cirq.Circuit(cirq.H(q[0]), cirq.CNOT(q[0], q[1]), cirq.amplitude_damp(0.3).on(q[1]), cirq.X(q[2]))
    # By default a noisy state is one trajectory, as in qsimcirq (tests/test_conformance.py).
    got = qdask.Simulator(client, simulator="density-matrix").simulate(c)
    assert got.metadata["backend"] == "density-matrix"
    ref = cirq.DensityMatrixSimulator().simulate(c).final_density_matrix
    np.testing.assert_allclose(got.final_density_matrix, ref, atol=1e-5)


def test_noisy_sampling_is_statistically_consistent(client):
    q = cirq.LineQubit.range(2)
    c = cirq.Circuit(cirq.H(q[0]), cirq.CNOT(*q), cirq.depolarize(0.2).on_each(*q), cirq.measure(*q, key="m"))
    reps = 4000
    result = qdask.Sampler(client, seed=1).run(c, repetitions=reps)
    assert result.metadata["backend"] == "qsim-trajectories"
    probs = np.real(np.diag(cirq.DensityMatrixSimulator().simulate(c[:-1]).final_density_matrix))
    counts = result.histogram(key="m")
    observed = np.array([counts.get(i, 0) for i in range(4)])
    expected = probs * reps
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # 3 degrees of freedom, p = 0.001


def test_clifford_circuits_go_to_stim(client):
    q = cirq.LineQubit.range(8)
    ghz = cirq.Circuit(cirq.H(q[0]), *[cirq.CNOT(q[i], q[i + 1]) for i in range(7)], cirq.measure(*q, key="g"))
    result = qdask.Sampler(client, seed=2).run(ghz, repetitions=500)
    assert result.metadata["backend"] == "stim"
    assert set(result.histogram(key="g")) == {0, 255}
    again = qdask.Sampler(client, seed=2).run(ghz, repetitions=500)
    assert result == again  # stim is seeded too


def test_submit_returns_a_future_that_composes(client):
    sampler = qdask.Sampler(client, seed=9)
    fut = sampler.submit(_random(5, seed=1), repetitions=100, priority="high")
    ones = client.submit(lambda r: int(r.measurements["m"].sum()), fut)
    result = fut.result()
    assert isinstance(result, cirq.Result) and ones.result() == int(result.measurements["m"].sum())
    ref = qsimcirq.QSimSimulator(seed=9).run(_random(5, seed=1), repetitions=100)
    assert result == ref


def test_submit_of_a_sweep_gives_one_result_per_point_in_one_or_several_tasks(client):
    q = cirq.LineQubit.range(4)
    t = sympy.Symbol("t")
    circuit = cirq.Circuit(cirq.rx(t).on_each(*q), cirq.CZ(q[0], q[1]), cirq.measure(*q, key="m"))
    sweep = cirq.Linspace(t, 0, 1, 3)
    ref = qsimcirq.QSimSimulator(seed=5).run_sweep(circuit, sweep, repetitions=50)
    # One chunk: its task assembles the results; one point per chunk: a second task does.
    for chunk, assembly_task in (("auto", False), ("1us", True)):
        with dask.config.set({"qdask.quantum.chunk-duration": chunk}):
            future = qdask.Sampler(client, seed=5).submit(circuit, sweep, repetitions=50)
        assert future.key.startswith("qdask-result-") is assembly_task
        results = future.result()
        assert [r.params for r in results] == [r.params for r in ref]
        assert results == list(ref), chunk


def test_async_twins(client):
    sampler = qdask.Sampler(client, seed=4, simulator="qsim")
    c = _random(5, seed=2)

    async def both():
        return await sampler.run_async(c, repetitions=20), await sampler.run_batch_async([c, c], repetitions=20)

    single, batch = duet.run(both)
    ref = qsimcirq.QSimSimulator(seed=4).run_batch([c, c, c], repetitions=20)
    assert single == ref[0][0] and [b[0] for b in batch] == [ref[1][0], ref[2][0]]


def test_cirq_work_tools_run_unmodified(client):
    q = cirq.LineQubit.range(2)
    c = cirq.Circuit(cirq.H(q[0]), cirq.CNOT(*q))
    sampler = qdask.Sampler(client, seed=8)
    obs = [cirq.Z(q[0]) * cirq.Z(q[1]), cirq.X(q[0]) * cirq.X(q[1])]
    from cirq.work.observable_measurement import RepetitionsStoppingCriteria, measure_observables

    results = measure_observables(
        c, obs, sampler, stopping_criteria=RepetitionsStoppingCriteria(2000)
    )
    assert [r.mean for r in results] == pytest.approx([1.0, 1.0])
    collector = cirq.PauliSumCollector(c, cirq.Z(q[0]) * cirq.Z(q[1]) + cirq.X(q[0]), samples_per_term=1000)
    collector.collect(sampler)
    assert collector.estimated_energy() == pytest.approx(1.0, abs=0.1)
    df = sampler.sample(c + cirq.measure(*q, key="m"), repetitions=10)
    assert len(df) == 10


def test_backends_listed(client):
    assert "qsim" in qdask.backends() and "stim" in qdask.backends()


# -- validation: each case is refused before anything reaches a worker ----------------
def _workers(client):
    return sorted(scheduler_workers(client))


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: ([_random(4), _random(40)], 10), v.CircuitTooWideError, "circuit 1: 40 qubits"),
        (lambda: ([cirq.Circuit(cirq.rx(sympy.Symbol("a")).on(cirq.LineQubit(0)),
                                cirq.measure(cirq.LineQubit(0)))], 10),
         v.UnresolvedParametersError, r"circuit 0: symbols \['a'\]"),
        (lambda: ([_random(3)], -1), v.InvalidRepetitionsError, "repetitions=-1"),
        (lambda: ([_random(3)], 2.5), v.InvalidRepetitionsError, "repetitions=2.5"),
        (lambda: ([_random(3), _random(3, measure=False)], 10), v.NoMeasurementsError, "circuit 1: sampling"),
    ],
    ids=["too-wide", "unresolved", "negative-reps", "float-reps", "no-measurements"],
)
def test_validation_errors(client, make, error, match):
    before = _workers(client)
    circuits, reps = make()
    with pytest.raises(error, match=match) as info:
        qdask.Sampler(client).run_batch(circuits, repetitions=reps)
    assert isinstance(info.value, ValueError) and "Fix:" in str(info.value)
    assert _workers(client) == before


def test_too_wide_names_the_limit(client):
    with pytest.raises(v.CircuitTooWideError) as info:
        qdask.Sampler(client).run(_random(34), repetitions=1)
    assert "27 qubits on this cluster" in str(info.value)


def test_unsupported_gate_is_refused(client):
    class Opaque(cirq.Gate):
        def _num_qubits_(self):
            return 1

    q = cirq.LineQubit(0)
    with pytest.raises(v.UnsupportedGateError, match="circuit 0: operations \\['Opaque'\\]"):
        qdask.Sampler(client).run(cirq.Circuit(Opaque().on(q), cirq.measure(q)), repetitions=1)


def test_explicit_backend_that_cannot_run_it(client):
    with pytest.raises(v.BackendMismatchError, match="simulator 'stim' cannot sample it: the circuit is not Clifford"):
        qdask.Sampler(client, simulator="stim").run(_random(6, seed=1), repetitions=1)
    with pytest.raises(ValueError, match="unknown simulator 'qiskit'"):
        qdask.Sampler(client, simulator="qiskit").run(_random(3), repetitions=1)
    with pytest.raises(TypeError, match="initial_state vector must have dtype np.complex64"):  # as qsimcirq
        qdask.Simulator(client).simulate(_random(3, measure=False), initial_state=np.ones(8) / 8**0.5)


def _faults_per_state_vector() -> tuple[float, float]:
    """Page faults per 3 MiB state allocated and freed in a thread, as configured and without heap reuse.

    3 MiB, not 4: numpy advises huge pages for arrays of 4 MiB or more, so a
    fresh 4 MiB mapping faulted 3 times or ~514 by where the kernel placed
    it (2 MiB-aligned or not). Below that every fresh 4 KiB page faults.
    """
    import resource
    import threading

    from dask.utils import parse_bytes

    from qdask import config
    from qdask.worker.plugin import reuse_freed_memory

    def faults() -> float:
        out = []

        def run():  # in a thread, as the worker's executor runs circuits
            np.ones(3 * 2**17, np.complex64)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(20):
                np.ones(3 * 2**17, np.complex64)
            out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)

        t = threading.Thread(target=run)
        t.start()
        t.join()
        return out[0]

    configured = faults()
    reuse_freed_memory(128 * 1024)  # large blocks mapped afresh, as under Dask's MALLOC_TRIM_THRESHOLD_
    try:
        return configured, faults()
    finally:
        reuse_freed_memory(parse_bytes(config.get("worker.heap-reuse")))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_quantum_workers_reuse_state_vector_memory(client):
    # qdask.worker.heap-reuse (32 MiB): a state vector reuses freed heap memory
    # instead of faulting in ~768 fresh pages per 3 MiB.
    faults = client.run(_faults_per_state_vector)
    assert len(faults) == 2
    for reused, fresh in faults.values():
        assert reused < 50 and fresh > 500, faults
