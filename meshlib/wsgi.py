"""The inbound WSGI middleware (Flask, Django), and a minimal ASGI server bridge for WSGI apps.

``mesh.wsgi(app)`` runs the same inbound flow as ``mesh.asgi``. Where the peer comes from:

* ``environ["meshlib.peer"]`` (a ``meshlib._model.call.Peer``), set only by trusted server code:
  the ``WSGIBridge`` below, which ``mesh.serve(mesh.wsgi(app))`` uses to run a WSGI app on
  meshlib's mTLS uvicorn server, copies it from the verified TLS connection. A client cannot
  set an environ key that does not start with ``HTTP_``.
* Under any other WSGI server (gunicorn, waitress, ``flask run``) there is no TLS information,
  hence no peer: every request is plaintext, and a STRICT port refuses them all. That is the
  honest answer: meshlib cannot verify a certificate it never saw.

A client-sent ``X-Forwarded-Client-Cert`` is always replaced by the verified peer's; ``X-Envoy-*``
headers are kept only from an mTLS peer of our trust domain, as in ``meshlib.asgi``. The
normalized path replaces ``PATH_INFO`` when normalization changed it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from meshlib._engine.inbound import ExemptPaths as _ExemptPaths
from meshlib._engine.inbound import InboundDecision as _InboundDecision
from meshlib._engine.inbound import inbound_flow as _inbound_flow
from meshlib._engine.snapshot import split_authority as _split_authority
from meshlib._model.call import Call as _Call
from meshlib._model.call import Peer as _Peer
from meshlib.asgi import INBOUND_SCOPE_KEY as _INBOUND_SCOPE_KEY
from meshlib.asgi import peer_from_scope as _peer_from_scope
from meshlib.asgi import trusts_envoy_headers as _trusts_envoy_headers
from meshlib.handlers import PEER_SCOPE_KEY as _PEER_SCOPE_KEY
from meshlib.handlers import bind_peer as _bind_peer
from meshlib.handlers import inbound_hooks_of as _inbound_hooks_of
from meshlib.handlers import unbind_peer as _unbind_peer

if TYPE_CHECKING:
    from meshlib._mesh import Mesh

__all__ = ["EnvironHeaders", "MeshWSGIMiddleware", "WSGIApp", "WSGIBridge", "wsgi"]

_logger = logging.getLogger("meshlib.inbound")

_Environ = MutableMapping[str, Any]
_StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[_Environ, _StartResponse], Iterable[bytes]]

_XFCC = "HTTP_X_FORWARDED_CLIENT_CERT"
_ENVOY_PREFIX = "HTTP_X_ENVOY_"
_PEER_METADATA = ("HTTP_X_ENVOY_PEER_METADATA", "HTTP_X_ENVOY_PEER_METADATA_ID")
_MESHLIB_METADATA = "HTTP_X_MESHLIB_PEER_METADATA"
_SPECIAL = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
_REASONS = {400: "400 Bad Request", 403: "403 Forbidden"}
_SERVER_ERROR = 500


class EnvironHeaders:
    """``HeaderView`` over a WSGI environ's ``HTTP_*`` keys."""

    __slots__ = ("_environ",)

    def __init__(self, environ: _Environ) -> None:
        self._environ = environ

    @staticmethod
    def _key(name: str) -> str:
        lowered = name.lower()
        special = _SPECIAL.get(lowered)
        return special or "HTTP_" + lowered.upper().replace("-", "_")

    def get(self, key: str, /) -> str | None:
        value = self._environ.get(self._key(key))
        return value if isinstance(value, str) else None

    def __contains__(self, key: object, /) -> bool:
        return isinstance(key, str) and self._key(key) in self._environ


def _target(environ: _Environ) -> str:
    # The raw target when the server keeps it (gunicorn RAW_URI, uWSGI REQUEST_URI); otherwise
    # PATH_INFO is already percent-decoded, and normalization still removes its dot segments.
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw.startswith("/"):
        return raw
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    path = quote(path.encode("latin-1").decode("utf-8", "replace") or "/", safe="/:@!$&'()*+,;=~")
    query = environ.get("QUERY_STRING") or ""
    return f"{path}?{query}" if query else path


def _peer(environ: _Environ) -> _Peer:
    peer = environ.get(_PEER_SCOPE_KEY)
    if isinstance(peer, _Peer):
        return peer
    port = environ.get("REMOTE_PORT")
    return _Peer(
        address=environ.get("REMOTE_ADDR") or None,
        port=int(port) if isinstance(port, str) and port.isdigit() else None,
    )


def _call(environ: _Environ, peer: _Peer) -> _Call:
    headers = EnvironHeaders(environ)
    authority = headers.get("host") or environ.get("SERVER_NAME", "")
    host, _ = _split_authority(authority)
    port = environ.get("SERVER_PORT", "")
    return _Call(
        protocol="http",
        method=environ.get("REQUEST_METHOD", "GET"),
        scheme=environ.get("wsgi.url_scheme", "http"),
        authority=authority,
        host=host,
        port=int(port) if isinstance(port, str) and port.isdigit() else 0,
        path=_target(environ),
        headers=headers,
        peer=peer,
    )


def _sanitize(environ: _Environ, peer: _Peer, own_id: str, trust_domain: str) -> None:
    trusted = _trusts_envoy_headers(peer, trust_domain)
    for key in [
        k for k in environ if k in (_XFCC, _MESHLIB_METADATA) or k.startswith(_ENVOY_PREFIX)
    ]:
        if key == _XFCC or not trusted or key in _PEER_METADATA:
            del environ[key]
    if peer.mtls and peer.spiffe_id:
        environ[_XFCC] = f"By={own_id};URI={peer.spiffe_id}"


