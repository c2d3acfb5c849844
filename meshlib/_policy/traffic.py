"""DestinationRule traffic policies and how subset, port-level and top-level combine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meshlib._policy.balancing import DEFAULT_LOAD_BALANCER, LoadBalancer
from meshlib._policy.limits import DEFAULT_CONNECTION_POOL, ConnectionPool, RetryBudget
from meshlib._policy.outliers import OutlierDetection


@dataclass(frozen=True, slots=True)
class ClientTls:
    mode: str = "ISTIO_MUTUAL"
    """DISABLE | SIMPLE | MUTUAL | ISTIO_MUTUAL."""
    subject_alt_names: frozenset[str] = frozenset()
    sni: str | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    insecure_skip_verify: bool = False
    ca_crl: str | None = None


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """One policy block. ``None`` means the block is absent (defaults apply after resolution)."""

    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    load_balancer: LoadBalancer | None = None
    tls: ClientTls | None = None
    retry_budget: RetryBudget | None = None
    port_level: Mapping[int, TrafficPolicy] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """A compiled DestinationRule for one host (after merging same-host rules in one scope)."""

    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: Mapping[str, Subset] = field(default_factory=dict)
    source: str = ""
    """``DestinationRule/<namespace>/<name>`` for explain output and logs."""


@dataclass(frozen=True, slots=True)
class ResolvedPolicy:
    """The policy for traffic to one (subset, port), every block decided.

    ``outlier_detection`` stays ``None`` when no level configures it: Envoy then ejects
    nothing. ``tls`` ``None`` means auto-mTLS; ``retry_budget`` ``None`` means
    ``connection_pool.max_retries`` applies.
    """

    connection_pool: ConnectionPool = DEFAULT_CONNECTION_POOL
    outlier_detection: OutlierDetection | None = None
    load_balancer: LoadBalancer = DEFAULT_LOAD_BALANCER
    tls: ClientTls | None = None
    retry_budget: RetryBudget | None = None


DEFAULT_RESOLVED_POLICY = ResolvedPolicy()
"""For a destination without DestinationRule."""


def _for_port(policy: TrafficPolicy | None, port: int | None) -> TrafficPolicy | None:
    # A port-level entry replaces its policy wholesale: omitted blocks are not inherited.
    if policy is None or port is None or not policy.port_level:
        return policy
    return policy.port_level.get(port, policy)


def resolve_policy(
    dp: DestinationPolicy | None, subset: str | None, port: int | None
) -> ResolvedPolicy:
    """Combine top-level, port-level and subset policies (ISTIO-SEMANTICS 2.2).

    The subset's policy (after its own port-level selection) overrides whole blocks of the
    host's (after its port-level selection); blocks are never merged field by field. Pure:
    memoizing per (policy, subset, port) is the caller's business.
    """
    if dp is None:
        return DEFAULT_RESOLVED_POLICY
    base = _for_port(dp.traffic_policy, port)
    chosen = dp.subsets.get(subset) if subset is not None else None
    override = _for_port(chosen.traffic_policy, port) if chosen is not None else None
    if override is None:
        if base is None:
            return DEFAULT_RESOLVED_POLICY
        override, base = base, None
    pool = override.connection_pool
    outliers = override.outlier_detection
    balancer = override.load_balancer
    tls = override.tls
    budget = override.retry_budget
    if base is not None:
        pool = pool if pool is not None else base.connection_pool
        outliers = outliers if outliers is not None else base.outlier_detection
        balancer = balancer if balancer is not None else base.load_balancer
        tls = tls if tls is not None else base.tls
        budget = budget if budget is not None else base.retry_budget
    return ResolvedPolicy(
        connection_pool=pool if pool is not None else DEFAULT_CONNECTION_POOL,
        outlier_detection=outliers,
        load_balancer=balancer if balancer is not None else DEFAULT_LOAD_BALANCER,
        tls=tls,
        retry_budget=budget,
    )
