"""The Mesh facade as a user builds it: from files, from the environment, with an identity."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import meshlib
from meshlib._mesh import parse_labels
from meshlib.identity import LocalCA

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def hello(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    assert scope["type"] == "http"
    tls = scope.get("extensions", {}).get("tls", {})
    body = f"hello {tls.get('spiffe_id') or 'plaintext'}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
"""


def reviews_entry(port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {port}}}
    labels: {{app: reviews, version: v1}}
    serviceAccount: reviews
"""


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.generate("cluster.local")


@pytest.fixture
def reviews(ca: LocalCA) -> Iterator[tuple[meshlib.Mesh, int]]:
    mesh = meshlib.Mesh.from_text(
        STRICT, service_account="reviews", labels={"app": "reviews", "version": "v1"}, identity=ca
    )
    server = mesh.server(hello, port=0)
    server.start()
    try:
        yield mesh, server.port
    finally:
        server.stop()
        mesh.close()


def test_from_config_loads_the_examples() -> None:
    with meshlib.Mesh.from_config(EXAMPLES / "bookinfo", watch=False) as mesh:
        assert mesh.snapshot.generation == 1
        assert mesh.config_status.errors == 0
        assert mesh.config_errors == ()
        assert mesh.snapshot.lookup_host("reviews:9080") is not None
        assert mesh.reload()
        assert mesh.snapshot.generation == 2
        assert "generation=2" in repr(mesh)


def test_bad_config_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "vs.yaml"
    bad.write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}, "
        "weigth: 1}]}]}\n"
    )
    with pytest.raises(meshlib.ConfigError) as raised:
        meshlib.Mesh.from_config(bad, watch=False)
    assert str(bad) in str(raised.value)
    assert "weigth" in str(raised.value)


def test_from_env_reads_meshlib_variables(tmp_path: Path) -> None:
    env = {
        "MESHLIB_CONFIG": str(EXAMPLES / "bookinfo"),
        "MESHLIB_NAMESPACE": "default",
        "MESHLIB_SERVICE_ACCOUNT": "productpage",
        "MESHLIB_LABELS": "app=productpage, version=v1",
        "MESHLIB_WATCH": "0",
    }
    with meshlib.Mesh.from_env(env) as mesh:
        assert mesh.workload == "productpage"
        assert mesh.labels == {"app": "productpage", "version": "v1"}
        assert mesh.service_account == "productpage"
        assert mesh.identity is None
    with pytest.raises(ValueError, match="MESHLIB_CONFIG"):
        meshlib.Mesh.from_env({})


def test_labels_syntax() -> None:
    assert parse_labels("") == {}
    assert parse_labels("a=1,b = 2") == {"a": "1", "b": "2"}
    with pytest.raises(ValueError, match="key=value"):
        parse_labels("novalue")


def test_identity_must_be_a_source() -> None:
    with pytest.raises(TypeError, match="identity must be"):
        meshlib.Mesh.from_text(STRICT, identity="certs/")


def test_mtls_between_two_meshes(ca: LocalCA, reviews: tuple[meshlib.Mesh, int]) -> None:
    server_mesh, port = reviews
    assert server_mesh.mtls_mode(port) == "STRICT"
    assert server_mesh.identity is not None
    assert "reviews.default.svc.cluster.local" in server_mesh.dns_names
    client_mesh = meshlib.Mesh.from_text(
        reviews_entry(port), service_account="productpage", identity=ca
    )
    with client_mesh, client_mesh.http_client() as client:
        response = client.get("http://reviews:9080/")
    assert response.status_code == 200
    assert response.text == "hello spiffe://cluster.local/ns/default/sa/productpage"


def test_plaintext_client_is_refused_by_strict(reviews: tuple[meshlib.Mesh, int]) -> None:
    _, port = reviews
    with httpx.Client() as client, pytest.raises(httpx.TransportError):
        client.get(f"http://127.0.0.1:{port}/")


async def test_async_client_through_the_mesh(
    ca: LocalCA, reviews: tuple[meshlib.Mesh, int]
) -> None:
    _, port = reviews
    client_mesh = meshlib.Mesh.from_text(
        reviews_entry(port), service_account="ratings", identity=ca
    )
    with client_mesh:
        async with client_mesh.async_http_client() as client:
            response = await client.get("http://reviews.default:9080/")
    assert response.text == "hello spiffe://cluster.local/ns/default/sa/ratings"


def test_outbound_without_identity_is_plaintext() -> None:
    with meshlib.Mesh.from_text(STRICT) as mesh:
        assert mesh.identity is None
        assert mesh.http_transport() is not mesh.http_transport()
        with pytest.raises(ValueError, match="needs an identity"):
            mesh.grpc_server_credentials()


def test_config_helpers_for_servers_run_by_the_user(ca: LocalCA) -> None:
    with meshlib.Mesh.from_text(STRICT, service_account="reviews", identity=ca) as mesh:
        kwargs = mesh.uvicorn_config()
        assert set(kwargs) == {"ssl_context_factory", "http"}
        pytest.importorskip("hypercorn")
        assert mesh.hypercorn_config().ssl_enabled
    with meshlib.Mesh.from_text(STRICT) as plaintext, pytest.raises(ValueError, match="identity"):
        plaintext.uvicorn_config()


def test_mesh_wide_settings_reach_the_compiled_policies() -> None:
    from meshlib._policy.paths import PathNormalization

    with meshlib.Mesh.from_text(STRICT, path_normalization="MERGE_SLASHES") as mesh:
        assert mesh.snapshot.authorization is not None
        assert mesh.snapshot.authorization.path_normalization is PathNormalization.MERGE_SLASHES
    with meshlib.Mesh.from_text(STRICT) as mesh:
        assert mesh.snapshot.authorization is not None
        assert mesh.snapshot.authorization.path_normalization is PathNormalization.BASE


def test_explain_says_where_a_request_would_go(reviews: tuple[meshlib.Mesh, int]) -> None:
    _, port = reviews
    with meshlib.Mesh.from_text(reviews_entry(port)) as mesh:
        explained = mesh.explain("GET", "http://reviews:9080/reviews/1")
        again = mesh.explain(httpx.Request("GET", "http://reviews:9080/reviews/1"))
    assert explained == again
    text = json.dumps(explained)
    assert "reviews.default.svc.cluster.local" in text
    assert str(port) in text


@pytest.mark.extras
def test_breaker_states_and_reloads_are_scraped() -> None:
    from meshlib import _breaker

    _breaker._forget_all()
    breaker = meshlib.circuit_breaker("payments-db", fail_max=1)
    breaker.open()
    try:
        with meshlib.Mesh.from_text(STRICT) as mesh:
            mesh.configure_telemetry(metrics="prometheus")
            with mesh.serve_metrics(port=0) as server:
                text = httpx.get(server.url, timeout=5).text
    finally:
        _breaker._forget_all()
    assert 'meshlib_breaker_state{name="payments-db"} 2.0' in text  # 2 = open
    assert "meshlib_config_reloads_total" in text


@pytest.mark.extras
def test_request_metrics_count_response_bytes_on_both_sides(
    ca: LocalCA, reviews: tuple[meshlib.Mesh, int]
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server_mesh, port = reviews
    with meshlib.Mesh.from_text(
        reviews_entry(port), service_account="productpage", identity=ca
    ) as client_mesh:
        with client_mesh.http_client() as client:
            body = client.get("http://reviews:9080/").content
        with (
            client_mesh.serve_metrics(port=0) as source,
            server_mesh.serve_metrics(port=0) as destination,
        ):
            scraped = httpx.get(source.url).text + httpx.get(destination.url).text

    sums = {
        sample.labels["reporter"]: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "istio_response_bytes_sum"
    }
    assert sums == {"source": len(body), "destination": len(body)}
