"""The guard's listeners: uvicorn configured with the connection limits, and an optional metrics listener.

``mlwarden serve`` runs one uvicorn server for the API and, with ``--metrics-port``, a second one serving only
``/metrics`` (on an internal address, say) in the same event loop; the first owns the signals and stops the
second when it stops. Both use :class:`~mlwarden.serve.connections.GuardedHttpProtocol` with a gate each, so a
flood on one listener does not take the other's places.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn

from mlwarden.core.errors import UsageError
from mlwarden.serve.connections import guarded_protocol
from mlwarden.serve.policy import ConnectionSettings


@dataclass(frozen=True, slots=True)
class Listen:
    """Where and how a listener runs.

    Attributes:
        host / port: the address (port 0: any free port).
        tls_cert / tls_key: serve HTTPS with this certificate chain and key.
        log_level: uvicorn's log level.
        access_log: log each request (off for the guard: it audits decisions itself).
    """

    host: str
    port: int
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: str = "warning"
    access_log: bool = False


def uvicorn_config(app: Any, listen: Listen, settings: ConnectionSettings) -> uvicorn.Config:
    """Uvicorn's configuration of ``app`` with the connection limits of ``settings``.

    ``proxy_headers`` stays off: the per-address cap counts the real peer, never a header a client could forge.
    """
    return uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        http=guarded_protocol(settings),
        # One above the gate's cap: requests in flight are bounded, requests on admitted connections never 503.
        limit_concurrency=settings.max_connections + 1,
        backlog=settings.backlog,
        timeout_keep_alive=settings.keep_alive_s,
        ssl_certfile=listen.tls_cert,
        ssl_keyfile=listen.tls_key,
        log_level=listen.log_level,
        access_log=listen.access_log,
        server_header=False,
        proxy_headers=False,
        lifespan="off",
    )


class _Follower(uvicorn.Server):
    """A server that leaves the signals to the main one (which stops it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """No handlers of its own: two servers replacing each other's handlers would lose a Ctrl-C."""
        yield


class _Leader(uvicorn.Server):
    """The main server: on SIGINT/SIGTERM it stops its follower at once, so both shut down together."""

    def __init__(self, config: uvicorn.Config, follower: uvicorn.Server | None) -> None:
        super().__init__(config)
        self.follower = follower

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Uvicorn's handler, passed on to the follower."""
        super().handle_exit(sig, frame)
        if self.follower is not None:
            self.follower.should_exit = True


async def serve_all(
    main: uvicorn.Server,
    metrics: uvicorn.Server | None = None,
    sockets: tuple[list[socket.socket] | None, list[socket.socket] | None] = (None, None),
) -> None:
    """Run ``main`` and ``metrics`` until ``main`` stops.

    ``metrics`` starts first, so a port clash stops everything before the API listens; it should not capture
    signals (see :func:`run`). ``sockets``: already bound listening sockets of each (``None``: uvicorn binds).
    """
    task: asyncio.Task[None] | None = None
    if metrics is not None:
        task = asyncio.create_task(metrics.serve(sockets=sockets[1]))
        while not metrics.started:
            if task.done():
                await task  # its failure (it logged why), or a clean stop before it started
                raise RuntimeError("the metrics listener stopped before it started")
            await asyncio.sleep(0.01)
    try:
        await main.serve(sockets=sockets[0])
    finally:
        if metrics is not None and task is not None:
            metrics.should_exit = True
            await task


def run(main: uvicorn.Config, metrics: uvicorn.Config | None = None, *, reuse_port: bool = False) -> None:
    """Serve until SIGINT or SIGTERM (as ``uvicorn.run`` does, with the optional metrics listener).

    ``reuse_port``: bind the API's socket with ``SO_REUSEPORT``, so several worker processes listen on the same
    address and the kernel spreads connections over them (``mlwarden serve --workers N``).
    """
    follower = _Follower(metrics) if metrics is not None else None
    server = _Leader(main, follower)
    sockets = ([reuse_port_socket(main)], None) if reuse_port else (None, None)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=main.get_loop_factory()) as runner:
        runner.run(serve_all(server, follower, sockets))


def reuse_port_socket(config: uvicorn.Config) -> socket.socket:
    """A listening TCP socket on ``config``'s address, bound with ``SO_REUSEADDR`` and ``SO_REUSEPORT``.

    Raises:
        UsageError: the platform has no ``SO_REUSEPORT`` or the address cannot be bound.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise UsageError("several workers need SO_REUSEPORT (Linux, BSD, macOS)")
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.host, config.port))
        sock.listen(config.backlog)
        sock.set_inheritable(False)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    return sock
