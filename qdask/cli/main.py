"""The ``qdask`` command line (also ``dask qdask ...`` through the dask_cli entry point)."""

from __future__ import annotations

import logging

import click

from qdask.table import Table

ADDRESS_HELP = "Scheduler address of a running cluster (default: start the embedded local cluster)."


@click.group(name="qdask", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qdask")
def cli() -> None:
    """qdask: quantum circuits on a Dask cluster."""


@cli.command()
@click.option("--address", default=None, help=ADDRESS_HELP)
def info(address: str | None) -> None:
    """What this machine (or the cluster at ADDRESS) offers for quantum work."""
    if address is None:
        from qdask.worker.discovery import discover, usable_cores

        caps = discover(nthreads=usable_cores(), memory_limit=None)
        rows = [
            {"property": k, "value": v}
            for k, v in caps.to_dict().items()
            if k not in ("gpus",)
        ]
        rows.append({"property": "gpus", "value": [g.name for g in caps.gpus] or "none (NVML found no GPU)"})
        rows.append({"property": "resources", "value": caps.resources()})
        click.echo("This machine (one worker using every core):")
        click.echo(str(Table(rows)))
        return
    from qdask.deploy.cluster import QuantumCluster

    with QuantumCluster(address=address) as qc:
        table = qc.resources()
        table.columns = [
            "worker", "name", "role", "nthreads", "memory_limit", "max_qubits",
            "qsim_isa", "gpus", "resources", "used_resources",
        ]
        click.echo(f"Cluster at {address}: {len(table)} worker(s)")
        click.echo(str(table))


@cli.command()
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option("--circuits", default=200, show_default=True, help="Random circuits in the batch.")
@click.option("--seed", default=1234, show_default=True, help="Seed of the random circuits and samples.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo(address: str | None, circuits: int, seed: int, quiet: bool) -> None:
    """Run a hybrid batch of random circuits on the embedded cluster and summarize it."""
    from qdask.cli.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    run_demo(address=address, n_circuits=circuits, seed=seed, progress=not quiet)


@cli.command()
@click.option("--address", required=True, envvar="DASK_SCHEDULER_ADDRESS",
              help="Scheduler address of a running cluster (or DASK_SCHEDULER_ADDRESS).")
@click.option("--interval", default="1s", show_default=True, help='Time between lines ("500ms", 2).')
@click.option("--count", type=int, default=None, help="Stop after this many lines (default: until Ctrl-C).")
def monitor(address: str, interval: str, count: int | None) -> None:
    """Print live metrics of the cluster at ADDRESS until interrupted.

    Starts the scheduler's monitor at --interval if it is not sampling already,
    and stops it again on exit; a monitor someone else started is left running.
    """
    import time

    from qdask.config import MonitoringConfig, parse_duration
    from qdask.deploy.cluster import QuantumCluster
    from qdask.monitoring.client import format_line

    seconds = parse_duration(interval)
    with QuantumCluster(address=address) as qc:
        client = qc.get_client()
        status = client.sync(client.scheduler.qdask_monitor_status)
        mon = None if status["sampling"] else qc.start_monitoring(MonitoringConfig(sampling_interval=seconds))
        click.echo(f"Monitoring {address} every {seconds:g} s (Ctrl-C to stop)")
        printed = 0
        try:
            while count is None or printed < count:
                time.sleep(seconds)
                click.echo(format_line(qc.detailed_metrics(window=seconds)))
                printed += 1
        except KeyboardInterrupt:
            pass
        finally:
            if mon is not None:
                mon.stop()
        click.echo(f"stopped after {printed} line(s)")


def main() -> None:
    """Entry point of the ``qdask`` script."""
    cli()
