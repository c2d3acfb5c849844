"""The outbound flow driven by a scripted driver: fake clock, seeded randomness, no I/O."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlib._config.source import ConfigSource
from meshlib._engine.outbound import (
    ATTEMPT_COUNT_HEADER,
    EXPECTED_TIMEOUT_HEADER,
    Fail,
    FlowCommand,
    WaitSlot,
    conclude,
    outbound_flow,
)
from meshlib._engine.runtime import (
    PASSTHROUGH_CLUSTER,
    OutboundRuntime,
    RequestRecord,
    TelemetryHooks,
    build_runtime,
    cluster_name,
)
from meshlib._engine.snapshot import MeshIdentity, MeshSnapshot
from meshlib._model import (
    Attempt,
    Call,
    Classification,
    Deliver,
    FailureKind,
    Outcome,
    Reply,
    Send,
    Sleep,
    SystemRandom,
)
from meshlib._policy.limits import Admission

NS = "default"
HOST = "reviews.default.svc.cluster.local"


class Headers:
    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._values = {k.lower(): v for k, v in items}

    def get(self, key: str, /) -> str | None:
        return self._values.get(key.lower())

    def __contains__(self, key: object, /) -> bool:
        return isinstance(key, str) and key.lower() in self._values


class FakeClock:
    def __init__(self) -> None:
        self.value = 100.0

    def now(self) -> float:
        return self.value


class FakeIdentity:
    def current_client_context(self) -> object:
        return object()


def call(
    path: str = "/",
    *,
    authority: str = "reviews:9080",
    headers: Iterable[tuple[str, str]] = (),
    protocol: str = "http",
    replayable: bool = True,
) -> Call:
    host, _, port = authority.partition(":")
    return Call(
        protocol=protocol,
        method="GET",
        scheme="http",
        authority=authority,
        host=host,
        port=int(port or 80),
        path=path,
        headers=Headers(headers),
        body_replayable=replayable,
    )


SERVICE = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: {NS}}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 10.0.0.1, labels: {{version: v1}}}}
  - address: 10.0.0.2
    labels: {{version: v2, security.istio.io/tlsMode: istio}}
    serviceAccount: reviews
"""

ROUTE = "    route: [{destination: {host: reviews}}]"
SUBSETS = """
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def rule(policy: str = "", subsets: str = SUBSETS) -> str:
    return f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {NS}}}
spec:
  host: reviews
{policy}{subsets}"""


def vs(http: str) -> str:
    return f"""
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {NS}}}
spec:
  hosts: [reviews]
  http:
{http}"""


@dataclass
class World:
    runtime: OutboundRuntime
    clock: FakeClock
    records: list[RequestRecord] = field(default_factory=list)
    attempts: list[tuple[Attempt, Outcome, Classification]] = field(default_factory=list)


def world(text: str, *, seed: int = 1, identity: Any = None) -> World:
    clock = FakeClock()
    source = ConfigSource.from_text(text, namespace=NS)
    records: list[RequestRecord] = []
    attempts: list[tuple[Attempt, Outcome, Classification]] = []
    hooks = TelemetryHooks(
        on_attempt=lambda _c, a, o, k: attempts.append((a, o, k)),
        on_request=records.append,
    )
    runtime = build_runtime(source, identity, clock=clock, rng=SystemRandom(seed), hooks=hooks)
    return World(runtime, clock, records, attempts)


Answer = Callable[[Attempt], Outcome]


@dataclass
class Run:
    commands: list[FlowCommand]

    @property
    def sends(self) -> list[Attempt]:
        return [c.attempt for c in self.commands if isinstance(c, Send)]

    @property
    def sleeps(self) -> list[float]:
        return [c.seconds for c in self.commands if isinstance(c, Sleep)]

    @property
    def last(self) -> FlowCommand:
        return self.commands[-1]

    @property
    def reply(self) -> Reply:
        assert isinstance(self.last, Reply), self.last
        return self.last

    @property
    def deliver(self) -> Deliver:
        assert isinstance(self.last, Deliver), self.last
        return self.last


