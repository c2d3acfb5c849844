"""localityLbSetting as istiod programs it: priorities, failover, failoverPriority, distribute."""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._model import Endpoint, SystemRandom
from meshlib._policy.balancing import LocalitySetting
from meshlib._policy.locality import (
    LOCALITY_LABEL,
    NETWORK_LABEL,
    REGION_LABEL,
    SUBZONE_LABEL,
    ZONE_LABEL,
    LocalityGroup,
    choose_locality,
    client_priority_values,
    failover_priority,
    label_priority,
    locality_match,
    plan_localities,
    proximity,
    split_locality,
    topology_labels,
)

PART = st.sampled_from(["a", "b", "c"])
LOCALITY = st.builds(lambda r, z, s: f"{r}/{z}/{s}", PART, PART, PART)


def ep(index: int, locality: str = "", weight: int = 1, **labels: str) -> Endpoint:
    return Endpoint(f"10.0.0.{index}", 80, labels=labels, locality=locality, weight=weight)


def keys(levels: tuple[tuple[Endpoint, ...], ...]) -> list[list[int]]:
    return [[int(e.address.rsplit(".", 1)[1]) for e in level] for level in levels]


# -- matching -------------------------------------------------------------------------------


def test_split_locality_pads_missing_parts() -> None:
    assert split_locality("") == ("", "", "")
    assert split_locality("r") == ("r", "", "")
    assert split_locality("r/z/s/x") == ("r", "z", "s/x")


@given(LOCALITY)
def test_rules_match_their_own_locality_and_its_prefixes(locality: str) -> None:
    region, zone, _ = split_locality(locality)
    for rule in (locality, "*", f"{region}/*", region, f"{region}/{zone}", f"{region}/{zone}/*"):
        assert locality_match(locality, rule), rule


@given(LOCALITY, LOCALITY)
def test_a_rule_matches_only_when_every_named_part_agrees(locality: str, rule: str) -> None:
    assert locality_match(locality, rule) == (locality == rule)
    region, zone, _ = split_locality(rule)
    assert locality_match(locality, f"{region}/*") == (split_locality(locality)[0] == region)
    assert locality_match(locality, f"*/{zone}") == (split_locality(locality)[1] == zone)


@given(LOCALITY, LOCALITY)
def test_proximity_counts_the_shared_prefix(mine: str, theirs: str) -> None:
    a, b = split_locality(mine), split_locality(theirs)
    shared = 0
    while shared < 3 and a[shared] == b[shared]:
        shared += 1
    assert proximity(mine, theirs) == (0 if shared == 3 else 3 - shared)
    assert proximity(mine, theirs) == proximity(theirs, mine)


def test_proximity_treats_missing_parts_as_equal_empty_values() -> None:
    assert proximity("r1/z1", "r1/z1") == 0
    assert proximity("r1/z1", "r1/z1/s1") == 1
    assert proximity("r1", "r2") == 3


@given(LOCALITY, LOCALITY)
def test_failover_sends_other_regions_than_the_named_one_last(mine: str, theirs: str) -> None:
    region = split_locality(mine)[0]
    rules = [("x", "a"), (region, "b"), (region, "c")]  # only the first rule from region counts
    expected = proximity(mine, theirs)
    if expected == 3 and split_locality(theirs)[0] != "b":
        expected = 4
    assert failover_priority(mine, theirs, rules) == expected
    assert failover_priority(mine, theirs, [("x", "a")]) == proximity(mine, theirs)


# -- failoverPriority labels ------------------------------------------------------------------


def test_topology_labels_come_from_locality_and_network() -> None:
    assert topology_labels({"app": "x"}, "r/z", "n1") == {
        "app": "x",
        REGION_LABEL: "r",
        ZONE_LABEL: "z",
        NETWORK_LABEL: "n1",
    }
    assert topology_labels({REGION_LABEL: "old"}, "r/z/s")[REGION_LABEL] == "r"
    assert topology_labels({}, "r/z/s")[SUBZONE_LABEL] == "s"
    assert topology_labels({}, "") == {}


def test_client_values_use_labels_locality_and_overrides() -> None:
    client = {"app": "p", "tier": "gold", LOCALITY_LABEL: "r1/z1/s1"}
    wanted = ["tier", REGION_LABEL, "zone=override", "missing", "odd=a=b"]
    assert client_priority_values(wanted, client) == (
        ("tier", "gold"),
        (REGION_LABEL, "r1"),
        ("zone", "override"),
        ("missing", ""),
        ("odd", ""),
    )
    assert client_priority_values(["tier"], {}) is None  # istiod: no proxy labels, no priorities


@given(st.lists(st.tuples(st.sampled_from("xyz"), st.sampled_from("01")), max_size=4), st.data())
def test_label_priority_is_set_by_the_first_mismatch(
    values: list[tuple[str, str]], data: st.DataObject
) -> None:
    labels = data.draw(st.dictionaries(st.sampled_from("xyz"), st.sampled_from("01")))
    priority = label_priority(labels, values)
    first = next((i for i, (k, v) in enumerate(values) if labels.get(k, "") != v), None)
    assert priority == (0 if first is None else len(values) - first)


