"""Variational loops: the optimizer runs in the client, each iteration's circuits on the cluster.

An :class:`Objective` turns a parameterized circuit and an *estimator* (how a
batch of parameter points becomes numbers: exact expectation values, sampled
ones, or mitigated ones from :mod:`qdask.hybrid.mitigation`) into the
function a classical optimizer calls. Every call is **one batch**: the value
at a point together with its parameter-shift gradient is one circuit and
``1 + 2 * occurrences`` parameter points, which a ``qdask.Simulator`` spreads
over the quantum workers (cheap points packed together, long ones alone).

The parameter-shift rule is exact for gates ``G**t`` whose eigenvalues differ
by one unit of ``t`` (``cirq.rx/ry/rz``, ``X/Y/Z/H**t``, ``CZ/CNOT**t``,
``XX/YY/ZZ**t``): ``df/dt = pi/2 * (f(t + 1/2) - f(t - 1/2))``. A symbol used
by several gates gets one shift per use (each use has its own internal symbol)
and the chain rule adds them up, so QAOA's shared angles work.

Given the same estimator kind, optimizer and seed, a run on the cluster takes
the same steps as one with a serial simulator: qdask's results equal the
serial simulator's (``qdask.Simulator`` vs ``qsimcirq.QSimSimulator``, or a
seeded ``qdask.Sampler`` vs a seeded ``QSimSimulator``).

Examples
--------
>>> problem = qaoa_maxcut(networkx.random_regular_graph(3, 8, seed=1), layers=1)  # doctest: +SKIP
>>> objective = problem.objective(qdask.Simulator(client))  # doctest: +SKIP
>>> result = minimize(objective, [0.4, 0.3], method="BFGS")  # doctest: +SKIP
>>> result.fun, result.batches  # doctest: +SKIP
(-9.1, 7)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import cirq
import numpy as np
import sympy

if TYPE_CHECKING:
    import networkx as nx
    import scipy.optimize

#: An estimator: the objective's value at each parameter point of one batch.
Estimator = Callable[[cirq.AbstractCircuit, list[cirq.ParamResolver]], np.ndarray]

#: scipy methods that use a gradient (``jac=True``); others are gradient-free.
GRADIENT_METHODS = frozenset({"BFGS", "L-BFGS-B", "CG", "TNC", "SLSQP", "NEWTON-CG", "TRUST-CONSTR"})

#: Measurement key of the sampled estimator.
KEY = "qdask_variational"


class NotShiftableError(ValueError):
    """A parameterized operation the parameter-shift rule does not cover."""


# -- estimators ------------------------------------------------------------------------
def expectation_estimator(simulator: cirq.SimulatesExpectationValues, observable: cirq.PauliSumLike) -> Estimator:
    """Exact expectation values of ``observable`` (one sweep per batch).

    ``simulator`` is a ``qdask.Simulator`` (distributed) or any cirq
    simulator, e.g. ``qsimcirq.QSimSimulator()`` for a serial reference.
    """
    obs = cirq.PauliSum.wrap(observable)

    def estimate(circuit: cirq.AbstractCircuit, resolvers: list[cirq.ParamResolver]) -> np.ndarray:
        values = simulator.simulate_expectation_values_sweep(circuit, observables=[obs], params=resolvers)
        return np.array([complex(v[0]).real for v in values])

    return estimate


def sampled_estimator(sampler: cirq.Sampler, observable: cirq.PauliSumLike, repetitions: int) -> Estimator:
    """Expectation values of a diagonal (Z-only) ``observable`` from ``repetitions`` samples per point.

    With a seeded ``qdask.Sampler`` the samples equal those of a
    ``qsimcirq.QSimSimulator`` with the same seed, so optimizer paths agree too.
    """
    obs = cirq.PauliSum.wrap(observable)
    for term in obs:
        if any(p != cirq.Z for p in term.values()):
            raise ValueError(
                f"sampled_estimator measures in the computational basis; the term {term} is not diagonal. "
                "Fix: use expectation_estimator, or rotate the circuit so the observable is Z-only."
            )

    def estimate(circuit: cirq.AbstractCircuit, resolvers: list[cirq.ParamResolver]) -> np.ndarray:
        qubits = sorted(circuit.all_qubits() | set(obs.qubits))
        measured = cirq.Circuit(circuit) + cirq.measure(*qubits, key=KEY)
        results = sampler.run_sweep(measured, params=resolvers, repetitions=repetitions)
        return np.array([diagonal_expectation(obs, r.measurements[KEY], qubits) for r in results])

    return estimate


def diagonal_expectation(observable: cirq.PauliSum, bits: np.ndarray, qubits: Sequence[cirq.Qid]) -> float:
    """Mean of a Z-only ``observable`` over measured ``bits`` (repetitions x qubits)."""
    column = {q: i for i, q in enumerate(qubits)}
    signs = 1 - 2 * np.asarray(bits, dtype=np.int64)
    total = 0.0
    for term in observable:
        cols = [column[q] for q in term.qubits]
        parity = np.prod(signs[:, cols], axis=1) if cols else np.ones(len(signs))
        total += float(np.real(term.coefficient)) * float(np.mean(parity))
    return total


# -- the objective ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Use:
    """One parameterized gate: its exponent is ``slope * x[symbol] + offset``."""

    symbol: int
    slope: float
    offset: float


@dataclass
class Objective:
    """``f(x)`` = the estimator at ``circuit(x)``; values and gradients in one batch per call.

    Parameters
    ----------
    circuit : cirq.AbstractCircuit
        The ansatz, parameterized by ``symbols``.
    estimator : Estimator
        See :func:`expectation_estimator`, :func:`sampled_estimator`,
        :func:`qdask.hybrid.mitigation.mitigated_estimator`.
    symbols : sequence of sympy.Symbol, optional
        Order of the parameter vector; default the circuit's symbols sorted by name.

    Attributes
    ----------
    batches : int
        Estimator calls so far (each is one distributed batch).
    history : list of (numpy.ndarray, float)
        Every point whose value was computed, with that value.
    """

    circuit: cirq.AbstractCircuit
    estimator: Estimator
    symbols: Sequence[sympy.Symbol] | None = None
    batches: int = 0
    history: list[tuple[np.ndarray, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.symbols is None:
            self.symbols = sorted(cirq.parameter_symbols(self.circuit), key=str)
        # The same list under its typed name: ``symbols`` is no longer None from here.
        self._symbols: list[sympy.Symbol] = list(self.symbols)
        self.symbols = self._symbols
        self._shifted: cirq.Circuit | None
        try:
            self._shifted, self._uses = _one_symbol_per_use(self.circuit, self._symbols)
            self._why_not: str | None = None
        except NotShiftableError as e:
            self._shifted, self._uses, self._why_not = None, [], str(e)

    # -- parameter points ----------------------------------------------------------------
    def _x(self, x: Sequence[float]) -> np.ndarray:
        arr = np.asarray(x, dtype=float)
        if arr.shape != (len(self._symbols),):
            raise ValueError(
                f"x has shape {arr.shape}, the objective has {len(self._symbols)} parameters "
                f"({[str(s) for s in self._symbols]}). Fix: pass one value per symbol, in that order."
            )
        return arr

    def _exponents(self, x: np.ndarray) -> np.ndarray:
        return np.array([u.slope * x[u.symbol] + u.offset for u in self._uses])

    def _resolvers(self, thetas: list[np.ndarray]) -> list[cirq.ParamResolver]:
        names = [_use_symbol(i) for i in range(len(self._uses))]
        return [cirq.ParamResolver(dict(zip(names, (float(t) for t in theta)))) for theta in thetas]

    def _run(self, circuit: cirq.AbstractCircuit, resolvers: list[cirq.ParamResolver]) -> np.ndarray:
        self.batches += 1
        return np.asarray(self.estimator(circuit, resolvers), dtype=float)

    # -- evaluation ----------------------------------------------------------------------
    def values(self, points: Sequence[Sequence[float]]) -> np.ndarray:
        """The objective at several points, as one batch (e.g. a grid of starting points)."""
        xs = [self._x(p) for p in points]
        if self._shifted is not None:
            out = self._run(self._shifted, self._resolvers([self._exponents(x) for x in xs]))
        else:
            resolvers = [cirq.ParamResolver(dict(zip(self._symbols, (float(v) for v in x)))) for x in xs]
            out = self._run(self.circuit, resolvers)
        self.history.extend((x, float(v)) for x, v in zip(xs, out))
        return out

    def value(self, x: Sequence[float]) -> float:
        """The objective at ``x`` (one batch of one point)."""
        return float(self.values([x])[0])

    def value_and_gradient(self, x: Sequence[float]) -> tuple[float, np.ndarray]:
        """The value and its parameter-shift gradient at ``x``, from one batch."""
        if self._shifted is None:
            raise NotShiftableError(
                f"no parameter-shift gradient for this circuit: {self._why_not}. "
                "Fix: use a gradient-free method (minimize(..., method='COBYLA'))."
            )
        xv = self._x(x)
        theta = self._exponents(xv)
        points = [theta]
        for i in range(len(self._uses)):
            for sign in (0.5, -0.5):
                shifted = theta.copy()
                shifted[i] += sign
                points.append(shifted)
        out = self._run(self._shifted, self._resolvers(points))
        grad = np.zeros(len(self._symbols))
        for i, use in enumerate(self._uses):
            grad[use.symbol] += use.slope * math.pi / 2 * (out[1 + 2 * i] - out[2 + 2 * i])
        self.history.append((xv, float(out[0])))
        return float(out[0]), grad

    def gradient(self, x: Sequence[float]) -> np.ndarray:
        """The parameter-shift gradient at ``x`` (one batch)."""
        return self.value_and_gradient(x)[1]


def _use_symbol(i: int) -> sympy.Symbol:
    return sympy.Symbol(f"_qdask_use_{i}")


def _one_symbol_per_use(circuit: cirq.AbstractCircuit, symbols: list[sympy.Symbol]) -> tuple[cirq.Circuit, list[_Use]]:
    """Give every parameterized gate its own exponent symbol, remembering how it depends on x."""
    index = {s: i for i, s in enumerate(symbols)}
    uses: list[_Use] = []

    def rewrite(op: cirq.Operation, _moment: int) -> cirq.Operation:
        if not cirq.is_parameterized(op):
            return op
        gate = op.gate
        shifts = sorted(set(np.round(gate._eigen_shifts(), 12))) if isinstance(gate, cirq.EigenGate) else []
        if not isinstance(gate, cirq.EigenGate) or len(shifts) != 2 or not math.isclose(shifts[1] - shifts[0], 1.0):
            raise NotShiftableError(f"{op} is not a gate G**t with two eigenvalues one unit of t apart")
        exponent = sympy.sympify(gate.exponent)
        free = exponent.free_symbols
        if len(free) != 1 or next(iter(free)) not in index:
            raise NotShiftableError(
                f"the exponent of {op} depends on {sorted(map(str, free))}, not on exactly one of the symbols"
            )
        symbol = next(iter(free))
        slope = sympy.diff(exponent, symbol)
        offset = sympy.simplify(exponent - slope * symbol)
        if slope.free_symbols or offset.free_symbols:
            raise NotShiftableError(f"the exponent of {op} is not linear in {symbol}")
        uses.append(_Use(index[symbol], float(slope), float(offset)))
        # _with_exponent is how cirq itself rebuilds an EigenGate (Rx keeps being an Rx).
        new_gate = gate._with_exponent(_use_symbol(len(uses) - 1))
        # An EigenGate's operation is a GateOperation.
        return cast(cirq.GateOperation, op.untagged).with_gate(new_gate).with_tags(*op.tags)

    return cirq.map_operations(cirq.Circuit(circuit), rewrite), uses


# -- the optimizer loop ----------------------------------------------------------------
@dataclass
class VariationalResult:
    """Outcome of :func:`minimize`.

    Attributes
    ----------
    x : numpy.ndarray
        Best parameters found.
    fun : float
        Objective at ``x``.
    nit, nfev : int
        Optimizer iterations and function evaluations.
    batches : int
        Distributed batches sent (one per evaluation).
    history : list of (numpy.ndarray, float)
        Every evaluated point and value, in order.
    success : bool
    message : str
    raw : scipy.optimize.OptimizeResult
    """

    x: np.ndarray
    fun: float
    nit: int
    nfev: int
    batches: int
    history: list[tuple[np.ndarray, float]]
    success: bool
    message: str
    raw: scipy.optimize.OptimizeResult


def minimize(
    objective: Objective,
    x0: Sequence[float],
    *,
    method: str = "BFGS",
    jac: bool | None = None,
    options: dict[str, Any] | None = None,
    callback: Callable[..., Any] | None = None,
) -> VariationalResult:
    """Minimize ``objective`` with ``scipy.optimize.minimize``, one batch per evaluation.

    Parameters
    ----------
    objective : Objective
    x0 : sequence of float
        Starting parameters, in the order of ``objective.symbols``.
    method : str, default "BFGS"
        Any scipy method. Gradient methods get the parameter-shift gradient
        evaluated in the same batch as the value.
    jac : bool, optional
        Force gradients on or off; default on for :data:`GRADIENT_METHODS`.
    options, callback
        Passed to scipy.

    Examples
    --------
    >>> result = minimize(objective, [0.1, 0.2], method="COBYLA", options={"maxiter": 30})  # doctest: +SKIP
    """
    import scipy.optimize

    use_jac = method.upper() in GRADIENT_METHODS if jac is None else jac
    start = objective.batches
    fun = objective.value_and_gradient if use_jac else objective.value
    raw = scipy.optimize.minimize(fun, np.asarray(x0, dtype=float), method=method, jac=use_jac or None,
                                  options=options, callback=callback)
    return VariationalResult(
        x=np.asarray(raw.x, dtype=float),
        fun=float(raw.fun),
        nit=int(getattr(raw, "nit", 0) or 0),
        nfev=int(raw.nfev),
        batches=objective.batches - start,
        history=list(objective.history),
        success=bool(raw.success),
        message=str(raw.message),
        raw=raw,
    )


# -- QAOA for MaxCut -------------------------------------------------------------------
@dataclass(frozen=True)
class QAOAProblem:
    """A QAOA ansatz for MaxCut on a graph.

    The objective is ``<H>`` with ``H = sum_{(i,j)} w_ij (Z_i Z_j - 1) / 2``,
    minus the expected cut: minimizing it maximizes the cut.

    Attributes
    ----------
    graph : networkx.Graph
    qubits : list of cirq.LineQubit
        Qubit ``i`` is node ``i`` (in ``sorted(graph.nodes)`` order).
    circuit : cirq.Circuit
        ``H`` on every qubit, then per layer ``ZZ**(gamma_l / pi)`` on every
        edge and ``rx(2 * beta_l)`` on every qubit.
    observable : cirq.PauliSum
    symbols : list of sympy.Symbol
        ``gamma_0..gamma_{p-1}``, then ``beta_0..beta_{p-1}``.
    """

    graph: nx.Graph
    qubits: list[cirq.LineQubit]
    circuit: cirq.Circuit
    observable: cirq.PauliSum
    symbols: list[sympy.Symbol]

    def objective(self, simulator: Any, *, repetitions: int | None = None) -> Objective:
        """Exact (a simulator) or sampled (``repetitions`` given, any sampler) objective."""
        if repetitions is None:
            estimator = expectation_estimator(simulator, self.observable)
        else:
            estimator = sampled_estimator(simulator, self.observable, repetitions)
        return Objective(self.circuit, estimator, self.symbols)

    def cut_value(self, bits: Sequence[int]) -> float:
        """Weight of the cut that a bitstring (one bit per node, in qubit order) makes."""
        node = {n: i for i, n in enumerate(sorted(self.graph.nodes))}
        return float(
            sum(d.get("weight", 1.0) for a, b, d in self.graph.edges(data=True) if bits[node[a]] != bits[node[b]])
        )


def qaoa_maxcut(graph: nx.Graph, layers: int = 1) -> QAOAProblem:
    """The QAOA ansatz and cost observable for MaxCut on ``graph``.

    Examples
    --------
    >>> import networkx as nx
    >>> problem = qaoa_maxcut(nx.cycle_graph(4), layers=2)
    >>> [str(s) for s in problem.symbols]
    ['gamma_0', 'gamma_1', 'beta_0', 'beta_1']
    """
    if layers < 1:
        raise ValueError(f"layers={layers!r} must be >= 1. Fix: qaoa_maxcut(graph, layers=1).")
    nodes = sorted(graph.nodes)
    qubits = cirq.LineQubit.range(len(nodes))
    q = dict(zip(nodes, qubits))
    gammas = [sympy.Symbol(f"gamma_{i}") for i in range(layers)]
    betas = [sympy.Symbol(f"beta_{i}") for i in range(layers)]
    circuit = cirq.Circuit(cirq.H.on_each(*qubits))
    for gamma, beta in zip(gammas, betas):
        circuit.append(cirq.ZZPowGate(exponent=gamma / sympy.pi).on(q[a], q[b]) for a, b in graph.edges)
        circuit.append(cirq.rx(2 * beta).on(x) for x in qubits)
    observable = cirq.PauliSum()
    for a, b, data in graph.edges(data=True):
        w = float(data.get("weight", 1.0))
        observable += w / 2 * cirq.Z(q[a]) * cirq.Z(q[b]) - w / 2
    return QAOAProblem(graph, qubits, circuit, observable, gammas + betas)
