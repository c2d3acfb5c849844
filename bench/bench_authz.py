"""Authorization cost: one ``Authorizer.check`` against 50 policies (prints p50/p90, not a test).

Run: ``python bench/bench_authz.py``. Three sets of 50 policies (25 DENY, 25 ALLOW); the
request is allowed by an ALLOW policy after every DENY policy was considered. "indexed": each
policy requires an exact principal or namespace; "prefixes": each requires a path prefix (a
character trie finds the candidates); "no index (scan)": suffixes and negations only, so every
policy is evaluated - the worst case.
"""

from __future__ import annotations

import statistics
import time

from meshlib._model import Peer
from meshlib._policy.authz import AuthorizationPolicy, Authorizer, AuthzRequest, build_policy

POLICIES = 50
ROUNDS = 20_000
BATCH = 10


def _policies() -> list[AuthorizationPolicy]:
    policies = []
    for i in range(POLICIES // 2):
        policies.append(
            build_policy(
                f"deny-{i}",
                "default",
                action="DENY",
                rules=[
                    {
                        "from": [{"source": {"namespaces": [f"blocked-{i}"]}}],
                        "to": [{"operation": {"methods": ["DELETE"], "paths": [f"/admin{i}*"]}}],
                    }
                ],
            )
        )
    for i in range(POLICIES // 2):
        policies.append(
            build_policy(
                f"allow-{i}",
                "default",
                rules=[
                    {
                        "from": [
                            {"source": {"principals": [f"cluster.local/ns/default/sa/client-{i}"]}}
                        ],
                        "to": [{"operation": {"methods": ["GET", "POST"], "paths": ["/api/*"]}}],
                        "when": [{"key": "request.headers[x-tenant]", "values": ["acme"]}],
                    }
                ],
            )
        )
    return policies


def _scan_policies() -> list[AuthorizationPolicy]:
    policies = []
    for i in range(POLICIES // 2):
        policies.append(
            build_policy(
                f"deny-{i}",
                "default",
                action="DENY",
                rules=[{"to": [{"operation": {"notMethods": ["GET"], "paths": [f"/admin{i}*"]}}]}],
            )
        )
    for i in range(POLICIES // 2):
        policies.append(
            build_policy(
                f"allow-{i}",
                "default",
                rules=[
                    {
                        "from": [{"source": {"notNamespaces": [f"blocked-{i}"]}}],
                        "to": [{"operation": {"paths": [f"/api/v{i}/*"]}}],
                    }
                ],
            )
        )
    return policies


def _unindexed_policies() -> list[AuthorizationPolicy]:
    last = POLICIES // 2 - 1
    policies = []
    for i in range(POLICIES // 2):
        policies.append(
            build_policy(
                f"deny-{i}",
                "default",
                action="DENY",
                rules=[{"to": [{"operation": {"notMethods": ["GET"], "paths": [f"*.v{i}"]}}]}],
            )
        )
    for i in range(POLICIES // 2):
        policies.append(
            build_policy(
                f"allow-{i}",
                "default",
                rules=[
                    {
                        "from": [{"source": {"notNamespaces": [f"blocked-{i}"]}}],
                        # only the last one admits the request: every ALLOW is evaluated
                        "to": [{"operation": {"notPaths": ["*/x" if i == last else "*/1"]}}],
                    }
                ],
            )
        )
    return policies


def _measure(name: str, policies: list[AuthorizationPolicy], path: str) -> None:
    authorizer = Authorizer(policies)
    last = POLICIES // 2 - 1
    request = AuthzRequest(
        peer=Peer(f"spiffe://cluster.local/ns/default/sa/client-{last}", mtls=True),
        source_ip="10.0.0.7",
        host="reviews:9080",
        port=9080,
        method="GET",
        path=path,
        headers={"x-tenant": "acme"},
    )
    decision = authorizer.check(request)
    if not decision.allowed or decision.policy != f"default/allow-{last}":
        raise SystemExit(f"unexpected decision: {decision}")
    samples: list[float] = []
    check = authorizer.check
    clock = time.perf_counter_ns
    for _ in range(ROUNDS):
        start = clock()
        for _ in range(BATCH):
            check(request)
        samples.append((clock() - start) / BATCH / 1000)
    samples.sort()
    p50 = statistics.median(samples)
    p90 = samples[int(len(samples) * 0.9)]
    print(f"authz check, {POLICIES} policies, {name}: p50 {p50:.2f} us, p90 {p90:.2f} us")


def main() -> None:
    _measure("indexed", _policies(), "/api/v1/reviews/1?x=1")
    _measure("prefixes", _scan_policies(), f"/api/v{POLICIES // 2 - 1}/reviews/1?x=1")
    _measure("no index (scan)", _unindexed_policies(), f"/api/v{POLICIES // 2 - 1}/reviews/1")


if __name__ == "__main__":
    main()
