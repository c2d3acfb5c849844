"""ClusterState with localityLbSetting and warmup: what a cluster picks, on a fake clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from types import MappingProxyType

import pytest

from meshlib._engine.clusters import ClusterRegistry, ClusterSpec, ClusterState
from meshlib._model import Classification, Endpoint, SystemRandom
from meshlib._policy.balancing import (
    ConsistentHash,
    LoadBalancer,
    LocalitySetting,
    Simple,
    Warmup,
)
from meshlib._policy.outliers import OutlierDetection
from meshlib._policy.traffic import ResolvedPolicy

OD = OutlierDetection(
    consecutive_5xx_errors=1, interval=1.0, base_ejection_time=30.0, max_ejection_percent=100
)
HERE = "r1/z1/s1"


def at(i: int, locality: str, **labels: str) -> Endpoint:
    return Endpoint(f"10.0.0.{i}", 80, labels=labels, locality=locality)


def policy(locality: LocalitySetting | None = None, **lb: object) -> ResolvedPolicy:
    balancer = LoadBalancer(locality=locality, **lb)  # type: ignore[arg-type]
    return ResolvedPolicy(outlier_detection=OD, load_balancer=balancer)


def picks(
    cluster: ClusterState, count: int, now: float = 0.0, exclude: Collection[Endpoint] = ()
) -> Counter[int]:
    rng = SystemRandom(11)
    tally: Counter[int] = Counter()
    for _ in range(count):
        chosen = cluster.pick(rng, exclude=exclude, now=now)
        assert chosen is not None
        tally[int(chosen.address.rsplit(".", 1)[1])] += 1
    return tally


def test_plain_clusters_keep_the_plain_path() -> None:
    cluster = ClusterState(ResolvedPolicy(), [at(1, HERE), at(2, "r2")], local_locality=HERE)
    assert not cluster._general
    assert cluster.placement(0.0) == {
        (f"10.0.0.{i}", 80): {"priority": 0, "locality_weight": None, "warmup_factor": None}
        for i in (1, 2)
    }


def test_distribute_splits_traffic_by_locality_weight() -> None:
    rule = MappingProxyType({"r1/z1/*": 80, "r1/z2/*": 20})
    setting = LocalitySetting(distribute=(("r1/*", rule),))
    members = [at(1, "r1/z1/s1"), at(2, "r1/z1/s2"), at(3, "r1/z2/s1"), at(4, "r2/z1/s1")]
    # No outlier detection needed: istiod applies distribute weights regardless.
    cluster = ClusterState(
        ResolvedPolicy(load_balancer=LoadBalancer(locality=setting)), members, local_locality=HERE
    )
    assert cluster.removed == (members[3],)
    assert cluster.endpoints == tuple(members[:3])
    tally = picks(cluster, 4000)
    assert 4 not in tally
    assert (tally[1] + tally[2]) / 4000 == pytest.approx(0.8, abs=0.03)
    assert tally[3] / 4000 == pytest.approx(0.2, abs=0.03)
    view = cluster.placement(0.0)
    assert view[members[0].key]["locality_weight"] == pytest.approx(40.0)
    assert view[members[2].key]["locality_weight"] == pytest.approx(20.0)
    assert members[3].key not in view


def test_distribute_shrinks_a_locality_as_its_endpoints_are_ejected() -> None:
    rule = MappingProxyType({"r1/z1/*": 50, "r1/z2/*": 50})
    near = [at(i, "r1/z1/s1") for i in range(1, 5)]
    far = [at(9, "r1/z2/s1")]
    setting = LocalitySetting(distribute=(("*", rule),))
    cluster = ClusterState(policy(setting), near + far, local_locality=HERE)
    for endpoint in near[:2]:
        cluster.record(endpoint, Classification.HTTP_5XX, 500, 0.0)
    tally = picks(cluster, 4000, now=0.5)
    # 2 of 4 left: 1.4 × 50 % = 70 % availability, so 35 against 50.
    assert sum(tally[i] for i in (1, 2)) == 0
    assert tally[9] / 4000 == pytest.approx(50 / 85, abs=0.03)


def test_distribute_that_drops_every_endpoint_leaves_nothing_to_pick() -> None:
    setting = LocalitySetting(distribute=(("*", MappingProxyType({"r9/*": 100})),))
    cluster = ClusterState(policy(setting), [at(1, HERE)], local_locality=HERE)
    assert cluster.pick(SystemRandom(1), now=0.0) is None


def test_failover_prefers_the_named_region_when_the_local_one_fails() -> None:
    local, backup, other = at(1, HERE), at(2, "r3/z1/s1"), at(3, "r2/z1/s1")
    setting = LocalitySetting(failover=(("r1", "r3"),))
    cluster = ClusterState(policy(setting), [other, backup, local], local_locality=HERE)
    assert set(picks(cluster, 50)) == {1}
    cluster.record(local, Classification.HTTP_5XX, 500, 0.0)
    assert set(picks(cluster, 50, now=0.5)) == {2}
    cluster.record(backup, Classification.HTTP_5XX, 500, 0.6)
    assert set(picks(cluster, 50, now=0.7)) == {3}
    assert [cluster.placement(1.0)[e.key]["priority"] for e in (local, backup, other)] == [0, 1, 2]


def test_failover_priority_follows_labels() -> None:
    values = (("version", "v1"),)
    setting = LocalitySetting(failover_priority=("version",), failover_priority_values=values)
    same, different = at(1, "r2", version="v1"), at(2, HERE, version="v2")
    cluster = ClusterState(policy(setting), [different, same], local_locality=HERE)
    assert set(picks(cluster, 50)) == {1}
    cluster.record(same, Classification.HTTP_5XX, 500, 0.0)
    assert set(picks(cluster, 50, now=0.5)) == {2}


def test_a_retry_redraws_the_locality_to_avoid_the_host_it_tried() -> None:
    values = (("app", "x"),)
    setting = LocalitySetting(failover_priority=("app",), failover_priority_values=values)
    a, b = at(1, "r1/z1", app="x"), at(2, "r1/z2", app="x")
    cluster = ClusterState(policy(setting), [a, b], local_locality=HERE)
    tally = picks(cluster, 200, exclude=[a])
    assert tally[2] > 190  # five draws before giving up: (1/2)^5 of the picks may still be a


def test_a_retry_makes_at_most_five_draws_in_all_as_envoy_does() -> None:
    # Envoy redraws priority, locality and host together, five times at most; the host draw
    # inside must not redraw on its own (that would be up to 25 draws, and a retry would
    # almost never land on the tried host again).
    values = (("app", "x"),)
    setting = LocalitySetting(failover_priority=("app",), failover_priority_values=values)
    a, b = at(1, "r1/z1", app="x"), at(2, "r1/z1", app="x")
    cluster = ClusterState(policy(setting, simple=Simple.RANDOM), [a, b], local_locality=HERE)
    assert cluster._general
    tally = picks(cluster, 6400, exclude=[a])
    assert 120 < tally[1] < 300  # (1/2)^5 of 6400 is 200


def test_consistent_hash_uses_priorities_but_not_locality_weights() -> None:
    setting = LocalitySetting(failover=(("r1", "r3"),))
    hashing = ConsistentHash(http_header_name="x")
    near, far = at(1, HERE), at(2, "r3")
    cluster = ClusterState(
        policy(setting, consistent_hash=hashing), [far, near], local_locality=HERE
    )
    assert set(picks(cluster, 20)) == {1}
    assert cluster.placement(0.0)[near.key]["locality_weight"] is None


@pytest.mark.parametrize("simple", [Simple.ROUND_ROBIN, Simple.LEAST_REQUEST])
def test_endpoints_new_to_a_rebuilt_cluster_warm_up(simple: Simple) -> None:
    lb = ResolvedPolicy(load_balancer=LoadBalancer(simple=simple, warmup=Warmup(10.0)))
    old = [at(1, ""), at(2, "")]
    first = ClusterState(lb, old)
    assert not first._general  # the first build: nobody is new
    newcomer = at(3, "")
    second = ClusterState(lb, [*old, newcomer], previous=first)
    assert second.placement(100.0)[newcomer.key]["warmup_factor"] == pytest.approx(0.1)
    assert picks(second, 2100, now=100.0)[3] / 2100 == pytest.approx(0.1 / 2.1, abs=0.02)
    assert picks(second, 2500, now=105.0)[3] / 2500 == pytest.approx(0.5 / 2.5, abs=0.03)
    assert second.placement(105.0)[newcomer.key]["warmup_factor"] == pytest.approx(0.5)
    assert picks(second, 3000, now=110.0)[3] / 3000 == pytest.approx(1 / 3, abs=0.03)
    assert not second._general  # warmed up: back to the plain path
    third = ClusterState(lb, [*old, newcomer], previous=second)
    assert not third._general


def test_warmup_is_ignored_for_random_and_without_a_previous_state() -> None:
    lb = ResolvedPolicy(load_balancer=LoadBalancer(simple=Simple.RANDOM, warmup=Warmup(10.0)))
    first = ClusterState(lb, [at(1, "")])
    second = ClusterState(lb, [at(1, ""), at(2, "")], previous=first)
    assert not second._general


def test_the_registry_hands_a_rebuilt_cluster_its_predecessor() -> None:
    # A reload (rebuild) or a DNS answer (get_or_create) that adds an endpoint: only the
    # newcomer warms up; the endpoints the old cluster had keep their full weight.
    lb = ResolvedPolicy(load_balancer=LoadBalancer(simple=Simple.ROUND_ROBIN, warmup=Warmup(10.0)))
    old = (at(1, ""), at(2, ""))
    newcomer = at(3, "")
    registry = ClusterRegistry()
    registry.rebuild({"c": ClusterSpec(lb, old)})
    first = registry.get("c")
    assert first is not None
    first.pick(SystemRandom(1), now=100.0)  # the old cluster was in use
    registry.rebuild({"c": ClusterSpec(lb, (*old, newcomer))})
    rebuilt = registry.get("c")
    assert rebuilt is not None
    assert rebuilt is not first
    factors = {key: place["warmup_factor"] for key, place in rebuilt.placement(100.0).items()}
    assert factors[newcomer.key] == pytest.approx(0.1)
    assert factors[old[0].key] is None
    assert factors[old[1].key] is None

    discovered = registry.get_or_create("d", ClusterSpec(lb, old))
    again = registry.get_or_create("d", ClusterSpec(lb, (*old, newcomer)))
    assert again is not discovered
    assert again.placement(100.0)[newcomer.key]["warmup_factor"] == pytest.approx(0.1)
