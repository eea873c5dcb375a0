"""Connect a client to a running scheduler, saying what to change when TLS does not match.

Dask's own errors for a TLS mismatch do not name the cause: a ``tls://``
address without certificates fails with ``TypeError: TLS expects a
`ssl_context` argument``, and a ``tcp://`` address of a TLS scheduler with
``Connection reset by peer``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any

from distributed import Client
from distributed.comm.addressing import parse_address, parse_host_port
from distributed.security import Security

__all__ = ["connect_client", "speaks_tls"]

_FIX = (
    "pass security=Security(tls_ca_file=..., tls_client_cert=..., tls_client_key=..., "
    "require_encryption=True) with the certificates the cluster was started with "
    "(for a local TLS cluster: its QuantumCluster.security)"
)


def connect_client(address: str, security: Security | None = None, **client_kwargs: Any) -> Client:
    """``Client(address, security=security)`` with clear errors for TLS mismatches.

    Parameters
    ----------
    address : str
        Scheduler address, e.g. ``"tls://10.0.0.1:8786"``.
    security : distributed.Security, optional
        TLS settings; None reads them from dask config (``distributed.comm.tls.*``).
    **client_kwargs
        Passed on to :class:`distributed.Client`.

    Raises
    ------
    ValueError
        The scheduler requires TLS but ``address`` or ``security`` does not
        provide it; the message names the address and the fix.

    Examples
    --------
    >>> connect_client("tls://127.0.0.1:8786")  # doctest: +SKIP
    ValueError: the scheduler at tls://127.0.0.1:8786 requires TLS: pass security=Security(...
    """
    scheme, location = parse_address(address)
    if scheme == "tls":
        # Client(security=None) also falls back to dask config.
        effective = security if security is not None else Security()
        if effective.get_connection_args("client").get("ssl_context") is None:
            raise ValueError(f"the scheduler at {address} requires TLS: {_FIX}.")
    client = Client.__new__(Client)
    try:
        client.__init__(address, security=security, **client_kwargs)  # type: ignore[misc]
    except BaseException as e:
        # Close the half-started client now. Left to the garbage collector, its
        # __del__ closes it whenever a collection happens, possibly while this
        # thread holds Dask's class-wide LoopRunner lock (inside the next
        # Client()), which deadlocks. A failure to close must not hide `e`.
        with contextlib.suppress(Exception):
            client.close()
        if isinstance(e, OSError) and scheme == "tcp" and speaks_tls(location):
            raise ValueError(
                f"the scheduler at {address} requires TLS and refused a plain tcp:// connection: "
                f"connect to tls://{location} and {_FIX}."
            ) from e
        raise
    return client


def speaks_tls(location: str, timeout: float = 2.0) -> bool:
    """Whether the server at ``host:port`` answers a TLS handshake.

    Only the handshake is attempted (no certificate is checked or sent), so
    a server that demands client certificates still counts as TLS.
    """
    host, port = parse_host_port(location)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                return True
    except ssl.SSLError as e:
        # A TLS alert (e.g. "certificate required") is itself TLS; anything
        # else (a wrong record version, an early EOF) proves nothing.
        return "ALERT" in (e.reason or "")
    except OSError:
        return False
