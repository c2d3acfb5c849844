"""The demo's scenarios: each drives real requests through the mesh and checks what it did.

A scenario never raises for a misbehaving mesh: it records the failed expectation, so the report
can show every problem at once. Counts are checked against ranges, never exact values.
"""

from __future__ import annotations

import math
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from meshlib._demo.services import RATINGS_UNAVAILABLE, REVIEWS_UNAVAILABLE, flags_of
from meshlib._demo.topology import CLIENT, SERVICE_PORT, UNTRUSTED, WORKLOADS

if TYPE_CHECKING:
    import httpx

    from meshlib._demo.cluster import DemoCluster

__all__ = ["SCENARIOS", "DemoContext", "Scenario", "ScenarioResult"]

Status = Literal["passed", "failed", "skipped"]
PRODUCTPAGE = f"http://productpage:{SERVICE_PORT}"
CONCURRENCY = 4
"""Callers in flight for the traffic-shifting run."""
SHIFT_WEIGHT_V3 = 0.10
SHIFT_SIGMAS = 4.0
"""Binomial bound on the observed v3 share: 4 standard deviations, never tighter than 3 points."""
SHIFT_MIN_TOLERANCE = 0.03
HEADER_REQUESTS = 10
ABORT_REQUESTS = 5
DELAY_REQUESTS = 2
RETRY_REQUESTS = 5
BREAKER_CALLERS = 3
BREAKER_DELAY = "0.2"
BREAKER_MIN_ROUNDS = 4
BREAKER_MAX_ROUNDS = 15
PEER_SEARCH_REQUESTS = 60
"""Bounded search for a v3 answer (the one that also shows the ratings hop)."""
RBAC_DENIED = "RBAC: access denied"


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    name: str
    title: str
    status: Status
    lines: tuple[str, ...]
    """What the mesh did, one short line each, for the report."""
    data: dict[str, Any]
    """The same as JSON-able values (``--output json``)."""
    failures: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "lines": list(self.lines),
            "data": self.data,
            "failures": list(self.failures),
        }


@dataclass
class DemoContext:
    cluster: DemoCluster
    client: httpx.Client
    """demo-client's mesh client (sync, thread-safe)."""
    requests: int
    seed: int
    shared: dict[str, Any] = field(default_factory=dict)
    """Answers one scenario leaves for another (a v3 answer for the mTLS peer chain)."""


class _Recorder:
    def __init__(self, name: str, title: str) -> None:
        self.name = name
        self.title = title
        self.lines: list[str] = []
        self.data: dict[str, Any] = {}
        self.failures: list[str] = []

    def expect(self, ok: bool, failure: str) -> bool:
        if not ok:
            self.failures.append(failure)
        return ok

    def result(self, status: Status | None = None) -> ScenarioResult:
        final: Status = status or ("failed" if self.failures else "passed")
        return ScenarioResult(
            self.name, self.title, final, tuple(self.lines), self.data, tuple(self.failures)
        )


def _productpage(ctx: DemoContext, user: str | None = None) -> httpx.Response:
    headers = {"end-user": user} if user is not None else {}
    return ctx.client.get(f"{PRODUCTPAGE}/productpage", headers=headers)


