"""The click command class of the preloads' ``dask_setup``.

Dask parses a preload's options with ``click.Context(command)`` and no
``info_name`` (``distributed/preloading.py``), so click's errors read
``Usage:  [OPTIONS]`` and ``Try ' --help'``: the command has no name in them.
:class:`PreloadCommand` names itself after the command line that runs it.
"""

from __future__ import annotations

import click


class PreloadCommand(click.Command):
    """A ``click.Command`` that shows its ``name`` where Dask gave its context none."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.info_name is None:
            ctx.info_name = self.name
        return super().parse_args(ctx, args)
