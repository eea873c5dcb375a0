"""``qdask.Sampler``: a ``cirq.Sampler`` whose circuits run across a Dask cluster."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cirq
import duet
import numpy as np
from distributed import Client, Future

# Features that hook into the engine (docs/architecture.md), imported for their
# registration: every Sampler and Simulator has fault tolerance's batch guard and
# the Schrödinger-Feynman job router.
import qdask.fault.batch  # noqa: F401
import qdask.hybrid.schrodinger_feynman  # noqa: F401
from qdask.quantum.engine import Engine, Result, Submission, sample_result
from qdask.quantum.errors import raise_failures
from qdask.quantum.task import TaskResult


class Sampler(cirq.Sampler):
    """Sample circuits on a qdask cluster, as ``qsimcirq.QSimSimulator`` would serially.

    ``run``, ``run_sweep``, ``run_batch``, ``sample`` and their ``*_async``
    twins submit every circuit of the call at once: small circuits are packed
    into chunks, big ones run alone, and results come back in the caller's
    order.

    With ``seed`` set, results are the same run to run, on any number of
    workers and whatever the chunking. They equal a serial
    ``qsimcirq.QSimSimulator(seed=seed, noise=noise)`` making the same calls
    for every circuit that runs on ``qsim`` or ``qsim-trajectories``: always
    with ``simulator="qsim"`` (noiseless circuits) or
    ``optimization_level="none"``. With ``simulator="auto"`` two kinds of
    circuit run elsewhere, reproducibly but with other samples than qsim's:
    noiseless Clifford circuits of 4 or more qubits (sampled by ``stim``),
    and circuits qsim cannot run (classical control, qudits, confusion maps,
    gates on more than 6 qubits: cirq's simulator). ``result.metadata["backend"]``
    names the backend of each circuit.

    Parameters
    ----------
    client : distributed.Client, optional
        Defaults to the current default client.
    seed : int, optional
        Seed of the sampler's random stream.
    noise : cirq.NOISE_MODEL_LIKE, optional
        Noise applied to every circuit, as qsimcirq's ``noise=``: a
        ``cirq.NoiseModel``, or a single-qubit channel applied after every
        moment to every qubit.
    qsim_options : qsimcirq.QSimOptions or dict, optional
        qsim's options, as ``qsimcirq.QSimSimulator`` takes them (a dict uses
        qsim's short keys or ``QSimOptions`` field names). Those set apply on
        every worker; ``cpu_threads`` left at its default lets qdask choose,
        and ``use_gpu=True`` asks for the ``qsim-gpu`` backend. Reported back
        as :attr:`qsim_options`, as qsimcirq's dict.
    simulator : str, default "auto"
        Backend for every circuit, or "auto" to choose per circuit
        (``qdask.backends()`` lists them).
    priority : int or str, default "normal"
        Dask priority or class ("low", "normal", "high", "critical").
    progress : bool or None, default None
        Show a progress bar while a batch runs; None: only in Jupyter (a widget
        there with ``qdask[notebook]``, tqdm's text bar otherwise).

    Examples
    --------
    >>> sampler = qdask.Sampler(client, seed=1)  # doctest: +SKIP
    >>> result = sampler.run(circuit, repetitions=1000)  # doctest: +SKIP
    >>> result.metadata["backend"]  # doctest: +SKIP
    'qsim'
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        seed: int | np.random.RandomState | None = None,
        noise: cirq.NOISE_MODEL_LIKE = None,
        qsim_options: Any = None,
        simulator: str = "auto",
        priority: int | str = "normal",
        progress: bool | None = None,
    ) -> None:
        self.noise = cirq.NoiseModel.from_noise_model_like(noise)
        #: The caller's qsim options that differ from qsim's defaults (short keys): what travels to the workers.
        self._qsim_changes = _qsim_changes(qsim_options)
        if self._qsim_changes.get("g") and simulator == "auto":
            simulator = "qsim-gpu"  # the backend decides GPU or not (qdask.quantum.backends)
        self.engine = Engine(client, seed=seed, simulator=simulator, priority=priority, progress=progress)

    @property
    def qsim_options(self) -> dict[str, Any]:
        """qsim's option dict, as ``qsimcirq.QSimSimulator.qsim_options`` reports it.

        qsim's defaults, then the caller's.
        """
        import qsimcirq

        return {**qsimcirq.QSimOptions().as_dict(), **self._qsim_changes}

    def _noisy(self, program: cirq.AbstractCircuit) -> cirq.AbstractCircuit:
        """``program`` with the noise model applied, exactly as qsimcirq applies it."""
        if self.noise is cirq.NO_NOISE:
            return program
        return cirq.Circuit(self.noise.noisy_moments(program, sorted(program.all_qubits())))

    def _with_options(self, extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each program's extras, with the caller's qsim options where there are any."""
        if not self._qsim_changes:
            return extra
        return [{**e, "qsim_options": self._qsim_changes} for e in extra]

    @property
    def client(self) -> Client:
        """The ``distributed.Client`` the circuits are submitted through."""
        return self.engine.client

    # -- cirq.Sampler ----------------------------------------------------------------
    def run_sweep(
        self, program: cirq.AbstractCircuit, params: cirq.Sweepable, repetitions: int = 1
    ) -> Sequence[cirq.Result]:
        """Sample ``program`` at every point of ``params``; the points run across the cluster.

        Parameters
        ----------
        program : cirq.AbstractCircuit
            A circuit with measurements.
        params : cirq.Sweepable
            Parameter points (``None`` for one point).
        repetitions : int, default 1
            Samples per point.

        Returns
        -------
        list of qdask.quantum.engine.Result
            One per point, in order.

        Examples
        --------
        >>> results = sampler.run_sweep(circuit, cirq.Linspace("t", 0, 1, 10), repetitions=100)  # doctest: +SKIP
        >>> [r.histogram(key="m") for r in results]  # doctest: +SKIP
        """
        return self.run_batch([program], [params], repetitions)[0]

    async def run_sweep_async(
        self, program: cirq.AbstractCircuit, params: cirq.Sweepable, repetitions: int = 1
    ) -> Sequence[cirq.Result]:
        """:meth:`run_sweep` as a coroutine (cirq's ``duet`` or ``asyncio``).

        Examples
        --------
        >>> results = await sampler.run_sweep_async(circuit, sweep, repetitions=100)  # doctest: +SKIP
        """
        return (await self.run_batch_async([program], [params], repetitions))[0]

    def run_batch(
        self,
        programs: Sequence[cirq.AbstractCircuit],
        params_list: Sequence[cirq.Sweepable] | None = None,
        repetitions: int | Sequence[int] = 1,
    ) -> Sequence[Sequence[cirq.Result]]:
        """Sample every program at each of its points, all submitted at once.

        Small circuits are packed into chunks, big ones run alone; results come
        back in the caller's order.

        Parameters
        ----------
        programs : sequence of cirq.AbstractCircuit
            Circuits with measurements.
        params_list : sequence of cirq.Sweepable, optional
            One sweep per program (``None``: one point each).
        repetitions : int or sequence of int, default 1
            Samples per point, for all programs or one count per program.

        Returns
        -------
        list of list of qdask.quantum.engine.Result
            ``results[i][j]``: program ``i`` at its point ``j``.

        Raises
        ------
        qdask.BatchError
            When some circuits fail: ``.results`` holds those that finished.

        Examples
        --------
        >>> results = sampler.run_batch(circuits, repetitions=500)  # doctest: +SKIP
        >>> results[0][0].histogram(key="m").most_common(3)  # doctest: +SKIP
        """
        sub = self._submit(programs, params_list, repetitions)
        return _by_program(sub, self.engine.collect(sub, sample_result), len(programs))

    async def run_batch_async(
        self,
        programs: Sequence[cirq.AbstractCircuit],
        params_list: Sequence[cirq.Sweepable] | None = None,
        repetitions: int | Sequence[int] = 1,
    ) -> Sequence[Sequence[cirq.Result]]:
        """:meth:`run_batch` as a coroutine (cirq's ``duet`` or ``asyncio``).

        Examples
        --------
        >>> results = await sampler.run_batch_async(circuits, repetitions=500)  # doctest: +SKIP
        """
        sub = self._submit(programs, params_list, repetitions)
        by_index = await duet.AwaitableFuture.wrap(self.engine.collect_async(sub, sample_result))
        return _by_program(sub, by_index, len(programs))

    # -- Dask composition ------------------------------------------------------------
    def submit(
        self,
        circuit: cirq.AbstractCircuit,
        params: cirq.Sweepable = None,
        repetitions: int = 1,
        *,
        priority: int | str | None = None,
        simulator: str | None = None,
    ) -> Future:
        """Submit one circuit (or sweep); returns a ``distributed.Future`` at once.

        The future's result is a :class:`qdask.quantum.engine.Result` (a
        ``cirq.Result``), or a list of them for a sweep of several points, so
        it can feed classical tasks: ``client.submit(postprocess, future)``.

        Parameters
        ----------
        circuit : cirq.AbstractCircuit
            A circuit with measurements.
        params : cirq.Sweepable, optional
            Parameter points.
        repetitions : int, default 1
            Samples per point.
        priority : int or str, optional
            Dask priority or class ("low", "normal", "high", "critical");
            defaults to the sampler's.
        simulator : str, optional
            Backend name, or "auto"; defaults to the sampler's.

        Returns
        -------
        distributed.Future

        Examples
        --------
        >>> future = sampler.submit(circuit, repetitions=1000, priority="high")  # doctest: +SKIP
        >>> ones = client.submit(lambda r: int(r.measurements["m"].sum()), future)  # doctest: +SKIP
        >>> ones.result()  # doctest: +SKIP
        """
        sub = self.engine.submit(
            [self._noisy(circuit)], [params], [repetitions], work="sample", simulator=simulator, priority=priority,
            finish=_assemble_sweep, extra=self._with_options([{}]) if self._qsim_changes else None,
        )
        if sub.finished:  # one task ran the circuits and assembled the result
            return sub.futures[0]
        # The assembly step has the circuits' priority: an urgent result must not wait behind a backlog.
        return self.client.submit(
            _assemble_sweep, sub.jobs, *sub.futures, key=f"qdask-result-{sub.futures[0].key}",
            priority=sub.priority, pure=False,
        )

    def _submit(
        self,
        programs: Sequence[cirq.AbstractCircuit],
        params_list: Sequence[cirq.Sweepable] | None,
        repetitions: int | Sequence[int],
    ) -> Submission:
        # Not cirq's _normalize_batch_args: it fails with a TypeError on
        # repetitions=2.5, which qdask reports as InvalidRepetitionsError.
        if params_list is None:
            params_list = [None] * len(programs)
        if isinstance(programs, cirq.AbstractCircuit):
            raise TypeError(
                "programs must be a list of circuits, got one cirq.Circuit. "
                "Fix: run_batch([circuit], ...) or run(circuit, ...)"
            )
        # A string is a Sequence: "10" would be read as two repetition counts.
        reps: list[Any]  # each checked when planned (validate.check_repetitions)
        if isinstance(repetitions, Sequence) and not isinstance(repetitions, (str, bytes)):
            reps = list(repetitions)
        else:
            reps = [repetitions] * len(programs)
        fix = "Fix: pass one sweep and one repetition count per program (or one int for all)."
        # cirq's own wording (cirq.Sampler._normalize_batch_args), then qdask's fix.
        if len(programs) != len(params_list):
            raise ValueError(
                f"len(programs) and len(params_list) must match. Got {len(programs)} and {len(params_list)}. {fix}"
            )
        if len(programs) != len(reps):
            raise ValueError(
                f"len(programs) and len(repetitions) must match. Got {len(programs)} and {len(reps)}. {fix}"
            )
        extra = self._with_options([{}] * len(programs)) if self._qsim_changes else None
        return self.engine.submit(
            [self._noisy(p) for p in programs], list(params_list), reps, work="sample", extra=extra
        )


def _qsim_changes(qsim_options: Any) -> dict[str, Any]:
    """The options of a ``QSimOptions`` or dict that differ from qsim's defaults, by qsim's short keys.

    Raises ``ValueError`` for qsim's reserved keys, as qsimcirq does, and for
    names qsim does not have.
    """
    import dataclasses

    import qsimcirq

    defaults = qsimcirq.QSimOptions().as_dict()
    if qsim_options is None:
        return {}
    if isinstance(qsim_options, qsimcirq.QSimOptions):
        given = qsim_options.as_dict()
    elif isinstance(qsim_options, dict):
        names = {f.name: key for f, key in zip(dataclasses.fields(qsimcirq.QSimOptions), defaults)}
        reserved = sorted(k for k in qsim_options if k in ("c", "i", "s"))
        if reserved:
            raise ValueError(  # qsimcirq's wording, then the fix
                'Keys {"c", "i", "s"} are reserved for internal use and cannot be used in QSimCircuit instantiation. '
                f"Got {reserved}. Fix: qdask sets the circuit and the seed itself (seed=...)."
            )
        unknown = sorted(k for k in qsim_options if k not in defaults and k not in names)
        if unknown:
            raise ValueError(
                f"qsim_options has unknown keys {unknown}: qsim's are {sorted(defaults)} or the QSimOptions fields "
                f"{sorted(names)}. Fix: pass qsimcirq.QSimOptions(...) or those keys."
            )
        given = {names.get(k, k): v for k, v in qsim_options.items()}
    else:
        raise TypeError(
            f"qsim_options must be a qsimcirq.QSimOptions or a dict, got {type(qsim_options).__name__}. "
            "Fix: qsim_options=qsimcirq.QSimOptions(max_fused_gate_size=4)."
        )
    return {k: v for k, v in given.items() if defaults.get(k) != v}


def _by_program(sub: Submission, by_index: dict[int, list[TaskResult]], n_programs: int) -> list[list[Result]]:
    out: list[list[Result]] = [[] for _ in range(n_programs)]
    for job in sub.jobs:
        out[job.program].append(sample_result(job, by_index[job.index]))
    return out


def _assemble_sweep(jobs: list[Any], *chunk_results: list[TaskResult]) -> Any:
    """Runs on a worker: the result of one ``Sampler.submit`` call (a list for a sweep of several points)."""
    by_index: dict[int, list[TaskResult]] = {}
    for results in chunk_results:
        for r in results:
            by_index.setdefault(r.index, []).append(r)
    raise_failures([r for results in chunk_results for r in results])  # the circuits' own error types
    out = [sample_result(job, sorted(by_index[job.index], key=lambda r: r.start)) for job in jobs]
    return out[0] if len(jobs) == 1 else out