def ok(_attempt: Attempt) -> Outcome:
    return Outcome(status=200)


def drive(
    w: World,
    c: Call,
    answer: Answer = ok,
    *,
    complete: bool = True,
    wait: Callable[[WaitSlot], Outcome | None] | None = None,
    **kwargs: Any,
) -> Run:
    """Run a flow to its final command; sleeps advance the fake clock."""
    flow = outbound_flow(c, w.runtime, **kwargs)
    commands: list[FlowCommand] = []
    try:
        command = next(flow)
        for _ in range(100):
            commands.append(command)
            if isinstance(command, Send):
                command = flow.send(answer(command.attempt))
            elif isinstance(command, Sleep):
                w.clock.value += command.seconds
                command = flow.send(None)
            elif isinstance(command, WaitSlot):
                assert wait is not None, "unexpected WaitSlot"
                command = flow.send(wait(command))
            else:
                # After its final command a driver concludes the flow: it just ends.
                conclude(flow)
                assert inspect.getgeneratorstate(flow) == inspect.GEN_CLOSED
                break
        else:  # pragma: no cover
            raise AssertionError("flow did not end")
    finally:
        flow.close()
    final = commands[-1]
    if complete and isinstance(final, Deliver):
        final.complete(final.outcome)
    return Run(commands)


def headers_of(attempt: Attempt) -> dict[str, str]:
    return dict(attempt.set_headers)


# ------------------------------------------------------------------------ host and route


def test_host_outside_the_mesh_passes_through_once() -> None:
    w = world(SERVICE)
    run = drive(w, call(authority="example.org"))
    (attempt,) = run.sends
    assert attempt.cluster == PASSTHROUGH_CLUSTER
    assert attempt.endpoint.address == "example.org"
    assert attempt.endpoint.port == 80
    assert ATTEMPT_COUNT_HEADER not in headers_of(attempt)
    assert isinstance(run.last, Deliver)
    assert w.records[-1].cluster == PASSTHROUGH_CLUSTER
    assert w.records[-1].status == 200


def test_passthrough_failure_is_the_plain_error_not_a_503() -> None:
    w = world(SERVICE)
    refused = Outcome(failure=FailureKind.CONNECT_FAILURE, detail="refused")
    run = drive(w, call(authority="example.org:8080"), lambda _a: refused)
    assert len(run.sends) == 1
    assert isinstance(run.last, Fail)
    assert run.last.outcome is refused


def test_no_virtual_service_uses_default_route_and_default_retries() -> None:
    w = world(SERVICE)
    refused = Outcome(failure=FailureKind.CONNECT_FAILURE)
    run = drive(w, call(), lambda _a: refused)
    # Istio's default: 2 retries on connect-failure, then 503 UF,URX.
    assert [a.number for a in run.sends] == [1, 2, 3]
    assert run.reply.status == 503
    assert run.reply.flags == ("UF", "URX")
    assert run.sends[0].cluster == cluster_name(9080, None, HOST)
    assert EXPECTED_TIMEOUT_HEADER not in headers_of(run.sends[0])  # no timeout by default


def test_default_route_does_not_retry_503() -> None:
    w = world(SERVICE)
    run = drive(w, call(), lambda _a: Outcome(status=503))
    assert len(run.sends) == 1
    assert run.deliver.outcome.status == 503
    assert run.deliver.flags == ()


def test_no_matching_route_is_404_nr() -> None:
    w = world(SERVICE + vs(f"  - match: [{{uri: {{prefix: /api}}}}]\n{ROUTE}"))
    run = drive(w, call("/other"))
    assert run.sends == []
    assert (run.reply.status, run.reply.flags, run.reply.body) == (404, ("NR",), "")
    assert w.records[-1].flags == ("NR",)


