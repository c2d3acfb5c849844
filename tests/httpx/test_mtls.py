"""Mesh mTLS through the httpx drivers against a STRICT uvicorn upstream (real handshakes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from httpx_upstreams import UpstreamState, make_app, make_runtime, run_requests

from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.serving import Server
from meshlib._identity.sources import StaticSource
from meshlib.identity import LocalCA

HOST = "reviews.default.svc.cluster.local"


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.generate("cluster.local")


@pytest.fixture(scope="module")
def upstream(ca: LocalCA) -> Iterator[tuple[Server, UpstreamState]]:
    identity = RotatingIdentity(StaticSource(ca.issue("default", "reviews", [HOST])))
    state = UpstreamState("mtls")
    server = Server(make_app(state), identity=identity, mtls_mode="STRICT", port=0)
    server.start()
    try:
        yield server, state
    finally:
        server.stop()
        identity.close()


@pytest.fixture
def client_identity(ca: LocalCA) -> Iterator[RotatingIdentity]:
    identity = RotatingIdentity(StaticSource(ca.issue("default", "productpage")))
    yield identity
    identity.close()


def config(port: int, service_account: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {port}}}
    labels: {{security.istio.io/tlsMode: istio}}
    serviceAccount: {service_account}
"""


def test_mtls_to_the_expected_identity(
    kind: str, upstream: tuple[Server, UpstreamState], client_identity: RotatingIdentity
) -> None:
    server, state = upstream
    runtime = make_runtime(config(server.port, "reviews"))
    runtime.identity = client_identity
    before = state.requests
    results = run_requests(kind, runtime, [("GET", "http://reviews:9080/", {})] * 5)
    assert [getattr(r, "status_code", r) for r in results] == [200] * 5
    assert state.requests - before == 5


def test_wrong_server_identity_is_refused_before_any_request(
    kind: str, upstream: tuple[Server, UpstreamState], client_identity: RotatingIdentity
) -> None:
    server, state = upstream
    runtime = make_runtime(config(server.port, "ratings"))
    runtime.identity = client_identity
    before = state.requests
    (response,) = run_requests(kind, runtime, [("GET", "http://reviews:9080/", {})])
    assert getattr(response, "status_code", response) == 503
    assert response.extensions["meshlib"]["flags"] == ("UF", "URX")  # type: ignore[union-attr]
    assert "ratings" in response.text  # type: ignore[union-attr]
    assert state.requests == before  # the check runs at the handshake


def test_plaintext_client_is_rejected_by_strict_server(
    kind: str, upstream: tuple[Server, UpstreamState]
) -> None:
    server, state = upstream
    runtime = make_runtime(config(server.port, "reviews"))  # no identity: plaintext
    before = state.requests
    (response,) = run_requests(kind, runtime, [("GET", "http://reviews:9080/", {})])
    assert getattr(response, "status_code", response) == 503
    assert state.requests == before
