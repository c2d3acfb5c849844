"""Istio's standard metrics: exact names, labels and buckets, scraped over real HTTP."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._telemetry.metrics import (
    ISTIO_BUCKETS,
    ISTIO_LABELS,
    NOOP_SINK,
    EdgeLabels,
    MetricsSink,
    NoopSink,
    RequestLabels,
    WorkloadLabels,
    breaker_state_value,
    format_flags,
    metrics_asgi_app,
    serve_metrics,
)

SOURCE = WorkloadLabels.from_workload(
    workload="productpage-v1",
    namespace="default",
    principal="spiffe://cluster.local/ns/default/sa/productpage",
    labels={"app": "productpage", "version": "v1"},
)
DESTINATION = WorkloadLabels.from_workload(
    workload="reviews-v2",
    namespace="default",
    principal="spiffe://cluster.local/ns/default/sa/reviews",
    labels={"app": "reviews", "version": "v2"},
)


def edge(protocol: str = "http", reporter: str = "source") -> EdgeLabels:
    return EdgeLabels(
        reporter=reporter,
        source=SOURCE,
        destination=DESTINATION,
        destination_service="reviews.default.svc.cluster.local",
        destination_service_name="reviews",
        destination_service_namespace="default",
        request_protocol=protocol,
    )


def scrape(url: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return {family.name: family for family in text_string_to_metric_families(response.text)}


@pytest.fixture
def sink() -> Any:
    metrics = pytest.importorskip("meshlib._telemetry.metrics")
    pytest.importorskip("prometheus_client")
    return metrics.PrometheusSink()


# --- labels --------------------------------------------------------------------------------


def test_label_set_is_istios_exactly() -> None:
    assert len(ISTIO_LABELS) == 25
    assert ISTIO_LABELS[0] == "reporter"
    assert ISTIO_LABELS[-3:] == (
        "connection_security_policy",
        "response_code",
        "grpc_response_status",
    )


def test_workload_labels_follow_istio_precedence() -> None:
    assert WorkloadLabels() == WorkloadLabels(
        workload="unknown",
        namespace="unknown",
        principal="unknown",
        app="unknown",
        version="unknown",
        canonical_service="unknown",
        canonical_revision="latest",
        cluster="unknown",
    )
    canonical = WorkloadLabels.from_workload(
        workload="w",
        labels={
            "app": "a",
            "service.istio.io/canonical-name": "canon",
            "service.istio.io/canonical-revision": "r7",
            "app.kubernetes.io/version": "k8s-v",
        },
        cluster="Kubernetes",
    )
    assert (canonical.app, canonical.version) == ("a", "k8s-v")
    assert (canonical.canonical_service, canonical.canonical_revision) == ("canon", "r7")
    assert canonical.cluster == "Kubernetes"
    assert WorkloadLabels.from_workload(workload="only").canonical_service == "only"
    k8s = WorkloadLabels.from_workload(labels={"app.kubernetes.io/name": "n"})
    assert (k8s.app, k8s.canonical_service, k8s.canonical_revision) == ("n", "n", "latest")


def test_request_labels_are_interned_per_response() -> None:
    e = edge()
    first = e.labels(200)
    assert e.labels(200) is first
    assert e.labels(503, ("UF", "URX")) is e.labels(503, ("UF", "URX"))
    as_dict = e.labels(503, ("UF", "URX")).as_dict()
    assert as_dict["response_flags"] == "UF,URX"
    assert as_dict["response_code"] == "503"
    assert as_dict["grpc_response_status"] == ""
    assert as_dict["destination_principal"] == "spiffe://cluster.local/ns/default/sa/reviews"
    assert as_dict["connection_security_policy"] == "unknown"
    assert edge("grpc").labels(200, "-", 14).as_dict()["grpc_response_status"] == "14"
    assert e.labels(0, "").as_dict()["response_flags"] == "-"


def test_request_labels_compare_by_value() -> None:
    a, b = edge().labels(200), edge().labels(200)
    assert a is not b
    assert a == b
    assert hash(a) == hash(b)
    assert a != edge().labels(201)
    assert a != "x"
    assert "response_code" in repr(a)
    with pytest.raises(ValueError, match="25 label values"):
        RequestLabels(("x",))


@given(st.lists(st.sampled_from(["UF", "URX", "UO", "UH", "DI"]), max_size=4))
def test_flags_join(flags: list[str]) -> None:
    joined = format_flags(tuple(flags))
    assert joined == (",".join(flags) or "-")
    assert format_flags(joined) == joined


def test_breaker_states() -> None:
    assert [breaker_state_value(s) for s in ("closed", "half-open", "half_open", "OPEN")] == [
        0,
        1,
        1,
        2,
    ]
    with pytest.raises(ValueError, match="unknown breaker state"):
        breaker_state_value("ajar")


def test_noop_sink_is_a_sink_and_does_nothing() -> None:
    sink: MetricsSink = NOOP_SINK
    labels = edge().labels(200)
    assert isinstance(sink, NoopSink)
    calls: list[Callable[[], None]] = [
        lambda: sink.request(labels, 1.0, 1, 1),
        lambda: sink.messages(labels, 1, 1),
        lambda: sink.retry("c"),
        lambda: sink.overflow("c"),
        lambda: sink.ejection("c"),
        lambda: sink.ejected_hosts("c", 1),
        sink.config_reload,
        sink.config_error,
        lambda: sink.certificate_expiry(1.0),
        lambda: sink.breaker_state("b", "open"),
        lambda: sink.authz_decision("allow", "p"),
    ]
    for call in calls:
        assert call() is None


# --- Prometheus, scraped over HTTP ---------------------------------------------------------


@pytest.mark.extras
def test_istio_series_over_http(sink: Any) -> None:
    e = edge()
    ok = e.labels(200)
    for duration, size in ((0.5, 100), (3.0, 900), (7000.0, 5_000_000)):
        sink.request(ok, duration, size, size * 2)
    sink.request(e.labels(503, ("UF", "URX")), 12.0, 0, 0)
    grpc = edge("grpc", "destination").labels(200, "-", 0)
    sink.request(grpc, 1.0, 10, 20)
    sink.messages(grpc, 3, 4)
    with serve_metrics(sink) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        families = scrape(server.url)

    requests = families["istio_requests"]
    assert requests.type == "counter"
    by_code = {
        (s.labels["reporter"], s.labels["response_code"], s.labels["response_flags"]): s.value
        for s in requests.samples
        if s.name == "istio_requests_total"
    }
    assert by_code == {
        ("source", "200", "-"): 3,
        ("source", "503", "UF,URX"): 1,
        ("destination", "200", "-"): 1,
    }
    http_ok = [
        s
        for s in requests.samples
        if s.labels["response_code"] == "200" and s.labels["request_protocol"] == "http"
    ]
    assert len(http_ok) == 1
    assert http_ok[0].value == 3
    assert set(http_ok[0].labels) == set(ISTIO_LABELS)
    assert http_ok[0].labels == ok.as_dict()

    duration = families["istio_request_duration_milliseconds"]
    assert duration.type == "histogram"
    buckets = {
        float(s.labels["le"]): s.value
        for s in duration.samples
        if s.name.endswith("_bucket") and s.labels["response_code"] == "200"
        and s.labels["request_protocol"] == "http"
    }  # fmt: skip
    assert sorted(buckets) == [*ISTIO_BUCKETS, float("inf")]
    assert buckets[0.5] == 1  # le is inclusive
    assert buckets[1] == 1
    assert buckets[5] == 2
    assert buckets[5000] == 2
    assert buckets[10000] == 3
    assert buckets[float("inf")] == 3
    sums = [
        s.value
        for s in duration.samples
        if s.name.endswith("_sum") and s.labels["response_code"] == "200"
        and s.labels["request_protocol"] == "http"
    ]  # fmt: skip
    assert sums == [7003.5]
    response_bytes = families["istio_response_bytes"]
    over = [
        s.value
        for s in response_bytes.samples
        if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"
        and s.labels["response_code"] == "200" and s.labels["request_protocol"] == "http"
    ]  # fmt: skip
    assert over == [3]
    assert "istio_request_bytes" in families

    messages = {
        s.name: s.value
        for name in ("istio_request_messages", "istio_response_messages")
        for s in families[name].samples
    }
    assert messages == {"istio_request_messages_total": 3, "istio_response_messages_total": 4}
    reporters = {s.labels["reporter"] for s in requests.samples}
    assert reporters == {"source", "destination"}


@pytest.mark.extras
def test_meshlib_metrics_over_http(sink: Any) -> None:
    sink.retry("outbound|9080|v1|reviews.default.svc.cluster.local")
    sink.retry("outbound|9080|v1|reviews.default.svc.cluster.local")
    sink.overflow("c")
    sink.ejection("c")
    sink.ejected_hosts("c", 2)
    sink.config_reload()
    sink.config_error()
    sink.certificate_expiry(1_800_000_000.0)
    sink.breaker_state("payments-db", "open")
    sink.authz_decision("deny", "deny-post")
    sink.authz_decision("allow")
    with serve_metrics(sink) as server:
        families = scrape(server.url)

    def value(family: str, sample: str, **labels: str) -> float:
        for s in families[family].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"{sample} {labels} not exposed")

    cluster = "outbound|9080|v1|reviews.default.svc.cluster.local"
    assert value("meshlib_retries", "meshlib_retries_total", cluster=cluster) == 2
    assert value("meshlib_overflows", "meshlib_overflows_total", cluster="c") == 1
    assert value("meshlib_ejections", "meshlib_ejections_total", cluster="c") == 1
    assert value("meshlib_ejected_hosts", "meshlib_ejected_hosts", cluster="c") == 2
    assert value("meshlib_config_reloads", "meshlib_config_reloads_total") == 1
    assert value("meshlib_config_errors", "meshlib_config_errors_total") == 1
    assert (
        value("meshlib_certificate_expiry_seconds", "meshlib_certificate_expiry_seconds")
        == 1_800_000_000.0
    )
    assert value("meshlib_breaker_state", "meshlib_breaker_state", name="payments-db") == 2
    decisions = "meshlib_authz_decisions_total"
    assert value("meshlib_authz_decisions", decisions, decision="deny", policy="deny-post") == 1
    assert value("meshlib_authz_decisions", decisions, decision="allow", policy="-") == 1


@pytest.mark.extras
def test_series_are_bounded_least_recently_used_first() -> None:
    from meshlib._telemetry.metrics import PrometheusSink

    small = PrometheusSink(max_series=2)
    e = edge()
    small.request(e.labels(200), 1, 1, 1)
    small.request(e.labels(404), 1, 1, 1)
    small.request(e.labels(200), 1, 1, 1)  # 200 is now the most recent
    small.request(e.labels(503), 1, 1, 1)  # evicts 404
    assert small.series_count == 2
    with serve_metrics(small) as server:
        families = scrape(server.url)
    codes = {
        s.labels["response_code"]: s.value
        for s in families["istio_requests"].samples
        if s.name == "istio_requests_total"
    }
    assert codes == {"200": 2, "503": 1}
    with pytest.raises(ValueError, match="max_series"):
        PrometheusSink(max_series=0)


@pytest.mark.extras
def test_default_registry_can_be_shared() -> None:
    import prometheus_client

    from meshlib._telemetry.metrics import PrometheusSink

    registry = prometheus_client.CollectorRegistry()
    sink = PrometheusSink(registry)
    assert sink.registry is registry
    sink.request(edge().labels(200), 1, 1, 1)
    text = prometheus_client.generate_latest(registry).decode()
    sample = next(line for line in text.splitlines() if line.startswith("istio_requests_total{"))
    assert 'reporter="source"' in sample
    assert sample.endswith(" 1.0")


@pytest.mark.extras
def test_requests_are_queued_then_folded_in_batches_and_at_each_scrape(sink: Any) -> None:
    import prometheus_client

    from meshlib._telemetry.metrics import FOLD_AT

    labels = edge().labels(200)
    for _ in range(FOLD_AT - 1):
        sink.request(labels, 3, 1, 1)
    assert len(sink._pending) == FOLD_AT - 1
    assert len(sink._store) == 0  # a request only queues its observation
    sink.request(labels, 3, 1, 1)
    assert not sink._pending
    assert len(sink._store) == 1
    sink.request(labels, 3, 1, 1)  # queued: the scrape folds it
    text = prometheus_client.generate_latest(sink.registry).decode()
    total = next(line for line in text.splitlines() if line.startswith("istio_requests_total{"))
    assert total.endswith(f" {float(FOLD_AT + 1)}")
    bucket = next(
        line
        for line in text.splitlines()
        if line.startswith("istio_request_duration_milliseconds_bucket{") and 'le="5.0"' in line
    )
    assert bucket.endswith(f" {float(FOLD_AT + 1)}")


@pytest.mark.extras
def test_concurrent_recording_loses_nothing(sink: Any) -> None:
    labels = edge().labels(200)
    threads = [
        threading.Thread(target=lambda: [sink.request(labels, 1, 1, 1) for _ in range(2000)])
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with serve_metrics(sink) as server:
        families = scrape(server.url)
    totals = [s.value for s in families["istio_requests"].samples]
    assert totals == [8000]


def test_exposition_needs_a_registry() -> None:
    with pytest.raises(TypeError, match="no Prometheus registry"):
        serve_metrics(NOOP_SINK)
    with pytest.raises(TypeError, match="no Prometheus registry"):
        metrics_asgi_app(NOOP_SINK)


@pytest.fixture
def uvicorn_server() -> Iterator[Any]:
    uvicorn = pytest.importorskip("uvicorn")
    started: list[Any] = []

    def start(app: Any) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        started.append((server, thread, sock))
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started
        return f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"

    yield start
    for server, thread, sock in started:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.mark.extras
def test_asgi_app_serves_the_text_format(sink: Any, uvicorn_server: Any) -> None:
    sink.request(edge().labels(200), 2.0, 1, 1)
    url = uvicorn_server(metrics_asgi_app(sink))
    families = scrape(url)
    assert [s.value for s in families["istio_requests"].samples] == [1]
    assert "istio_request_duration_milliseconds" in families


# --- OpenTelemetry metrics -----------------------------------------------------------------


@pytest.mark.extras
def test_otel_sink_records_with_istio_names_and_buckets() -> None:
    sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
    export = pytest.importorskip("opentelemetry.sdk.metrics.export")
    from meshlib._telemetry.metrics import OtelMetricsSink

    reader = export.InMemoryMetricReader()
    provider = sdk_metrics.MeterProvider(metric_readers=[reader])
    sink = OtelMetricsSink(provider, max_series=1)
    e = edge("grpc")
    sink.request(e.labels(200, "-", 0), 3.0, 10, 20)
    sink.request(e.labels(200, "-", 0), 30.0, 10, 20)
    sink.request(e.labels(503, "UO"), 0.1, 0, 0)  # evicts the first attribute dict
    sink.messages(e.labels(200, "-", 0), 1, 2)
    sink.retry("c")
    sink.overflow("c")
    sink.ejection("c")
    sink.ejected_hosts("c", 1)
    sink.config_reload()
    sink.config_error()
    sink.certificate_expiry(5.0)
    sink.breaker_state("b", "half-open")
    sink.authz_decision("allow")
    data = reader.get_metrics_data()
    metrics = {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    assert set(metrics) == {
        "istio_requests_total",
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
        "istio_request_messages_total",
        "istio_response_messages_total",
        "meshlib_retries_total",
        "meshlib_overflows_total",
        "meshlib_ejections_total",
        "meshlib_ejected_hosts",
        "meshlib_config_reloads_total",
        "meshlib_config_errors_total",
        "meshlib_certificate_expiry_seconds",
        "meshlib_breaker_state",
        "meshlib_authz_decisions_total",
    }
    duration = metrics["istio_request_duration_milliseconds"]
    point = next(p for p in duration.data.data_points if p.attributes["response_code"] == "200")
    assert tuple(point.explicit_bounds) == tuple(float(b) for b in ISTIO_BUCKETS)
    assert point.count == 2
    assert set(point.attributes) == set(ISTIO_LABELS)
    breaker = metrics["meshlib_breaker_state"].data.data_points[0]
    assert (breaker.value, breaker.attributes["name"]) == (1, "b")


def test_label_store_survives_races() -> None:
    from collections import OrderedDict

    from meshlib._telemetry.metrics import _LabelStore, _Series

    class EvictedMeanwhile(OrderedDict[RequestLabels, _Series]):
        def move_to_end(self, key: RequestLabels, last: bool = True) -> None:
            raise KeyError(key)

    class AddedMeanwhile(OrderedDict[RequestLabels, _Series]):
        misses = 1

        def get(self, key: RequestLabels, default: Any = None) -> Any:
            if self.misses:
                self.misses -= 1
                return None
            return super().get(key, default)

    labels = edge().labels(200)
    store = _LabelStore(1)  # full: every hit moves its series to the recent end
    store._series = EvictedMeanwhile()
    first = store.get(labels)
    assert store.get(labels) is first  # the hit still counts although the move failed

    store = _LabelStore(4)
    raced = AddedMeanwhile()
    existing = _Series()
    raced[labels] = existing
    store._series = raced
    assert store.get(labels) is existing, "the locked re-check finds the other thread's series"
