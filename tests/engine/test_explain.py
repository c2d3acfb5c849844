"""``explain_call`` and ``explain_request``: the decisions for one request, with no effect."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
import pytest

from meshlib._config.source import ConfigSource
from meshlib._engine.explain import (
    RESULT_DIRECT_RESPONSE,
    RESULT_NO_ROUTE,
    RESULT_PASSTHROUGH,
    RESULT_REDIRECT,
    RESULT_ROUTED,
    explain_call,
)
from meshlib._engine.runtime import OutboundRuntime, build_runtime
from meshlib._model import Call, Classification
from meshlib.httpx import explain_request

HOST = "reviews.default.svc.cluster.local"
MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2, security.istio.io/tlsMode: istio}}
  - {address: 10.0.0.3, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 10}, http: {http1MaxPendingRequests: 5}}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{uri: {prefix: /api}}, {headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
    timeout: 2s
    fault: {abort: {httpStatus: 500, percentage: {value: 10}}}
  - name: moved
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new}
  - name: teapot
    match: [{uri: {exact: /tea}}]
    directResponse: {status: 418, body: {string: teapot}}
  - name: ghost
    match: [{uri: {exact: /ghost}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - name: split
    match: [{uri: {prefix: /}, sourceLabels: {app: productpage}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
    retries: {attempts: 3, perTryTimeout: 0.5s, retryOn: 5xx}
"""


class FakeClock:
    def __init__(self) -> None:
        self.time = 1000.0

    def now(self) -> float:
        return self.time


class NoRandom:
    """Explain must never draw: a draw would shift what the next real request gets."""

    def random(self) -> float:
        raise AssertionError("explain drew a random number")

    def randrange(self, stop: int, /) -> int:
        raise AssertionError("explain drew a random number")


def runtime(labels: dict[str, str] | None = None, text: str = MESH) -> OutboundRuntime:
    source = ConfigSource.from_text(text, namespace="default", labels=labels or {})
    return build_runtime(source, clock=FakeClock(), rng=NoRandom())


