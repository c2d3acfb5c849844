"""The ASGI middleware: driven through the ASGI interface, and behind real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import meshlib
from meshlib._engine.inbound import InboundHooks, InboundRecord
from meshlib._identity.serving import Server
from meshlib.asgi import INBOUND_SCOPE_KEY, MeshMiddleware, ScopeHeaders, peer_from_scope
from meshlib.handlers import current_peer
from meshlib.identity import LocalCA

from .conftest import POLICIES, ClientContext, raw_request

WEB = "spiffe://cluster.local/ns/default/sa/web"
ADMIN = "spiffe://cluster.local/ns/default/sa/admin"


@pytest.fixture
def mesh() -> Iterator[meshlib.Mesh]:
    with meshlib.Mesh.from_text(
        POLICIES, service_account="reviews", labels={"app": "reviews"}
    ) as built:
        yield built


class Inner:
    """An ASGI app recording the scopes it was given."""

    def __init__(self, status: int = 200, fail: BaseException | None = None) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.peers: list[meshlib._model.call.Peer | None] = []  # type: ignore[name-defined]
        self.status = status
        self.fail = fail

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        self.peers.append(current_peer())
        if scope["type"] == "lifespan":
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        if self.fail is not None:
            raise self.fail
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope(
    path: str = "/reviews/1",
    *,
    spiffe_id: str | None = WEB,
    method: str = "GET",
    kind: str = "http",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
) -> dict[str, Any]:
    extensions: dict[str, Any] = {"mtls": False}
    if spiffe_id is not None:
        extensions = {"mtls": True, "tls": {"spiffe_id": spiffe_id, "client_cert_chain": []}}
    return {
        "type": kind,
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"host", b"reviews:9080"), *(headers or [])],
        "server": ("127.0.0.1", 9080),
        "client": ("10.0.0.7", 40000),
        "extensions": extensions,
    }


def run(app: Any, asgi_scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(asgi_scope, receive, send))
    return sent


def recorder(mesh: meshlib.Mesh) -> list[InboundRecord]:
    records: list[InboundRecord] = []
    mesh.inbound_hooks = InboundHooks(on_request=records.append)
    return records


def test_allowed_request_reaches_the_app_with_the_peer(mesh: meshlib.Mesh) -> None:
    inner = Inner()
    records = recorder(mesh)
    sent = run(mesh.asgi(inner), scope())
    assert sent[0]["status"] == 200
    assert inner.scopes[0][INBOUND_SCOPE_KEY] is True
    peer = inner.peers[0]
    assert peer is not None
    assert (peer.spiffe_id, peer.address, peer.mtls) == (WEB, "10.0.0.7", True)
    assert inner.scopes[0]["meshlib.peer"] == peer
    assert [(r.status, r.mtls) for r in records] == [(200, True)]
    assert records[0].decision is not None
    assert records[0].decision.policy == "default/readers"


@pytest.mark.parametrize(
    ("path", "query", "spiffe_id", "method", "status"),
    [
        ("/reviews/1", b"", WEB, "GET", 200),
        ("/admin", b"", WEB, "GET", 403),
        ("/public/../admin", b"", WEB, "GET", 403),
        ("/public/%2e%2e/admin", b"", WEB, "GET", 403),
        ("/%61dmin", b"", WEB, "GET", 403),
        ("//admin", b"", WEB, "GET", 403),
        ("/admin", b"/public", WEB, "GET", 403),
        ("/admin", b"", ADMIN, "GET", 200),
        ("/admin", b"", ADMIN, "DELETE", 403),
        ("/reviews/1", b"", "spiffe://cluster.local/ns/other/sa/web", "GET", 403),
        ("/reviews/1", b"", None, "GET", 403),
        ("/a%00b", b"", ADMIN, "GET", 400),
    ],
)
def test_table(
    mesh: meshlib.Mesh, path: str, query: bytes, spiffe_id: str | None, method: str, status: int
) -> None:
    inner = Inner()
    sent = run(mesh.asgi(inner), scope(path, spiffe_id=spiffe_id, method=method, query=query))
    assert sent[0]["status"] == status
    assert bool(inner.scopes) is (status == 200)
    if status == 403:
        body = sent[1]["body"].decode()
        assert body == ("RBAC: access denied" if spiffe_id else body)
        assert "mTLS required" in body or body == "RBAC: access denied"


def test_client_sent_identity_headers_are_replaced(mesh: meshlib.Mesh) -> None:
    inner = Inner()
    forged = [
        (b"x-forwarded-client-cert", b"By=x;URI=spiffe://cluster.local/ns/default/sa/admin"),
        (b"X-Envoy-Peer-Metadata", b"forged"),
        (b"x-envoy-expected-rq-timeout-ms", b"100"),
        (b"x-request-id", b"abc"),
    ]
    run(mesh.asgi(inner), scope(headers=forged))
    seen = ScopeHeaders(inner.scopes[0]["headers"])
    assert seen.get("x-forwarded-client-cert") == (
        f"By=spiffe://cluster.local/ns/default/sa/reviews;URI={WEB}"
    )
    assert "x-envoy-peer-metadata" not in seen
    assert seen.get("x-envoy-expected-rq-timeout-ms") == "100"  # a mesh peer's: kept
    assert seen.get("x-request-id") == "abc"


def test_plaintext_peer_loses_forged_headers_and_gets_none(mesh: meshlib.Mesh) -> None:
    permissive = meshlib.Mesh.from_text("", service_account="reviews")
    inner = Inner()
    forged = [(b"x-forwarded-client-cert", b"URI=spiffe://cluster.local/ns/default/sa/admin")]
    run(permissive.asgi(inner), scope(spiffe_id=None, headers=forged))
    assert "x-forwarded-client-cert" not in ScopeHeaders(inner.scopes[0]["headers"])
    permissive.close()


def test_clean_request_keeps_its_header_list(mesh: meshlib.Mesh) -> None:
    permissive = meshlib.Mesh.from_text("", service_account="reviews")
    inner = Inner()
    original = scope(spiffe_id=None, headers=[(b"accept", b"*/*")])
    run(permissive.asgi(inner), original)
    assert inner.scopes[0]["headers"] == original["headers"]
    permissive.close()


def test_the_app_receives_the_normalized_path(mesh: meshlib.Mesh) -> None:
    inner = Inner()
    run(mesh.asgi(inner), scope("/public/x/../%61bout%20us", query=b"a=1"))
    seen = inner.scopes[0]
    assert seen["raw_path"] == b"/public/about%20us"
    assert seen["path"] == "/public/about us"
    assert seen["query_string"] == b"a=1"


def test_lifespan_and_other_scopes_pass_through(mesh: meshlib.Mesh) -> None:
    inner = Inner()
    run(mesh.asgi(inner), {"type": "lifespan"})
    assert inner.scopes == [{"type": "lifespan"}]


def test_websocket_handshake_is_authorized(mesh: meshlib.Mesh) -> None:
    records = recorder(mesh)
    inner = Inner()
    denied = run(mesh.asgi(inner), scope("/ws", spiffe_id=None, kind="websocket"))
    assert denied[0]["type"] == "websocket.close"
    assert inner.scopes == []
    accepted = run(mesh.asgi(inner), scope("/ws", kind="websocket"))
    assert accepted[0]["type"] == "websocket.accept"
    assert [r.status for r in records] == [403, 101]


def test_wrapping_twice_is_detected(mesh: meshlib.Mesh) -> None:
    inner = Inner()
    records = recorder(mesh)
    once = mesh.asgi(inner, exempt_paths=["/healthz"])
    assert mesh.asgi(once) is once
    assert mesh.asgi(once, exempt_paths=["/healthz"]) is once
    with pytest.raises(ValueError, match="other exempt_paths"):
        mesh.asgi(once, exempt_paths=["/ready"])
    nested = MeshMiddleware(MeshMiddleware(inner, mesh), mesh)  # e.g. add_middleware + serve
    run(nested, scope())
    assert len(inner.scopes) == 1
    assert len(records) == 1


def test_exempt_paths_are_explicit(mesh: meshlib.Mesh, caplog: pytest.LogCaptureFixture) -> None:
    inner = Inner()
    with caplog.at_level("INFO", logger="meshlib.inbound"):
        app = mesh.asgi(inner, exempt_paths=["/healthz"])
    assert "/healthz" in caplog.text
    assert run(app, scope("/healthz", spiffe_id=None))[0]["status"] == 200
    assert run(mesh.asgi(Inner()), scope("/healthz", spiffe_id=None))[0]["status"] == 403


def test_app_errors_and_cancellation_are_recorded(mesh: meshlib.Mesh) -> None:
    records = recorder(mesh)
    with pytest.raises(RuntimeError):
        run(mesh.asgi(Inner(fail=RuntimeError("bug"))), scope())
    with pytest.raises(asyncio.CancelledError):
        run(mesh.asgi(Inner(fail=asyncio.CancelledError())), scope())
    assert [(r.status, r.flags) for r in records] == [(500, ()), (0, ("DC",))]


def test_peer_from_scope_trusts_only_the_server_extension() -> None:
    assert peer_from_scope({"type": "http"}).spiffe_id is None
    forged = {"extensions": {"tls": {"spiffe_id": WEB}}, "client": ("1.2.3.4", 5)}
    assert peer_from_scope(forged).spiffe_id is None  # no "mtls": not meshlib's server
    empty = {"extensions": {"mtls": True, "tls": {"spiffe_id": None}}}
    assert peer_from_scope(empty).spiffe_id is None


def test_scope_headers_view() -> None:
    view = ScopeHeaders([(b"Accept", b"a"), (b"accept", b"b")])
    assert view.get("ACCEPT") == "a,b"
    assert "Accept" in view
    assert 3 not in view


# --- behind real servers -------------------------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    peer = current_peer()
    return JSONResponse(
        {
            "path": request.url.path,
            "peer": peer.principal if peer is not None else None,
            "xfcc": request.headers.get("x-forwarded-client-cert"),
        }
    )


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/{path:path}", whoami, methods=["GET", "POST", "DELETE"]),
        ]
    )


@pytest.fixture
def mtls_server(ca: LocalCA) -> Iterator[tuple[meshlib.Mesh, Server]]:
    mesh = meshlib.Mesh.from_text(
        POLICIES, service_account="reviews", labels={"app": "reviews"}, identity=ca
    )
    server = mesh.server(starlette_app(), port=0)
    server.start()
    try:
        yield mesh, server
    finally:
        server.stop()
        mesh.close()


def test_mesh_server_applies_the_middleware(
    mtls_server: tuple[meshlib.Mesh, Server], client_context: ClientContext
) -> None:
    _, server = mtls_server
    web, admin = client_context("web"), client_context("admin")
    status, body = raw_request(server.port, "/public/x/../hello", context=web)
    assert status == 200
    seen = json.loads(body)
    assert seen["path"] == "/public/hello"
    assert seen["peer"] == "cluster.local/ns/default/sa/web"
    assert seen["xfcc"].endswith(f"URI={WEB}")
    forged = {"x-forwarded-client-cert": f"URI={ADMIN}"}
    assert raw_request(server.port, "/admin", context=web, headers=forged)[0] == 403
    assert raw_request(server.port, "/admin", context=admin)[0] == 200
    assert raw_request(server.port, "/admin", context=admin, method="DELETE")[0] == 403
    assert raw_request(server.port, "/admin#/public", context=web)[0] == 403


def test_plain_server_under_strict_is_refused(ca: LocalCA) -> None:
    with meshlib.Mesh.from_text(
        POLICIES, service_account="reviews", labels={"app": "reviews"}
    ) as mesh:
        # A plaintext server (what a plain uvicorn gives): the middleware still enforces STRICT.
        server = Server(mesh.asgi(starlette_app()), identity=None, mtls_mode="DISABLE")
        with server:
            status, body = raw_request(server.port, "/reviews/1", context=None)
    assert status == 403
    assert b"mTLS required" in body


def test_handler_principals_on_a_fastapi_route(mesh: meshlib.Mesh) -> None:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    from meshlib.handlers import PermissionDeniedError

    app = FastAPI()

    async def refuse(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("RBAC: access denied", 403)

    app.add_exception_handler(PermissionDeniedError, refuse)

    @app.get("/reviews/{item}")
    @mesh.handler(principals=["cluster.local/ns/default/sa/admin"])
    async def item(item: int) -> dict[str, int]:
        return {"item": item}

    wrapped = mesh.asgi(app)
    assert run(wrapped, scope("/reviews/3", spiffe_id=ADMIN))[0]["status"] == 200
    assert run(wrapped, scope("/reviews/3", spiffe_id=WEB))[0]["status"] == 403
    assert run(wrapped, scope("/reviews/x", spiffe_id=ADMIN))[0]["status"] == 422
