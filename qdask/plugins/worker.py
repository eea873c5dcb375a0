"""Preload for ``dask worker ADDRESS --preload qdask.plugins.worker``.

Discovers the worker's hardware and advertises it before the worker registers.
``--qdask-role classical`` makes a worker that never runs circuits;
``--qdask-noise`` makes a quantum worker emulate a noisy device
(:class:`qdask.hybrid.noise.DeviceNoise`, a YAML mapping)::

    dask worker tcp://127.0.0.1:8786 --preload qdask.plugins.worker --qdask-role classical
    dask worker tcp://127.0.0.1:8786 --preload qdask.plugins.worker \
        --qdask-noise "{gate_error: 0.01, readout_error: 0.02}"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
import yaml

from qdask.hybrid.routing import check_device_noise
from qdask.plugins._command import PreloadCommand
from qdask.worker.plugin import ROLES

if TYPE_CHECKING:
    from distributed import Worker


def _noise(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, float] | None:
    """``--qdask-noise`` as a validated dict (checked here: a bad value stops the worker at once)."""
    if value is None:
        return None
    try:
        noise = yaml.safe_load(value)
        if not isinstance(noise, dict):
            raise TypeError(f"a {type(noise).__name__}, not a mapping")
        noise = check_device_noise(noise)  # without cirq, whose import takes seconds
    except (yaml.YAMLError, TypeError, ValueError) as e:
        reason = " ".join(str(e).split())  # YAML errors span lines, with a caret under the column
        raise click.BadParameter(
            f"{value!r}: {reason}. Expected a mapping such as \"{{gate_error: 0.01, readout_error: 0.02}}\"."
        ) from e
    return dict(noise)


# No --help: dask worker parses the preload's options, so a "Try ... --help" hint would show dask
# worker's help, which does not list them (the module docstring does).
@click.command(name="dask worker --preload qdask.plugins.worker", cls=PreloadCommand, add_help_option=False)
@click.option("--qdask-role", type=click.Choice(ROLES), default="quantum", show_default=True,
              help="quantum workers run circuits; classical ones only classical tasks.")
@click.option("--qdask-noise", default=None, callback=_noise,
              help="emulated device noise of a quantum worker, e.g. \"{gate_error: 0.01, readout_error: 0.02}\"; "
                   "default: the qdask.worker.noise config (noiseless).")
async def dask_setup(worker: Worker, qdask_role: str, qdask_noise: dict[str, float] | None) -> None:
    # Imported here, not with the module: dask worker imports the preload to parse its
    # options, and a bad option should fail before cirq's import (seconds on a busy host).
    from qdask.deploy.spec import worker_plugins

    for plugin in worker_plugins(qdask_role, noise=qdask_noise):
        await worker.plugin_add(plugin, catch_errors=False)
