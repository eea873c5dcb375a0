"""Emulated noisy devices: a noise model per quantum worker.

A quantum worker may carry a :class:`DeviceNoise` (depolarizing error after
every gate, bit-flip error before every measurement), emulating a device with
its own error rates. Circuits *sampled* on that worker run with the noise
applied (qsim trajectories); states, expectation values and amplitudes stay
exact, as a simulator's would. The scheduler learns each device's noise (the
worker's registration, or a ``qdask-noise`` event when it changes later),
lists it in ``QuantumCluster.resources()`` (``error_rate``,
``readout_error``), and at ``optimization_level="aggressive"`` routes circuits
to the lowest-error device that fits (:mod:`qdask.hybrid.routing`).

Set it with ``QuantumWorkerPlugin(noise={...})``, the ``qdask.worker.noise``
config (``DASK_QDASK__WORKER__NOISE="{'gate_error': 0.01}"`` for ``dask
worker --preload qdask.plugins.worker``), or at runtime with
:func:`set_device_noise`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import cirq
import numpy as np

# The scheduler side defines the topic: it must not import cirq (this module's base class).
from qdask.hybrid.routing import TOPIC, check_device_noise

if TYPE_CHECKING:
    from distributed import Client, Worker

#: Worker attribute holding the device's :class:`DeviceNoise`.
ATTRIBUTE = "qdask_noise"


class DeviceNoise(cirq.NoiseModel):
    """Noise of an emulated device: depolarizing gates, bit-flip readout.

    Parameters
    ----------
    gate_error : float, default 0
        Depolarizing probability applied to the qubits of every non-measurement
        operation, after it. Also the device's ``error_rate`` for routing.
    readout_error : float, default 0
        Probability that a measured bit flips (a bit flip before every measurement).

    Examples
    --------
    >>> noisy = DeviceNoise(gate_error=0.01, readout_error=0.02)
    >>> q = cirq.LineQubit.range(2)
    >>> len(cirq.Circuit(cirq.CNOT(*q), cirq.measure(*q)).with_noise(noisy))
    4
    """

    def __init__(self, gate_error: float = 0.0, readout_error: float = 0.0) -> None:
        params = check_device_noise({"gate_error": gate_error, "readout_error": readout_error})
        self.gate_error, self.readout_error = params["gate_error"], params["readout_error"]

    @classmethod
    def coerce(cls, noise: DeviceNoise | Mapping[str, float] | None) -> DeviceNoise | None:
        """A ``DeviceNoise`` from itself, a dict of its parameters, or None (noiseless)."""
        if noise is None or isinstance(noise, DeviceNoise):
            return noise
        if not isinstance(noise, Mapping):
            raise TypeError(
                f"noise={noise!r} is not a DeviceNoise or a dict. Fix: noise={{'gate_error': 0.01}}."
            )
        return cls(**check_device_noise(noise))

    @property
    def is_noiseless(self) -> bool:
        return self.gate_error == 0 and self.readout_error == 0

    def to_dict(self) -> dict[str, float]:
        """Msgpack-friendly form (as sent to the scheduler)."""
        return {"gate_error": self.gate_error, "readout_error": self.readout_error}

    def noisy_moment(self, moment: cirq.Moment, system_qubits: Any) -> cirq.OP_TREE:
        measured = [q for op in moment if cirq.is_measurement(op) for q in op.qubits]
        gated = [q for op in moment if not cirq.is_measurement(op) for q in op.qubits]
        before = cirq.bit_flip(self.readout_error).on_each(*measured) if measured and self.readout_error else []
        after = cirq.depolarize(self.gate_error).on_each(*gated) if gated and self.gate_error else []
        return [m for m in (cirq.Moment(before), moment, cirq.Moment(after)) if len(m)]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceNoise) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((DeviceNoise, self.gate_error, self.readout_error))

    def __repr__(self) -> str:
        return f"DeviceNoise(gate_error={self.gate_error!r}, readout_error={self.readout_error!r})"


# -- worker side -------------------------------------------------------------------
def install(worker: Worker, noise: DeviceNoise | None) -> None:
    """Make ``worker`` emulate ``noise`` and tell the scheduler.

    Before the worker registered, the noise rides in its registration
    (``WorkerState.extra["qdask-noise"]``); afterwards in a ``qdask-noise`` event.
    """
    from distributed.core import Status

    setattr(worker, ATTRIBUTE, noise)
    payload = noise.to_dict() if noise is not None else None
    if worker.status == Status.init:
        worker.startup_information[TOPIC] = lambda _worker: payload
    else:
        worker.log_event(TOPIC, {"noise": payload})


def device_noise() -> DeviceNoise | None:
    """The noise of the device this code runs on (None off a worker or on a noiseless one)."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    noise = getattr(worker, ATTRIBUTE, None)
    return None if noise is None or noise.is_noiseless else noise


def sample_on_device(
    noise: DeviceNoise, circuit: cirq.AbstractCircuit, repetitions: int, seed: int | None, threads: int = 1
) -> dict[str, np.ndarray]:
    """Sample ``circuit`` with the device's noise (qsim trajectories, seeded by ``seed``)."""
    import qsimcirq

    # The noisy circuit draws one seed per repetition: a RandomState seeded
    # with the circuit's prescribed seed keeps each device reproducible.
    sim = qsimcirq.QSimSimulator(qsimcirq.QSimOptions(cpu_threads=threads), seed=np.random.RandomState(seed))
    result = sim.run(cirq.Circuit(circuit).with_noise(noise), repetitions=repetitions)
    return {k: np.asarray(v, dtype=np.int8) for k, v in result.records.items()}


def _install_on_worker(noise: dict[str, float] | None, dask_worker: Worker) -> None:
    install(dask_worker, DeviceNoise.coerce(noise))


def set_device_noise(client: Client, noise_by_worker: Mapping[str, DeviceNoise | Mapping[str, float] | None]) -> None:
    """Give running quantum workers a (new) noise model; None makes a worker noiseless.

    Parameters
    ----------
    client : distributed.Client
        Client of the cluster.
    noise_by_worker : mapping
        Worker address -> :class:`DeviceNoise`, a dict of its parameters, or None.

    Examples
    --------
    >>> a, b = sorted(client.scheduler_info()["workers"])  # doctest: +SKIP
    >>> set_device_noise(client, {a: DeviceNoise(gate_error=0.001), b: {"gate_error": 0.02}})  # doctest: +SKIP
    """
    wanted = {}
    for address, noise in noise_by_worker.items():
        coerced = DeviceNoise.coerce(noise)
        payload = coerced.to_dict() if coerced is not None else None
        wanted[address] = None if coerced is None or coerced.is_noiseless else payload
        client.run(_install_on_worker, payload, workers=[address])
    # The scheduler hears of it through the workers' event streams: wait for
    # that, so the next batch is already routed by the new error rates.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = {r["worker"]: r for r in client.sync(client.scheduler.qdask_resources)}
        if all(_row_noise(rows.get(a)) == n for a, n in wanted.items()):
            return
        time.sleep(0.01)
    raise TimeoutError(f"the scheduler did not learn the new device noise of {sorted(wanted)} within 10 s")


def _row_noise(row: dict[str, Any] | None) -> dict[str, float] | None:
    if row is None or row.get("error_rate") is None:
        return None
    noise = {"gate_error": row["error_rate"], "readout_error": row["readout_error"]}
    return None if not any(noise.values()) else noise
