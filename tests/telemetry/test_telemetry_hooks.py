"""The engine hooks built on the primitives: labels, counters, spans and access log lines."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._engine.inbound import InboundRecord
from meshlib._engine.runtime import PASSTHROUGH_CLUSTER, RequestRecord
from meshlib._model.call import Call, Peer
from meshlib._model.commands import Attempt
from meshlib._model.endpoint import Endpoint
from meshlib._model.outcome import Classification, FailureKind, Outcome
from meshlib._policy.authz import Decision
from meshlib._telemetry.accesslog import AccessLog
from meshlib._telemetry.context import current_inbound, enter_inbound, exit_inbound
from meshlib._telemetry.hooks import (
    CounterSync,
    InboundTelemetry,
    MeshTelemetry,
    OutboundTelemetry,
    inbound_hooks,
    make_sink,
    outbound_hooks,
    prometheus_installed,
    service_parts,
)
from meshlib._telemetry.metrics import (
    NOOP_SINK,
    UNKNOWN,
    RequestLabels,
    WorkloadLabels,
)
from meshlib._telemetry.tracing import Tracing

CLUSTER = "outbound|9080|v2|reviews.default.svc.cluster.local"
SERVICE = "reviews.default.svc.cluster.local"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
RID = "f47ac10b-58cc-4372-a567-0e02b2c3d479"


class RecordingSink:
    """A MetricsSink that remembers every call."""

    def __init__(self) -> None:
        self.requests: list[tuple[RequestLabels, float, int, int]] = []
        self.events: list[tuple[str, object]] = []

    def request(self, labels: RequestLabels, duration_ms: float, req: int, resp: int) -> None:
        self.requests.append((labels, duration_ms, req, resp))

    def messages(self, labels: RequestLabels, req: int, resp: int) -> None:
        self.events.append(("messages", (req, resp)))

    def retry(self, cluster: str) -> None:
        self.events.append(("retry", cluster))

    def overflow(self, cluster: str) -> None:
        self.events.append(("overflow", cluster))

    def ejection(self, cluster: str) -> None:
        self.events.append(("ejection", cluster))

    def ejected_hosts(self, cluster: str, count: int) -> None:
        self.events.append(("ejected_hosts", (cluster, count)))

    def config_reload(self) -> None:
        self.events.append(("reload", None))

    def config_error(self) -> None:
        self.events.append(("config_error", None))

    def certificate_expiry(self, not_after: float) -> None:
        self.events.append(("expiry", not_after))

    def breaker_state(self, name: str, state: str) -> None:
        self.events.append(("breaker", (name, state)))

    def authz_decision(self, decision: str, policy: str = "") -> None:
        self.events.append(("authz", (decision, policy)))

    def labels(self, index: int = -1) -> dict[str, str]:
        return self.requests[index][0].as_dict()


class FakeState:
    def __init__(self) -> None:
        self.ejected_now: list[tuple[Endpoint, float]] = []

    def ejected(self) -> list[tuple[Endpoint, float]]:
        return list(self.ejected_now)


class FakeRegistry:
    def __init__(self) -> None:
        self.states: dict[object, FakeState] = {}

    def get(self, key: object) -> FakeState | None:
        return self.states.get(key)


def call(
    headers: dict[str, str] | None = None,
    *,
    protocol: str = "http",
    peer: Peer | None = None,
    port: int = 9080,
) -> Call:
    return Call(
        protocol=protocol,
        method="GET",
        scheme="http",
        authority=f"reviews:{port}",
        host="reviews",
        port=port,
        path="/reviews/1?x=1",
        headers=headers or {},
        peer=peer,
    )


V2 = Endpoint(
    "10.0.0.2",
    9080,
    labels={"app": "reviews", "version": "v2"},
    service_account="spiffe://cluster.local/ns/default/sa/reviews",
)


def record(
    *,
    endpoint: Endpoint | None = V2,
    status: int = 200,
    flags: tuple[str, ...] = (),
    attempts: int = 1,
    cluster: str = CLUSTER,
    service: str = SERVICE,
    the_call: Call | None = None,
    start: float = 10.0,
) -> RequestRecord:
    return RequestRecord(
        call=the_call or call({"content-length": "12"}),
        service=service,
        cluster=cluster,
        status=status,
        flags=flags,
        attempts=attempts,
        endpoint=endpoint,
        start=start,
        end=start + 0.025,
    )


def attempt(number: int = 1, *, endpoint: Endpoint = V2, tls: bool = True, **kw: Any) -> Attempt:
    return Attempt(endpoint=endpoint, number=number, timeout=None, cluster=CLUSTER, tls=tls, **kw)


SOURCE = WorkloadLabels.from_workload(
    workload="productpage-v1",
    namespace="default",
    principal="spiffe://cluster.local/ns/default/sa/productpage",
    labels={"app": "productpage", "version": "v1"},
)


def outbound(
    sink: RecordingSink, *, tracing: Tracing | None = None, **kw: Any
) -> OutboundTelemetry:
    return OutboundTelemetry(
        sink, tracing or Tracing(propagator="tracecontext"), source=SOURCE, **kw
    )


# --- labels ---------------------------------------------------------------------------------


def test_service_parts() -> None:
    assert service_parts(SERVICE) == ("reviews", "default")
    assert service_parts("reviews.default.svc.mesh.example") == ("reviews", "default")
    assert service_parts("api.example.com") == ("api.example.com", UNKNOWN)
    assert service_parts("svc.cluster.local") == ("svc.cluster.local", UNKNOWN)
    assert service_parts("a.b.c.svc.cluster.local") == ("a.b.c.svc.cluster.local", UNKNOWN)
    assert service_parts(PASSTHROUGH_CLUSTER) == (PASSTHROUGH_CLUSTER, UNKNOWN)


@given(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    st.from_regex(r"[a-z]{1,8}", fullmatch=True),
)
def test_service_parts_reads_any_kubernetes_name(name: str, namespace: str) -> None:
    assert service_parts(f"{name}.{namespace}.svc.cluster.local") == (name, namespace)


def test_source_request_labels_from_the_endpoint_and_its_identity() -> None:
    sink = RecordingSink()
    telemetry = outbound(sink)
    telemetry.on_attempt(call(), attempt(), Outcome(200), Classification.SUCCESS)
    telemetry.on_request(record())
    labels = sink.labels()
    assert labels["reporter"] == "source"
    assert labels["source_workload"] == "productpage-v1"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/default/sa/productpage"
    assert labels["destination_service"] == SERVICE
    assert labels["destination_service_name"] == "reviews"
    assert labels["destination_service_namespace"] == "default"
    assert labels["destination_app"] == "reviews"
    assert labels["destination_version"] == "v2"
    assert labels["destination_workload"] == "reviews-v2"
    assert labels["destination_workload_namespace"] == "default"
    assert labels["destination_principal"] == "spiffe://cluster.local/ns/default/sa/reviews"
    assert labels["connection_security_policy"] == UNKNOWN
    assert labels["response_code"] == "200"
    assert labels["response_flags"] == "-"
    _, duration, request_bytes, _ = sink.requests[-1]
    assert duration == pytest.approx(25.0)
    assert request_bytes == 12


@pytest.mark.parametrize(
    ("endpoint", "peers", "tls", "principal"),
    [
        (Endpoint("a", 1, service_account="cluster.local/ns/x/sa/y"), (), True,
         "spiffe://cluster.local/ns/x/sa/y"),
        (Endpoint("a", 1), ("spiffe://cluster.local/ns/x/sa/z",), True,
         "spiffe://cluster.local/ns/x/sa/z"),
        (Endpoint("a", 1), ("spiffe://td/ns/x/sa/a", "spiffe://td/ns/x/sa/b"), True, UNKNOWN),
        (Endpoint("a", 1, service_account="cluster.local/ns/x/sa/y"), (), False, UNKNOWN),
    ],
)  # fmt: skip
def test_destination_principal(
    endpoint: Endpoint, peers: tuple[str, ...], tls: bool, principal: str
) -> None:
    sink = RecordingSink()
    telemetry = outbound(sink)
    shot = attempt(endpoint=endpoint, tls=tls, expected_peers=frozenset(peers))
    telemetry.on_attempt(call(), shot, Outcome(200), Classification.SUCCESS)
    telemetry.on_request(record(endpoint=endpoint))
    labels = sink.labels()
    assert labels["destination_principal"] == principal
    if principal != UNKNOWN:
        assert labels["destination_workload_namespace"] == "x"


@pytest.mark.parametrize(
    ("labels", "workload"),
    [
        ({"service.istio.io/workload-name": "ratings-prod", "app": "ratings"}, "ratings-prod"),
        ({"app": "ratings", "version": "v1"}, "ratings-v1"),
        ({"app": "ratings"}, "ratings"),
        ({}, UNKNOWN),
    ],
)
def test_destination_workload_from_endpoint_labels(labels: dict[str, str], workload: str) -> None:
    sink = RecordingSink()
    telemetry = outbound(sink)
    telemetry.on_request(record(endpoint=Endpoint("10.0.0.9", 80, labels=labels)))
    assert sink.labels()["destination_workload"] == workload


def test_local_replies_passthrough_and_interning() -> None:
    sink = RecordingSink()
    telemetry = outbound(sink)
    telemetry.on_request(record(endpoint=None, status=503, flags=("UO",)))
    assert sink.labels()["response_flags"] == "UO"
    assert ("overflow", CLUSTER) in sink.events
    telemetry.on_request(record(endpoint=None, status=503, flags=("UO",)))
    assert sink.requests[0][0] is sink.requests[1][0]  # the same interned label set
    passthrough = call()
    passthrough.host = "example.org"
    telemetry.on_request(
        record(cluster=PASSTHROUGH_CLUSTER, service="example.org", the_call=passthrough)
    )
    labels = sink.labels()
    assert labels["destination_service"] == "example.org"
    assert labels["destination_service_name"] == PASSTHROUGH_CLUSTER
    assert labels["destination_service_namespace"] == UNKNOWN


def test_edge_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshlib._telemetry import hooks

    monkeypatch.setattr(hooks, "MAX_EDGES", 2)
    sink = RecordingSink()
    telemetry = outbound(sink)
    for port in range(5):
        telemetry.on_request(record(endpoint=Endpoint("10.0.0.1", port)))
    assert len(sink.requests) == 5
    assert len(telemetry._edges) <= 2


# --- retries and ejections ------------------------------------------------------------------


def test_retries_are_counted_per_attempt_after_the_first() -> None:
    sink = RecordingSink()
    telemetry = outbound(sink)
    failed = Outcome(503)
    telemetry.on_attempt(call(), attempt(1), failed, Classification.GATEWAY_ERROR)
    telemetry.on_attempt(call(), attempt(2), failed, Classification.GATEWAY_ERROR)
    telemetry.on_attempt(call(), attempt(3), Outcome(200), Classification.SUCCESS)
    assert sink.events.count(("retry", CLUSTER)) == 2


def test_ejections_counted_once_and_the_gauge_follows() -> None:
    sink = RecordingSink()
    registry = FakeRegistry()
    state = FakeState()
    registry.states[("reviews.default.svc.cluster.local", "v2", 9080)] = state
    telemetry = outbound(sink, clusters=lambda: registry)
    failed = Outcome(0, failure=FailureKind.CONNECT_FAILURE)
    telemetry.on_attempt(call(), attempt(), failed, Classification.LOCAL_ORIGIN_FAILURE)
    assert sink.events == []  # nothing ejected yet
    state.ejected_now = [(V2, 5.0)]
    telemetry.on_attempt(call(), attempt(), failed, Classification.LOCAL_ORIGIN_FAILURE)
    telemetry.on_attempt(call(), attempt(), failed, Classification.LOCAL_ORIGIN_FAILURE)
    assert sink.events == [("ejection", CLUSTER), ("ejected_hosts", (CLUSTER, 1))]
    state.ejected_now = []
    telemetry.on_attempt(call(), attempt(), failed, Classification.LOCAL_ORIGIN_FAILURE)
    assert sink.events[-1] == ("ejected_hosts", (CLUSTER, 0))


def test_ejection_check_tolerates_unknown_clusters() -> None:
    sink = RecordingSink()
    registry = FakeRegistry()
    telemetry = outbound(sink, clusters=lambda: registry)
    failed = Outcome(503)
    telemetry.on_attempt(call(), attempt(), failed, Classification.GATEWAY_ERROR)
    odd = Attempt(endpoint=V2, number=1, timeout=None, cluster=PASSTHROUGH_CLUSTER)
    telemetry.on_attempt(call(), odd, failed, Classification.GATEWAY_ERROR)
    no_registry = outbound(sink, clusters=lambda: None)
    no_registry.on_attempt(call(), attempt(), failed, Classification.GATEWAY_ERROR)
    assert sink.events == []


# --- propagation and spans ------------------------------------------------------------------


def test_outbound_headers_without_sdk_pass_the_inbound_context_through() -> None:
    telemetry = outbound(RecordingSink())
    own = telemetry.outbound_headers(1.0, 5.0)
    # No inbound request: only our peer metadata (no deadline here).
    assert [name for name, _ in own] == ["x-meshlib-peer-metadata"]
    token = enter_inbound(
        {"traceparent": TRACEPARENT, "x-request-id": RID},
        now=0.0,
        protocol="http",
        tracing=telemetry.tracing,
    )
    try:
        headers = dict(telemetry.outbound_headers(1.0, 5.0))
    finally:
        exit_inbound(token)
    assert headers == {"traceparent": TRACEPARENT, "x-request-id": RID, **dict(own)}


def sdk_tracing(sdk_spans: tuple[Any, Any], percent: float = 100.0) -> Tracing:
    provider, _ = sdk_spans
    return Tracing(propagator="tracecontext", tracer_provider=provider, sampling_percent=percent)


def test_client_span_for_a_sampled_request(sdk_spans: tuple[Any, Any]) -> None:
    _, exporter = sdk_spans
    sink = RecordingSink()
    registry = FakeRegistry()
    state = FakeState()
    registry.states[("reviews.default.svc.cluster.local", "v2", 9080)] = state
    telemetry = outbound(sink, tracing=sdk_tracing(sdk_spans), clusters=lambda: registry)
    token = enter_inbound(
        {"traceparent": TRACEPARENT, "x-request-id": RID},
        now=0.0,
        protocol="http",
        tracing=telemetry.tracing,
    )
    try:
        headers = dict(telemetry.outbound_headers(10.0, None))
        assert headers["traceparent"].split("-")[1] == TRACE_ID
        assert headers["traceparent"] != TRACEPARENT  # the client span is the new parent
        assert headers["x-request-id"] == RID
        failed = Outcome(503)
        telemetry.on_attempt(call(), attempt(1), failed, Classification.GATEWAY_ERROR)
        state.ejected_now = [(V2, 1.0)]
        telemetry.on_attempt(call(), attempt(2), failed, Classification.GATEWAY_ERROR)
        telemetry.on_attempt(call(), attempt(3), Outcome(200), Classification.SUCCESS)
        telemetry.on_request(record(attempts=3))
    finally:
        exit_inbound(token)
    (span,) = exporter.get_finished_spans()
    assert span.name == f"{SERVICE}:9080/*"
    assert span.context.trace_id == int(TRACE_ID, 16)
    assert span.attributes["upstream_cluster"] == CLUSTER
    assert span.attributes["http.url"] == "http://reviews:9080/reviews/1?x=1"
    assert span.attributes["http.status_code"] == 200
    assert span.attributes["upstream_address"] == "10.0.0.2:9080"
    assert span.attributes["retry.attempts"] == 3
    assert span.attributes["guid:x-request-id"] == RID
    assert [event.name for event in span.events] == ["retry", "outlier_ejection", "retry"]


def test_unsampled_requests_get_no_span(sdk_spans: tuple[Any, Any]) -> None:
    _, exporter = sdk_spans
    telemetry = outbound(RecordingSink(), tracing=sdk_tracing(sdk_spans, percent=0.0))
    token = enter_inbound(
        {"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-00", "x-request-id": RID},
        now=0.0,
        protocol="http",
        tracing=telemetry.tracing,
    )
    try:
        headers = dict(telemetry.outbound_headers(10.0, None))
        telemetry.on_request(record())
    finally:
        exit_inbound(token)
    assert headers["traceparent"] == f"00-{TRACE_ID}-b7ad6b7169203331-00"
    assert exporter.get_finished_spans() == ()


def test_root_requests_sample_by_percentage(sdk_spans: tuple[Any, Any]) -> None:
    _, exporter = sdk_spans
    sink = RecordingSink()
    draws = iter([0.5, 0.001])
    telemetry = OutboundTelemetry(
        sink,
        sdk_tracing(sdk_spans, percent=1.0),
        source=SOURCE,
        random_source=lambda: next(draws),
    )
    # 50 % > 1 %: not sampled, only our peer metadata
    assert [name for name, _ in telemetry.outbound_headers(1.0, None)] == [
        "x-meshlib-peer-metadata"
    ]
    headers = dict(telemetry.outbound_headers(2.0, None))  # 0.1 % < 1 %: sampled
    assert "traceparent" in headers
    telemetry.on_request(record(endpoint=None, status=503, flags=("UH",), start=2.0))
    (span,) = exporter.get_finished_spans()
    assert span.attributes["response_flags"] == "UH"
    assert "upstream_address" not in span.attributes


def test_a_current_span_decides_and_parents(sdk_spans: tuple[Any, Any]) -> None:
    provider, exporter = sdk_spans
    telemetry = outbound(RecordingSink(), tracing=sdk_tracing(sdk_spans, percent=0.0))
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("handler") as parent:
        headers = dict(telemetry.outbound_headers(3.0, None))
        telemetry.on_request(record(start=3.0))
    client, _ = exporter.get_finished_spans()
    assert client.parent.span_id == parent.get_span_context().span_id
    assert headers["traceparent"].split("-")[2] == f"{client.context.span_id:016x}"


def test_request_id_sampling_without_an_otel_parent(sdk_spans: tuple[Any, Any]) -> None:
    _, exporter = sdk_spans
    telemetry = outbound(RecordingSink(), tracing=sdk_tracing(sdk_spans, percent=100.0))
    token = enter_inbound({"x-request-id": RID}, now=0.0, protocol="http", extract=False)
    try:
        assert current_inbound() is not None
        telemetry.outbound_headers(4.0, None)
        telemetry.outbound_headers(4.0, None)  # same start: never two open spans for one key
        telemetry.on_request(record(start=4.0))
        telemetry.on_request(record(start=4.0))
    finally:
        exit_inbound(token)
    assert len(exporter.get_finished_spans()) == 1


def test_open_spans_are_bounded(
    sdk_spans: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshlib._telemetry import hooks

    monkeypatch.setattr(hooks, "MAX_OPEN_SPANS", 3)
    telemetry = outbound(RecordingSink(), tracing=sdk_tracing(sdk_spans))
    for start in range(10):
        telemetry.outbound_headers(float(start), None)
    assert len(telemetry._open) <= 3


# --- access log -----------------------------------------------------------------------------


def test_outbound_access_log(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = outbound(RecordingSink(), access_log=AccessLog("text"))
    caplog.set_level(logging.INFO, logger="meshlib.access")
    with_id = call({"x-request-id": RID, "user-agent": "ua/1"})
    telemetry.on_request(record(the_call=with_id, flags=("URX",)))
    token = enter_inbound({"x-request-id": "inbound-id"}, now=0.0, protocol="http")
    try:
        telemetry.on_request(record(endpoint=None, status=503, cluster=""))
    finally:
        exit_inbound(token)
    first, second = (r.getMessage() for r in caplog.records)
    assert '"GET /reviews/1?x=1 HTTP/1.1" 200 URX' in first
    assert f'"{RID}"' in first
    assert '"ua/1"' in first
    assert '"10.0.0.2:9080"' in first
    assert CLUSTER in first
    assert '"inbound-id"' in second
    assert " 503 - " in second


# --- inbound --------------------------------------------------------------------------------


DESTINATION = WorkloadLabels.from_workload(
    workload="reviews-v2",
    namespace="default",
    principal="spiffe://cluster.local/ns/default/sa/reviews",
    labels={"app": "reviews", "version": "v2"},
)
CALLER = Peer(
    spiffe_id="spiffe://cluster.local/ns/shop/sa/productpage",
    address="10.0.0.7",
    port=40000,
    mtls=True,
)


def inbound_record(
    the_call: Call, status: int = 200, decision: Decision | None = None
) -> InboundRecord:
    return InboundRecord(
        call=the_call,
        status=status,
        flags=(),
        start=1.0,
        end=1.004,
        peer=the_call.peer,
        decision=decision,
    )


def test_destination_labels_from_the_peer() -> None:
    sink = RecordingSink()
    telemetry = InboundTelemetry(
        sink, Tracing(propagator="tracecontext"), destination=DESTINATION, service=SERVICE
    )
    the_call = call({"content-length": "3"}, peer=CALLER)
    token = telemetry.extract(the_call, 0.0)
    telemetry.detach(token)
    telemetry.on_request(inbound_record(the_call))
    labels = sink.labels()
    assert labels["reporter"] == "destination"
    assert labels["source_principal"] == CALLER.spiffe_id
    assert labels["source_workload_namespace"] == "shop"
    assert labels["source_workload"] == UNKNOWN
    assert labels["destination_version"] == "v2"
    assert labels["destination_service_name"] == "reviews"
    assert labels["connection_security_policy"] == "mutual_tls"
    plain = call(peer=Peer(address="10.0.0.8"), protocol="grpc")
    telemetry.on_request(inbound_record(plain, decision=Decision(False, policy="default/deny")))
    labels = sink.labels()
    assert labels["connection_security_policy"] == "none"
    assert labels["source_principal"] == UNKNOWN
    assert labels["request_protocol"] == "grpc"
    assert ("authz", ("deny", "default/deny")) in sink.events
    telemetry.on_request(inbound_record(call()))
    assert sink.labels()["source_workload_namespace"] == UNKNOWN


def test_inbound_edges_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshlib._telemetry import hooks

    monkeypatch.setattr(hooks, "MAX_EDGES", 2)
    sink = RecordingSink()
    telemetry = InboundTelemetry(
        sink, Tracing(propagator="tracecontext"), destination=DESTINATION, service=SERVICE
    )
    for index in range(5):
        peer = Peer(spiffe_id=f"spiffe://td/ns/n/sa/{index}", mtls=True)
        telemetry.on_request(inbound_record(call(peer=peer)))
    assert len(telemetry._edges) <= 2


def test_server_span_finished_with_the_status(sdk_spans: tuple[Any, Any]) -> None:
    _, exporter = sdk_spans
    telemetry = InboundTelemetry(
        RecordingSink(), sdk_tracing(sdk_spans), destination=DESTINATION, service=SERVICE
    )
    the_call = call({"traceparent": TRACEPARENT, "x-request-id": RID}, peer=CALLER)
    token = telemetry.extract(the_call, 0.0)
    assert current_inbound() is not None
    telemetry.detach(token)
    assert current_inbound() is None
    telemetry.on_request(inbound_record(the_call, status=503))
    (span,) = exporter.get_finished_spans()
    assert span.name == f"{SERVICE}:9080/*"
    assert span.attributes["http.status_code"] == 503
    assert span.attributes["peer.principal"] == "cluster.local/ns/shop/sa/productpage"
    assert span.context.trace_id == int(TRACE_ID, 16)


def test_inbound_access_log(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = InboundTelemetry(
        RecordingSink(),
        Tracing(propagator="tracecontext"),
        destination=DESTINATION,
        service=SERVICE,
        access_log=AccessLog("json"),
    )
    caplog.set_level(logging.INFO, logger="meshlib.access")
    telemetry.on_request(inbound_record(call({"x-request-id": RID}, peer=CALLER)))
    telemetry.on_request(inbound_record(call(peer=Peer(address="10.0.0.9"))))
    telemetry.on_request(inbound_record(call()))
    generated = call()
    telemetry.detach(telemetry.extract(generated, 0.0))
    telemetry.on_request(inbound_record(generated))
    import json

    first, second, third, fourth = (json.loads(r.getMessage()) for r in caplog.records)
    assert third["request_id"] is None  # recorded outside any inbound context
    assert len(fourth["request_id"]) == 36  # the UUID the inbound side made up
    assert first["request_id"] == RID
    assert first["upstream_cluster"] == "inbound|9080||"
    assert first["downstream_remote_address"] == "10.0.0.7:40000"
    assert second["downstream_remote_address"] == "10.0.0.9"
    assert third["downstream_remote_address"] is None


# --- assembly -------------------------------------------------------------------------------


def test_hook_factories() -> None:
    sink = RecordingSink()
    tracing = Tracing(propagator="tracecontext")
    out = outbound_hooks(sink, tracing, workload="w", namespace="n", principal="td/ns/n/sa/w")
    assert out.on_request is not None
    assert out.on_attempt is not None
    assert out.outbound_headers is not None
    out.on_request(record(endpoint=None))
    assert sink.labels()["source_principal"] == "spiffe://td/ns/n/sa/w"
    inb = inbound_hooks(sink, tracing, service=SERVICE, workload="w", principal=None)
    assert inb.on_request is not None
    inb.on_request(inbound_record(call()))
    assert sink.labels()["destination_principal"] == UNKNOWN


def test_make_sink_choices() -> None:
    assert make_sink(None) is NOOP_SINK
    with pytest.raises(ValueError, match="metrics must be"):
        make_sink("statsd")
    otel = make_sink("otel")
    assert type(otel).__name__ == "OtelMetricsSink"
    default = make_sink("default")
    if prometheus_installed():
        assert type(default).__name__ == "PrometheusSink"
        assert type(make_sink("prometheus")).__name__ == "PrometheusSink"
    else:  # pragma: no cover - core-only run
        assert default is NOOP_SINK


def test_counter_sync_adds_only_the_difference() -> None:
    steps: list[int] = []
    sync = CounterSync(lambda: steps.append(1))
    sync.update(2)
    sync.update(2)
    sync.update(5)
    assert len(steps) == 5


def test_mesh_telemetry_shares_one_sink() -> None:
    sink = RecordingSink()
    telemetry = MeshTelemetry(
        sink=sink,
        tracing=Tracing(propagator="tracecontext"),
        access_log=None,
        workload="reviews-v2",
        namespace="default",
        principal="spiffe://cluster.local/ns/default/sa/reviews",
        labels={"app": "reviews", "version": "v2"},
        service=SERVICE,
    )
    assert telemetry.outbound_hooks.on_request is not None
    assert telemetry.inbound_hooks.on_request is not None
    telemetry.outbound_hooks.on_request(record(endpoint=None))
    telemetry.inbound_hooks.on_request(inbound_record(call()))
    assert [r[0].as_dict()["reporter"] for r in sink.requests] == ["source", "destination"]
    assert sink.requests[0][0].as_dict()["source_version"] == "v2"
    assert sink.requests[1][0].as_dict()["destination_version"] == "v2"


def test_principal_edge_cases() -> None:
    sink = RecordingSink()
    telemetry = outbound(sink)
    odd = Endpoint("10.0.0.3", 9080, service_account="spiffe://cluster.local/no-namespace")
    telemetry.on_attempt(call(), attempt(endpoint=odd), Outcome(200), Classification.SUCCESS)
    telemetry.on_request(record(endpoint=odd))
    labels = sink.labels()
    assert labels["destination_principal"] == "spiffe://cluster.local/no-namespace"
    assert labels["destination_workload_namespace"] == "default"  # from the service name
    blank = Endpoint("10.0.0.4", 9080)
    shot = attempt(endpoint=blank, expected_peers=frozenset({""}))
    telemetry.on_attempt(call(), shot, Outcome(200), Classification.SUCCESS)
    telemetry.on_request(record(endpoint=blank))
    assert sink.labels()["destination_principal"] == UNKNOWN


def test_interleaved_requests_end_their_own_spans(sdk_spans: tuple[Any, Any]) -> None:
    _, exporter = sdk_spans
    telemetry = outbound(RecordingSink(), tracing=sdk_tracing(sdk_spans))
    telemetry.outbound_headers(1.0, None)
    telemetry.outbound_headers(2.0, None)  # a second request while the first still streams
    telemetry.on_request(record(start=1.0, status=201))
    telemetry.on_request(record(start=7.0))  # never had a span: nothing to end
    telemetry.on_request(record(start=2.0, status=202))
    codes = [span.attributes["http.status_code"] for span in exporter.get_finished_spans()]
    assert codes == [201, 202]


def test_prometheus_installed_answers_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    assert prometheus_installed() is False
    assert make_sink("default") is NOOP_SINK


def test_scrape_refresh_runs_first_and_never_breaks_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from meshlib._telemetry.metrics import PrometheusSink

    sink = PrometheusSink()
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("gauge source gone")

    sink.on_collect(broken)
    sink.on_collect(lambda: sink.certificate_expiry(123.0))
    text = prometheus_client.generate_latest(sink.registry).decode()
    assert calls == ["broken"]
    assert "meshlib_certificate_expiry_seconds 123.0" in text
    assert "gauge source gone" in caplog.text