def _reviews_of(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        return {"error": f"productpage answered {response.status_code}"}
    reviews: dict[str, Any] = response.json().get("reviews") or {}
    return reviews


def _flags(answer: dict[str, Any]) -> str:
    return ",".join(answer.get("flags") or []) or "-"


def _pct(count: int, total: int) -> str:
    return f"{100.0 * count / total:.1f}%" if total else "-"


# ------------------------------------------------------------------------------- scenarios


def traffic_shifting(ctx: DemoContext) -> ScenarioResult:
    rec = _Recorder("shifting", "Traffic shifting 90/10 (reviews v1/v3)")
    n = max(ctx.requests, 1)
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="demo-shift") as pool:
        responses = list(pool.map(lambda _: _productpage(ctx), range(n)))
    versions: Counter[str] = Counter()
    for response in responses:
        reviews = _reviews_of(response)
        version = str(reviews.get("version", "error"))
        versions[version] += 1
        if version == "v3" and "v3" not in ctx.shared:
            ctx.shared["v3"] = reviews
        if version == "v3":
            rec.expect(reviews.get("color") == "red", "a v3 answer without red stars")
    share = versions["v3"] / n
    tolerance = max(
        SHIFT_SIGMAS * math.sqrt(SHIFT_WEIGHT_V3 * (1 - SHIFT_WEIGHT_V3) / n), SHIFT_MIN_TOLERANCE
    )
    rec.data = {
        "requests": n,
        "counts": {v: versions[v] for v in ("v1", "v2", "v3")},
        "errors": n - versions["v1"] - versions["v2"] - versions["v3"],
        "v3_share": round(share, 4),
        "tolerance": round(tolerance, 4),
    }
    rec.lines.append(
        f"{n} requests: v1 {versions['v1']} ({_pct(versions['v1'], n)}), "
        f"v3 {versions['v3']} ({_pct(versions['v3'], n)}), v2 {versions['v2']}  [weights 90/10]"
    )
    rec.expect(
        versions["v1"] + versions["v3"] == n, f"{rec.data['errors']} requests failed or hit v2"
    )
    rec.expect(
        abs(share - SHIFT_WEIGHT_V3) <= tolerance,
        f"v3 got {share:.1%}, outside 10% ± {tolerance:.1%}",
    )
    return rec.result()


def header_routing(ctx: DemoContext) -> ScenarioResult:
    rec = _Recorder("routing", "Header routing (end-user: jason -> v2)")
    seen: dict[str, Counter[str]] = {}
    for user in ("jason", "Jason"):
        seen[user] = Counter(
            str(_reviews_of(_productpage(ctx, user)).get("version", "error"))
            for _ in range(HEADER_REQUESTS)
        )
    rec.data = {user: dict(counts) for user, counts in seen.items()}
    rec.lines.append(f"end-user: jason -> {_describe(seen['jason'])}")
    rec.lines.append(
        f"end-user: Jason -> {_describe(seen['Jason'])}  (exact match is case-sensitive)"
    )
    rec.expect(seen["jason"]["v2"] == HEADER_REQUESTS, "jason was not always routed to v2")
    rec.expect(seen["Jason"]["v2"] == 0, "Jason (capital J) reached v2")
    rec.expect(seen["Jason"]["error"] == 0, "requests without the header failed")
    return rec.result()


def _describe(counts: Counter[str]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items()))


def faults(ctx: DemoContext) -> ScenarioResult:
    rec = _Recorder("faults", "Fault injection: abort 500, delay -> timeout 504 UT")
    aborted = [_reviews_of(_productpage(ctx, "jason")) for _ in range(ABORT_REQUESTS)]
    ratings = [r.get("ratings") or {} for r in aborted]
    ok = [
        r.get("error") == RATINGS_UNAVAILABLE
        and r.get("status") == 500
        and "FI" in r.get("flags", [])
        for r in ratings
    ]
    sample = ratings[0] if ratings else {}
    rec.data["abort"] = {
        "requests": ABORT_REQUESTS,
        "as_expected": sum(ok),
        "status": sample.get("status"),
        "flags": sample.get("flags"),
        "message": sample.get("error"),
    }
    rec.lines.append(
        f'jason: ratings aborted {sample.get("status")} {_flags(sample)} -> "{sample.get("error")}"'
    )
    rec.expect(all(ok), f"{ABORT_REQUESTS - sum(ok)} of {ABORT_REQUESTS} aborts were not 500 FI")
    delayed = [_reviews_of(_productpage(ctx, "rey")) for _ in range(DELAY_REQUESTS)]
    ok = [
        r.get("error") == REVIEWS_UNAVAILABLE
        and r.get("status") == 504
        and r.get("flags") == ["UT"]
        for r in delayed
    ]
    sample = delayed[0] if delayed else {}
    rec.data["delay"] = {
        "requests": DELAY_REQUESTS,
        "as_expected": sum(ok),
        "status": sample.get("status"),
        "flags": sample.get("flags"),
        "message": sample.get("error"),
    }
    rec.lines.append(
        f"rey: 1s ratings delay, 0.3s reviews timeout -> {sample.get('status')} "
        f'{_flags(sample)} -> "{sample.get("error")}"'
    )
    rec.expect(all(ok), f"{DELAY_REQUESTS - sum(ok)} of {DELAY_REQUESTS} timeouts were not 504 UT")
    return rec.result()