def test_redirect_and_direct_response_are_local() -> None:
    http = """  - match: [{uri: {exact: /old}}]
    redirect: {uri: /new}
  - match: [{uri: {exact: /direct}}]
    directResponse: {status: 418, body: {string: teapot}}
  - route: [{destination: {host: reviews}}]"""
    w = world(SERVICE + vs(http))
    run = drive(w, call("/old?q=1"))
    assert run.reply.status == 301
    assert dict(run.reply.headers)["location"] == "http://reviews:9080/new?q=1"
    run = drive(w, call("/direct"))
    assert (run.reply.status, run.reply.body) == (418, "teapot")
    assert run.sends == []


def test_header_match_routes_to_v2_and_is_case_sensitive() -> None:
    http = """  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]"""
    w = world(SERVICE + rule() + vs(http))
    assert drive(w, call(headers=[("end-user", "jason")])).sends[0].endpoint.address == "10.0.0.2"
    assert drive(w, call(headers=[("end-user", "Jason")])).sends[0].endpoint.address == "10.0.0.1"
    assert drive(w, call()).sends[0].cluster == cluster_name(9080, "v1", HOST)


def test_weighted_split_over_ten_thousand_requests() -> None:
    http = """  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}"""
    w = world(SERVICE + rule() + vs(http), seed=42)
    counts = Counter(drive(w, call()).sends[0].endpoint.address for _ in range(10_000))
    assert abs(counts["10.0.0.1"] / 10_000 - 0.9) <= 0.02
    assert counts["10.0.0.1"] + counts["10.0.0.2"] == 10_000


def test_undefined_subset_is_503_nc() -> None:
    w = world(SERVICE + vs("  - route: [{destination: {host: reviews, subset: v9}}]"))
    run = drive(w, call())
    assert (run.reply.status, run.reply.flags) == (503, ("NC",))


def test_rewrite_and_header_operations_reach_the_attempt() -> None:
    http = """  - match: [{uri: {prefix: /api}}]
    rewrite: {uri: /v2, authority: backend}
    headers:
      request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}
      response: {set: {x-r: "3"}}
    route: [{destination: {host: reviews}}]"""
    w = world(SERVICE + vs(http))
    run = drive(w, call("/api/items?x=1"))
    attempt = run.sends[0]
    assert attempt.path == "/v2/items?x=1"
    assert attempt.authority == "backend"
    assert ("x-a", "1") in attempt.set_headers
    assert tuple(attempt.add_headers) == (("x-b", "2"),)
    assert tuple(attempt.remove_headers) == ("x-c",)
    assert tuple(run.deliver.response_headers_set) == (("x-r", "3"),)


# ------------------------------------------------------------------------------ faults

FAULTS = """  - fault:
      delay: {fixedDelay: 7s, percentage: {value: 50}}
      abort: {httpStatus: 500, percentage: {value: 10}}
    route: [{destination: {host: reviews}}]"""


def test_fault_fractions_and_flags() -> None:
    w = world(SERVICE + vs(FAULTS), seed=3)
    delayed = aborted = 0
    n = 4000
    for _ in range(n):
        run = drive(w, call())
        if run.sleeps:
            delayed += 1
            assert run.sleeps[0] == 7.0
        if isinstance(run.last, Reply):
            aborted += 1
            assert (run.reply.status, run.reply.body) == (500, "fault filter abort")
            assert "FI" in run.reply.flags
            assert ("DI" in run.reply.flags) == bool(run.sleeps)
            assert run.sends == []
        else:
            assert ("DI" in run.deliver.flags) == bool(run.sleeps)
    assert abs(delayed / n - 0.5) < 0.03
    assert abs(aborted / n - 0.1) < 0.02


def test_abort_spends_no_pool_budget() -> None:
    policy = """  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
"""
    http = """  - fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]"""
    w = world(SERVICE + rule(policy, "") + vs(http))
    for _ in range(5):
        assert drive(w, call()).reply.flags == ("FI",)
    target = w.runtime.cluster_for(w.runtime.snapshot(), HOST, None, 9080, "reviews")
    assert target is not None
    assert target.state.limiter.active == 0
    assert target.state.limiter.overflows == 0


def test_grpc_abort_is_trailers_only() -> None:
    http = """  - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]"""
    w = world(SERVICE + vs(http))
    reply = drive(w, call(protocol="grpc")).reply
    assert (reply.status, reply.grpc_status) == (200, 14)


def test_grpc_local_reply_is_mapped() -> None:
    w = world(SERVICE + vs(f"  - match: [{{uri: {{prefix: /x}}}}]\n{ROUTE}"))
    reply = drive(w, call("/y", protocol="grpc")).reply
    assert (reply.status, reply.grpc_status) == (200, 12)


# ---------------------------------------------------------------------- timeouts, retries


def test_route_timeout_gives_504_ut() -> None:
    w = world(SERVICE + vs("  - timeout: 0.5s\n    route: [{destination: {host: reviews}}]"))

    def slow(attempt: Attempt) -> Outcome:
        assert attempt.timeout == pytest.approx(0.5)
        assert headers_of(attempt)[EXPECTED_TIMEOUT_HEADER] == "500"
        w.clock.value += attempt.timeout or 0
        return Outcome(failure=FailureKind.TIMEOUT)

    run = drive(w, call(), slow)
    assert len(run.sends) == 1
    assert (run.reply.status, run.reply.body, run.reply.flags) == (
        504,
        "upstream request timeout",
        ("UT",),
    )


RETRY_5XX = """  - retries: {attempts: 3, retryOn: "5xx", perTryTimeout: 1s}
    timeout: 10s
    route: [{destination: {host: reviews}}]"""


def test_flaky_upstream_succeeds_on_third_attempt() -> None:
    w = world(SERVICE + vs(RETRY_5XX))
    statuses = iter([503, 503, 200])
    run = drive(w, call(), lambda _a: Outcome(status=next(statuses)))
    assert [headers_of(a)[ATTEMPT_COUNT_HEADER] for a in run.sends] == ["1", "2", "3"]
    assert [a.timeout for a in run.sends] == [1.0, 1.0, 1.0]
    assert run.deliver.outcome.status == 200
    assert run.deliver.flags == ()
    assert run.sleeps[0] < 0.025
    assert run.sleeps[1] < 0.050
    # Retries prefer hosts not tried yet.
    assert run.sends[0].endpoint != run.sends[1].endpoint
    assert [k for _a, _o, k in w.attempts] == [
        Classification.GATEWAY_ERROR,
        Classification.GATEWAY_ERROR,
        Classification.SUCCESS,
    ]
    assert w.records[-1].attempts == 3


def test_exhausted_retries_deliver_last_response_with_urx() -> None:
    w = world(SERVICE + vs(RETRY_5XX))
    run = drive(w, call(), lambda _a: Outcome(status=500))
    assert len(run.sends) == 4
    assert run.deliver.flags == ("URX",)
    assert w.records[-1].flags == ("URX",)


def test_retriable_status_codes() -> None:
    http = """  - retries: {attempts: 2, retryOn: "retriable-status-codes,503"}
    route: [{destination: {host: reviews}}]"""
    w = world(SERVICE + vs(http))
    statuses = iter([503, 200])
    run = drive(w, call(), lambda _a: Outcome(status=next(statuses)))
    assert len(run.sends) == 2
    assert run.deliver.outcome.status == 200


def test_streamed_body_is_never_retried() -> None:
    w = world(SERVICE + vs(RETRY_5XX))
    run = drive(w, call(replayable=False), lambda _a: Outcome(status=503))
    assert len(run.sends) == 1
    assert run.deliver.flags == ()


def test_per_try_timeout_is_retried_only_with_reset_conditions() -> None:
    w = world(SERVICE + vs(RETRY_5XX))
    outcomes = iter([Outcome(failure=FailureKind.TIMEOUT), Outcome(status=200)])
    assert len(drive(w, call(), lambda _a: next(outcomes)).sends) == 2
    http = """  - retries: {attempts: 3, perTryTimeout: 1s}
    route: [{destination: {host: reviews}}]"""
    w = world(SERVICE + vs(http))
    run = drive(w, call(), lambda _a: Outcome(failure=FailureKind.TIMEOUT))
    assert len(run.sends) == 1
    assert (run.reply.status, run.reply.flags) == (504, ("UT",))


def test_deadline_during_backoff_waits_it_out_then_504() -> None:
    http = """  - retries: {attempts: 5, retryOn: "5xx"}
    timeout: 10ms
    route: [{destination: {host: reviews}}]"""
    w = world(SERVICE + vs(http), seed=5)

    def slow_503(_attempt: Attempt) -> Outcome:
        w.clock.value += 0.009
        return Outcome(status=503)

    run = drive(w, call(), slow_503)
    assert w.clock.value == pytest.approx(100.010)
    assert (run.reply.status, run.reply.flags) == (504, ("UT",))


def test_deadline_reached_between_attempts() -> None:
    http = """  - retries: {attempts: 5, retryOn: "5xx"}
    timeout: 1s
    route: [{destination: {host: reviews}}]"""
    w = world(SERVICE + vs(http))

    def answer(_attempt: Attempt) -> Outcome:
        w.clock.value += 0.999999
        return Outcome(status=503)

    run = drive(w, call(), answer)
    assert (run.reply.status, run.reply.flags) == (504, ("UT",))


def test_caller_timeout_fails_with_the_callers_error() -> None:
    w = world(SERVICE + vs("  - timeout: 10s\n    route: [{destination: {host: reviews}}]"))

    def slow(attempt: Attempt) -> Outcome:
        assert attempt.timeout == pytest.approx(2.0)
        w.clock.value += 2.0
        return Outcome(failure=FailureKind.TIMEOUT)

    run = drive(w, call(), slow, caller_timeout=2.0)
    assert isinstance(run.last, Fail)
    assert run.last.outcome.failure is FailureKind.TIMEOUT


def test_inherited_deadline_caps_attempts() -> None:
    w = world(SERVICE)
    run = drive(w, call(), inherited_deadline=100.25)
    assert run.sends[0].timeout == pytest.approx(0.25)
    assert headers_of(run.sends[0])[EXPECTED_TIMEOUT_HEADER] == "250"


def test_expired_inherited_deadline_sends_nothing() -> None:
    w = world(SERVICE)
    run = drive(w, call(), inherited_deadline=99.0)
    assert run.sends == []
    assert run.reply.status == 504


# ---------------------------------------------------------------------- limits, outliers

BREAKER = """  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, maxRetries: 1}
"""


def _state(w: World, subset: str | None = None) -> Any:
    target = w.runtime.cluster_for(w.runtime.snapshot(), HOST, subset, 9080, "reviews")
    assert target is not None
    return target.state


def test_overflow_is_503_uo_and_queued_requests_wait() -> None:
    w = world(SERVICE + rule(BREAKER, ""))
    first = outbound_flow(call(), w.runtime)
    command = next(first)
    assert isinstance(command, Send)
    assert ("connection", "close") in command.attempt.set_headers  # maxRequestsPerConnection 1
    second = outbound_flow(call(), w.runtime)
    waiting = next(second)
    assert isinstance(waiting, WaitSlot)
    third = drive(w, call())
    assert (third.reply.status, third.reply.flags) == (503, ("UO",))
    assert ("x-envoy-overloaded", "true") in third.reply.headers
    assert third.sends == []
    # The first completes: its slot is handed to the waiter.
    delivered = first.send(Outcome(status=200))
    assert isinstance(delivered, Deliver)
    first.close()
    state = waiting.cluster
    woken: list[bool] = []
    waiter = state.wait_for_slot(lambda: woken.append(True))
    assert not waiter.admitted
    delivered.complete(delivered.outcome)
    delivered.complete(delivered.outcome)  # exactly once, even if called twice
    assert woken == [True]
    assert isinstance(second.send(None), Send)
    second.close()
    assert state.limiter.active == 0


