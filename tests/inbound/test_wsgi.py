"""The WSGI middleware, driven through the WSGI interface, and the bridge behind a real server."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from flask import Flask, Response, request

import meshlib
from meshlib._engine.inbound import InboundHooks, InboundRecord
from meshlib._model.call import Peer
from meshlib.handlers import current_peer
from meshlib.identity import LocalCA
from meshlib.wsgi import EnvironHeaders, MeshWSGIMiddleware, WSGIBridge

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
    def __init__(self, fail: Exception | None = None) -> None:
        self.environs: list[dict[str, Any]] = []
        self.peers: list[Peer | None] = []
        self.fail = fail
        self.closed = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.environs.append(environ)
        self.peers.append(current_peer())
        if self.fail is not None:
            raise self.fail
        start_response("200 OK", [("Content-Type", "text/plain")])
        return self.body()

    def body(self) -> Iterator[bytes]:
        try:
            yield b"ok"
        finally:
            self.closed = True


def environ(
    path: str = "/reviews/1",
    *,
    spiffe_id: str | None = WEB,
    method: str = "GET",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "reviews",
        "SERVER_PORT": "9080",
        "REMOTE_ADDR": "10.0.0.7",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "reviews:9080",
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(b""),
    }
    if spiffe_id is not None:
        env["meshlib.peer"] = Peer(spiffe_id=spiffe_id, address="10.0.0.7", mtls=True)
    env.update(extra or {})
    return env


def run(app: Any, env: dict[str, Any]) -> tuple[str, bytes]:
    status: list[str] = []

    def start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(code)
        return lambda data: None

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return status[0], body


def recorder(mesh: meshlib.Mesh) -> list[InboundRecord]:
    records: list[InboundRecord] = []
    mesh.inbound_hooks = InboundHooks(on_request=records.append)
    return records


def test_allowed_and_recorded_when_the_body_is_closed(mesh: meshlib.Mesh) -> None:
    inner = Inner()
    records = recorder(mesh)
    status, body = run(mesh.wsgi(inner), environ())
    assert (status, body) == ("200 OK", b"ok")
    assert inner.closed
    assert inner.peers[0] is not None
    assert inner.peers[0].spiffe_id == WEB
    assert [(r.status, r.mtls) for r in records] == [(200, True)]


@pytest.mark.parametrize(
    ("target", "spiffe_id", "method", "status"),
    [
        ("/reviews/1", WEB, "GET", "200 OK"),
        ("/admin", WEB, "GET", "403 Forbidden"),
        ("/public/../admin", WEB, "GET", "403 Forbidden"),
        ("/public/%2e%2e/admin", WEB, "GET", "403 Forbidden"),
        ("/%61dmin", WEB, "GET", "403 Forbidden"),
        ("//admin", WEB, "GET", "403 Forbidden"),
        ("/admin?/public", WEB, "GET", "403 Forbidden"),
        ("/admin#/public", WEB, "GET", "403 Forbidden"),
        ("/admin", ADMIN, "GET", "200 OK"),
        ("/admin", ADMIN, "DELETE", "403 Forbidden"),
        ("/reviews/1", None, "GET", "403 Forbidden"),
        ("/a%00", ADMIN, "GET", "400 Bad Request"),
    ],
)
def test_table_with_raw_uri(
    mesh: meshlib.Mesh, target: str, spiffe_id: str | None, method: str, status: str
) -> None:
    inner = Inner()
    env = environ("/ignored", spiffe_id=spiffe_id, method=method, extra={"RAW_URI": target})
    assert run(mesh.wsgi(inner), env)[0] == status


def test_decoded_path_info_is_still_normalized(mesh: meshlib.Mesh) -> None:
    # Without RAW_URI the server already decoded %2e%2e to "..": dot segments still go.
    inner = Inner()
    assert run(mesh.wsgi(inner), environ("/public/../admin"))[0] == "403 Forbidden"
    run(mesh.wsgi(inner), environ("/public/x/../about", extra={"QUERY_STRING": "a=1"}))
    seen = inner.environs[-1]
    assert (seen["PATH_INFO"], seen["QUERY_STRING"]) == ("/public/about", "a=1")


def test_normalized_path_replaces_raw_uri(mesh: meshlib.Mesh) -> None:
    inner = Inner()
    run(mesh.wsgi(inner), environ("/x", extra={"RAW_URI": "/public/./a%20b?q=1"}))
    seen = inner.environs[0]
    assert (seen["PATH_INFO"], seen["RAW_URI"], seen["QUERY_STRING"]) == (
        "/public/a b",
        "/public/a%20b?q=1",
        "q=1",
    )


def test_forged_identity_headers_are_removed(mesh: meshlib.Mesh) -> None:
    inner = Inner()
    forged = {
        "HTTP_X_FORWARDED_CLIENT_CERT": f"URI={ADMIN}",
        "HTTP_X_ENVOY_PEER_METADATA": "x",
        "HTTP_X_REQUEST_ID": "abc",
    }
    run(mesh.wsgi(inner), environ(extra=forged))
    seen = inner.environs[0]
    assert seen["HTTP_X_FORWARDED_CLIENT_CERT"].endswith(f"URI={WEB}")
    assert "HTTP_X_ENVOY_PEER_METADATA" not in seen
    assert seen["HTTP_X_REQUEST_ID"] == "abc"
    plaintext = meshlib.Mesh.from_text("", service_account="reviews")
    run(plaintext.wsgi(inner), environ(spiffe_id=None, extra=forged))
    assert "HTTP_X_FORWARDED_CLIENT_CERT" not in inner.environs[-1]
    plaintext.close()


def test_a_header_cannot_claim_a_peer(mesh: meshlib.Mesh) -> None:
    # Only the server sets environ["meshlib.peer"]; HTTP_* keys are all a client controls.
    env = environ(spiffe_id=None, extra={"HTTP_MESHLIB.PEER": WEB, "REMOTE_PORT": "x"})
    assert run(mesh.wsgi(Inner()), env)[0] == "403 Forbidden"


def test_errors_are_recorded_and_wrapping_twice_is_harmless(mesh: meshlib.Mesh) -> None:
    records = recorder(mesh)
    with pytest.raises(RuntimeError):
        run(mesh.wsgi(Inner(fail=RuntimeError("bug"))), environ())
    assert records[-1].status == 500
    inner = Inner()
    once = mesh.wsgi(inner, exempt_paths=["/healthz"])
    assert mesh.wsgi(once) is once
    with pytest.raises(ValueError, match="other exempt_paths"):
        mesh.wsgi(once, exempt_paths=["/x"])
    nested = MeshWSGIMiddleware(MeshWSGIMiddleware(inner, mesh), mesh)
    run(nested, environ())
    assert len(inner.environs) == 1
    assert run(once, environ("/healthz", spiffe_id=None))[0] == "200 OK"


def test_environ_headers_view() -> None:
    view = EnvironHeaders({"CONTENT_TYPE": "text/plain", "HTTP_X_A": "1", "HTTP_N": 3})
    assert view.get("Content-Type") == "text/plain"
    assert view.get("x-a") == "1"
    assert view.get("n") is None
    assert "X-A" in view
    assert 1 not in view


# --- the bridge ----------------------------------------------------------------------------


def flask_app() -> Flask:
    app = Flask("t")

    @app.route("/<path:rest>", methods=["GET", "POST", "DELETE"])
    def anything(rest: str) -> Any:
        peer = current_peer()
        return {
            "path": request.path,
            "peer": peer.principal if peer is not None else None,
            "body": request.get_data(as_text=True),
            "xfcc": request.headers.get("X-Forwarded-Client-Cert"),
        }

    @app.get("/public/stream")
    def stream() -> Response:
        return Response((f"{i}," for i in range(3)), mimetype="text/plain")

    return app


@pytest.fixture
def served(ca: LocalCA) -> Iterator[Any]:
    mesh = meshlib.Mesh.from_text(
        POLICIES, service_account="reviews", labels={"app": "reviews"}, identity=ca
    )
    servers = [mesh.server(mesh.wsgi(flask_app())), mesh.server(flask_app())]
    for server in servers:
        server.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
        mesh.close()


def test_flask_on_the_mtls_server(served: Any, client_context: ClientContext) -> None:
    web = client_context("web")
    for server in served:  # mesh.wsgi(app), and a bare Flask app detected by mesh.server
        status, body = raw_request(server.port, "/echo", context=web, method="POST", body=b"hi")
        assert status == 200
        seen = json.loads(body)
        assert seen["peer"] == "cluster.local/ns/default/sa/web"
        assert seen["body"] == "hi"
        assert seen["xfcc"].endswith(f"URI={WEB}")
        assert raw_request(server.port, "/public/stream", context=web) == (200, b"0,1,2,")
        assert raw_request(server.port, "/public/../admin", context=web)[0] == 403
        assert raw_request(server.port, "/admin", context=client_context("admin"))[0] == 200
        status, body = raw_request(server.port, "/public/x/../y", context=web)
        assert json.loads(body)["path"] == "/public/y"


def test_bridge_lifespan_and_websocket() -> None:
    bridge = WSGIBridge(Inner())
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(bridge({"type": "lifespan"}, receive, send))
    asyncio.run(bridge({"type": "websocket"}, receive, send))
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "websocket.close",
    ]


def test_bridge_stops_when_the_client_leaves() -> None:
    inner = Inner()
    bridge = WSGIBridge(inner)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing to send")

    asyncio.run(bridge({"type": "http", "path": "/"}, receive, send))
    assert inner.environs == []