class _Finishing:
    """The response iterable; records the request when the server closes it."""

    def __init__(self, body: Iterable[bytes], flow: _InboundDecision, status: list[int]) -> None:
        self._body = body
        self._flow = flow
        self._status = status

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._flow.finish(time.monotonic(), self._status[0])


class MeshWSGIMiddleware:
    """WSGI middleware running the inbound flow; ``exempt_paths`` as for ``MeshMiddleware``."""

    def __init__(self, app: WSGIApp, mesh: Mesh, *, exempt_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.mesh = mesh
        self.exempt = _ExemptPaths.of(exempt_paths)
        if self.exempt:
            _logger.info(
                "paths exempt from PeerAuthentication and authorization: %s",
                self.exempt.describe(),
            )

    def __call__(self, environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get(_INBOUND_SCOPE_KEY):
            return self.app(environ, start_response)
        mesh = self.mesh
        peer = _peer(environ)
        # Sanitized before the flow: authorization and the deadline see what the app will see.
        inner = dict(environ)
        own = mesh.snapshot.identity
        _sanitize(inner, peer, own.spiffe_id, own.trust_domain)
        call = _call(inner, peer)
        flow = _inbound_flow(
            call,
            mesh.snapshot,
            now=time.monotonic(),
            hooks=_inbound_hooks_of(mesh),
            source_ip=peer.address,
            exempt=self.exempt,
        )
        if not flow.allowed:
            denial = flow.body.encode()
            start_response(
                _REASONS.get(flow.status, str(flow.status)),
                [("Content-Type", "text/plain"), ("Content-Length", str(len(denial)))],
            )
            flow.finish(time.monotonic(), flow.status)
            return [denial]
        inner[_INBOUND_SCOPE_KEY] = True
        inner[_PEER_SCOPE_KEY] = call.peer
        if flow.path is not None:
            path, _, query = flow.path.partition("?")
            inner["PATH_INFO"] = unquote(path).encode("utf-8").decode("latin-1")
            inner["SCRIPT_NAME"] = ""
            inner["QUERY_STRING"] = query
            for key in ("RAW_URI", "REQUEST_URI"):
                if key in inner:
                    inner[key] = flow.path
        status = [0]

        def starting(code: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], object]:
            status[0] = int(code.split(" ", 1)[0])
            return start_response(code, headers, exc_info)

        token = _bind_peer(call.peer)
        try:
            body = self.app(inner, starting)
        except BaseException:
            flow.finish(time.monotonic(), status[0] or _SERVER_ERROR)
            raise
        finally:
            _unbind_peer(token)
        return _Finishing(body, flow, status)


def wsgi(mesh: Mesh, app: Any, *, exempt_paths: Iterable[str] = ()) -> MeshWSGIMiddleware:
    """``app`` behind the inbound flow; an app already wrapped is returned as it is."""
    if isinstance(app, MeshWSGIMiddleware):
        if exempt_paths and _ExemptPaths.of(exempt_paths) != app.exempt:
            raise ValueError("app is already wrapped by mesh.wsgi with other exempt_paths")
        return app
    return MeshWSGIMiddleware(app, mesh, exempt_paths=exempt_paths)


# --- running a WSGI app on meshlib's (ASGI) mTLS server ---------------------------------------


class WSGIBridge:
    """An ASGI app running a WSGI app in a worker thread, passing the verified peer along.

    Minimal on purpose: HTTP only (websockets are refused, lifespan is acknowledged), the
    request body is read whole before the app runs, the response streams chunk by chunk.
    The thread runs in a copy of the request's context (trace context, deadline, peer).
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        environ = _environ(scope, bytes(body))
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._run, environ, send, loop)

    def _run(self, environ: _Environ, send: Any, loop: asyncio.AbstractEventLoop) -> None:
        started: list[Any] = []
        sent_head = False

        def push(message: dict[str, Any]) -> None:
            asyncio.run_coroutine_threadsafe(send(message), loop).result()

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            if exc_info is not None and sent_head:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return lambda data: None  # the legacy write() callable: unsupported, ignored

        def head() -> None:
            nonlocal sent_head
            status, headers = started
            push(
                {
                    "type": "http.response.start",
                    "status": int(status.split(" ", 1)[0]),
                    "headers": [
                        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers
                    ],
                }
            )
            sent_head = True

        result = self.app(environ, start_response)
        try:
            for chunk in result:
                if not chunk:
                    continue
                if not sent_head:
                    head()
                push({"type": "http.response.body", "body": chunk, "more_body": True})
            if not sent_head:
                head()
            push({"type": "http.response.body", "body": b""})
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _environ(scope: Any, body: bytes) -> _Environ:
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    path = scope.get("path", "/").encode("utf-8").decode("latin-1")
    root = scope.get("root_path", "").encode("utf-8").decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    raw = scope.get("raw_path")
    environ: _Environ = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        "SCRIPT_NAME": root,
        "PATH_INFO": path[len(root) :] if root and path.startswith(root) else path,
        "QUERY_STRING": query,
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        _PEER_SCOPE_KEY: scope.get(_PEER_SCOPE_KEY) or _peer_from_scope(scope),
    }
    if raw:
        environ["RAW_URI"] = raw.decode("latin-1") + (f"?{query}" if query else "")
    if scope.get(_INBOUND_SCOPE_KEY):
        environ[_INBOUND_SCOPE_KEY] = True
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1])
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = text
            continue
        key = f"HTTP_{key}"
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ
