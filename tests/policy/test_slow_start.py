"""warmup: Envoy's slow start for ROUND_ROBIN and LEAST_REQUEST, on a fake clock."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._model import Endpoint, SystemRandom
from meshlib._policy.balancing import (
    Balancer,
    ConsistentHash,
    LeastRequestBalancer,
    LoadBalancer,
    RandomBalancer,
    RingHashBalancer,
    Simple,
    SlowStart,
    SlowStartBalancer,
    Warmup,
    make_balancer,
    slow_start_factor,
    warms_up,
)

OLD = [Endpoint(f"10.0.0.{i}", 80) for i in range(2)]
NEW = Endpoint("10.0.0.9", 80)
WINDOW = Warmup(duration=10.0)


@given(
    st.floats(0.01, 100),
    st.floats(0, 100),
    st.floats(0.1, 5),
    st.floats(0, 200),
    st.floats(0, 200),
)
def test_factor_grows_from_the_minimum_to_one(
    duration: float, minimum: float, aggression: float, age: float, later: float
) -> None:
    warmup = Warmup(duration, minimum, aggression)
    factor = slow_start_factor(warmup, age)
    assert min(minimum / 100, 1.0) <= factor <= 1.0
    assert slow_start_factor(warmup, age + later) >= factor
    if age >= duration:
        assert factor == 1.0


def test_factor_is_envoys_formula() -> None:
    assert slow_start_factor(WINDOW, 5.0) == pytest.approx(0.5)
    assert slow_start_factor(WINDOW, 0.5) == pytest.approx(0.1)  # the 10 % floor
    assert slow_start_factor(Warmup(10.0, 0.0), 0.0) == pytest.approx(0.0001)  # at least 1 ms
    assert slow_start_factor(Warmup(10.0, 0.0, aggression=2.0), 2.5) == pytest.approx(0.5)
    assert slow_start_factor(WINDOW, 10.0) == 1.0


def test_carried_over_join_times() -> None:
    assert SlowStart.carried(WINDOW, OLD, {e.key for e in OLD}) is None  # nobody new
    slow = SlowStart.carried(WINDOW, [*OLD, NEW], {e.key for e in OLD})
    assert slow is not None
    assert slow.pending
    assert slow.factor_at(NEW, 3.0) == pytest.approx(0.1)  # not picked yet: age 0
    assert slow.factor_at(OLD[0], 3.0) == 1.0
    assert slow.pending  # asking changed nothing
    assert slow.observe(4.0)
    assert not slow.pending
    assert slow.factor(NEW) == pytest.approx(0.1)
    assert slow.observe(9.0)
    assert slow.factor(NEW) == pytest.approx(0.5)
    # A second rebuild keeps the join time of the newcomer and adds the next one.
    later = Endpoint("10.0.0.10", 80)
    again = SlowStart.carried(WINDOW, [*OLD, NEW, later], {e.key for e in (*OLD, NEW)}, slow)
    assert again is not None
    assert again.joined == {NEW.key: 4.0}
    assert again.observe(12.0)
    assert again.factor(NEW) == pytest.approx(0.8)
    assert again.factor(later) == pytest.approx(0.1)
    assert not again.observe(22.0)
    # Unpicked newcomers stay pending through a rebuild; removed ones are forgotten.
    fresh = SlowStart.carried(WINDOW, [*OLD, NEW], {e.key for e in OLD})
    assert fresh is not None
    kept = SlowStart.carried(WINDOW, OLD, {e.key for e in OLD}, fresh)
    assert kept is None
    kept = SlowStart.carried(WINDOW, [*OLD, NEW], {e.key for e in (*OLD, NEW)}, fresh)
    assert kept is not None
    assert kept.pending


def shares(balancer: Balancer, members: list[Endpoint], count: int) -> Counter[str]:
    rng = SystemRandom(7)
    return Counter(str(balancer.pick(members, rng)) for _ in range(count))


@pytest.mark.parametrize("kind", [Simple.ROUND_ROBIN, Simple.LEAST_REQUEST])
def test_a_newcomer_ramps_up_then_gets_its_full_share(kind: Simple) -> None:
    slow = SlowStart(WINDOW, pending=[NEW.key])
    balancer = make_balancer(LoadBalancer(simple=kind, warmup=WINDOW), slow_start=slow)
    members = [*OLD, NEW]
    slow.observe(0.0)
    start = shares(balancer, members, 2100)
    # Weight 1 × 10 % against 1 + 1: about 0.1 / 2.1 of the picks.
    assert start[str(NEW)] / 2100 == pytest.approx(0.1 / 2.1, abs=0.02)
    slow.observe(5.0)
    middle = shares(balancer, members, 2500)
    assert middle[str(NEW)] / 2500 == pytest.approx(0.5 / 2.5, abs=0.03)
    slow.observe(10.0)
    assert not slow.active
    done = shares(balancer, members, 3000)
    assert done[str(NEW)] / 3000 == pytest.approx(1 / 3, abs=0.03)


def test_least_request_weighs_load_while_warming() -> None:
    slow = SlowStart(WINDOW, pending=[NEW.key])
    balancer = make_balancer(LoadBalancer(warmup=WINDOW), slow_start=slow)
    slow.observe(0.0)
    for _ in range(4):
        balancer.on_start(OLD[0])  # weight 1 / (4 + 1)
    picks = shares(balancer, [*OLD, NEW], 1300)
    assert picks[str(OLD[1])] / 1300 == pytest.approx(1 / 1.3, abs=0.02)
    assert picks[str(OLD[0])] / 1300 == pytest.approx(0.2 / 1.3, abs=0.02)
    assert picks[str(NEW)] / 1300 == pytest.approx(0.1 / 1.3, abs=0.02)


def test_weights_and_members_change_rebuilds_the_warm_schedule() -> None:
    slow = SlowStart(WINDOW, pending=[NEW.key])
    balancer = make_balancer(
        LoadBalancer(simple=Simple.ROUND_ROBIN, warmup=WINDOW), slow_start=slow
    )
    slow.observe(0.0)
    assert shares(balancer, [*OLD, NEW], 30)[str(NEW)] <= 3
    heavy = Endpoint("10.0.0.8", 80, weight=5)
    picks = shares(balancer, [heavy, NEW], 510)
    assert picks[str(heavy)] / 510 == pytest.approx(5 / 5.1, abs=0.02)


def test_only_round_robin_and_least_request_warm_up() -> None:
    slow = SlowStart(WINDOW)
    assert warms_up(LoadBalancer(warmup=WINDOW))
    assert not warms_up(LoadBalancer())
    assert not warms_up(LoadBalancer(warmup=Warmup(0.0)))
    assert not warms_up(LoadBalancer(simple=Simple.RANDOM, warmup=WINDOW))
    hashing = LoadBalancer(consistent_hash=ConsistentHash(http_header_name="x"), warmup=WINDOW)
    assert not warms_up(hashing)
    assert isinstance(make_balancer(hashing, OLD, slow_start=slow), RingHashBalancer)
    random = make_balancer(LoadBalancer(simple=Simple.RANDOM, warmup=WINDOW), slow_start=slow)
    assert isinstance(random, RandomBalancer)
    plain = make_balancer(LoadBalancer(warmup=WINDOW))
    assert type(plain) is LeastRequestBalancer  # no slow start state: nobody is warming up
    rr = make_balancer(LoadBalancer(simple=Simple.ROUND_ROBIN, warmup=WINDOW), slow_start=slow)
    assert isinstance(rr, SlowStartBalancer)
