"""Identity costs: issuing a workload SVID (target <= 1 ms), building a TLS generation on
rotation, and the per-connection SPIFFE check. Run: ``python bench/bench_identity.py``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization

from meshlib._identity import certs
from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.sources import StaticSource
from meshlib._identity.tls import PeerPolicy, client_context
from meshlib.identity import LocalCA

ROUNDS = 5
ISSUE_TARGET_MS = 1.0


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median over ROUNDS of the mean time per call, in ms."""
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        rounds.append((time.perf_counter() - start) / repeat * 1000)
    return statistics.median(rounds)


def main() -> None:
    for intermediate in (False, True):
        ca = LocalCA.generate(intermediate=intermediate)
        issue = median_ms(lambda ca=ca: ca.issue("default", "reviews"), 500)  # type: ignore[misc]
        label = "intermediate" if intermediate else "root"
        verdict = "ok" if issue <= ISSUE_TARGET_MS else "OVER TARGET"
        print(f"issue one leaf (EC P-256, {label} CA): {issue:.3f} ms  [{verdict} <= 1 ms]")
    ca = LocalCA.generate()
    spiffe_id = ca.issue("default", "reviews").spiffe_id
    bare = median_ms(
        lambda: certs.issue_workload(
            spiffe_id=spiffe_id, issuer_cert=ca.signing_cert, issuer_key=ca.signing_key
        ),
        500,
    )
    print(f"  baseline, keygen + sign only:   {bare:.3f} ms")
    svid = ca.issue("default", "reviews", ["reviews.default.svc.cluster.local"])
    print(f"one client SSLContext:          {median_ms(lambda: client_context(svid), 100):.3f} ms")
    source = StaticSource(svid)
    identity = RotatingIdentity(source)
    print(
        "one rotation (4 contexts):      "
        f"{median_ms(lambda: source.set(ca.issue('default', 'reviews')), 50):.3f} ms"
    )
    der = svid.leaf.public_bytes(serialization.Encoding.DER)
    policy = PeerPolicy(frozenset({"cluster.local"}))
    check_us = median_ms(lambda: policy.check(der), 5000) * 1000
    print(f"SPIFFE check per connection:    {check_us:.1f} µs")
    identity.close()


if __name__ == "__main__":
    main()
