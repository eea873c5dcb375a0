"""``python -m qdask.mpi SCRIPT [ARGS]``: run a script as the client of a qdask cluster in ``mpiexec``.

::

    mpiexec -n 4 python -m qdask.mpi script.py --my-option 1

Rank 0 runs the scheduler, rank 1 runs ``script.py`` (as ``__main__``, with
``sys.argv = ["script.py", "--my-option", "1"]``) once every worker has
registered, and ranks 2 and up run workers. Inside the script
``distributed.get_client()`` returns the cluster's client. When the script
ends, the scheduler and the workers shut down.

The cluster's shape comes from dask config, as for
:class:`~qdask.config.ClusterConfig` (e.g. ``mpiexec -n 4 -genv
DASK_QDASK__CLUSTER__QUANTUM_DEVICES 1 python -m qdask.mpi script.py`` makes
one quantum and one classical worker).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import click

from qdask.config import ClusterConfig, ConfigError
from qdask.deploy.mpi import require_dask_mpi, worker_ranks


@click.command(
    name="qdask.mpi",
    context_settings={"help_option_names": ["-h", "--help"], "allow_interspersed_args": False},
)
@click.option("--interface", default="lo", show_default=True,
              help="Network interface every rank binds to; use the cluster network (e.g. ib0) across hosts.")
@click.option("--local-directory", default=None, type=click.Path(file_okay=False),
              help="Directory for the workers' scratch files.")
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def main(interface: str, local_directory: str | None, script: str, args: tuple[str, ...]) -> None:
    """Run SCRIPT on MPI rank 1 as the client of a qdask cluster on the other ranks."""
    too_few_ranks = require_dask_mpi().WorldTooSmallException
    try:
        worker_ranks()  # too few ranks: refused on every rank before the imports below
        # Start-up cost: QuantumCluster imports cirq (seconds of CPU on every rank).
        from qdask.deploy.cluster import QuantumCluster

        qc = QuantumCluster.from_mpi(ClusterConfig(), interface=interface, local_directory=local_directory)
    except (too_few_ranks, ConfigError) as e:
        raise click.ClickException(str(e)) from e
    with qc:
        # As `python script.py` would: the script sees its own argv and can
        # import modules that sit beside it.
        sys.argv = [script, *args]
        sys.path.insert(0, str(Path(script).resolve().parent))
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
