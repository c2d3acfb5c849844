"""Which callers' ``x-envoy-*`` headers are believed: only mTLS peers of our trust domain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import pytest

import meshlib
from meshlib._telemetry.context import current_deadline
from meshlib.asgi import ScopeHeaders, trusts_envoy_headers
from meshlib.identity import LocalCA
from meshlib.wsgi import MeshWSGIMiddleware

from .conftest import POLICIES, ClientContext, raw_request

WEB = "spiffe://cluster.local/ns/default/sa/web"
FOREIGN = "spiffe://other.example/ns/default/sa/web"
OWN = "spiffe://cluster.local/ns/default/sa/reviews"

SENT = [
    (b"x-envoy-attempt-count", b"2"),
    (b"x-envoy-expected-rq-timeout-ms", b"60000"),
    (b"X-Envoy-Peer-Metadata", b"consumed"),
    (b"x-envoy-peer-metadata-id", b"consumed"),
    (b"x-forwarded-client-cert", b"By=x;URI=spiffe://cluster.local/ns/default/sa/admin"),
    (b"x-request-id", b"abc"),
]


class Seen:
    """An ASGI app recording its scope headers and the deadline current while it runs."""

    def __init__(self) -> None:
        self.headers: ScopeHeaders | None = None
        self.deadline: float | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.headers = ScopeHeaders(scope["headers"])
        self.deadline = current_deadline()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _scope(spiffe_id: str | None) -> dict[str, Any]:
    extensions: dict[str, Any] = {"mtls": False}
    if spiffe_id is not None:
        extensions = {"mtls": True, "tls": {"spiffe_id": spiffe_id, "client_cert_chain": []}}
    return {
        "type": "http",
        "method": "GET",
        "scheme": "https",
        "path": "/public",
        "raw_path": b"/public",
        "query_string": b"",
        "headers": [(b"host", b"reviews:9080"), *SENT],
        "server": ("127.0.0.1", 9080),
        "client": ("10.0.0.7", 40000),
        "extensions": extensions,
    }


def _run(app: Any, scope: dict[str, Any]) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return int(sent[0]["status"])


@pytest.fixture
def permissive() -> Iterator[meshlib.Mesh]:
    with meshlib.Mesh.from_text("", service_account="reviews") as mesh:
        yield mesh


def test_trust_rule() -> None:
    from meshlib._model.call import Peer

    assert trusts_envoy_headers(Peer(spiffe_id=WEB, mtls=True), "cluster.local")
    assert not trusts_envoy_headers(Peer(spiffe_id=FOREIGN, mtls=True), "cluster.local")
    assert not trusts_envoy_headers(Peer(spiffe_id=WEB), "cluster.local")  # not over mTLS
    assert not trusts_envoy_headers(Peer(mtls=True), "cluster.local")
    assert not trusts_envoy_headers(Peer(), "cluster.local")
    assert not trusts_envoy_headers(None, "cluster.local")


def test_mesh_peer_headers_reach_the_app_and_set_the_deadline(permissive: meshlib.Mesh) -> None:
    seen = Seen()
    assert _run(permissive.asgi(seen), _scope(WEB)) == 200
    assert seen.headers is not None
    assert seen.headers.get("x-envoy-attempt-count") == "2"
    assert seen.headers.get("x-envoy-expected-rq-timeout-ms") == "60000"
    assert "x-envoy-peer-metadata" not in seen.headers  # Istio's inbound consumes it
    assert "x-envoy-peer-metadata-id" not in seen.headers
    assert seen.headers.get("x-forwarded-client-cert") == f"By={OWN};URI={WEB}"
    assert seen.headers.get("x-request-id") == "abc"
    assert seen.deadline is not None


@pytest.mark.parametrize("spiffe_id", [None, FOREIGN], ids=["plaintext", "other-trust-domain"])
def test_other_callers_lose_envoy_headers_and_their_deadline(
    permissive: meshlib.Mesh, spiffe_id: str | None
) -> None:
    seen = Seen()
    assert _run(permissive.asgi(seen), _scope(spiffe_id)) == 200
    assert seen.headers is not None
    for name in ("x-envoy-attempt-count", "x-envoy-expected-rq-timeout-ms"):
        assert name not in seen.headers
    assert seen.deadline is None
    expected = None if spiffe_id is None else f"By={OWN};URI={FOREIGN}"
    assert seen.headers.get("x-forwarded-client-cert") == expected
    assert seen.headers.get("x-request-id") == "abc"


WHEN_HEADER = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: needs-header, namespace: default}
spec:
  rules:
  - when: [{key: "request.headers[x-envoy-attempt-count]", values: ["1"]}]
"""


