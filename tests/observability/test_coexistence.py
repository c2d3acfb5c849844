"""meshlib next to opentelemetry-instrumentation-httpx and -asgi: one trace, no header fights.

The SDK tracer provider is handed to each piece explicitly (never installed globally, so the
rest of the suite keeps the no-SDK behaviour).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from obs_chain import B_HOST, PORT, Chain, chain

from meshlib import Mesh
from meshlib.identity import LocalCA

pytest.importorskip("uvicorn")
pytest.importorskip("opentelemetry.sdk.trace")
otel_httpx = pytest.importorskip("opentelemetry.instrumentation.httpx")
otel_asgi = pytest.importorskip("opentelemetry.instrumentation.asgi")
pytestmark = pytest.mark.extras
SPAN_WAIT = 5.0


@pytest.fixture(scope="module")
def sdk() -> tuple[Any, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture(scope="module")
def services(sdk: tuple[Any, Any]) -> Iterator[Chain]:
    provider, _ = sdk

    def configure(mesh: Mesh) -> None:
        mesh.configure_telemetry(tracer_provider=provider, tracing_sampling=100.0)

    def wrap_b(app: Any) -> Any:
        return otel_asgi.OpenTelemetryMiddleware(app, tracer_provider=provider)

    instrumentor = otel_httpx.HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with chain(LocalCA.generate("cluster.local"), configure=configure, wrap_b=wrap_b) as s:
            yield s
    finally:
        instrumentor.uninstrument()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_one_trace_through_both_instrumentations(
    services: Chain, sdk: tuple[Any, Any], kind: str
) -> None:
    provider, exporter = sdk
    exporter.clear()
    tracer = provider.get_tracer("test")
    with services.a.http_client() as client:
        otel_httpx.HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
        with tracer.start_as_current_span("A handler") as root:
            response = client.get(f"http://{B_HOST}:{PORT}/{kind}")
    assert response.status_code == 200
    body = response.json()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    for hop in (body["b"], body["c"]):
        # Exactly one of each header: nobody appended a second traceparent.
        assert all(count <= 1 for count in hop["counts"].values()), hop["counts"]
        assert hop["headers"]["traceparent"].split("-")[1] == trace_id
        assert hop["headers"]["x-b3-traceid"] == trace_id
    # Server spans end after their response was sent: wait (bounded) for the tree to close.
    orphans: list[str] = ["not read yet"]
    until = time.monotonic() + SPAN_WAIT
    while orphans and time.monotonic() < until:
        time.sleep(0.05)
        spans = exporter.get_finished_spans()
        ids = {span.context.span_id for span in spans}
        # One tree: every parent is a span of this trace.
        orphans = [s.name for s in spans if s.parent is not None and s.parent.span_id not in ids]
    assert orphans == []
    assert {f"{span.context.trace_id:032x}" for span in spans} == {trace_id}
    names = [span.name for span in spans]
    assert f"{B_HOST}:{PORT}/*" in names  # meshlib's client span at A
    assert "c.default.svc.cluster.local:9080/*" in names  # meshlib's client span at B
    # What C received names the span of B's last writer: meshlib's client span.
    c_parent = int(body["c"]["headers"]["traceparent"].split("-")[2], 16)
    (c_client,) = [s for s in spans if s.context.span_id == c_parent]
    assert c_client.name == "c.default.svc.cluster.local:9080/*"
