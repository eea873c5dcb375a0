"""``optimization_level``: what qdask may decide for the user, as one table of switches.

``HybridConfig(optimization_level=...)`` given to :class:`~qdask.QuantumCluster`
sets the level of that cluster (its scheduler plugin holds it, so every
client planning against that scheduler uses it); otherwise
``qdask.hybrid.optimization-level`` applies. :class:`OptimizationPolicy` turns a
level into the switches the planner, the engine and the scheduler read, so
``docs/hybrid.md`` can say exactly what each level does:

============================  ======  =====  ==========
switch                        none    basic  aggressive
============================  ======  =====  ==========
automatic backend choice      no      yes    yes
batching (pack small jobs,    no      yes    yes
split long noisy jobs)
spread shots over all slots   no      no     yes
qsimh paths across workers    no      yes    yes
(``simulator="qsimh"``)
Schrödinger-Feynman fallback  no      no     yes
for too-wide amplitudes
qsim gate fusion size         2       2      ``fused-gate-size`` from
                                             ``fusion-min-qubits``
noise-aware routing           no      no     yes
============================  ======  =====  ==========
"""

from __future__ import annotations

from dataclasses import dataclass

from qdask import config

LEVELS = ("none", "basic", "aggressive")

#: qsim's own default ``max_fused_gate_size``.
DEFAULT_FUSION = 2


@dataclass(frozen=True)
class OptimizationPolicy:
    """The switches of one optimization level.

    Attributes
    ----------
    level : {"none", "basic", "aggressive"}
        The level they come from.
    auto_backend : bool
        ``simulator="auto"`` may pick stim, density matrix or GPU; without it
        "auto" means what a serial ``qsimcirq.QSimSimulator`` does ("qsim", or
        "qsim-trajectories" for noisy circuits).
    batching : bool
        Pack small jobs into one Dask task and split long per-repetition jobs
        into blocks of repetitions; without it every circuit is one task.
    split_shots : bool
        Split every long-enough per-repetition job over all quantum slots.
    split_paths : bool
        Spread the prefix paths of ``simulator="qsimh"`` over the workers.
    sf_fallback : bool
        Amplitudes of circuits too wide for any worker's state vector use
        Schrödinger-Feynman splitting instead of raising ``CircuitTooWideError``.
    fused_gate_size : int
        qsim ``max_fused_gate_size`` for circuits of ``fusion_min_qubits`` or more.
    fusion_min_qubits : int
        Width from which ``fused_gate_size`` applies.
    noise_routing : bool
        Circuit tasks go to the lowest-error device that fits.
    """

    level: str
    auto_backend: bool
    batching: bool
    split_shots: bool
    split_paths: bool
    sf_fallback: bool
    fused_gate_size: int
    fusion_min_qubits: int
    noise_routing: bool

    @classmethod
    def for_level(cls, level: str) -> OptimizationPolicy:
        """The policy of ``level`` (fusion settings from ``qdask.hybrid.*``).

        Examples
        --------
        >>> OptimizationPolicy.for_level("none").batching
        False
        """
        if level not in LEVELS:
            raise ValueError(
                f"optimization_level={level!r} is invalid: allowed {LEVELS}. "
                "Fix: HybridConfig(optimization_level='basic')."
            )
        aggressive = level == "aggressive"
        return cls(
            level=level,
            auto_backend=level != "none",
            batching=level != "none",
            split_shots=aggressive,
            split_paths=level != "none",
            sf_fallback=aggressive,
            fused_gate_size=int(config.get("hybrid.fused-gate-size")) if aggressive else DEFAULT_FUSION,
            fusion_min_qubits=int(config.get("hybrid.fusion-min-qubits")),
            noise_routing=aggressive,
        )

    def fusion_for(self, num_qubits: int) -> int:
        """qsim ``max_fused_gate_size`` for a circuit of ``num_qubits``."""
        return self.fused_gate_size if num_qubits >= self.fusion_min_qubits else DEFAULT_FUSION
