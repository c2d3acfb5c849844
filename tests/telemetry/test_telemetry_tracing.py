"""Propagator choice, request-id sampling, and spans only with an SDK and a sampled request."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import propagate, trace

from meshlib._telemetry import tracing as tracing_module
from meshlib._telemetry.context import (
    current_inbound,
    enter_inbound,
    exit_inbound,
    outbound_headers,
)
from meshlib._telemetry.tracing import (
    DEFAULT_SAMPLING_PERCENT,
    HeaderGetter,
    Tracing,
    get_tracing,
    new_request_id,
    passthrough_fields,
    request_id_bucket,
    request_id_sampled,
    sampling_threshold,
    select_propagator,
    set_tracing,
    span_name,
    tracing_active,
)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
TRACE_ID = int("0af7651916cd43dd8448eb211c80319c", 16)


def fields_of(spec: str | None, environ: dict[str, str] | None = None) -> set[str]:
    return set(select_propagator(spec, environ=environ or {}).fields)


# --- propagators ---------------------------------------------------------------------------


def test_default_is_b3_multi_and_w3c_when_b3_is_installed() -> None:
    pytest.importorskip("opentelemetry.propagators.b3")
    assert fields_of(None) == {
        "traceparent",
        "tracestate",
        "baggage",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
    }


def test_default_is_w3c_only_without_b3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.propagators.b3", None)
    assert fields_of(None) == {"traceparent", "tracestate", "baggage"}
    with pytest.raises(ValueError, match="opentelemetry-propagator-b3"):
        select_propagator("b3multi")


def test_otel_propagators_env_means_the_global_textmap() -> None:
    chosen = select_propagator(None, environ={"OTEL_PROPAGATORS": "tracecontext"})
    assert chosen is propagate.get_global_textmap()
    assert select_propagator("global") is propagate.get_global_textmap()


def test_named_propagators() -> None:
    pytest.importorskip("opentelemetry.propagators.b3")
    assert fields_of("b3") == {"b3"}
    assert fields_of(" tracecontext , b3multi ") == {
        "traceparent",
        "tracestate",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
    }
    assert fields_of("tracecontext,none") == set()


def test_entry_point_and_unknown_propagators() -> None:
    # "jaeger" is not a built-in name here; it resolves through entry points or fails clearly.
    with pytest.raises(ValueError, match="not found"):
        select_propagator("no-such-propagator")


def test_entry_point_propagator_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator

    class Entry:
        def load(self) -> type[W3CBaggagePropagator]:
            return W3CBaggagePropagator

    def fake_entry_points(*, group: str, name: str) -> list[Entry]:
        assert group == "opentelemetry_propagator"
        return [Entry()] if name == "custom" else []

    monkeypatch.setattr("importlib.metadata.entry_points", fake_entry_points)
    assert fields_of("custom") == {"baggage"}


def test_passthrough_fields_add_the_b3_headers_istio_asks_apps_to_forward() -> None:
    pytest.importorskip("opentelemetry.propagators.b3")
    assert passthrough_fields(select_propagator("b3multi")) == (
        "b3",
        "x-b3-flags",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-spanid",
        "x-b3-traceid",
    )
    assert passthrough_fields(select_propagator("tracecontext")) == ("traceparent", "tracestate")


def test_header_getter() -> None:
    getter = HeaderGetter()
    assert getter.get({"a": "1"}, "a") == ["1"]
    assert getter.get({}, "a") is None
    assert getter.keys({"a": "1"}) == []


def test_b3_in_gives_both_formats_out_with_the_same_trace_id(sdk_spans: Any) -> None:
    pytest.importorskip("opentelemetry.propagators.b3")
    tracing = Tracing(propagator="b3multi,tracecontext,baggage")
    b3 = {"x-b3-traceid": "0af7651916cd43dd8448eb211c80319c", "x-b3-spanid": "b7ad6b7169203331"}
    token = enter_inbound(
        {**b3, "x-b3-sampled": "1"}, now=0.0, protocol="http", tracing=tracing, extract=True
    )
    try:
        out = dict(outbound_headers(0.0, None, tracing=tracing))
    finally:
        exit_inbound(token)
    assert out["traceparent"] == TRACEPARENT
    assert out["x-b3-traceid"] == b3["x-b3-traceid"]


# --- sampling ------------------------------------------------------------------------------


def test_bucket_reads_the_first_eight_hex_digits_like_envoy() -> None:
    assert request_id_bucket("00002710-0000-4000-8000-000000000000") == 0  # 10000 % 10000
    assert request_id_bucket("00000063-aaaa-4000-8000-000000000000") == 99
    assert request_id_sampled("00000063-aaaa-4000-8000-000000000000", 1.0)
    assert not request_id_sampled("00000064-aaaa-4000-8000-000000000000", 1.0)


@given(st.text(max_size=40))
def test_bucket_is_stable_and_in_range(request_id: str) -> None:
    bucket = request_id_bucket(request_id)
    assert 0 <= bucket < 10_000
    assert bucket == request_id_bucket(request_id)


@given(st.floats(min_value=0, max_value=100))
def test_zero_never_and_hundred_always(percent: float) -> None:
    rid = new_request_id()
    assert request_id_sampled(rid, 100.0)
    assert not request_id_sampled(rid, 0.0)
    assert 0 <= sampling_threshold(percent) <= 10_000


def test_uuid_ids_sample_near_the_percentage() -> None:
    ids = [f"{n * 7919 % 2**32:08x}-0000-4000-8000-000000000000" for n in range(20_000)]
    sampled = sum(request_id_sampled(rid, 10.0) for rid in ids)
    assert 1_600 < sampled < 2_400


@pytest.mark.parametrize("percent", [-0.1, 100.1, float("nan")])
def test_bad_percentages(percent: float) -> None:
    with pytest.raises(ValueError, match="sampling percent"):
        sampling_threshold(percent)


def test_decision_order() -> None:
    tracing = Tracing(sampling_percent=0.0, propagator="tracecontext")
    rid = new_request_id()
    assert not tracing.sampled(rid)
    assert tracing.sampled(rid, forced=True)
    assert tracing.sampled(rid, parent_sampled=True)
    assert not Tracing(sampling_percent=100.0).sampled(rid, parent_sampled=False)
    assert tracing.sampled_for(rid, {"x-envoy-force-trace": "true"}, None)
    parent = tracing.extract({"traceparent": UNSAMPLED_PARENT})
    assert not Tracing(sampling_percent=100.0).sampled_for(rid, {}, parent)
    assert tracing.sampled_for(rid, {}, tracing.extract({"traceparent": TRACEPARENT}))
    assert not tracing.sampled_for(rid, {}, tracing.extract({}))


def test_process_default() -> None:
    first = get_tracing()
    assert first is get_tracing()
    assert first.sampling_percent == DEFAULT_SAMPLING_PERCENT
    assert tracing_active() is (
        not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    )
    mine = Tracing(propagator="tracecontext")
    set_tracing(mine)
    assert get_tracing() is mine


# --- spans ---------------------------------------------------------------------------------


def test_no_spans_without_a_provider() -> None:
    tracing = Tracing(tracer_provider=trace.NoOpTracerProvider(), propagator="tracecontext")
    assert not tracing.active()
    assert tracing.start_client_span(fqdn="a", port=1, method="GET", url="/", cluster="c") is None
    token = enter_inbound({}, now=0.0, protocol="http", tracing=tracing, span_name=("a", 1))
    try:
        ctx = current_inbound()
        assert ctx is not None
        assert ctx.span is None
        assert ctx.passthrough
    finally:
        exit_inbound(token)


def test_active_is_cached_per_provider(sdk_spans: Any) -> None:
    provider, _ = sdk_spans
    tracing = Tracing(tracer_provider=provider, propagator="tracecontext")
    assert tracing.active()
    assert tracing.active()


def test_client_span_named_like_istio_with_events(sdk_spans: Any) -> None:
    provider, exporter = sdk_spans
    tracing = Tracing(tracer_provider=provider, propagator="tracecontext")
    span = tracing.start_client_span(
        fqdn="reviews.default.svc.cluster.local",
        port=9080,
        method="GET",
        url="http://reviews:9080/reviews/1",
        cluster="outbound|9080|v1|reviews.default.svc.cluster.local",
        request_id="rid",
        peer_address="10.0.0.7:9080",
        extra=[("istio.namespace", "default")],
    )
    assert span is not None
    span.retry(2, "5xx")
    span.ejection("10.0.0.7:9080", "outbound|9080|v1|reviews.default.svc.cluster.local")
    span.event("custom", {"k": "v"})
    injected = dict(tracing.inject(span.context))
    span.finish(
        status_code=503,
        response_flags="UF,URX",
        upstream_host="10.0.0.7:9080",
        request_size=10,
        response_size=20,
    )
    span.finish(status_code=200)  # a second finish does nothing
    span.end()
    (recorded,) = exporter.get_finished_spans()
    assert recorded.name == "reviews.default.svc.cluster.local:9080/*"
    assert recorded.kind is trace.SpanKind.CLIENT
    attrs = dict(recorded.attributes)
    assert attrs["http.method"] == "GET"
    assert attrs["http.status_code"] == 503
    assert attrs["response_flags"] == "UF,URX"
    assert attrs["upstream_cluster"] == "outbound|9080|v1|reviews.default.svc.cluster.local"
    assert attrs["peer.address"] == "10.0.0.7:9080"
    assert attrs["guid:x-request-id"] == "rid"
    assert attrs["istio.namespace"] == "default"
    assert attrs["request_size"] == 10
    assert attrs["response_size"] == 20
    assert attrs["upstream_address"] == "10.0.0.7:9080"
    assert [e.name for e in recorded.events] == ["retry", "outlier_ejection", "custom"]
    assert recorded.status.status_code is trace.StatusCode.ERROR
    span_id = format(recorded.context.span_id, "016x")
    assert injected["traceparent"].split("-")[2] == span_id


def test_grpc_error_and_plain_end(sdk_spans: Any) -> None:
    provider, exporter = sdk_spans
    tracing = Tracing(tracer_provider=provider, propagator="tracecontext")
    ok = tracing.start_client_span(fqdn="r", port=1, method="POST", url="/", cluster="c")
    failed = tracing.start_client_span(fqdn="r", port=1, method="POST", url="/", cluster="c")
    abandoned = tracing.start_client_span(fqdn="r", port=1, method="POST", url="/", cluster="c")
    assert ok is not None
    assert failed is not None
    assert abandoned is not None
    ok.finish(status_code=200, grpc_status=0)
    failed.finish(status_code=200, grpc_status=14)
    abandoned.end()
    abandoned.end()
    statuses = [s.status.status_code for s in exporter.get_finished_spans()]
    assert statuses == [trace.StatusCode.UNSET, trace.StatusCode.ERROR, trace.StatusCode.UNSET]
    assert dict(exporter.get_finished_spans()[1].attributes)["grpc.status_code"] == 14


def test_sampled_inbound_request_gets_a_server_span_and_children(sdk_spans: Any) -> None:
    provider, exporter = sdk_spans
    tracing = Tracing(tracer_provider=provider, propagator="tracecontext")
    from meshlib._model import Peer

    peer = Peer(spiffe_id="spiffe://cluster.local/ns/default/sa/sleep", address="10.0.0.9")
    token = enter_inbound(
        {"traceparent": TRACEPARENT},
        now=0.0,
        protocol="http",
        peer=peer,
        tracing=tracing,
        span_name=("productpage.default.svc.cluster.local", 9080),
        method="GET",
        url="/productpage",
    )
    try:
        ctx = current_inbound()
        assert ctx is not None
        assert ctx.sampled
        assert ctx.span is not None
        client = tracing.start_client_span(
            fqdn="reviews.default.svc.cluster.local", port=9080, method="GET", url="/", cluster="c"
        )
        assert client is not None
        out = dict(outbound_headers(0.0, 1.0, span=client, tracing=tracing))
        client.finish(status_code=200)
        ctx.span.finish(status_code=200)
    finally:
        exit_inbound(token)
    client_span, server_span = exporter.get_finished_spans()
    assert server_span.kind is trace.SpanKind.SERVER
    assert server_span.name == "productpage.default.svc.cluster.local:9080/*"
    assert server_span.context.trace_id == TRACE_ID
    assert server_span.parent is not None
    assert server_span.parent.span_id == int("b7ad6b7169203331", 16)
    assert dict(server_span.attributes)["upstream_cluster"] == "inbound|9080||"
    assert dict(server_span.attributes)["peer.principal"] == "cluster.local/ns/default/sa/sleep"
    assert client_span.parent is not None
    assert client_span.parent.span_id == server_span.context.span_id
    assert out["traceparent"].split("-")[2] == format(client_span.context.span_id, "016x")
    assert out["x-envoy-expected-rq-timeout-ms"] == "1000"


def test_exit_ends_an_unfinished_server_span(sdk_spans: Any) -> None:
    provider, exporter = sdk_spans
    tracing = Tracing(tracer_provider=provider, propagator="tracecontext")
    token = enter_inbound(
        {"traceparent": TRACEPARENT}, now=0.0, protocol="http", tracing=tracing, span_name=("p", 1)
    )
    exit_inbound(token)
    (server,) = exporter.get_finished_spans()
    assert server.name == "p:1/*"


def test_unsampled_inbound_request_builds_no_span(sdk_spans: Any) -> None:
    provider, exporter = sdk_spans
    tracing = Tracing(tracer_provider=provider, propagator="tracecontext", sampling_percent=0.0)
    token = enter_inbound({}, now=0.0, protocol="http", tracing=tracing, span_name=("p", 1))
    try:
        ctx = current_inbound()
        assert ctx is not None
        assert not ctx.sampled
        assert ctx.span is None
    finally:
        exit_inbound(token)
    assert exporter.get_finished_spans() == ()


def test_span_name() -> None:
    assert span_name("a.b.svc.cluster.local", 80) == "a.b.svc.cluster.local:80/*"
    assert span_name("a", 80, "/api") == "a:80/api"


def test_module_keeps_no_global_state_beyond_the_default() -> None:
    assert tracing_module._DEFAULT[0] is None


def test_propagator_object_and_bare_server_span(sdk_spans: Any) -> None:
    provider, exporter = sdk_spans
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    w3c = TraceContextTextMapPropagator()
    tracing = Tracing(tracer_provider=provider, propagator=w3c)
    assert tracing.propagator is w3c
    span = tracing.start_server_span(fqdn="p", port=1, method="GET", url="/")
    assert span is not None
    span.finish(status_code=200)
    (recorded,) = exporter.get_finished_spans()
    assert "guid:x-request-id" not in dict(recorded.attributes)
    assert "peer.address" not in dict(recorded.attributes)


def test_global_provider_is_noticed_when_installed_later(
    sdk_spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, _ = sdk_spans
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    tracing = Tracing(propagator="tracecontext")
    assert not tracing.active()
    assert not tracing.active()  # remembered: no environment lookup this time
    assert tracing.start_server_span(fqdn="p", port=1, method="GET", url="/") is None
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    assert tracing.active()


def test_provider_from_the_public_getter_when_the_global_is_not_exposed(
    sdk_spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, _ = sdk_spans
    monkeypatch.delattr(trace, "_TRACER_PROVIDER")
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    assert Tracing(propagator="tracecontext").active()
