"""End to end: one trace id, the request id and the deadline travel A -> B -> C unaided."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Iterator
from typing import Any

import pytest
from obs_chain import A_ROUTE_TIMEOUT, B_HOST, HEADER_GRANULARITY, PORT, Chain, chain

from meshlib.identity import LocalCA

pytest.importorskip("uvicorn")

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
REQUEST_ID = "3c1d5a4e-8f1b-4c1e-9a57-2d0f2bb0c001"

FORMATS = {
    "w3c": {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"},
    "b3": {"x-b3-traceid": TRACE_ID, "x-b3-spanid": SPAN_ID, "x-b3-sampled": "1"},
    "b3-single": {"b3": f"{TRACE_ID}-{SPAN_ID}-1"},
}


def url(kind: str) -> str:
    return f"http://{B_HOST}:{PORT}/{kind}"


def trace_id_of(headers: dict[str, str]) -> str | None:
    if "traceparent" in headers:
        return headers["traceparent"].split("-")[1]
    if "x-b3-traceid" in headers:
        return headers["x-b3-traceid"]
    if "b3" in headers:
        return headers["b3"].split("-")[0]
    return None


def check_hop(hop: dict[str, Any], fmt: str) -> None:
    headers = hop["headers"]
    assert trace_id_of(headers) == TRACE_ID
    assert headers["x-request-id"] == REQUEST_ID
    for name in FORMATS[fmt]:
        assert name in headers, f"{name} lost on the way"
    assert all(count <= 1 for count in hop["counts"].values()), hop["counts"]


@pytest.fixture(scope="module")
def services() -> Iterator[Chain]:
    with chain(LocalCA.generate("cluster.local")) as started:
        yield started


HAS_B3 = importlib.util.find_spec("opentelemetry.propagators.b3") is not None
NEEDS_B3 = pytest.mark.skipif(
    not HAS_B3, reason="B3 propagation comes with the otel extra (opentelemetry-propagator-b3)"
)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize(
    "fmt", [pytest.param(f, marks=NEEDS_B3) if f.startswith("b3") else f for f in sorted(FORMATS)]
)
def test_trace_request_id_and_deadline_cross_two_hops(services: Chain, kind: str, fmt: str) -> None:
    headers = {**FORMATS[fmt], "x-request-id": REQUEST_ID}
    with services.a.http_client() as client:
        response = client.get(url(kind), headers=headers)
    assert response.status_code == 200
    body = response.json()
    b, c = body["b"], body["c"]
    check_hop(b, fmt)
    check_hop(c, fmt)
    # A's route timeout became B's deadline; B's call to C (no route timeout of its own)
    # carried what was left of it, and C's handler sees that as its deadline.
    assert b["remaining"] is not None
    assert c["remaining"] is not None
    assert 0 < c["remaining"] <= b["remaining"] + HEADER_GRANULARITY
    assert b["remaining"] <= A_ROUTE_TIMEOUT


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_async_client_at_a_too(services: Chain, kind: str) -> None:
    headers = {**FORMATS["w3c"], "x-request-id": REQUEST_ID}
    async with services.a.async_http_client() as client:
        response = await client.get(url(kind), headers=headers)
    body = response.json()
    check_hop(body["b"], "w3c")
    check_hop(body["c"], "w3c")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_request_id_generated_at_the_first_hop_and_kept(services: Chain, kind: str) -> None:
    with services.a.http_client() as client:
        body = client.get(url(kind)).json()
    b, c = body["b"], body["c"]
    assert "x-request-id" not in b["headers"]
    # B's inbound side made one up (Istio's rule); B's outbound call carried it to C.
    assert b["request_id"]
    assert c["headers"]["x-request-id"] == b["request_id"] == c["request_id"]


def series(text: str, name: str, **labels: str) -> list[str]:
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return [
        line
        for line in text.splitlines()
        if line.startswith(name + "{") and all(item in line for item in wanted)
    ]


async def scrape(mesh: Any) -> str:
    import httpx

    transport = httpx.ASGITransport(app=mesh.metrics_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
        response = await client.get("/")
    assert response.status_code == 200
    return response.text


@pytest.mark.extras
async def test_both_reporters_label_the_edges(services: Chain) -> None:
    pytest.importorskip("prometheus_client")
    async with services.a.async_http_client() as client:
        assert (await client.get(url("async"))).status_code == 200
    # B records its server side after the response left: poll, bounded.
    found: list[str] = []
    for _ in range(100):
        text = await scrape(services.b)
        found = series(
            text,
            "istio_requests_total",
            reporter="destination",
            source_principal="spiffe://cluster.local/ns/default/sa/a",
        )
        if found:
            break
        await asyncio.sleep(0.05)
    assert found, "no destination-reporter series at B"
    (line,) = found
    for label in (
        'connection_security_policy="mutual_tls"',
        'destination_app="b"',
        'destination_version="v1"',
        'destination_workload="b-v1"',
        'destination_service="b.default.svc.cluster.local"',
        'source_workload_namespace="default"',
        'response_code="200"',
    ):
        assert label in line
    (outbound,) = series(text, "istio_requests_total", reporter="source")
    for label in (
        'destination_service="c.default.svc.cluster.local"',
        'destination_service_name="c"',
        'destination_principal="spiffe://cluster.local/ns/default/sa/c"',
        'destination_app="c"',
        'source_app="b"',
        'source_version="v1"',
        'connection_security_policy="unknown"',
    ):
        assert label in outbound
    assert series(text, "istio_request_duration_milliseconds_bucket", le="+Inf")
    assert "meshlib_config_reloads_total 1.0" in text
    (expiry,) = [
        line for line in text.splitlines() if line.startswith("meshlib_certificate_expiry_seconds ")
    ]
    assert float(expiry.split()[1]) > time.time()
