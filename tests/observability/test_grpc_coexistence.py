"""meshlib's gRPC channels and server interceptor next to opentelemetry-instrumentation-grpc:
one trace, and each trace header at most once per hop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from obs_chain import NAMESPACE, PORT
from test_grpc_chain import B_HOST, C_HOST, METHOD, WAIT, grpc_entry, seen, serve

from meshlib import Mesh
from meshlib.identity import LocalCA

pytest.importorskip("grpc")
pytest.importorskip("opentelemetry.sdk.trace")
otel_grpc = pytest.importorskip("opentelemetry.instrumentation.grpc")
pytestmark = pytest.mark.extras


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[dict[str, Mesh], Any, Any]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = otel_grpc.GrpcInstrumentorClient()
    server = otel_grpc.GrpcInstrumentorServer()
    client.instrument(tracer_provider=provider)
    server.instrument(tracer_provider=provider)
    ca = LocalCA.generate("cluster.local")

    def make(name: str, config: str, stack: ExitStack) -> Mesh:
        mesh = Mesh.from_text(
            config or "# empty\n",
            namespace=NAMESPACE,
            service_account=name,
            labels={"app": name, "version": "v1"},
            identity=ca,
        )
        stack.callback(mesh.close)
        mesh.configure_telemetry(tracer_provider=provider, tracing_sampling=100.0)
        return mesh

    try:
        with ExitStack() as stack:
            c = make("c", "", stack)
            c_port = serve(c, lambda request, context: json.dumps(seen(context)).encode(), stack)
            b = make("b", grpc_entry(C_HOST, c_port, "c"), stack)
            channel = b.grpc_channel(f"{C_HOST}:{PORT}")
            stack.callback(channel.close)

            def b_handler(request: bytes, context: Any) -> bytes:
                downstream = channel.unary_unary(METHOD)(b"")
                return json.dumps({"b": seen(context), "c": json.loads(downstream)}).encode()

            b_port = serve(b, b_handler, stack)
            yield {"a": make("a", grpc_entry(B_HOST, b_port, "b"), stack)}, provider, exporter
    finally:
        client.uninstrument()
        server.uninstrument()


def test_one_trace_and_no_duplicate_headers(
    traced: tuple[dict[str, Mesh], Any, Any],
) -> None:
    meshes, provider, exporter = traced
    exporter.clear()
    tracer = provider.get_tracer("test")
    with meshes["a"].grpc_channel(f"{B_HOST}:{PORT}") as channel:
        with tracer.start_as_current_span("A handler") as root:
            answer = channel.unary_unary(METHOD)(b"sync", timeout=WAIT)
    body = json.loads(answer)
    trace_id = f"{root.get_span_context().trace_id:032x}"
    for hop in (body["b"], body["c"]):
        assert all(count <= 1 for count in hop["counts"].values()), hop["counts"]
        assert hop["headers"]["traceparent"].split("-")[1] == trace_id
    names = [span.name for span in exporter.get_finished_spans()]
    # The instrumentation's own server spans exist (it really ran) next to meshlib's client spans.
    assert names.count(METHOD.lstrip("/")) + names.count(METHOD) >= 1, names
    assert {f"{span.context.trace_id:032x}" for span in exporter.get_finished_spans()} == {trace_id}
