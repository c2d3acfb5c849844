"""Routing decisions are kept: per Call a driver reuses (``Call.memo``), and per generation for
requests that share every part the route table reads. Neither may change what the flow does,
only how much work it repeats."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlib._config.source import ConfigSource
from meshlib._engine import outbound
from meshlib._engine.outbound import outbound_flow
from meshlib._engine.runtime import build_runtime
from meshlib._model import Attempt, Call, Deliver, Outcome, Reply, Send, Sleep
from meshlib._model.call import Memo
from tests.engine.test_dns_endpoints import FakeResolver
from tests.engine.test_dns_endpoints import runtime as dns_runtime
from tests.engine.test_outbound_flow import (
    HOST,
    NS,
    SERVICE,
    FakeClock,
    Headers,
    World,
    call,
    drive,
    rule,
    vs,
    world,
)

TO = "    route: [{destination: {host: reviews}}]"
ROUTES = {
    "default": "",
    "weighted": vs(
        "  - route:\n"
        "    - {destination: {host: reviews, subset: v1}, weight: 70}\n"
        "    - {destination: {host: reviews, subset: v2}, weight: 30}"
    ),
    "no match": vs("  - match: [{uri: {prefix: /only}}]\n" + TO),
    "redirect": vs("  - redirect: {uri: /moved}"),
    "direct": vs("  - directResponse: {status: 418, body: {string: tea}}"),
    "abort": vs("  - fault: {abort: {httpStatus: 503, percentage: {value: 50}}}\n" + TO),
    "delay": vs("  - fault: {delay: {fixedDelay: 1s, percentage: {value: 50}}}\n" + TO),
    "rewrite": vs("  - rewrite: {uri: /v2, authority: ratings}\n" + TO),
    "headers": vs("  - headers: {request: {set: {x-a: b}}, response: {add: {x-c: d}}}\n" + TO),
    "mirror": vs(
        "  - mirror: {host: reviews, subset: v2}\n    mirrorPercentage: {value: 50}\n" + TO
    ),
    "no subset": vs("  - route: [{destination: {host: reviews, subset: v9}}]"),
    "retries": vs("  - retries: {attempts: 3, retryOn: 5xx}\n" + TO),
    "paths": vs(
        "  - match: [{uri: {prefix: /only}}, {uri: {exact: /p}, ignoreUriCase: true}]\n"
        "    route: [{destination: {host: reviews, subset: v2}}]\n"
        "  - route: [{destination: {host: reviews, subset: v1}}]"
    ),
    "method and scheme": vs(
        "  - match: [{method: {exact: POST}}, {scheme: {exact: https}}]\n"
        "    route: [{destination: {host: reviews, subset: v2}}]\n"
        "  - route: [{destination: {host: reviews, subset: v1}}]"
    ),
    "authority": vs(
        "  - match: [{authority: {prefix: reviews.default}}]\n"
        "    route: [{destination: {host: reviews, subset: v2}}]\n"
        "  - route: [{destination: {host: reviews, subset: v1}}]"
    ),
    "header match": vs(
        "  - match: [{headers: {x-user: {exact: jason}}}]\n"
        "    route: [{destination: {host: reviews, subset: v2}}]\n"
        "  - route: [{destination: {host: reviews, subset: v1}}]"
    ),
    "query match": vs(
        "  - match: [{queryParams: {v: {exact: '2'}}}]\n"
        "    route: [{destination: {host: reviews, subset: v2}}]\n"
        "  - route: [{destination: {host: reviews, subset: v1}}]"
    ),
}
REQUESTS = st.tuples(
    st.sampled_from(["/p", "/P", "/only/x", "/q?v=2", "/q?v=1"]),
    st.sampled_from(["GET", "POST"]),
    st.sampled_from(["http", "https"]),
    st.sampled_from(["reviews:9080", "reviews.default.svc.cluster.local:9080", "example.org"]),
    st.sampled_from([(), (("x-user", "jason"),)]),
)
POLICIES = {
    "plain": "",
    "cookie": "  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n"
    "        httpCookie: {name: user, ttl: 10s}\n",
    "header hash": "  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n"
    "        httpHeaderName: x-user\n",
    "close": "  trafficPolicy:\n    connectionPool:\n      http: {maxRequestsPerConnection: 1}\n",
}


def memoized(c: Call) -> Call:
    c.memo = Memo()
    return c


def trace(w: World, calls: list[Call], answers: list[int]) -> list[Any]:
    """What the flow commanded for each call (Sends, Sleeps, the final answer), as values."""
    seen: list[Any] = []
    for c, status in zip(calls, answers, strict=True):
        run = drive(w, c, lambda _a, s=status: Outcome(status=s))  # type: ignore[misc]
        for command in run.commands:
            if isinstance(command, Send):
                # Attempts compare by identity: compare their fields.
                seen.append(("send", repr(command.attempt), repr(command.shadows)))
            elif isinstance(command, Sleep):
                seen.append(("sleep", command.seconds))
            elif isinstance(command, Reply):
                seen.append(("reply", command))
            elif isinstance(command, Deliver):
                seen.append(
                    (
                        "deliver",
                        command.outcome,
                        command.flags,
                        command.response_headers_set,
                        command.response_headers_add,
                        command.response_headers_remove,
                    )
                )
    seen.append([(r.cluster, r.status, r.flags, r.attempts) for r in w.records])
    return seen


def request(spec: tuple[str, str, str, str, tuple[tuple[str, str], ...]]) -> Call:
    path, method, scheme, authority, headers = spec
    host, _, port = authority.partition(":")
    return Call(
        protocol="http",
        method=method,
        scheme=scheme,
        authority=authority,
        host=host,
        port=int(port or 80),
        path=path,
        headers=Headers(headers),
    )


def afresh() -> Any:
    """Nothing is kept: every request is routed from scratch (the reference)."""
    return patch.object(outbound, "MAX_KEYED_ROUTINGS", 0)


@settings(max_examples=150, deadline=None)
@given(
    route=st.sampled_from(sorted(ROUTES)),
    policy=st.sampled_from(sorted(POLICIES)),
    seed=st.integers(0, 2**16),
    specs=st.lists(st.tuples(REQUESTS, st.sampled_from([200, 200, 503])), min_size=1, max_size=12),
)
def test_kept_decisions_route_exactly_as_routing_afresh(
    route: str,
    policy: str,
    seed: int,
    specs: list[tuple[tuple[str, str, str, str, tuple[tuple[str, str], ...]], int]],
) -> None:
    text = SERVICE + rule(POLICIES[policy]) + ROUTES[route]
    answers = [status for _, status in specs]
    with afresh():
        expected = trace(world(text, seed=seed), [request(r) for r, _ in specs], answers)
    # Kept per generation, by what the route table reads of each request.
    assert trace(world(text, seed=seed), [request(r) for r, _ in specs], answers) == expected
    # Kept on one Call sent again and again.
    first = specs[0][0]
    with afresh():
        expected = trace(world(text, seed=seed), [request(first) for _ in specs], answers)
    reused = memoized(request(first))
    assert trace(world(text, seed=seed), [reused] * len(specs), answers) == expected


@pytest.mark.parametrize(
    ("route", "varied"),
    [
        ("paths", [("/p", "GET", "http"), ("/x", "GET", "http"), ("/only/y", "GET", "http")]),
        ("method and scheme", [("/p", "GET", "http"), ("/p", "POST", "http")]),
        ("method and scheme", [("/p", "GET", "http"), ("/p", "GET", "https")]),
        ("authority", [("/p", "GET", "http")]),
        ("header match", [("/p", "GET", "http")]),
        ("query match", [("/q?v=1", "GET", "http"), ("/q?v=2", "GET", "http")]),
    ],
)
def test_requests_that_differ_in_what_the_table_reads_are_routed_apart(
    route: str, varied: list[tuple[str, str, str]]
) -> None:
    text = SERVICE + rule() + ROUTES[route]
    specs = [
        (path, method, scheme, authority, headers)
        for authority in ("reviews:9080", "reviews.default:9080")
        for headers in ((), (("x-user", "jason"),))
        for path, method, scheme in varied
    ]
    specs = specs + specs[::-1]
    answers = [200] * len(specs)
    with afresh():
        expected = trace(world(text), [request(r) for r in specs], answers)
    assert len({repr(step) for step in expected[:-1]}) > 2  # the requests went different ways
    assert trace(world(text), [request(r) for r in specs], answers) == expected


@pytest.mark.parametrize("keep", [memoized, lambda c: c], ids=["memoized", "keyed"])
def test_kept_decisions_follow_a_new_snapshot(keep: Callable[[Call], Call]) -> None:
    w = world(SERVICE + rule() + vs("  - route: [{destination: {host: reviews, subset: v1}}]"))
    c = keep(call())
    assert _subsets(w, c) == {"v1"}
    moved = ConfigSource.from_text(
        SERVICE + rule() + vs("  - route: [{destination: {host: reviews, subset: v2}}]"),
        namespace=NS,
    )
    w.runtime.snapshot = lambda: moved.snapshot
    assert _subsets(w, c) == {"v2"}


@pytest.mark.parametrize("keep", [memoized, lambda c: c], ids=["memoized", "keyed"])
def test_kept_decisions_follow_new_dns_answers(keep: Callable[[Call], Call]) -> None:
    resolver = FakeResolver({"bare.example.com": ("198.51.100.1",)})
    rt = dns_runtime(resolver)
    c = keep(call(authority="bare.example.com"))
    w = World(rt, FakeClock())  # drive() only reads the world's clock to sleep
    assert _addresses(w, c) == {"198.51.100.1"}
    resolver.set("bare.example.com", ("198.51.100.3",))
    assert _addresses(w, c) == {"198.51.100.3"}


def test_two_runtimes_on_one_config_keep_their_own_cluster_state() -> None:
    # Same snapshot, separate cluster registries: the memo must not carry one runtime's
    # cluster (its limits, balancer load, outlier counts) into the other.
    source = ConfigSource.from_text(SERVICE, namespace=NS)
    first, second = build_runtime(source), build_runtime(source)
    c = memoized(call())
    for rt in (first, second, first):
        flow = outbound_flow(c, rt)
        command = next(flow)
        assert isinstance(command, Send)
        state = rt.clusters.get((HOST, None, 9080))
        assert state is not None
        assert state.limiter.active == 1  # this runtime's cluster admitted it
        flow.close()
        assert state.limiter.active == 0


def _sends(w: World, c: Call, count: int = 20) -> list[Attempt]:
    sends = []
    for _ in range(count):
        flow = outbound_flow(c, w.runtime)
        command = next(flow)
        assert isinstance(command, Send)
        sends.append(command.attempt)
        final = flow.send(Outcome(status=200))
        assert isinstance(final, Deliver)
        final.complete(final.outcome)
        flow.close()
    return sends


def _subsets(w: World, c: Call) -> set[str]:
    return {attempt.cluster.split("|")[2] for attempt in _sends(w, c)}


def _addresses(w: World, c: Call) -> set[str]:
    return {attempt.endpoint.address for attempt in _sends(w, c)}