def retries(ctx: DemoContext) -> ScenarioResult:
    rec = _Recorder("retries", "Retries: a flaky upstream (503, then 200)")
    rows = []
    for index in range(RETRY_REQUESTS):
        response = ctx.client.get(f"http://details:{SERVICE_PORT}/flaky/{ctx.seed}-{index}")
        body = response.json() if response.status_code == 200 else {}
        info = response.extensions.get("meshlib") or {}
        rows.append((response.status_code, info.get("attempts"), body.get("calls")))
    good = [row for row in rows if row == (200, 2, 2)]
    rec.data = {
        "requests": RETRY_REQUESTS,
        "statuses": [row[0] for row in rows],
        "attempts": [row[1] for row in rows],
        "upstream_calls": [row[2] for row in rows],
    }
    rec.lines.append(
        f"{RETRY_REQUESTS} requests, each answered 503 first: {len(good)} × 200 on attempt 2 "
        "(details saw 2 requests each)"
    )
    rec.expect(len(good) == RETRY_REQUESTS, f"retries went wrong (status, attempts, calls): {rows}")
    return rec.result()


def circuit_breaking(ctx: DemoContext) -> ScenarioResult:
    rec = _Recorder("circuit-breaking", "Circuit breaking: 1 connection, 1 pending, 3 callers")
    results: list[tuple[int, list[str], str | None]] = []
    lock = threading.Lock()
    rounds = 0

    def call(barrier: threading.Barrier) -> None:
        barrier.wait()
        response = ctx.client.get(f"http://httpbin:{SERVICE_PORT}/delay/{BREAKER_DELAY}")
        row = (response.status_code, flags_of(response), response.headers.get("x-envoy-overloaded"))
        with lock:
            results.append(row)

    while rounds < BREAKER_MAX_ROUNDS:
        rounds += 1
        barrier = threading.Barrier(BREAKER_CALLERS)
        threads = [threading.Thread(target=call, args=(barrier,)) for _ in range(BREAKER_CALLERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if rounds >= BREAKER_MIN_ROUNDS and any(r[0] == 503 for r in results):
            break
    statuses = Counter(r[0] for r in results)
    overflow = [r for r in results if r[0] == 503]
    rec.data = {
        "requests": len(results),
        "rounds": rounds,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "overflow_flags": sorted({",".join(r[1]) for r in overflow}),
    }
    rec.lines.append(
        f"{len(results)} requests, {BREAKER_CALLERS} at a time: {statuses[200]} × 200, "
        f"{len(overflow)} × 503 UO with x-envoy-overloaded: true"
    )
    rec.expect(set(statuses) <= {200, 503}, f"unexpected statuses {dict(statuses)}")
    rec.expect(bool(overflow), "no request overflowed the connection pool")
    rec.expect(statuses[200] > 0, "no request got through")
    rec.expect(
        all(r[1] == ["UO"] and r[2] == "true" for r in overflow),
        "an overflow reply lacked the UO flag or x-envoy-overloaded",
    )
    return rec.result()


def mtls(ctx: DemoContext) -> ScenarioResult:
    import httpx

    rec = _Recorder("mtls", "mTLS: STRICT refuses callers without a mesh certificate")
    port = ctx.cluster.port(WORKLOADS[0])
    attempts: dict[str, str] = {}
    ca = ctx.cluster.ca
    assert ca is not None
    no_cert = ssl.create_default_context(cadata="".join(_pem(c) for c in ca.roots))
    no_cert.check_hostname = False  # the server's SANs name the service, not 127.0.0.1
    plain_clients: dict[str, tuple[str, Any]] = {
        "plaintext http": (f"http://127.0.0.1:{port}/ping", True),
        "TLS without a client certificate": (f"https://127.0.0.1:{port}/ping", no_cert),
    }
    for label, (url, verify) in plain_clients.items():
        try:
            with httpx.Client(verify=verify, timeout=5.0) as plain:
                response = plain.get(url)
            attempts[label] = f"answered {response.status_code}"
        except httpx.HTTPError as error:
            attempts[label] = f"refused ({type(error).__name__})"
        rec.lines.append(f"bare httpx, {label}: {attempts[label]}")
        rec.expect(attempts[label].startswith("refused"), f"{label} was not refused")
    chain = _peer_chain(ctx)
    rec.data = {"bare_clients": attempts, "peers": chain}
    for hop, peer in chain.items():
        rec.lines.append(f"{hop}: peer {peer}")
    expected = {
        "demo-client -> productpage": CLIENT.spiffe_id,
        "productpage -> reviews": WORKLOADS[0].spiffe_id,
    }
    for hop, peer in expected.items():
        rec.expect(chain.get(hop) == peer, f"{hop}: expected peer {peer}, got {chain.get(hop)}")
    if "reviews -> ratings" in chain:
        rec.expect(
            chain["reviews -> ratings"] == WORKLOADS[1].spiffe_id, "ratings saw the wrong peer"
        )
    return rec.result()


def _pem(cert: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return str(cert.public_bytes(serialization.Encoding.PEM).decode())


def _peer_chain(ctx: DemoContext) -> dict[str, str | None]:
    response = _productpage(ctx)
    chain: dict[str, str | None] = {}
    if response.status_code != 200:
        return chain
    body = response.json()
    chain["demo-client -> productpage"] = body.get("peer")
    chain["productpage -> reviews"] = (body.get("reviews") or {}).get("peer")
    v3 = ctx.shared.get("v3")
    for _ in range(PEER_SEARCH_REQUESTS if v3 is None else 0):
        reviews = _reviews_of(_productpage(ctx))
        if reviews.get("version") == "v3":
            v3 = reviews
            break
    if v3 is not None and isinstance(v3.get("ratings"), dict):
        chain["reviews -> ratings"] = v3["ratings"].get("peer")
    return chain


def authorization(ctx: DemoContext) -> ScenarioResult:
    rec = _Recorder("authz", "Authorization: ALLOW and DENY policies")
    if not ctx.cluster.inbound_middleware:
        rec.lines.append("skipped: this build has no inbound middleware (mesh.asgi) yet")
        rec.data = {"skipped": "no inbound middleware"}
        return rec.result("skipped")
    untrusted = ctx.cluster.mesh(UNTRUSTED).http_client(timeout=ctx.client.timeout)
    probes = {
        "demo-client -> ratings (ALLOW only reviews)": (
            ctx.client,
            f"http://ratings:{SERVICE_PORT}/ratings/0",
        ),
        "untrusted -> productpage (DENY untrusted)": (untrusted, f"{PRODUCTPAGE}/productpage"),
    }
    answers: dict[str, dict[str, Any]] = {}
    with untrusted:
        for label, (client, url) in probes.items():
            response = client.get(url)
            answers[label] = {"status": response.status_code, "body": response.text[:60]}
            rec.lines.append(f'{label}: {response.status_code} "{response.text[:40]}"')
            rec.expect(
                response.status_code == 403 and RBAC_DENIED in response.text,
                f"{label}: expected 403 {RBAC_DENIED!r}, got {response.status_code}",
            )
    allowed = _productpage(ctx)
    answers["demo-client -> productpage (allowed)"] = {"status": allowed.status_code}
    rec.lines.append(f"demo-client -> productpage: {allowed.status_code}")
    rec.expect(allowed.status_code == 200, "an allowed request was refused")
    rec.data = {"probes": answers}
    return rec.result()


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    run: Callable[[DemoContext], ScenarioResult]
    help: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("shifting", traffic_shifting, "90/10 weighted routing between reviews v1 and v3"),
    Scenario("routing", header_routing, "end-user: jason goes to reviews v2"),
    Scenario("faults", faults, "abort 500 on ratings; delay past a route timeout -> 504 UT"),
    Scenario("retries", retries, "a flaky upstream succeeds on the second attempt"),
    Scenario("circuit-breaking", circuit_breaking, "connection-pool overflow -> 503 UO"),
    Scenario("mtls", mtls, "STRICT mTLS refuses bare clients; peers' SPIFFE IDs"),
    Scenario("authz", authorization, "AuthorizationPolicy ALLOW/DENY -> 403 RBAC"),
)
