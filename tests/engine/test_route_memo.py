"""A Call a driver reuses keeps what routing decided (``Call.memo``): it must never change
what the flow does, only how much work it repeats."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlib._config.source import ConfigSource
from meshlib._engine.outbound import outbound_flow
from meshlib._engine.runtime import build_runtime
from meshlib._model import Attempt, Call, Deliver, Outcome, Reply, Send, Sleep
from meshlib._model.call import Memo
from tests.engine.test_dns_endpoints import DNS_ENTRY, FakeResolver
from tests.engine.test_dns_endpoints import runtime as dns_runtime
from tests.engine.test_outbound_flow import HOST, NS, SERVICE, World, call, drive, rule, vs, world

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
}
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


@settings(max_examples=60, deadline=None)
@given(
    route=st.sampled_from(sorted(ROUTES)),
    policy=st.sampled_from(sorted(POLICIES)),
    seed=st.integers(0, 2**16),
    answers=st.lists(st.sampled_from([200, 200, 503]), min_size=1, max_size=12),
    authority=st.sampled_from(["reviews:9080", "example.org"]),
    headers=st.sampled_from([(), (("x-user", "jason"),)]),
)
def test_a_memoized_call_is_routed_exactly_as_fresh_calls_are(
    route: str,
    policy: str,
    seed: int,
    answers: list[int],
    authority: str,
    headers: tuple[tuple[str, str], ...],
) -> None:
    text = SERVICE + rule(POLICIES[policy]) + ROUTES[route]

    def fresh() -> Call:
        return call("/p", authority=authority, headers=headers)

    reused = memoized(fresh())
    expected = trace(world(text, seed=seed), [fresh() for _ in answers], answers)
    assert trace(world(text, seed=seed), [reused] * len(answers), answers) == expected


def test_the_memo_follows_a_new_snapshot() -> None:
    w = world(SERVICE + rule() + vs("  - route: [{destination: {host: reviews, subset: v1}}]"))
    c = memoized(call())
    assert _subsets(w, c) == {"v1"}
    moved = ConfigSource.from_text(
        SERVICE + rule() + vs("  - route: [{destination: {host: reviews, subset: v2}}]"),
        namespace=NS,
    )
    w.runtime.snapshot = lambda: moved.snapshot
    assert _subsets(w, c) == {"v2"}


def test_the_memo_follows_new_dns_answers() -> None:
    resolver = FakeResolver({"bare.example.com": ("198.51.100.1",)})
    rt = dns_runtime(resolver)
    c = memoized(call(authority="bare.example.com"))
    w = World(rt, clock=None)  # type: ignore[arg-type]
    assert _addresses(w, c) == {"198.51.100.1"}
    resolver.set("bare.example.com", ("198.51.100.3",))
    assert _addresses(w, c) == {"198.51.100.3"}
    assert DNS_ENTRY  # the entry that makes bare.example.com a DNS cluster


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
