"""Per-record cost of the telemetry primitives on the hot path (µs, p50 of batches).

Run: ``python bench/bench_telemetry.py`` (needs the ``prometheus`` and ``otel`` extras for every
row; rows whose extra is missing are skipped). The issue's target: metrics + tracing add at most
5 µs p50 together to a request that is not sampled.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from meshlib._engine.inbound import InboundRecord
from meshlib._engine.runtime import RequestRecord
from meshlib._model.call import Call, Peer
from meshlib._model.commands import Attempt
from meshlib._model.endpoint import Endpoint
from meshlib._model.outcome import Classification, Outcome
from meshlib._telemetry.context import enter_inbound, exit_inbound, outbound_headers
from meshlib._telemetry.hooks import InboundTelemetry, OutboundTelemetry
from meshlib._telemetry.metrics import EdgeLabels, MetricsSink, WorkloadLabels
from meshlib._telemetry.tracing import Tracing

BATCH = 200
SAMPLES = 200
TARGET_US = 5.0

INBOUND_HEADERS = {
    "x-request-id": "84961386-6d84-4d9d-98bd-c5aee93b5c88",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    "x-b3-traceid": "0af7651916cd43dd8448eb211c80319c",
    "x-b3-spanid": "b7ad6b7169203331",
    "x-b3-sampled": "0",
    "x-envoy-expected-rq-timeout-ms": "3000",
    "user-agent": "bench",
}


def p50_us(fn: Callable[[], object]) -> float:
    """Median over SAMPLES batches of the mean per-call time in a batch of BATCH calls."""
    for _ in range(BATCH):
        fn()
    per_call: list[float] = []
    for _ in range(SAMPLES):
        start = time.perf_counter_ns()
        for _ in range(BATCH):
            fn()
        per_call.append((time.perf_counter_ns() - start) / BATCH / 1000)
    return statistics.median(per_call)


def edge() -> EdgeLabels:
    return EdgeLabels(
        reporter="source",
        source=WorkloadLabels.from_workload(
            workload="productpage-v1", namespace="default", labels={"app": "productpage"}
        ),
        destination=WorkloadLabels.from_workload(
            workload="reviews-v2", namespace="default", labels={"app": "reviews"}
        ),
        destination_service="reviews.default.svc.cluster.local",
        destination_service_name="reviews",
        destination_service_namespace="default",
    )


TOTAL_ROW = "TOTAL unsampled outbound hooks: headers+on_attempt+on_request"
CLUSTER = "outbound|9080|v2|reviews.default.svc.cluster.local"


def outbound_hooks_path(sink: MetricsSink, tracing: Tracing) -> Callable[[], None]:
    """What the flow calls for one unsampled request with one attempt (meshlib's real hooks)."""
    telemetry = OutboundTelemetry(
        sink, tracing, source=WorkloadLabels.from_workload(workload="productpage-v1")
    )
    endpoint = Endpoint("10.0.0.2", 9080, labels={"app": "reviews", "version": "v2"})
    call = Call("http", "GET", "http", "reviews:9080", "reviews", 9080, "/r", {})
    attempt = Attempt(endpoint=endpoint, number=1, timeout=None, cluster=CLUSTER, tls=True)
    outcome = Outcome(200)
    record = RequestRecord(call, "reviews.default.svc.cluster.local", CLUSTER, 200, (), 1,
                           endpoint, 1.0, 1.01)  # fmt: skip
    headers, on_attempt, on_request = (
        telemetry.outbound_headers,
        telemetry.on_attempt,
        telemetry.on_request,
    )

    def run() -> None:
        headers(1.0, 4.0)
        on_attempt(call, attempt, outcome, Classification.SUCCESS)
        on_request(record)

    return run


def inbound_hooks_path(sink: MetricsSink, tracing: Tracing) -> Callable[[], None]:
    telemetry = InboundTelemetry(
        sink,
        tracing,
        destination=WorkloadLabels.from_workload(workload="reviews-v2"),
        service="reviews.default.svc.cluster.local",
    )
    peer = Peer(spiffe_id="spiffe://cluster.local/ns/default/sa/productpage", mtls=True)
    call = Call("http", "GET", "http", "reviews:9080", "reviews", 9080, "/r", INBOUND_HEADERS,
                peer=peer)  # fmt: skip
    record = InboundRecord(call, 200, (), 1.0, 1.01, peer)
    extract, detach, on_request = telemetry.extract, telemetry.detach, telemetry.on_request

    def run() -> None:
        detach(extract(call, 1.0))
        on_request(record)

    return run


def main() -> int:
    rows: list[tuple[str, float]] = []
    labels_edge = edge()
    passthrough = Tracing(propagator="tracecontext,baggage", sampling_percent=1.0)
    try:
        passthrough = Tracing(propagator="b3multi,tracecontext,baggage", sampling_percent=1.0)
    except ValueError:
        print("(opentelemetry-propagator-b3 missing: W3C only)")

    rows.append(
        ("labels: EdgeLabels.labels(200) (interned)", p50_us(lambda: labels_edge.labels(200)))
    )
    sink = None
    try:
        from meshlib._telemetry.metrics import PrometheusSink

        sink = PrometheusSink()
    except ImportError:
        print("(prometheus-client missing: no sink rows)")
    if sink is not None:
        bound = labels_edge.labels(200)
        prom = sink
        rows.append(
            (
                "metrics: PrometheusSink.request (bound series)",
                p50_us(lambda: prom.request(bound, 12.5, 320, 4100)),
            )
        )

    rows.append(("tracing: Tracing.active() (no SDK)", p50_us(passthrough.active)))
    rows.append(
        (
            "context: outbound_headers, no inbound, no deadline",
            p50_us(lambda: outbound_headers(1.0, None, tracing=passthrough)),
        )
    )
    rows.append(
        (
            "context: outbound_headers, deadline only",
            p50_us(lambda: outbound_headers(1.0, 4.0, tracing=passthrough)),
        )
    )

    def inbound_round_trip() -> None:
        exit_inbound(enter_inbound(INBOUND_HEADERS, now=1.0, protocol="http", tracing=passthrough))

    rows.append(("context: enter_inbound+exit_inbound (passthrough)", p50_us(inbound_round_trip)))
    token = enter_inbound(INBOUND_HEADERS, now=1.0, protocol="http", tracing=passthrough)
    try:
        rows.append(
            (
                "context: outbound_headers inside inbound (+deadline)",
                p50_us(lambda: outbound_headers(1.0, 4.0, tracing=passthrough)),
            )
        )

        if sink is not None:
            prom = sink

            def unsampled_hot_path() -> None:
                # What one outbound request pays when not sampled: decision, headers, metrics.
                passthrough.active()
                outbound_headers(1.0, 4.0, tracing=passthrough)
                prom.request(labels_edge.labels(200), 12.5, 320, 4100)

            combined = p50_us(unsampled_hot_path)
            rows.append(("primitives unsampled outbound: active+headers+metrics", combined))
            rows.append((TOTAL_ROW, p50_us(outbound_hooks_path(prom, passthrough))))
    finally:
        exit_inbound(token)
    if sink is not None:
        rows.append(("TOTAL unsampled inbound hooks: extract+detach+on_request",
                     p50_us(inbound_hooks_path(sink, passthrough))))  # fmt: skip

    try:
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        print("(opentelemetry-sdk missing: no span rows)")
    else:
        sdk = Tracing(tracer_provider=TracerProvider(), propagator="tracecontext,baggage")

        def span_on() -> None:
            span = sdk.start_client_span(
                fqdn="reviews.default.svc.cluster.local",
                port=9080,
                method="GET",
                url="/r",
                cluster="c",
            )
            assert span is not None
            outbound_headers(1.0, None, span=span, tracing=sdk)
            span.finish(status_code=200)

        rows.append(
            (
                "tracing: span off (no SDK): start_client_span -> None",
                p50_us(
                    lambda: passthrough.start_client_span(
                        fqdn="r", port=1, method="GET", url="/", cluster="c"
                    )
                ),
            )
        )
        rows.append(("tracing: span on (SDK, sampled): start+inject+finish", p50_us(span_on)))

        def extract_road() -> None:
            exit_inbound(enter_inbound(INBOUND_HEADERS, now=1.0, protocol="http", tracing=sdk))

        rows.append(
            ("context: enter+exit inbound, SDK installed (extract road)", p50_us(extract_road))
        )

    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.2f} µs")
    total = dict(rows).get(TOTAL_ROW)
    if total is not None:
        verdict = "OK" if total <= TARGET_US else "OVER"
        print(f"target <= {TARGET_US} µs for the unsampled total: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