# -- plans ----------------------------------------------------------------------------------

OD = {"failover": True}
HERE = "r1/z1/s1"
SAME, ZONE, REGION, OTHER, UNKNOWN = (
    ep(1, "r1/z1/s1"),
    ep(2, "r1/z1/s2"),
    ep(3, "r1/z2/s1"),
    ep(4, "r2/z1/s1"),
    ep(5),
)
ALL = [OTHER, UNKNOWN, REGION, ZONE, SAME]


def test_default_plan_orders_by_closeness_with_outlier_detection_only() -> None:
    plan = plan_localities(ALL, HERE, None, failover=True)
    assert keys(plan.levels) == [[1], [2], [3], [4, 5]]
    assert plan.groups is None  # no locality weights without explicit failover settings
    assert plan.endpoints == (SAME, ZONE, REGION, OTHER, UNKNOWN)
    assert keys(plan_localities(ALL, HERE, None, failover=False).levels) == [[4, 5, 3, 2, 1]]
    assert keys(plan_localities(ALL, "", None, failover=True).levels) == [[4, 5, 3, 2, 1]]
    disabled = LocalitySetting(enabled=False, distribute=(("*", {"r2": 100}),))
    assert keys(plan_localities(ALL, HERE, disabled, failover=True).levels) == [[4, 5, 3, 2, 1]]
    assert plan_localities([], HERE, None, failover=True).levels == ()


def test_failover_names_the_region_to_try_first() -> None:
    far = ep(6, "r3/z1/s1")
    setting = LocalitySetting(failover=(("r1", "r3"),))
    plan = plan_localities([*ALL, far], HERE, setting, failover=True)
    assert keys(plan.levels) == [[1], [2], [3], [6], [4, 5]]
    assert plan.groups is not None
    assert [[g.locality for g in level] for level in plan.groups][-1] == ["r2/z1/s1", "//"]
    # Without outlier detection istiod programs no priorities at all.
    assert keys(plan_localities(ALL, HERE, setting, failover=False).levels) == [[4, 5, 3, 2, 1]]


def test_failover_priority_ranks_by_the_first_differing_label() -> None:
    a = ep(1, "r1/z1", version="v1", tier="gold")
    b = ep(2, "r1/z2", version="v1", tier="silver")
    c = ep(3, "r2/z1", version="v2", tier="gold")
    values = (("version", "v1"), ("tier", "gold"))
    setting = LocalitySetting(
        failover_priority=("version", "tier"), failover_priority_values=values
    )
    plan = plan_localities([c, b, a], "r1/z1", setting, failover=True)
    assert keys(plan.levels) == [[1], [2], [3]]
    assert plan.groups is not None
    assert [[g.weight for g in level] for level in plan.groups] == [[1.0], [1.0], [1.0]]
    # With failover too, locality priorities nest inside each label priority.
    both = LocalitySetting(
        failover=(("r1", "r3"),),
        failover_priority=("version",),
        failover_priority_values=(("version", "v1"),),
    )
    near, far = ep(4, "r1/z1", version="v2"), ep(5, "r2/z1", version="v2")
    plan = plan_localities([far, near, b, a], "r1/z1", both, failover=True)
    assert keys(plan.levels) == [[1], [2], [4], [5]]
    unresolved = LocalitySetting(failover_priority=("version",))  # the client has no labels
    assert keys(plan_localities([c, a], "r1/z1", unresolved, failover=True).levels) == [[3, 1]]


def test_failover_priority_sees_endpoint_topology_labels() -> None:
    values = ((NETWORK_LABEL, "n1"), (ZONE_LABEL, "z1"))
    setting = LocalitySetting(
        failover_priority=(NETWORK_LABEL, ZONE_LABEL), failover_priority_values=values
    )
    a = Endpoint("10.0.0.1", 80, locality="r/z1", network="n1")
    b = Endpoint("10.0.0.2", 80, locality="r/z2", network="n1")
    c = Endpoint("10.0.0.3", 80, locality="r/z1", network="n2")
    assert keys(plan_localities([c, b, a], "", setting, failover=True).levels) == [[1], [2], [3]]


def test_distribute_weights_localities_and_drops_the_rest() -> None:
    # Istio's documented example: 80 % to the client's zone, 20 % to the next one.
    rule = MappingProxyType({"us-west/zone1/*": 80, "us-west/zone2/*": 20})
    setting = LocalitySetting(
        distribute=(("us-east/*", {"us-east/*": 100}), ("us-west/zone1/*", rule))
    )
    a, b = ep(1, "us-west/zone1/s1"), ep(2, "us-west/zone1/s2", weight=3)
    c, d = ep(3, "us-west/zone2/s1"), ep(4, "us-east/zone1/s1")
    plan = plan_localities([d, c, b, a], "us-west/zone1/s9", setting, failover=False)
    assert plan.removed == (d,)
    assert keys(plan.levels) == [[3, 2, 1]]
    assert plan.groups is not None
    weights = {g.locality: g.weight for g in plan.groups[0]}
    # The zone's 80 is split by endpoint weight, rounded up, as istiod does.
    assert weights == {"us-west/zone2/s1": 20.0, "us-west/zone1/s2": 60.0, "us-west/zone1/s1": 20.0}
    hashing = plan_localities(
        [d, c, b, a], "us-west/zone1/s9", setting, failover=True, weighted=False
    )
    assert hashing.groups is None  # consistent hashing ignores locality weights
    assert hashing.removed == (d,)


