"""The ``qdask`` command line (also ``dask qdask ...`` through the dask_cli entry point)."""

from __future__ import annotations

import logging

import click

from qdask.cli.common import attach, check_address, check_reachable
from qdask.table import Table, format_value

ADDRESS_HELP = "Scheduler address of a running cluster (default: start the embedded local cluster)."


@click.group(name="qdask", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qdask")
def cli() -> None:
    """qdask: quantum circuits on a Dask cluster."""


def _parse_interval(ctx: click.Context, param: click.Parameter, value: str) -> float:
    # Start-up cost, here and below: `dask` imports this module for every subcommand it lists.
    from qdask.config import parse_duration

    try:
        seconds = parse_duration(value)
    except (ValueError, TypeError, KeyError):
        # dask's parse_timedelta lists every unit it knows in a KeyError: too long for one line.
        seconds = None
    if seconds is None or not seconds > 0:
        raise click.BadParameter(f"{value!r} is not a positive duration; e.g. 500ms, 2s or 2.") from None
    return seconds


@cli.command()
@click.option("--address", default=None, callback=check_address, help=ADDRESS_HELP)
def info(address: str | None) -> None:
    """What this machine (or the cluster at ADDRESS) offers for quantum work."""
    if address is None:
        # Start-up cost (see _parse_interval); discovery also loads qsimcirq.
        from qdask.resources import usable_cores
        from qdask.worker.discovery import discover

        caps = discover(nthreads=usable_cores(), memory_limit=None)
        rows: list[dict[str, object]] = [
            {"property": k, "value": format_value(k, v)}
            for k, v in caps.to_dict().items()
            if k not in ("gpus",)
        ]
        rows.append({"property": "gpus", "value": [g.name for g in caps.gpus] or "none (NVML found no GPU)"})
        rows.append({"property": "resources", "value": format_value("resources", caps.resources())})
        click.echo("This machine (one worker using every core):")
        click.echo(str(Table(rows)))
        return
    with attach(address) as qc:
        table = qc.resources()  # its compact form: within 100 columns, human units
        click.echo(f"Cluster at {address}: {len(table)} worker(s)")
        click.echo(str(table))


@cli.command()
@click.option("--address", default=None, callback=check_address, help=ADDRESS_HELP)
@click.option("--circuits", type=click.IntRange(min=1), default=200, show_default=True,
              help="Random circuits in the batch (at least 1).")
@click.option("--seed", type=click.IntRange(min=0), default=1234, show_default=True,
              help="Seed of the random circuits and samples (>= 0).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--keep", is_flag=True,
              help="Keep the cluster and its dashboard up after the summary, until Ctrl-C.")
def demo(address: str | None, circuits: int, seed: int, quiet: bool, keep: bool) -> None:
    """Run a hybrid batch of random circuits on the embedded cluster and summarize it."""
    check_reachable(address)  # before the demo's imports (cirq)
    from qdask.cli.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    run_demo(address=address, n_circuits=circuits, seed=seed, progress=not quiet, keep=keep)


@cli.command()
@click.option("--address", required=True, envvar="DASK_SCHEDULER_ADDRESS", callback=check_address,
              help="Scheduler address of a running cluster (or DASK_SCHEDULER_ADDRESS).")
@click.option("--interval", default="1s", show_default=True, callback=_parse_interval,
              help='Time between lines ("500ms", 2).')
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Stop after this many lines (default: until Ctrl-C).")
def monitor(address: str, interval: float, count: int | None) -> None:
    """Print live metrics of the cluster at ADDRESS until interrupted.

    Starts the scheduler's monitor at --interval if it is not sampling already,
    and stops it again on exit; a monitor someone else started is left running.
    """
    import time

    # Start-up cost (see _parse_interval).
    from qdask.config import MonitoringConfig
    from qdask.monitoring.client import format_line

    seconds = interval
    with attach(address) as qc:
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