def test_wait_slot_timeout_is_504() -> None:
    w = world(SERVICE + rule(BREAKER, "") + vs(f"  - timeout: 1s\n{ROUTE}"))
    holder = outbound_flow(call(), w.runtime)
    next(holder)
    run = drive(w, call(), wait=lambda c: Outcome(failure=FailureKind.TIMEOUT))
    assert isinstance(run.commands[0], WaitSlot)
    assert run.commands[0].timeout == pytest.approx(1.0)
    assert (run.reply.status, run.reply.flags) == (504, ("UT",))
    holder.close()
    assert _state(w).limiter.active == 0


def test_retry_overflow_returns_last_response_with_uo() -> None:
    policy = """  trafficPolicy:
    connectionPool: {http: {maxRetries: 1}}
"""
    w = world(SERVICE + rule(policy, "") + vs(RETRY_5XX))
    state = _state(w)
    assert state.try_acquire_retry()  # another request holds the only retry slot
    run = drive(w, call(), lambda _a: Outcome(status=503))
    assert len(run.sends) == 1
    assert run.deliver.flags == ("UO",)
    state.release_retry()
    statuses = iter([503, 503, 200])
    run = drive(w, call(), lambda _a: Outcome(status=next(statuses)))
    assert len(run.sends) == 3  # the slot of retry 1 is given back before retry 2
    assert state.limiter.retries == 0


OUTLIERS = """  trafficPolicy:
    outlierDetection:
      {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
"""


def test_failing_endpoint_is_ejected_and_returns_after_base_ejection_time() -> None:
    w = world(SERVICE + rule(OUTLIERS, ""))

    def bad_first(attempt: Attempt) -> Outcome:
        return Outcome(status=500 if attempt.endpoint.address == "10.0.0.1" else 200)

    seen = Counter(drive(w, call(), bad_first).sends[0].endpoint.address for _ in range(40))
    assert seen["10.0.0.1"] == 1  # one 500 ejects it; everything else goes to the healthy one
    w.clock.value += 31.0
    seen = Counter(drive(w, call(), ok).sends[0].endpoint.address for _ in range(40))
    assert seen["10.0.0.1"] > 0


def test_all_endpoints_ejected_is_503_uh() -> None:
    w = world(SERVICE + rule(OUTLIERS, ""))
    for _ in range(6):
        drive(w, call(), lambda _a: Outcome(status=500))
    run = drive(w, call())
    assert run.sends == []
    assert (run.reply.status, run.reply.body, run.reply.flags) == (
        503,
        "no healthy upstream",
        ("UH",),
    )


def test_connect_failures_count_for_outlier_detection() -> None:
    w = world(SERVICE + rule(OUTLIERS, ""))
    drive(w, call(), lambda _a: Outcome(failure=FailureKind.CONNECT_FAILURE))
    assert _state(w).detector.ejected_count >= 1


# ---------------------------------------------------------------- permits and telemetry


def test_closing_the_flow_mid_attempt_releases_everything() -> None:
    w = world(SERVICE + rule(BREAKER, ""))
    flow = outbound_flow(call(), w.runtime)
    assert isinstance(next(flow), Send)
    state = _state(w)
    assert state.limiter.active == 1
    flow.close()  # the caller was cancelled
    assert state.limiter.active == 0
    assert w.records[-1].flags == ("DC",)
    assert w.records[-1].status == 0
    assert state.admit() is Admission.ADMITTED
    state.release()


def test_closing_after_deliver_keeps_permits_until_completion() -> None:
    w = world(SERVICE + rule(BREAKER, ""))
    run = drive(w, call(), complete=False)
    state = _state(w)
    assert state.limiter.active == 1
    assert w.records == []
    run.deliver.complete(Outcome(status=200))
    assert state.limiter.active == 0
    assert len(w.records) == 1
    assert w.records[0].status == 200


def test_closing_during_retry_backoff_releases_the_retry_slot() -> None:
    w = world(SERVICE + vs(RETRY_5XX))
    flow = outbound_flow(call(), w.runtime)
    next(flow)
    assert isinstance(flow.send(Outcome(status=503)), Sleep)
    assert isinstance(flow.send(None), Send)
    state = _state(w)
    assert state.limiter.retries == 1
    flow.close()
    assert state.limiter.retries == 0
    assert state.limiter.active == 0


