"""The inbound ASGI middleware: PeerAuthentication, AuthorizationPolicy, trace context, telemetry.

``mesh.asgi(app)`` (or ``app.add_middleware(MeshMiddleware, mesh=mesh)`` in Starlette/FastAPI)
runs the inbound flow for every HTTP request and websocket handshake; lifespan and other scope
types pass through untouched.

The peer is read only from ``scope["extensions"]`` as meshlib's uvicorn protocol sets it
(``mesh.serve``/``mesh.server``): a server that does not set it gives a plaintext peer, so a
STRICT port refuses every request there. A client-sent ``x-forwarded-client-cert`` is always
removed; an mTLS peer's identity is put back as ``x-forwarded-client-cert: By=<us>;URI=<peer>``,
as Envoy's SANITIZE_SET does. ``x-envoy-*`` and ``x-meshlib-peer-metadata`` headers are
trusted only from an mTLS peer of our own trust domain (a mesh sidecar or meshlib client wrote
them): they reach the app, as Istio's apps see ``x-envoy-attempt-count``,
``x-envoy-expected-rq-timeout-ms`` sets the deadline and the peer metadata the ``source_*``
telemetry labels. From any other caller they are removed before authorization, the deadline
and the app see the request. The app receives the normalized path when normalization changed
it, as Envoy forwards it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from meshlib._engine.inbound import ExemptPaths as _ExemptPaths
from meshlib._engine.inbound import InboundDecision as _InboundDecision
from meshlib._engine.inbound import inbound_flow as _inbound_flow
from meshlib._engine.snapshot import split_authority as _split_authority
from meshlib._model.call import Call as _Call
from meshlib._model.call import Peer as _Peer
from meshlib.handlers import PEER_SCOPE_KEY as _PEER_SCOPE_KEY
from meshlib.handlers import bind_peer as _bind_peer
from meshlib.handlers import inbound_hooks_of as _inbound_hooks_of
from meshlib.handlers import unbind_peer as _unbind_peer

if TYPE_CHECKING:
    from meshlib._mesh import Mesh

__all__ = [
    "INBOUND_SCOPE_KEY",
    "MeshMiddleware",
    "ScopeHeaders",
    "asgi",
    "peer_from_scope",
    "trusts_envoy_headers",
]

_logger = logging.getLogger("meshlib.inbound")

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]

INBOUND_SCOPE_KEY = "meshlib.inbound"
"""Set on scopes the middleware has handled: an inner second middleware passes them through."""
_XFCC = b"x-forwarded-client-cert"
_ENVOY_PREFIX = b"x-envoy-"
_PEER_METADATA = (b"x-envoy-peer-metadata", b"x-envoy-peer-metadata-id")
"""Istio's metadata exchange headers: its inbound filter consumes them, so apps never see them."""
_MESHLIB_METADATA = b"x-meshlib-peer-metadata"
"""meshlib's metadata exchange: feeds the ``source_*`` labels, so trusted like ``x-envoy-*``."""
_CLIENT_DISCONNECTED = ("DC",)
_SERVER_ERROR = 500
_WEBSOCKET_ACCEPTED = 101


class ScopeHeaders:
    """A read-only, case-insensitive view of ASGI headers (``HeaderView``); built on first use."""

    __slots__ = ("_map", "_raw")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._map: dict[str, str] | None = None

    def _built(self) -> dict[str, str]:
        found = self._map
        if found is None:
            found = {}
            for name, value in self._raw:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                found[key] = f"{found[key]},{text}" if key in found else text
            self._map = found
        return found

    def get(self, key: str, /) -> str | None:
        return self._built().get(key.lower())

    def __contains__(self, key: object, /) -> bool:
        return isinstance(key, str) and key.lower() in self._built()


def peer_from_scope(scope: _Scope) -> _Peer:
    """The connection's peer: a SPIFFE ID only when meshlib's server verified a client
    certificate; a plaintext peer (address only) otherwise."""
    client = scope.get("client")
    address, port = (client[0], client[1]) if client else (None, None)
    extensions = scope.get("extensions") or {}
    tls = extensions.get("tls")
    if extensions.get("mtls") is True and isinstance(tls, dict):
        spiffe_id = tls.get("spiffe_id")
        if isinstance(spiffe_id, str) and spiffe_id:
            return _Peer(spiffe_id=spiffe_id, address=address, port=port, mtls=True)
    return _Peer(address=address, port=port)


def _target(scope: _Scope) -> str:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(scope.get("path") or "/", safe="/:@!$&'()*+,;=~")
    query = scope.get("query_string") or b""
    return f"{path}?{query.decode('latin-1')}" if query else path


def _call(scope: _Scope, headers: ScopeHeaders, peer: _Peer) -> _Call:
    server = scope.get("server")
    port = int(server[1]) if server and server[1] is not None else 0
    authority = headers.get("host") or ""
    host, _ = _split_authority(authority)
    return _Call(
        protocol="http",
        method=scope.get("method") or "GET",
        scheme=scope.get("scheme") or "http",
        authority=authority,
        host=host,
        port=port,
        path=_target(scope),
        headers=headers,
        peer=peer,
    )


