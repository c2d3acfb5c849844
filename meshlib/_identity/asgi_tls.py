"""uvicorn protocols that expose the mTLS peer to the app and sniff TLS from plaintext.

uvicorn has no ASGI TLS extension (PLUMBING-NOTES §5), so a subclass of its HTTP protocol, passed
through the public ``http=`` setting, reads the peer certificate once per connection, refuses a peer
without an acceptable SPIFFE ID, and adds to every scope of that connection:

- ``scope["extensions"]["tls"]``: the ASGI TLS extension (``client_cert_chain`` as PEM strings,
  ``tls_version`` as an int, ``server_cert``, ``client_cert_name``, ``client_cert_error``,
  ``cipher_suite``) plus ``spiffe_id`` (the peer's, or ``None``); only on TLS connections;
- ``scope["extensions"]["mtls"]``: ``True`` when the peer presented a verified client certificate.

Websocket scopes get the same: uvicorn builds the websocket protocol (whichever ``ws=``
implementation it picked: ``websockets``, ``websockets-sansio``, ``wsproto``) with the original
app when a request upgrades, so the HTTP protocol hands it its own wrapped app instead; the
certificate is read once per connection, not again for the upgraded one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from asyncio import sslproto
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, cast

from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.tls import PeerPolicy, PeerRejected

__all__ = [
    "SNIFF_TIMEOUT_SECONDS",
    "TLS_HANDSHAKE_RECORD",
    "ConnectionStats",
    "make_http_protocol",
    "make_sniffing_protocol",
    "tls_extension",
]

logger = logging.getLogger("meshlib.identity")

TLS_HANDSHAKE_RECORD = 0x16
"""First byte of every TLS ClientHello record; plaintext HTTP starts with a method letter."""
SNIFF_TIMEOUT_SECONDS = 10.0
TLS_HANDSHAKE_TIMEOUT_SECONDS = 10
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


@dataclass(slots=True)
class ConnectionStats:
    """Counts per server, for tests and metrics: connections by kind and refused peers."""

    tls: int = 0
    plaintext: int = 0
    rejected: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str) -> None:
        with self._lock:
            setattr(self, kind, getattr(self, kind) + 1)


def tls_extension(ssl_object: Any, policy: PeerPolicy) -> tuple[dict[str, Any], bool]:
    """The scope extension for one TLS connection and whether it is mutual; raises PeerRejected."""
    der = ssl_object.getpeercert(True)
    spiffe_id = None
    chain: list[str] = []
    if der:
        spiffe_id = str(policy.check(der, peer="client"))
        verified = getattr(ssl_object, "get_verified_chain", None)  # Python 3.13+
        ders = list(verified()) if verified is not None else [der]
        chain = [ssl.DER_cert_to_PEM_cert(bytes(item)) for item in ders]
    extension = {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
        "spiffe_id": spiffe_id,
    }
    return extension, bool(der)


def _with_extensions(app: ASGIApp, extras: dict[str, Any]) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            scope["extensions"] = {**(scope.get("extensions") or {}), **extras}
        await app(scope, receive, send)

    return wrapped


def _upgrades_with(protocol: Any, app: ASGIApp) -> None:
    # Every uvicorn websocket implementation takes its app from the config in __init__ and calls
    # ``self.app`` per connection; replacing it on the instance keeps the extensions.
    ws_class = protocol.ws_protocol_class
    if ws_class is None:  # no websocket library installed: uvicorn refuses upgrades itself
        return

    def upgraded(**kwargs: Any) -> asyncio.Protocol:
        ws_protocol = ws_class(**kwargs)
        ws_protocol.app = app
        return cast(asyncio.Protocol, ws_protocol)

    protocol.ws_protocol_class = upgraded


def _base_class(kind: str) -> type[asyncio.Protocol]:
    if kind == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol


def make_http_protocol(
    identity: RotatingIdentity | None,
    *,
    kind: str = "h11",
    policy: PeerPolicy | None = None,
    stats: ConnectionStats | None = None,
) -> type[asyncio.Protocol]:
    """A uvicorn ``http=`` protocol class (``kind`` ``h11`` or ``httptools``) exposing the peer.

    ``policy`` defaults to the identity's own trust domain. Plaintext connections (PERMISSIVE or
    DISABLE) get ``mtls=False`` and no ``tls`` extension.
    """
    base: Any = _base_class(kind)
    counters = stats if stats is not None else ConnectionStats()

    class MeshTLSProtocol(base):  # type: ignore[misc]
        app: ASGIApp

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None:
                counters.add("plaintext")
                self.app = _with_extensions(self.app, {"mtls": False})
                _upgrades_with(self, self.app)
                return
            expected = policy or (identity.peer_policy() if identity else PeerPolicy(frozenset()))
            try:
                extension, mutual = tls_extension(ssl_object, expected)
            except PeerRejected as error:
                counters.add("rejected")
                logger.warning("refused connection from %s: %s", self.client, error)
                transport.abort()
                return
            counters.add("tls")
            self.app = _with_extensions(self.app, {"tls": extension, "mtls": mutual})
            _upgrades_with(self, self.app)

    MeshTLSProtocol.__name__ = f"MeshTLS{base.__name__}"
    MeshTLSProtocol.__qualname__ = MeshTLSProtocol.__name__
    return MeshTLSProtocol


def _consume(future: asyncio.Future[None]) -> None:
    # A failed handshake is reported by the TLS layer; read it so asyncio does not warn again.
    if not future.cancelled():
        future.exception()


def make_sniffing_protocol(
    inner: type[asyncio.Protocol],
    context: Callable[[], ssl.SSLContext],
) -> type[asyncio.Protocol]:
    """PERMISSIVE on one port: TLS when the first byte is 0x16, else plaintext to ``inner``.

    The first bytes are already read when we decide, so TLS is started by feeding them to asyncio's
    own TLS protocol (``loop.start_tls`` would lose them).
    """

    class SniffingProtocol(asyncio.Protocol):
        def __init__(self, **kwargs: Any) -> None:
            self._kwargs = kwargs
            self._loop: asyncio.AbstractEventLoop = kwargs.get("_loop") or asyncio.get_event_loop()
            self._transport: asyncio.Transport | None = None
            self._timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self._transport = transport
            self._timer = self._loop.call_later(SNIFF_TIMEOUT_SECONDS, transport.abort)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()

        def data_received(self, data: bytes) -> None:
            transport = self._transport
            assert transport is not None
            if self._timer is not None:
                self._timer.cancel()
            protocol = inner(**self._kwargs)
            if data[0] != TLS_HANDSHAKE_RECORD:
                transport.set_protocol(protocol)
                protocol.connection_made(transport)
                protocol.data_received(data)
                return
            waiter: asyncio.Future[None] = self._loop.create_future()
            waiter.add_done_callback(_consume)
            tls = sslproto.SSLProtocol(
                self._loop,
                protocol,
                context(),
                waiter,
                server_side=True,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_SECONDS,
            )
            transport.set_protocol(tls)
            tls.connection_made(transport)
            view = memoryview(data)
            while view:
                buffer = tls.get_buffer(len(view))
                size = min(len(buffer), len(view))
                buffer[:size] = view[:size]
                tls.buffer_updated(size)
                view = view[size:]

        def eof_received(self) -> bool:
            return False

    return SniffingProtocol