def test_mtls_only_towards_mesh_endpoints() -> None:
    w = world(SERVICE, identity=FakeIdentity())
    by_address = {}
    for _ in range(20):
        attempt = drive(w, call()).sends[0]
        by_address[attempt.endpoint.address] = attempt.tls
    assert by_address == {"10.0.0.1": False, "10.0.0.2": True}
    peers = {drive(w, call()).sends[0].expected_peers for _ in range(20)}
    assert peers == {frozenset(), frozenset({"spiffe://cluster.local/ns/default/sa/reviews"})}
    policy = "  trafficPolicy: {tls: {mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/default/sa/reviews]}}\n"
    w = world(SERVICE + rule(policy, ""), identity=FakeIdentity())
    attempt = drive(w, call()).sends[0]
    assert attempt.tls
    assert attempt.expected_peers == frozenset({"spiffe://cluster.local/ns/default/sa/reviews"})
    w = world(SERVICE + rule(policy, ""))  # no identity: plaintext
    assert not drive(w, call()).sends[0].tls


def test_dns_host_with_only_a_virtual_service() -> None:
    text = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ext, namespace: default}
spec:
  hosts: [api.example.com]
  http:
  - timeout: 2s
    route: [{destination: {host: api.example.com}}]
"""
    w = world(text)
    attempt = drive(w, call(authority="api.example.com")).sends[0]
    assert (attempt.endpoint.address, attempt.endpoint.port) == ("api.example.com", 80)
    assert attempt.timeout == pytest.approx(2.0)


def test_fixed_snapshot_runtime_and_cache_across_generations() -> None:
    snapshot = MeshSnapshot.build(1, MeshIdentity(namespace=NS), [])
    runtime = build_runtime(snapshot)
    assert runtime.snapshot() is snapshot
    runtime.sleep(0.0)
    runtime.sleep(0.001)
    # A flow may be handed the snapshot to use (a driver that already read it).
    run_flow = outbound_flow(call(authority="example.org"), runtime, snapshot=snapshot)
    first_command = next(run_flow)
    assert isinstance(first_command, Send)
    assert first_command.attempt.cluster == PASSTHROUGH_CLUSTER
    run_flow.close()
    w = world(SERVICE)
    first = w.runtime.cluster_for(w.runtime.snapshot(), HOST, None, 9080, "reviews")
    again = w.runtime.cluster_for(w.runtime.snapshot(), HOST, None, 9080, "reviews")
    assert first is again


@settings(max_examples=50, deadline=None)
@given(
    statuses=st.lists(st.sampled_from([200, 404, 500, 503, 0]), min_size=1, max_size=5),
    close_early=st.booleans(),
)
def test_every_path_returns_every_permit(statuses: list[int], close_early: bool) -> None:
    w = world(SERVICE + rule(BREAKER.replace("maxRetries: 1", "maxRetries: 5"), "") + vs(RETRY_5XX))
    answers = iter(statuses)

    def answer(_attempt: Attempt) -> Outcome:
        status = next(answers, 200)
        if status == 0:
            return Outcome(failure=FailureKind.RESET)
        return Outcome(status=status)

    run = drive(w, call(), answer, complete=not close_early)
    state = _state(w)
    if close_early and isinstance(run.last, Deliver):
        assert state.limiter.active == 1
        run.last.complete(run.last.outcome)
    assert state.limiter.active == 0
    assert state.limiter.retries == 0
    assert len(w.records) == 1


def test_outbound_headers_hook_carries_context_and_route_set_wins() -> None:
    seen: list[tuple[float, float | None]] = []

    def carried(start: float, deadline: float | None) -> list[tuple[str, str]]:
        seen.append((start, deadline))
        return [("traceparent", "00-abc-def-01"), ("x-request-id", "rid")]

    w = world(SERVICE + vs("  - route: [{destination: {host: reviews}}]\n    timeout: 2s"))
    w.runtime.hooks = TelemetryHooks(outbound_headers=carried)
    headers = headers_of(drive(w, call()).sends[0])
    assert headers["traceparent"] == "00-abc-def-01"
    assert headers["x-request-id"] == "rid"
    assert seen == [(w.clock.value, w.clock.value + 2.0)]
    w.runtime.hooks = TelemetryHooks(outbound_headers=lambda _s, _d: ())
    assert "traceparent" not in headers_of(drive(w, call()).sends[0])


def test_a_constant_from_the_headers_hook_is_kept_and_a_new_one_replaces_it() -> None:
    """A hook returning the same tuple each time (telemetry outside any inbound request) lets
    the flow keep the headers it built; any other value is carried as it is, every time."""
    peer = (("x-meshlib-peer-metadata", "workload=a"),)
    other = (("x-meshlib-peer-metadata", "workload=b"),)
    current: list[tuple[tuple[str, str], ...] | list[tuple[str, str]]] = [peer]
    w = world(
        SERVICE
        + vs(
            "  - route: [{destination: {host: reviews}}]\n"
            "    headers: {request: {set: {x-route: r}}}"
        )
    )
    w.runtime.hooks = TelemetryHooks(outbound_headers=lambda _s, _d: current[0])
    for expected, value in (("workload=a", peer), ("workload=a", peer), ("workload=b", other)):
        current[0] = value
        headers = headers_of(drive(w, call()).sends[0])
        assert headers["x-meshlib-peer-metadata"] == expected
        assert headers["x-route"] == "r"
    current[0] = [("x-request-id", "per-request")]  # a list: built for this request only
    headers = headers_of(drive(w, call()).sends[0])
    assert headers["x-request-id"] == "per-request"
    assert "x-meshlib-peer-metadata" not in headers
    current[0] = other
    assert headers_of(drive(w, call()).sends[0])["x-meshlib-peer-metadata"] == "workload=b"


# ------------------------------------------------------------------------------- mirroring


def first_send(run: Run) -> Send:
    sends = [c for c in run.commands if isinstance(c, Send)]
    return sends[0]


def test_mirror_copies_go_with_the_first_attempt_only() -> None:
    mirror = "    mirror: {host: reviews, subset: v2}\n    retries: {attempts: 2, retryOn: 5xx}\n"
    route = "  - route: [{destination: {host: reviews, subset: v1}}]\n"
    w = world(SERVICE + rule() + vs(route + mirror))
    answers = iter([Outcome(status=503), Outcome(status=200)])
    run = drive(w, call(), lambda _a: next(answers))
    sends = [c for c in run.commands if isinstance(c, Send)]
    assert len(sends) == 2
    assert [s.endpoint.address for s in sends[0].shadows] == ["10.0.0.2"]
    assert not sends[0].shadows[0].tls  # no identity in this world: plaintext
    assert sends[1].shadows == ()  # retries are not mirrored again
    assert run.deliver.outcome.status == 200


def test_mirror_percentage_over_ten_thousand_requests() -> None:
    spec = (
        "  - route: [{destination: {host: reviews, subset: v1}}]\n"
        "    mirror: {host: reviews, subset: v2}\n"
        "    mirrorPercentage: {value: 25}\n"
    )
    w = world(SERVICE + rule() + vs(spec), seed=11)
    mirrored = sum(bool(first_send(drive(w, call())).shadows) for _ in range(10_000))
    assert 2300 <= mirrored <= 2700


def test_streamed_bodies_and_unknown_subsets_are_not_mirrored() -> None:
    spec = (
        "  - route: [{destination: {host: reviews, subset: v1}}]\n"
        "    mirrors:\n"
        "    - {destination: {host: reviews, subset: v2}}\n"
        "    - {destination: {host: reviews, subset: nope}}\n"
    )
    w = world(SERVICE + rule() + vs(spec))
    assert [s.cluster for s in first_send(drive(w, call())).shadows] == [
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    ]
    assert first_send(drive(w, call(replayable=False))).shadows == ()
