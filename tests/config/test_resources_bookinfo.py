"""Real Istio YAML written for a cluster loads unchanged (bookinfo and istio.io task samples)."""

from __future__ import annotations

from pathlib import Path

from meshlib._config import resources as r
from meshlib._config.loader import load_paths

DATA = Path(__file__).parent / "data"


def _load() -> dict[str, object]:
    result = load_paths([DATA / "bookinfo"], "default")
    assert result.issues == ()
    return {res.ref: res.spec for res in result.resources}


def test_bookinfo_samples_load_without_issue() -> None:
    result = load_paths([DATA / "bookinfo"], "default")
    assert result.issues == ()
    assert [res.ref for res in result.resources] == [
        "AuthorizationPolicy/default/productpage-viewer",
        "AuthorizationPolicy/default/ratings-viewer",
        "DestinationRule/default/productpage",
        "DestinationRule/default/reviews",
        "DestinationRule/default/ratings",
        "DestinationRule/default/details",
        "DestinationRule/default/httpbin",
        "PeerAuthentication/istio-system/default",
        "PeerAuthentication/bookinfo/ratings-8080",
        "ServiceEntry/default/httpbin-ext",
        "ServiceEntry/default/ratings-vm",
        "WorkloadEntry/default/ratings-vm-1",
        "VirtualService/default/ratings",
        "VirtualService/default/reviews",
        "VirtualService/default/reviews-test",
    ]
    assert result.skipped == {"Deployment": 1, "Gateway": 1, "Service": 1, "ServiceAccount": 1}


def test_reviews_90_10() -> None:
    spec = _load()["VirtualService/default/reviews"]
    assert isinstance(spec, r.VirtualServiceSpec)
    assert spec.http is not None
    route = spec.http[0].route
    assert route is not None
    assert [(d.destination.subset if d.destination else None, d.weight) for d in route] == [
        ("v1", 90),
        ("v2", 10),
    ]


def test_destination_rule_all_subsets() -> None:
    spec = _load()["DestinationRule/default/ratings"]
    assert isinstance(spec, r.DestinationRuleSpec)
    assert [s.name for s in spec.subsets or ()] == ["v1", "v2", "v2-mysql", "v2-mysql-vm"]


def test_httpbin_circuit_breaker() -> None:
    spec = _load()["DestinationRule/default/httpbin"]
    assert isinstance(spec, r.DestinationRuleSpec)
    policy = spec.traffic_policy
    assert policy is not None
    assert policy.connection_pool == r.ConnectionPoolSettings(
        tcp=r.TCPSettings(max_connections=1),
        http=r.HTTPSettings(http1_max_pending_requests=1, max_requests_per_connection=1),
    )
    assert policy.outlier_detection == r.OutlierDetection(
        consecutive_5xx_errors=1, interval="1s", base_ejection_time="3m", max_ejection_percent=100
    )


def test_fault_timeout_and_retries() -> None:
    spec = _load()["VirtualService/default/ratings"]
    assert isinstance(spec, r.VirtualServiceSpec)
    assert spec.http is not None
    first, second = spec.http
    assert first.fault == r.HTTPFaultInjection(
        delay=r.Delay(fixed_delay="7s", percentage=r.Percent(value=100.0))
    )
    assert second.fault is not None
    assert second.fault.abort == r.Abort(http_status=500, percentage=r.Percent(value=0.1))
    assert second.timeout == "0.5s"
    assert second.retries == r.HTTPRetry(
        attempts=3, per_try_timeout="2s", retry_on="gateway-error,connect-failure,refused-stream"
    )


def test_security_samples() -> None:
    specs = _load()
    strict = specs["PeerAuthentication/istio-system/default"]
    assert strict == r.PeerAuthenticationSpec(mtls=r.MutualTLS(mode="STRICT"))
    ratings = specs["PeerAuthentication/bookinfo/ratings-8080"]
    assert isinstance(ratings, r.PeerAuthenticationSpec)
    assert ratings.port_level_mtls == {8080: r.MutualTLS(mode="DISABLE")}
    allow = specs["AuthorizationPolicy/default/ratings-viewer"]
    assert isinstance(allow, r.AuthorizationPolicySpec)
    assert allow.action == "ALLOW"
    assert allow.rules is not None
    rule = allow.rules[0]
    assert rule.from_ == [
        r.RuleFrom(source=r.Source(principals=["cluster.local/ns/default/sa/bookinfo-reviews"]))
    ]
    assert rule.to == [r.RuleTo(operation=r.Operation(methods=["GET"], ports=["9080"]))]
    assert rule.when == [r.Condition(key="request.headers[version]", values=["v1", "v2"])]


def test_service_entry_and_workload_entry() -> None:
    specs = _load()
    external = specs["ServiceEntry/default/httpbin-ext"]
    assert isinstance(external, r.ServiceEntrySpec)
    assert external.resolution == "DNS"
    assert [(p.number, p.name, p.protocol) for p in external.ports or ()] == [
        (80, "http", "HTTP"),
        (443, "https", "HTTPS"),
    ]
    entry = specs["WorkloadEntry/default/ratings-vm-1"]
    assert entry == r.WorkloadEntrySpec(
        address="10.0.0.12",
        labels={"app": "ratings-vm", "version": "v3"},
        service_account="bookinfo-ratings",
        ports={"http": 8080},
    )


def test_kubectl_get_output_loads() -> None:
    result = load_paths([DATA / "misc" / "kubectl-get.yaml"], "default")
    assert result.issues == ()
    (res,) = result.resources
    assert res.ref == "VirtualService/bookinfo/details"
    assert res.creation_timestamp == "2024-05-02T10:11:12Z"
    assert res.item == 0
    assert "kubectl.kubernetes.io/last-applied-configuration" in res.annotations
    assert result.skipped == {"ConfigMap": 1}
