"""Hybrid quantum-classical workloads on one cluster.

* :mod:`~qdask.hybrid.levels` -- what each ``optimization_level`` lets qdask decide;
* :mod:`~qdask.hybrid.routing` -- scheduler side: classical tasks prefer classical
  workers, circuits go to the lowest-error device at ``aggressive``;
* :mod:`~qdask.hybrid.noise` -- emulated noisy devices (a noise model per worker);
* :mod:`~qdask.hybrid.variational` -- optimizer in the client, one batch of
  circuits per iteration on the cluster (parameter-shift gradients, QAOA);
* :mod:`~qdask.hybrid.mitigation` -- mitiq zero-noise extrapolation and
  readout-error mitigation through one distributed batch;
* :mod:`~qdask.hybrid.schrodinger_feynman` -- amplitudes of circuits too wide
  for any worker, summed over qsimh prefix paths spread across workers.

See ``docs/hybrid.md``.
"""

from __future__ import annotations
