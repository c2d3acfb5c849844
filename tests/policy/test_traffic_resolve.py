"""DestinationRule policy resolution for (subset, port): replace, never merge fields."""

from __future__ import annotations

from meshlib._policy.balancing import DEFAULT_LOAD_BALANCER, LoadBalancer, Simple
from meshlib._policy.limits import DEFAULT_CONNECTION_POOL, ConnectionPool, RetryBudget
from meshlib._policy.outliers import OutlierDetection
from meshlib._policy.traffic import (
    DEFAULT_RESOLVED_POLICY,
    ClientTls,
    DestinationPolicy,
    ResolvedPolicy,
    Subset,
    TrafficPolicy,
    resolve_policy,
)

HOST = "reviews.default.svc.cluster.local"
POOL = ConnectionPool(max_connections=1)
PORT_POOL = ConnectionPool(max_connections=7)
SUBSET_POOL = ConnectionPool(http1_max_pending_requests=3)
OUTLIERS = OutlierDetection(consecutive_5xx_errors=1)
RR = LoadBalancer(simple=Simple.ROUND_ROBIN)
RANDOM = LoadBalancer(simple=Simple.RANDOM)
TLS = ClientTls(mode="SIMPLE")
BUDGET = RetryBudget(percent=10.0)


def rule(top: TrafficPolicy | None = None, **subsets: TrafficPolicy | None) -> DestinationPolicy:
    return DestinationPolicy(
        host=HOST,
        traffic_policy=top,
        subsets={name: Subset(name, {"version": name}, tp) for name, tp in subsets.items()},
    )


def test_no_rule_gives_defaults() -> None:
    resolved = resolve_policy(None, "v1", 9080)
    assert resolved is DEFAULT_RESOLVED_POLICY
    assert resolved.connection_pool is DEFAULT_CONNECTION_POOL
    assert resolved.load_balancer is DEFAULT_LOAD_BALANCER
    assert resolved.outlier_detection is None  # no ejection without outlierDetection
    assert resolved.tls is None  # auto-mTLS
    assert resolved.retry_budget is None


def test_rule_without_policies_gives_defaults() -> None:
    assert resolve_policy(rule(v1=None), "v1", 9080) == ResolvedPolicy()
    assert resolve_policy(rule(), None, None) == ResolvedPolicy()


def test_top_level_blocks_fill_the_rest_with_defaults() -> None:
    top = TrafficPolicy(connection_pool=POOL, outlier_detection=OUTLIERS, retry_budget=BUDGET)
    resolved = resolve_policy(rule(top), None, 9080)
    assert resolved == ResolvedPolicy(
        connection_pool=POOL, outlier_detection=OUTLIERS, retry_budget=BUDGET
    )


def test_port_level_replaces_top_level_entirely() -> None:
    top = TrafficPolicy(
        connection_pool=POOL,
        outlier_detection=OUTLIERS,
        load_balancer=RR,
        port_level={9080: TrafficPolicy(connection_pool=PORT_POOL)},
    )
    on_port = resolve_policy(rule(top), None, 9080)
    assert on_port == ResolvedPolicy(connection_pool=PORT_POOL)  # outliers, LB not inherited
    other_port = resolve_policy(rule(top), None, 8080)
    assert other_port == ResolvedPolicy(
        connection_pool=POOL, outlier_detection=OUTLIERS, load_balancer=RR
    )
    no_port = resolve_policy(rule(top), None, None)
    assert no_port.connection_pool is POOL


def test_subset_overrides_whole_blocks() -> None:
    top = TrafficPolicy(connection_pool=POOL, outlier_detection=OUTLIERS, load_balancer=RR)
    subset = TrafficPolicy(connection_pool=SUBSET_POOL, tls=TLS)
    resolved = resolve_policy(rule(top, v2=subset), "v2", 9080)
    # The subset pool replaces the top pool: max_connections is back to the default.
    assert resolved.connection_pool is SUBSET_POOL
    assert resolved.outlier_detection is OUTLIERS
    assert resolved.load_balancer is RR
    assert resolved.tls is TLS
    assert resolved.retry_budget is None


def test_subset_port_level_then_overrides_port_selected_top() -> None:
    top = TrafficPolicy(
        load_balancer=RR,
        port_level={9080: TrafficPolicy(outlier_detection=OUTLIERS, retry_budget=BUDGET)},
    )
    subset = TrafficPolicy(
        load_balancer=RANDOM, port_level={9080: TrafficPolicy(connection_pool=SUBSET_POOL)}
    )
    dp = rule(top, v3=subset)
    assert resolve_policy(dp, "v3", 9080) == ResolvedPolicy(
        connection_pool=SUBSET_POOL, outlier_detection=OUTLIERS, retry_budget=BUDGET
    )
    assert resolve_policy(dp, "v3", 8080) == ResolvedPolicy(load_balancer=RANDOM)


def test_unknown_subset_and_subset_without_policy_use_host_policy() -> None:
    top = TrafficPolicy(load_balancer=RR)
    dp = rule(top, v1=None)
    assert resolve_policy(dp, "nope", 9080).load_balancer is RR
    assert resolve_policy(dp, "v1", 9080).load_balancer is RR


def test_subset_policy_without_host_policy() -> None:
    dp = rule(None, v1=TrafficPolicy(tls=TLS))
    assert resolve_policy(dp, "v1", 9080) == ResolvedPolicy(tls=TLS)