def test_distribute_without_a_matching_rule_weighs_localities_by_their_endpoints() -> None:
    setting = LocalitySetting(distribute=(("r9/*", {"r1": 100}),))
    plan = plan_localities([SAME, ZONE, ep(6, HERE, weight=4)], HERE, setting, failover=True)
    assert plan.removed == ()
    assert plan.groups is not None
    assert {g.locality: g.weight for g in plan.groups[0]} == {HERE: 5.0, "r1/z1/s2": 1.0}
    nothing = LocalitySetting(distribute=(("*", {"r9": 100}),))
    empty = plan_localities([SAME], HERE, nothing, failover=False)
    assert (empty.levels, empty.removed) == ((), (SAME,))


SETTINGS = st.one_of(
    st.none(),
    st.builds(LocalitySetting, enabled=st.booleans()),
    st.builds(
        LocalitySetting,
        failover=st.lists(st.tuples(PART, PART), max_size=2).map(tuple),
        failover_priority=st.just(("k",)),
        failover_priority_values=st.sampled_from([None, (("k", "0"),)]),
    ),
    st.builds(
        LocalitySetting,
        distribute=st.lists(
            st.tuples(st.sampled_from(["*", "a", "b/*"]), st.dictionaries(LOCALITY, st.just(50))),
            max_size=2,
        ).map(tuple),
    ),
)


@given(
    st.lists(st.tuples(LOCALITY, st.integers(1, 3), st.sampled_from("01")), max_size=8),
    LOCALITY,
    SETTINGS,
    st.booleans(),
)
def test_a_plan_partitions_the_endpoints(
    specs: list[tuple[str, int, str]],
    local: str,
    setting: LocalitySetting | None,
    failover: bool,
) -> None:
    endpoints = [ep(i, loc, w, k=k) for i, (loc, w, k) in enumerate(specs)]
    plan = plan_localities(endpoints, local, setting, failover=failover)
    placed = [e for level in plan.levels for e in level] + list(plan.removed)
    assert sorted(e.key for e in placed) == sorted(e.key for e in endpoints)
    assert all(plan.levels)
    if plan.groups is not None:
        assert len(plan.groups) == len(plan.levels)
        for level, groups in zip(plan.levels, plan.groups, strict=True):
            assert sorted(e.key for g in groups for e in g.endpoints) == sorted(
                e.key for e in level
            )
            assert all(g.weight > 0 for g in groups)


# -- picking a locality ---------------------------------------------------------------------


def test_choose_locality_follows_weight_times_availability() -> None:
    groups = [
        LocalityGroup("x", 1.0, (ep(1), ep(2))),
        LocalityGroup("y", 2.0, (ep(3),)),
    ]
    rng = SystemRandom(4)
    picks = Counter(choose_locality(groups, [2, 1], rng) for _ in range(6000))
    assert picks[0] / 6000 == pytest.approx(1 / 3, abs=0.03)
    # Half of x healthy: 1.4 × 50 % = 70 % of its weight.
    picks = Counter(choose_locality(groups, [1, 1], rng) for _ in range(6000))
    assert picks[0] / 6000 == pytest.approx(0.7 / 2.7, abs=0.03)
    assert choose_locality(groups, [0, 0], rng) == -1
    assert all(choose_locality(groups, [2, 0], rng) == 0 for _ in range(50))


@given(
    st.lists(st.tuples(st.integers(1, 100), st.integers(1, 5)), min_size=1, max_size=5), st.data()
)
def test_choose_locality_only_returns_localities_with_healthy_endpoints(
    sizes: list[tuple[int, int]], data: st.DataObject
) -> None:
    groups = [
        LocalityGroup(str(i), float(w), tuple(ep(j) for j in range(n)))
        for i, (w, n) in enumerate(sizes)
    ]
    healthy = [data.draw(st.integers(0, n)) for _, n in sizes]
    chosen = choose_locality(groups, healthy, SystemRandom(data.draw(st.integers(0, 99))))
    assert (chosen == -1) == (not any(healthy))
    if chosen >= 0:
        assert healthy[chosen] > 0


class Edge:
    def random(self) -> float:
        return 1.0 - 2**-53

    def randrange(self, stop: int, /) -> int:
        return 0


def test_choose_locality_rounding_sliver_goes_to_the_last_candidate() -> None:
    # These weights leave the draw a hair past the last one after the subtractions.
    weights = [1.2381744486666624, 0.14548153368257877, 0.1151024984279273, 18.792209207738452]
    groups = [LocalityGroup(str(i), w, (ep(i),)) for i, w in enumerate(weights)]
    assert choose_locality(groups, [1, 1, 1, 1], Edge()) == 3
