"""Connection limits at the socket: a uvicorn protocol hook against slowloris and connection floods.

Found by a security review: about 20,000 connections that each sent a partial request line and then trickled
header bytes made ``/healthz`` fail for 15 s. An ASGI middleware cannot help there — it sees a request only once its
headers are complete, and a slowloris connection never completes them — so the limits live in the HTTP protocol
uvicorn creates per connection (:class:`GuardedHttpProtocol`, a subclass of uvicorn's httptools protocol):

* **per-address and total caps**: :class:`ConnectionGate` counts open connections per client address (an IPv6
  client by its /64, which one host usually owns whole) and in all; a connection beyond either cap is reset at
  accept, before it costs a parser or a timer;
* **header timeout**: a request's line and headers must arrive within ``header_timeout_s`` of the connection
  opening (or of the first byte of a later request on it), however slowly they trickle; then 408 and closed;
* **body timeout**: the body must follow within ``body_timeout_s`` of the headers;
* **header size**: at most ``max_header_bytes`` before the headers end (431);
* idle keep-alive connections, the backlog and requests in flight are uvicorn's own settings
  (``timeout_keep_alive``, ``backlog``, ``limit_concurrency``; see :mod:`mlwarden.serve.server`).

Over TLS a connection is counted once its handshake is done (asyncio bounds the handshake itself: 60 s).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from typing import Any, ClassVar, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlwarden.serve.policy import ConnectionSettings

log = logging.getLogger("mlwarden.serve")

Phase = Literal["headers", "body"]


def client_key(peer: Any) -> str:
    """The address a connection is counted under: the IP (IPv4-mapped IPv6 as IPv4), an IPv6 address's /64."""
    if not isinstance(peer, tuple | list) or not peer:
        return ""  # a Unix socket: one local client
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return str(peer[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ConnectionGate:
    """Open connections per client address and in all; admits a new one only under both caps.

    Used from the event loop's thread only (protocol callbacks), so it needs no lock.
    """

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self.total = 0
        self.per_client: dict[str, int] = {}
        #: Connections refused at accept, and closed for being too slow or too large (for tests and logs).
        self.refused = 0
        self.timed_out = 0

    def admit(self, key: str) -> str | None:
        """Count a new connection from ``key`` and return ``None``, or say why it is refused (not counted)."""
        cap = self.settings.max_connections_per_ip
        if self.total >= self.settings.max_connections:
            self.refused += 1
            return "the server's connection limit"
        if cap and self.per_client.get(key, 0) >= cap:
            self.refused += 1
            return "the per-client connection limit"
        self.total += 1
        self.per_client[key] = self.per_client.get(key, 0) + 1
        return None

    def release(self, key: str) -> None:
        """A connection from ``key`` closed."""
        self.total -= 1
        left = self.per_client.get(key, 0) - 1
        if left > 0:
            self.per_client[key] = left
        else:
            self.per_client.pop(key, None)


def _raw_error(status: int, phrase: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module docstring (bind a gate: :func:`guarded_protocol`)."""

    gate: ClassVar[ConnectionGate]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._key: str | None = None  # set once admitted: released exactly once, on connection_lost
        self._timer: asyncio.TimerHandle | None = None
        self._phase: Phase | None = None
        self._header_bytes = 0

    # -- the connection -------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Admit the connection under the gate's caps (else reset it at once) and start its header clock."""
        key = client_key(transport.get_extra_info("peername"))
        why = self.gate.admit(key)
        if why is not None:
            log.debug("connection from %s refused: %s", key, why)
            transport.abort()  # a reset: no half-closed state lingers on our side
            return
        self._key = key
        super().connection_made(transport)
        self._arm("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the connection's place in the gate (only an admitted one reached uvicorn's bookkeeping)."""
        if self._key is None:
            return
        self.gate.release(self._key)
        self._key = None
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Start the header clock on a later request's first byte; refuse headers that grow past the limit."""
        if self._timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm("headers")
        if self._phase == "headers":
            self._header_bytes += len(data)
        super().data_received(data)
        # Still in the headers after this chunk (a chunk holding the end of the headers ends the phase first, so a
        # body arriving with them never counts).
        too_large = self._header_bytes > self.gate.settings.max_header_bytes
        if self._phase == "headers" and too_large and not self.transport.is_closing():
            self._refuse(431, "Request Header Fields Too Large", "headers_too_large", "request headers too large")

    # -- parser callbacks -----------------------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        """Headers in time: the body clock starts (stopped at once by a request without a body)."""
        self._disarm()
        self._header_bytes = 0
        super().on_headers_complete()
        self._arm("body")

    def on_message_complete(self) -> None:
        """The whole request arrived: no clock while the app answers (uvicorn's keep-alive clock follows)."""
        self._disarm()
        super().on_message_complete()

    # -- clocks ---------------------------------------------------------------------------------------------------

    def _arm(self, phase: Phase) -> None:
        self._disarm()
        settings = self.gate.settings
        seconds = settings.header_timeout_s if phase == "headers" else settings.body_timeout_s
        self._phase = phase
        self._timer = self.loop.call_later(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._phase = None

    def _expired(self, phase: Phase) -> None:
        self._timer = None
        self._phase = None
        if self.transport is None or self.transport.is_closing():
            return
        self.gate.timed_out += 1
        log.info("closing a connection from %s: its request %s took too long", self._key, phase)
        self._refuse(408, "Request Timeout", "request_timeout", f"the request {phase} took too long")

    def _refuse(self, status: int, phrase: str, code: str, message: str) -> None:
        """Answer ``status`` unless an answer already started, and close; the app (if running) sees a disconnect."""
        self._disarm()
        active = self.cycle if self.cycle is not None and not self.cycle.response_complete else None
        if active is None or not active.response_started:
            self.transport.write(_raw_error(status, phrase, code, message))
        if active is not None:
            active.disconnected = True
            active.message_event.set()
        self.transport.close()


def guarded_protocol(settings: ConnectionSettings) -> type[GuardedHttpProtocol]:
    """A protocol class for uvicorn's ``http=`` with a gate of its own (one per listener)."""

    class BoundProtocol(GuardedHttpProtocol):
        gate = ConnectionGate(settings)

    return BoundProtocol
