"""Istio behaviour through the two gRPC mesh channels (sync and grpc.aio), against real grpc
servers on 127.0.0.1 with mTLS: the httpx behavioural suite, seen as gRPC."""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

import grpc
import pytest
from grpc_upstreams import (
    HOST,
    FakeClock,
    Request,
    Upstream,
    make_runtime,
    run_calls,
    service_entry,
)
from grpc_upstreams import virtual_service as vs

from meshlib._engine.runtime import OutboundRuntime
from meshlib._identity.rotation import RotatingIdentity

pytestmark = pytest.mark.extras


def both(upstreams: dict[str, Upstream]) -> str:
    return service_entry(
        [(upstreams["v1"].port, {"version": "v1"}), (upstreams["v2"].port, {"version": "v2"})]
    )


def rule(spec: str) -> str:
    return f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
{spec}"""


SUBSETS = """  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def answers(results: list[dict[str, Any] | BaseException]) -> list[dict[str, Any]]:
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, dict)]


def errors(results: list[dict[str, Any] | BaseException]) -> list[Any]:
    return [r for r in results if isinstance(r, grpc.RpcError)]


def state_of(runtime: OutboundRuntime, subset: str | None = None) -> Any:
    target = runtime.cluster_for(runtime.snapshot(), HOST, subset, 9080, "reviews")
    assert target is not None
    return target.state


# ------------------------------------------------------------------------------- routing


def test_weighted_split_90_10(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # Binomial(600, 0.1) has sd 1.2 %: ±5 % is a >4-sd bound.
    http = """  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}"""
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http), client_identity, seed=11)
    results = answers(run_calls(kind, runtime, [({}, {})] * 600, concurrency=4))
    names = Counter(r["name"] for r in results)
    assert names["v1"] + names["v2"] == 600
    assert abs(names["v2"] / 600 - 0.10) <= 0.05


def test_calls_are_balanced_per_call_not_pinned(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # One logical channel, two endpoints: the classic HTTP/2 pinning must not happen.
    runtime = make_runtime(both(upstreams), client_identity)
    results = answers(run_calls(kind, runtime, [({}, {})] * 40))
    names = Counter(r["name"] for r in results)
    assert names["v1"] >= 10
    assert names["v2"] >= 10


def test_end_user_metadata_routes_to_v2_over_mtls(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    http = """  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]"""
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http), client_identity)
    calls: list[Request] = [({}, {"metadata": [("end-user", "jason")]})] * 10
    calls += [({}, {"metadata": [("end-user", "Jason")]})] * 10
    results = answers(run_calls(kind, runtime, calls))
    assert {r["name"] for r in results[:10]} == {"v2"}
    assert {r["name"] for r in results[10:]} == {"v1"}
    seen = results[0]
    assert seen["peer"] == "spiffe://cluster.local/ns/default/sa/productpage"
    assert seen["metadata"]["x-envoy-attempt-count"] == "1"


def test_method_routing_and_header_operations(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    http = """  - match: [{uri: {exact: /test.Reviews/Get}}]
    headers:
      request: {set: {x-set: "1"}, add: {x-add: "2"}, remove: [x-gone]}
    route: [{destination: {host: reviews, subset: v2}}]"""
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http), client_identity)
    metadata = [("x-gone", "a"), ("x-set", "old")]
    (seen,) = answers(run_calls(kind, runtime, [({}, {"metadata": metadata})]))
    assert seen["name"] == "v2"
    assert seen["metadata"]["x-set"] == "1"
    assert seen["metadata"]["x-add"] == "2"
    assert "x-gone" not in seen["metadata"]


def test_no_route_is_unimplemented(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    http = (
        "  - match: [{uri: {prefix: /other.Service}}]\n    route: [{destination: {host: reviews}}]"
    )
    runtime = make_runtime(both(upstreams) + vs(http), client_identity)
    (error,) = errors(run_calls(kind, runtime, [({}, {})]))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.flags == ("NR",)


# -------------------------------------------------------------------------------- faults


def test_fault_delay_and_abort_with_grpc_status(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    http = """  - fault:
      delay: {fixedDelay: 7s, percentage: {value: 50}}
      abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 20}}
    route: [{destination: {host: reviews, subset: v1}}]"""
    slept: list[float] = []
    text = both(upstreams) + rule(SUBSETS) + vs(http)
    runtime = make_runtime(text, client_identity, seed=5, sleep=slept.append)
    n = 300
    results = run_calls(kind, runtime, [({}, {})] * n, concurrency=4)
    aborted = errors(results)
    assert set(slept) == {7.0}
    assert abs(len(slept) / n - 0.5) <= 0.1
    assert abs(len(aborted) / n - 0.2) <= 0.08
    assert {e.code() for e in aborted} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert {e.details() for e in aborted} == {"fault filter abort"}
    assert upstreams["v1"].state.requests == n - len(aborted)


# ---------------------------------------------------------------------- timeouts, retries


def test_route_timeout_is_deadline_exceeded(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    http = "  - timeout: 0.3s\n    route: [{destination: {host: reviews, subset: v1}}]"
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http), client_identity)
    (error,) = errors(run_calls(kind, runtime, [({"delay": 3}, {})]))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == "upstream request timeout"
    assert error.flags == ("UT",)


def test_callers_deadline_is_deadline_exceeded(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    http = "  - timeout: 10s\n    route: [{destination: {host: reviews, subset: v1}}]"
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http), client_identity)
    (error,) = errors(run_calls(kind, runtime, [({"delay": 3}, {"timeout": 0.3})]))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == "Deadline Exceeded"