@pytest.mark.parametrize(("spiffe_id", "status"), [(WEB, 200), (None, 403), (FOREIGN, 403)])
def test_authorization_sees_only_trusted_envoy_headers(spiffe_id: str | None, status: int) -> None:
    with meshlib.Mesh.from_text(WHEN_HEADER, service_account="reviews") as mesh:
        scope = _scope(spiffe_id)
        scope["headers"] = [(b"host", b"reviews"), (b"x-envoy-attempt-count", b"1")]
        assert _run(mesh.asgi(Seen()), scope) == status


def _wsgi_environ(spiffe_id: str | None) -> dict[str, Any]:
    from meshlib._model.call import Peer

    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/public",
        "SERVER_PORT": "9080",
        "HTTP_HOST": "reviews:9080",
        "HTTP_X_ENVOY_ATTEMPT_COUNT": "2",
        "HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS": "60000",
        "HTTP_X_ENVOY_PEER_METADATA": "consumed",
        "HTTP_X_FORWARDED_CLIENT_CERT": "URI=spiffe://cluster.local/ns/default/sa/admin",
    }
    if spiffe_id is not None:
        environ["meshlib.peer"] = Peer(spiffe_id=spiffe_id, mtls=True, address="10.0.0.7")
    return environ


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], object]:
    return lambda data: None


@pytest.mark.parametrize("spiffe_id", [WEB, None, FOREIGN])
def test_wsgi_applies_the_same_rule(permissive: meshlib.Mesh, spiffe_id: str | None) -> None:
    seen: list[tuple[dict[str, Any], float | None]] = []

    def app(environ: MutableMapping[str, Any], start_response: Any) -> list[bytes]:
        seen.append((dict(environ), current_deadline()))
        start_response("200 OK", [])
        return [b"ok"]

    body = MeshWSGIMiddleware(app, permissive)(_wsgi_environ(spiffe_id), _start_response)
    getattr(body, "close", lambda: None)()
    environ, deadline = seen[0]
    trusted = spiffe_id == WEB
    assert ("HTTP_X_ENVOY_ATTEMPT_COUNT" in environ) is trusted
    assert (deadline is not None) is trusted
    assert "HTTP_X_ENVOY_PEER_METADATA" not in environ
    xfcc = environ.get("HTTP_X_FORWARDED_CLIENT_CERT")
    assert xfcc == (None if spiffe_id is None else f"By={OWN};URI={spiffe_id}")


# --- behind meshlib's mTLS server ----------------------------------------------------------


async def _echo_headers(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = ScopeHeaders(scope["headers"])
    body = json.dumps(
        {name: headers.get(name) for name in ("x-envoy-attempt-count", "x-forwarded-client-cert")}
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_attempt_count_from_a_mesh_peer_reaches_the_app(
    ca: LocalCA, client_context: ClientContext
) -> None:
    mesh = meshlib.Mesh.from_text(
        POLICIES, service_account="reviews", labels={"app": "reviews"}, identity=ca
    )
    server = mesh.server(_echo_headers, port=0).start()
    try:
        status, body = raw_request(
            server.port,
            "/public",
            context=client_context("web"),
            headers={"x-envoy-attempt-count": "1", "x-forwarded-client-cert": "URI=forged"},
        )
    finally:
        server.stop()
        mesh.close()
    assert status == 200
    assert json.loads(body) == {
        "x-envoy-attempt-count": "1",
        "x-forwarded-client-cert": f"By={OWN};URI={WEB}",
    }