def trusts_envoy_headers(peer: _Peer | None, trust_domain: str) -> bool:
    """Whether ``x-envoy-*`` request headers from ``peer`` are believed: only from a verified
    mTLS peer of our own trust domain, the only callers that are mesh proxies or clients."""
    return (
        peer is not None
        and peer.mtls
        and peer.spiffe_id is not None
        and peer.trust_domain == trust_domain
    )


def _sanitized(
    raw: list[tuple[bytes, bytes]], peer: _Peer | None, own: str, trusted: bool
) -> list[tuple[bytes, bytes]]:
    headers = []
    for name, value in raw:
        lowered = name.lower()
        if lowered == _XFCC:
            continue
        if lowered.startswith(_ENVOY_PREFIX) and (not trusted or lowered in _PEER_METADATA):
            continue
        if lowered == _MESHLIB_METADATA and not trusted:
            continue
        headers.append((name, value))
    if peer is not None and peer.mtls and peer.spiffe_id:
        headers.append((_XFCC, f"By={own};URI={peer.spiffe_id}".encode("latin-1")))
    return headers


def _needs_sanitizing(raw: list[tuple[bytes, bytes]], peer: _Peer | None) -> bool:
    if peer is not None and peer.mtls:
        return True
    for name, _ in raw:
        lowered = name.lower()
        if lowered in (_XFCC, _MESHLIB_METADATA) or lowered.startswith(_ENVOY_PREFIX):
            return True
    return False


class MeshMiddleware:
    """ASGI middleware running the inbound flow; ``MeshMiddleware(app, mesh=mesh)``.

    ``exempt_paths`` (``/healthz``, ``/health/*``) skip PeerAuthentication and authorization,
    for Kubernetes probes; they are logged once at start, never implied.
    """

    def __init__(self, app: _ASGIApp, mesh: Mesh, *, exempt_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.mesh = mesh
        self.exempt = _ExemptPaths.of(exempt_paths)
        if self.exempt:
            _logger.info(
                "paths exempt from PeerAuthentication and authorization: %s",
                self.exempt.describe(),
            )

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope.get(INBOUND_SCOPE_KEY):
            await self.app(scope, receive, send)
            return
        raw_headers = list(scope.get("headers") or ())
        peer = peer_from_scope(scope)
        mesh = self.mesh
        delivered: list[tuple[bytes, bytes]] | None = None
        if _needs_sanitizing(raw_headers, peer):
            # Before the flow: authorization and the deadline see what the app will see.
            own = mesh.snapshot.identity
            trusted = trusts_envoy_headers(peer, own.trust_domain)
            delivered = _sanitized(raw_headers, peer, own.spiffe_id, trusted)
        headers = ScopeHeaders(raw_headers if delivered is None else delivered)
        call = _call(scope, headers, peer)
        flow = _inbound_flow(
            call,
            mesh.snapshot,
            now=time.monotonic(),
            hooks=_inbound_hooks_of(mesh),
            source_ip=call.peer.address if call.peer is not None else None,
            exempt=self.exempt,
        )
        if not flow.allowed:
            await self._refuse(kind, flow, send)
            return
        inner = dict(scope)
        inner[INBOUND_SCOPE_KEY] = True
        inner[_PEER_SCOPE_KEY] = call.peer
        if delivered is not None:
            inner["headers"] = delivered
        if flow.path is not None:
            path, _, query = flow.path.partition("?")
            inner["raw_path"] = path.encode("latin-1")
            inner["path"] = unquote(path)
            inner["query_string"] = query.encode("latin-1")
        status = 0
        sent = 0

        async def sending(message: _Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = int(message["status"])
            elif kind == "websocket.accept":
                status = _WEBSOCKET_ACCEPTED
            elif kind == "websocket.close" and status == 0:
                status = 403  # closed before accepting: the server answers 403
            await send(message)

        token = _bind_peer(call.peer)
        try:
            await self.app(inner, receive, sending)
        except BaseException as error:
            flags: tuple[str, ...] = ()
            if status == 0 and not isinstance(error, Exception):
                flags = _CLIENT_DISCONNECTED  # cancelled: the client went away
            elif status == 0:
                status = _SERVER_ERROR  # what the server answers for an unhandled error
            flow.finish(time.monotonic(), status, flags=flags, response_bytes=sent)
            raise
        finally:
            _unbind_peer(token)
        flow.finish(time.monotonic(), status, response_bytes=sent)

    async def _refuse(self, kind: str, flow: _InboundDecision, send: _Send) -> None:
        try:
            if kind == "websocket":
                # Closing before accepting makes the server answer the handshake with 403.
                await send({"type": "websocket.close", "code": 1008, "reason": flow.body})
            else:
                body = flow.body.encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": flow.status,
                        "headers": [
                            (b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            sent = 0 if kind == "websocket" else len(flow.body.encode())
            flow.finish(time.monotonic(), flow.status, response_bytes=sent)


def asgi(mesh: Mesh, app: Any, *, exempt_paths: Iterable[str] = ()) -> Any:
    """``app`` behind the inbound flow; an app already wrapped is returned as it is."""
    if isinstance(app, MeshMiddleware):
        if exempt_paths and _ExemptPaths.of(exempt_paths) != app.exempt:
            raise ValueError("app is already wrapped by mesh.asgi with other exempt_paths")
        return app
    return MeshMiddleware(app, mesh, exempt_paths=exempt_paths)
