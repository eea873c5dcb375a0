"""What the ``qdask`` commands share: checking an address and attaching to it with one-line errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click
import dask.config
from dask.utils import parse_timedelta

if TYPE_CHECKING:
    from qdask.deploy.cluster import QuantumCluster


def check_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--address`` checked for form (scheme, host, port) before anything connects."""
    if value is None:
        return None
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(value)
        if scheme in ("tcp", "tls"):
            host, port = parse_host_port(location)
            if not host or not 0 < int(port) < 65536:
                raise ValueError(f"host {host!r}, port {port}")
    except (ValueError, TypeError) as e:
        raise click.BadParameter(
            f"{value!r} is not a scheduler address ({e}); expected e.g. tcp://10.0.0.1:8786 or 10.0.0.1:8786."
        ) from None
    return value


def _unreachable(address: str, e: BaseException) -> click.ClickException:
    timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds")
    return click.ClickException(
        f"no qdask scheduler answered at {address} within {timeout:g} s "
        f"(distributed.comm.timeouts.connect) [{type(e).__name__}]. Fix: check the address, or start one "
        "with `dask scheduler --preload qdask.plugins.scheduler`."
    )


def check_reachable(address: str | None) -> None:
    """Fail with one line unless a server answers at ``address`` within the connect timeout.

    Run before the heavy imports (``QuantumCluster`` imports cirq: seconds on a
    busy machine), so a wrong address costs the timeout and not more. TLS
    addresses are left to :func:`qdask.deploy.connect.connect_client`, which
    knows what certificates to ask for.
    """
    if address is None or address.startswith("tls://"):
        return
    import asyncio

    from distributed.comm import connect

    async def probe() -> None:
        comm = await connect(address)  # retries until distributed.comm.timeouts.connect
        await comm.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError) as e:
        raise _unreachable(address, e) from None


@contextlib.contextmanager
def attach(address: str | None) -> Iterator[QuantumCluster]:
    """A ``QuantumCluster`` at ``address`` (or the embedded one), failures to connect as one line.

    Dask retries an unreachable address for ``distributed.comm.timeouts.connect``
    and then raises an ``OSError`` whose traceback tells a user nothing more.
    """
    check_reachable(address)
    # Start-up cost: the cluster imports cirq and the scheduler side; the check above fails first, at once.
    from qdask.deploy.cluster import QuantumCluster

    try:
        qc = QuantumCluster(address=address)
    except (OSError, TimeoutError) as e:
        if address is None:
            raise
        raise _unreachable(address, e) from None
    except ValueError as e:  # TLS mismatch (qdask.deploy.connect): the message names the fix
        raise click.ClickException(str(e)) from None
    with qc:
        yield qc