def explain(
    rt: OutboundRuntime, url: str, headers: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    return explain_request(rt, "GET", url, headers=list(headers))


def endpoints(destination: dict[str, Any]) -> list[tuple[str, bool, bool]]:
    return [(e["address"], e["ejected"], e["mtls"]) for e in destination["endpoints"]]


def test_header_match_picks_the_second_block_of_the_first_route() -> None:
    view = explain(runtime(), "http://reviews:9080/x", [("end-user", "jason")])
    assert view["result"] == RESULT_ROUTED
    assert view["service"] == HOST
    assert view["virtual_service"] == "VirtualService/default/reviews"
    route = view["route"]
    assert (route["name"], route["match_index"], route["implicit"]) == ("jason", 1, False)
    assert route["source"] == "VirtualService/default/reviews#http[0]"
    assert route["match"]["headers"][0][0] == "end-user"
    assert view["timeout"] == {"route": 2.0, "caller": None, "inherited": None, "effective": 2.0}
    assert view["fault"]["abort_http_status"] == 500
    assert view["fault"]["abort_fraction"] == pytest.approx(0.1)
    # No retries block: Istio's default policy (2 retries) applies.
    assert (view["retries"]["attempts"], view["retries"]["max_tries"]) == (2, 3)
    (dest,) = view["destinations"]
    assert (dest["subset"], dest["port"], dest["share"]) == ("v2", 9080, 100.0)
    assert dest["cluster"] == f"outbound|9080|v2|{HOST}"
    assert endpoints(dest) == [("10.0.0.2", False, False), ("10.0.0.3", False, False)]
    assert dest["connection_pool"]["max_connections"] == 10
    assert dest["connection_pool"]["http1_max_pending_requests"] == 5
    assert dest["outlier_detection"]["consecutive_5xx_errors"] == 1
    assert dest["load_balancer"]["simple"] == "LEAST_REQUEST"
    assert dest["tls_mode"] == "auto"


def test_weighted_split_lists_both_destinations_with_shares() -> None:
    view = explain(runtime({"app": "productpage"}), "http://reviews:9080/x")
    assert view["route"]["name"] == "split"
    assert view["route"]["match_index"] == 0
    assert [(d["subset"], d["weight"], d["share"]) for d in view["destinations"]] == [
        ("v1", 90, 90.0),
        ("v2", 10, 10.0),
    ]
    retries = view["retries"]
    assert (retries["attempts"], retries["per_try_timeout"], retries["max_tries"]) == (3, 0.5, 4)
    assert retries["retry_on"] == ["5xx"]
    assert view["timeout"]["effective"] is None
    assert view["fault"] is None


def test_source_labels_decide_the_match_and_no_match_is_404_nr() -> None:
    view = explain(runtime({"app": "ratings"}), "http://reviews:9080/x")
    assert view["result"] == RESULT_NO_ROUTE
    assert view["route"] is None
    assert view["reply"]["status"] == 404
    assert view["reply"]["flags"] == ["NR"]
    assert view["destinations"] == []


def test_redirect_and_direct_response_are_local_replies() -> None:
    rt = runtime()
    moved = explain(rt, "http://reviews:9080/old")
    assert moved["result"] == RESULT_REDIRECT
    assert moved["route"]["name"] == "moved"
    assert moved["reply"]["status"] == 301
    assert ["location", "http://reviews:9080/new"] in moved["reply"]["headers"]
    tea = explain(rt, "http://reviews:9080/tea")
    assert tea["result"] == RESULT_DIRECT_RESPONSE
    assert (tea["reply"]["status"], tea["reply"]["body"]) == (418, "teapot")


def test_undefined_subset_is_503_nc() -> None:
    (dest,) = explain(runtime(), "http://reviews:9080/ghost")["destinations"]
    assert dest["cluster"] is None
    assert dest["reply"] == {"status": 503, "flags": ["NC"]}
    assert dest["endpoints"] == []


def test_unknown_host_is_passthrough() -> None:
    view = explain(runtime(), "http://example.org/x")
    assert view["result"] == RESULT_PASSTHROUGH
    assert view["service"] == "example.org"
    (dest,) = view["destinations"]
    assert dest["cluster"] == "PassthroughCluster"
    assert dest["endpoints"] == [{"address": "example.org", "port": 80, "ejected": False}]


def test_ejected_endpoints_are_marked_and_nothing_is_held() -> None:
    rt = runtime()
    clock = rt.clock
    assert isinstance(clock, FakeClock)
    target = rt.cluster_for(rt.snapshot(), HOST, "v2", 9080, "reviews")
    assert target is not None
    bad = target.state.endpoints[0]
    assert target.state.record(bad, Classification.GATEWAY_ERROR, 503, clock.now())
    view = explain(rt, "http://reviews:9080/api/x")
    (dest,) = view["destinations"]
    assert endpoints(dest) == [("10.0.0.2", True, False), ("10.0.0.3", False, False)]
    assert dest["endpoints"][0]["ejected_until"] == pytest.approx(1030.0)
    assert dest["in_flight"] == {"active": 0, "pending": 0, "retries": 0, "overflows": 0}


def test_mtls_endpoints_with_an_identity() -> None:
    rt = runtime()
    rt.identity = object()  # type: ignore[assignment]  # only its presence matters here
    (dest,) = explain(rt, "http://reviews:9080/api")["destinations"]
    assert endpoints(dest) == [("10.0.0.2", False, True), ("10.0.0.3", False, False)]


def test_caller_and_inherited_deadlines_shorten_the_route_timeout() -> None:
    rt = runtime()
    request = httpx.Request(
        "GET", "http://reviews:9080/api", extensions={"timeout": {"read": 0.75}}
    )
    assert explain_request(rt, request)["timeout"] == {
        "route": 2.0,
        "caller": 0.75,
        "inherited": None,
        "effective": 0.75,
    }
    rt.inherited_deadline = lambda: 1000.5
    timeout = explain(rt, "http://reviews:9080/api")["timeout"]
    assert (timeout["inherited"], timeout["effective"]) == (0.5, 0.5)


def test_implicit_default_route_without_virtual_service() -> None:
    text = MESH.split("---\napiVersion: networking.istio.io/v1\nkind: VirtualService", maxsplit=1)[
        0
    ]
    view = explain(runtime(text=text), "http://reviews:9080/x")
    assert view["virtual_service"] is None
    assert view["route"]["implicit"] is True
    assert view["route"]["match_index"] == -1
    (dest,) = view["destinations"]
    assert (dest["subset"], dest["share"]) == (None, 100.0)
    assert [e["address"] for e in dest["endpoints"]] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_explain_call_uses_the_given_snapshot() -> None:
    rt = runtime()
    call = Call(
        protocol="http",
        method="GET",
        scheme="http",
        authority="reviews:9080",
        host="reviews",
        port=9080,
        path="/api",
        headers=httpx.Headers(),
    )
    view = explain_call(call, rt, snapshot=rt.snapshot())
    assert view["generation"] == rt.snapshot().generation
    assert view["client"]["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/default"


def test_request_or_method_and_url_not_both() -> None:
    rt = runtime()
    with pytest.raises(TypeError):
        explain_request(rt, "GET")
    with pytest.raises(TypeError):
        explain_request(rt, httpx.Request("GET", "http://reviews/"), "http://x/")