def test_unavailable_is_retried_until_success(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    http = """  - retries: {attempts: 3, retryOn: "unavailable"}
    route: [{destination: {host: reviews, subset: v1}}]"""
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http), client_identity)
    upstreams["v1"].state.fail_first = 2
    (seen,) = answers(run_calls(kind, runtime, [({}, {})]))
    assert seen["metadata"]["x-envoy-attempt-count"] == "3"
    assert upstreams["v1"].state.requests == 3


def test_status_not_in_retry_on_is_returned_at_once(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    http = """  - retries: {attempts: 3, retryOn: "unavailable"}
    route: [{destination: {host: reviews, subset: v1}}]"""
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http), client_identity)
    upstreams["v1"].state.always_code = grpc.StatusCode.NOT_FOUND
    (error,) = errors(run_calls(kind, runtime, [({}, {})]))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "always failing"
    assert upstreams["v1"].state.requests == 1


def test_default_retries_on_refused_connections(
    kind: str, client_identity: RotatingIdentity
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    runtime = make_runtime(service_entry([(closed_port, {})]), client_identity)
    (error,) = errors(run_calls(kind, runtime, [({}, {})]))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.flags == ("UF", "URX")
    assert error.attempts == 3
    assert error.details().startswith("upstream connect error or disconnect/reset before headers")


# ------------------------------------------------------------------- limits and outliers


def test_circuit_breaker_overflows_with_unavailable(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    policy = """  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
"""
    runtime = make_runtime(both(upstreams) + rule(policy + SUBSETS), client_identity)
    results = run_calls(kind, runtime, [({"delay": 0.05}, {})] * 20, concurrency=3)
    failed = errors(results)
    assert 2 <= len(results) - len(failed) <= 19
    assert failed
    for error in failed:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == (
            "upstream connect error or disconnect/reset before headers. reset reason: overflow"
        )
        assert error.flags == ("UO",)
        assert ("x-envoy-overloaded", "true") in tuple(error.trailing_metadata())
    assert state_of(runtime).limiter.active == 0


OUTLIERS = """  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
"""
NO_RETRIES = "  - retries: {attempts: 0}\n    route: [{destination: {host: reviews}}]"


def test_unavailable_endpoint_is_ejected_and_returns(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    clock = FakeClock()
    text = both(upstreams) + rule(OUTLIERS) + vs(NO_RETRIES)
    runtime = make_runtime(text, client_identity, clock=clock)
    upstreams["v1"].state.always_code = grpc.StatusCode.UNAVAILABLE
    results = run_calls(kind, runtime, [({}, {})] * 20)
    assert upstreams["v1"].state.requests == 1  # one UNAVAILABLE (a 503) ejects it
    assert len(errors(results)) == 1
    clock.advance(31.0)
    upstreams["v1"].state.always_code = None
    assert len(answers(run_calls(kind, runtime, [({}, {})] * 20))) == 20
    assert upstreams["v1"].state.requests > 1


def test_all_endpoints_ejected_is_no_healthy_upstream(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    clock = FakeClock()
    text = both(upstreams) + rule(OUTLIERS) + vs(NO_RETRIES)
    runtime = make_runtime(text, client_identity, clock=clock)
    upstreams["v1"].state.always_code = grpc.StatusCode.INTERNAL
    upstreams["v2"].state.always_code = grpc.StatusCode.INTERNAL
    failed = errors(run_calls(kind, runtime, [({}, {})] * 5))
    assert [e.code() for e in failed[:2]] == [grpc.StatusCode.INTERNAL] * 2
    for error in failed[2:]:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == "no healthy upstream"
        assert error.flags == ("UH",)
