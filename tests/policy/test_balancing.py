"""Load balancers: weights, P2C, consistent hashing, locality priorities."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlib._model import Call, Endpoint, Peer, SystemRandom
from meshlib._policy.balancing import (
    ConsistentHash,
    LeastRequestBalancer,
    LoadBalancer,
    MaglevBalancer,
    RandomBalancer,
    RingHashBalancer,
    RoundRobinBalancer,
    Simple,
    choose_priority,
    hash64,
    hash_key_for,
    make_balancer,
    priority_loads,
)


def hosts(count: int, weights: list[int] | None = None) -> list[Endpoint]:
    return [
        Endpoint(f"10.0.0.{i}", 8080, weight=weights[i] if weights else 1) for i in range(count)
    ]


def tally(picks: Iterable[Endpoint | None]) -> Counter[tuple[str, int]]:
    # Endpoints hold a labels dict, so they are not hashable: count by address.
    return Counter(e.key for e in picks if e is not None)


class FixedRandom:
    """Replays a script of draws (for exact P2C samples)."""

    def __init__(self, ranges: list[int], floats: list[float] | None = None) -> None:
        self._ranges = list(ranges)
        self._floats = list(floats or [])

    def randrange(self, stop: int, /) -> int:
        return self._ranges.pop(0) % stop

    def random(self) -> float:
        return self._floats.pop(0)


def test_round_robin_equal_weights_rotates_from_random_start() -> None:
    eps = hosts(3)
    balancer = RoundRobinBalancer()
    picks = [balancer.pick(eps, FixedRandom([1])) for _ in range(6)]
    assert picks == [eps[1], eps[2], eps[0], eps[1], eps[2], eps[0]]


@given(st.lists(st.integers(1, 5), min_size=2, max_size=5), st.integers(0, 2**32))
def test_weighted_round_robin_gives_exact_shares_per_cycle(weights: list[int], seed: int) -> None:
    eps = hosts(len(weights), weights)
    balancer = RoundRobinBalancer()
    rng = SystemRandom(seed)
    total = sum(weights)
    counts = tally(balancer.pick(eps, rng) for _ in range(total * 20))
    for endpoint, weight in zip(eps, weights, strict=True):
        assert abs(counts[endpoint.key] - 20 * weight) <= 1


def test_weighted_round_robin_is_smooth() -> None:
    eps = hosts(2, [3, 1])
    balancer = RoundRobinBalancer()
    picks = [balancer.pick(eps, FixedRandom([0])) for _ in range(8)]
    # Never the light host twice in a row: EDF interleaves.
    assert all(not (a is eps[1] and b is eps[1]) for a, b in itertools.pairwise(picks))
    assert picks.count(eps[1]) == 2


def test_empty_candidates_give_none() -> None:
    for balancer in (RoundRobinBalancer(), LeastRequestBalancer(), RandomBalancer()):
        assert balancer.pick([], SystemRandom(1)) is None
    assert RingHashBalancer([]).pick([], SystemRandom(1)) is None


def test_p2c_takes_the_less_loaded_and_first_on_tie() -> None:
    eps = hosts(3)
    balancer = LeastRequestBalancer()
    balancer.on_start(eps[0])
    balancer.on_start(eps[0])
    assert balancer.pick(eps, FixedRandom([0, 2])) is eps[2]
    assert balancer.pick(eps, FixedRandom([2, 0])) is eps[2]
    assert balancer.pick(eps, FixedRandom([1, 2])) is eps[1]  # tie: first sample
    assert balancer.active(eps[0]) == 2
    balancer.on_end(eps[0])
    balancer.on_end(eps[0])
    balancer.on_end(eps[0])  # an extra end never goes negative
    assert balancer.active(eps[0]) == 0


def test_p2c_prefers_less_loaded_hosts_statistically() -> None:
    eps = hosts(4)
    balancer = LeastRequestBalancer()
    for _ in range(5):
        balancer.on_start(eps[0])
    rng = SystemRandom(7)
    counts = tally(balancer.pick(eps, rng) for _ in range(4000))
    # The loaded host wins only when both samples are it: 1/16 of picks.
    assert counts[eps[0].key] < 4000 / 8
    assert min(counts[e.key] for e in eps[1:]) > 4000 / 5


def test_weighted_least_request_follows_weights_when_idle_and_load_when_busy() -> None:
    eps = hosts(2, [3, 1])
    balancer = LeastRequestBalancer()
    rng = SystemRandom(3)
    counts = tally(balancer.pick(eps, rng) for _ in range(400))
    assert abs(counts[eps[0].key] - 300) <= 2
    busy = LeastRequestBalancer()
    for _ in range(20):
        busy.on_start(eps[0])
    counts = tally(busy.pick(eps, rng) for _ in range(400))
    assert counts[eps[1].key] > counts[eps[0].key]


@given(st.lists(st.integers(1, 4), min_size=2, max_size=4))
@settings(max_examples=25)
def test_weighted_random_converges(weights: list[int]) -> None:
    eps = hosts(len(weights), weights)
    balancer = RandomBalancer()
    rng = SystemRandom(11)
    draws = 4000
    counts = tally(balancer.pick(eps, rng) for _ in range(draws))
    total = sum(weights)
    for endpoint, weight in zip(eps, weights, strict=True):
        assert abs(counts[endpoint.key] / draws - weight / total) < 0.05


def test_uniform_random_covers_all() -> None:
    eps = hosts(3)
    balancer, rng = RandomBalancer(), SystemRandom(5)
    counts = tally(balancer.pick(eps, rng) for _ in range(300))
    assert set(counts) == {e.key for e in eps}


def test_exclude_prefers_untried_hosts_within_five_picks() -> None:
    eps = hosts(2)
    balancer = RandomBalancer()
    assert balancer.pick(eps, FixedRandom([0, 0, 0, 0, 1]), exclude=(eps[0],)) is eps[1]
    # Five picks at most: then the last pick stands, tried or not.
    assert balancer.pick(eps, FixedRandom([0, 0, 0, 0, 0, 1]), exclude=(eps[0],)) is eps[0]
    assert balancer.pick(eps, SystemRandom(2), exclude=eps) in eps


def test_candidates_change_rebuilds() -> None:
    eps = hosts(3, [1, 2, 3])
    for balancer in (RoundRobinBalancer(), RandomBalancer(), LeastRequestBalancer()):
        rng = SystemRandom(1)
        assert balancer.pick(eps, rng) in eps
        assert balancer.pick(eps[:1], rng) is eps[0]
        assert balancer.pick(list(eps[:1]), rng) is eps[0]  # equal content, new object


# -- consistent hashing ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ring", "maglev"])
def test_hash_is_sticky_and_spreads(kind: str) -> None:
    eps = hosts(5)
    balancer = RingHashBalancer(eps) if kind == "ring" else MaglevBalancer(eps, 5003)
    rng = SystemRandom(1)
    keys = [hash64(f"user-{i}".encode()) for i in range(2000)]
    first = [balancer.pick(eps, rng, hash_key=k) for k in keys]
    assert first == [balancer.pick(eps, rng, hash_key=k) for k in keys]
    counts = tally(first)
    assert min(counts.values()) > 2000 / 5 * 0.6


def test_ring_size_follows_minimum_and_weights() -> None:
    assert RingHashBalancer(hosts(10)).ring_size == 1280  # 103 rounded up to 128 each
    ring = RingHashBalancer(hosts(2, [3, 1]), minimum_ring_size=64)
    assert ring.ring_size == 64
    weighted = hosts(2, [3, 1])
    counts = tally(
        ring.pick(weighted, SystemRandom(1), hash_key=hash64(str(i).encode())) for i in range(4000)
    )
    assert 0.6 < counts[weighted[0].key] / 4000 < 0.9


@pytest.mark.parametrize("kind", ["ring", "maglev"])
def test_adding_a_host_moves_about_one_nth_of_keys(kind: str) -> None:
    before, after = hosts(9), hosts(10)

    def make(endpoints: list[Endpoint]) -> RingHashBalancer | MaglevBalancer:
        return RingHashBalancer(endpoints) if kind == "ring" else MaglevBalancer(endpoints, 5003)

    old, new = make(before), make(after)
    rng = SystemRandom(1)
    keys = [hash64(f"k{i}".encode()) for i in range(5000)]
    moved = sum(old.pick(before, rng, hash_key=k) != new.pick(after, rng, hash_key=k) for k in keys)
    # Ideal is 1/10 of keys.
    assert 0.05 < moved / len(keys) < 0.15
    # Keys that moved went to the new host (ring: all of them; maglev: nearly).
    went_elsewhere = sum(
        old.pick(before, rng, hash_key=k) != (p := new.pick(after, rng, hash_key=k))
        and p != after[9]
        for k in keys
    )
    assert went_elsewhere == 0 if kind == "ring" else went_elsewhere < len(keys) * 0.03


@pytest.mark.parametrize("kind", ["ring", "maglev"])
def test_missing_hosts_only_move_their_own_keys(kind: str) -> None:
    eps = hosts(5)
    balancer = RingHashBalancer(eps) if kind == "ring" else MaglevBalancer(eps, 1009)
    rng = SystemRandom(1)
    keys = [hash64(f"k{i}".encode()) for i in range(1000)]
    full = [balancer.pick(eps, rng, hash_key=k) for k in keys]
    healthy = (eps[0], eps[1], eps[3], eps[4])
    partial = [balancer.pick(healthy, rng, hash_key=k) for k in keys]
    for a, b in zip(full, partial, strict=True):
        assert b in healthy
        assert a == b or a == eps[2]
    # Excluding a tried host walks past it; excluding everyone falls back to the hash.
    key = next(k for k, a in zip(keys, full, strict=True) if a != eps[2])
    owner = balancer.pick(eps, rng, hash_key=key)
    assert owner is not None
    assert balancer.pick(eps, rng, hash_key=key, exclude=(owner,)) != owner
    assert balancer.pick(healthy, rng, hash_key=key, exclude=(owner,)) != owner
    assert balancer.pick(eps, rng, hash_key=key, exclude=eps) == owner


def test_hash_without_key_is_random_and_unknown_candidates_rebuild() -> None:
    eps = hosts(3)
    ring = RingHashBalancer(eps, minimum_ring_size=128)
    rng = SystemRandom(4)
    counts = tally(ring.pick(eps, rng) for _ in range(600))
    assert set(counts) == {e.key for e in eps}
    others = [Endpoint("10.9.9.9", 1), Endpoint("10.9.9.8", 1)]
    assert ring.pick(others, SystemRandom(1), hash_key=1) in others
    maglev = MaglevBalancer([], 7)
    assert maglev.pick(others, SystemRandom(1), hash_key=5) in others
    # Same address and port but a different weight: a different endpoint.
    reweighted = [Endpoint("10.9.9.9", 1, weight=5), others[1]]
    assert ring.pick(reweighted, SystemRandom(1), hash_key=1) in reweighted


def test_weighted_maglev_shares() -> None:
    eps = hosts(2, [3, 1])
    maglev = MaglevBalancer(eps, 1009)
    counts = tally(
        maglev.pick(eps, SystemRandom(1), hash_key=hash64(str(i).encode())) for i in range(4000)
    )
    assert 0.68 < counts[eps[0].key] / 4000 < 0.82


# -- hash keys ------------------------------------------------------------------------------


class Headers(dict[str, str]):
    def get(self, key: str, /) -> str | None:  # type: ignore[override]
        return super().get(key.lower())


def call(headers: dict[str, str] | None = None, path: str = "/", peer: Peer | None = None) -> Call:
    return Call(
        protocol="http",
        method="GET",
        scheme="http",
        authority="svc",
        host="svc",
        port=80,
        path=path,
        headers=Headers(headers or {}),
        peer=peer,
    )


def test_hash_key_sources() -> None:
    by_header = ConsistentHash(http_header_name="x-user")
    assert hash_key_for(by_header, call({"x-user": "a"})) == hash64(b"a")
    assert hash_key_for(by_header, call()) is None
    by_cookie = ConsistentHash(http_cookie_name="sid")
    assert hash_key_for(by_cookie, call({"cookie": 'a=1; sid="xyz"'})) == hash64(b"xyz")
    assert hash_key_for(by_cookie, call({"cookie": "a=1; flag"})) is None
    assert hash_key_for(by_cookie, call()) is None
    by_query = ConsistentHash(http_query_parameter_name="u")
    assert hash_key_for(by_query, call(path="/p?x=1&u=b%20c")) == hash64(b"b c")
    assert hash_key_for(by_query, call(path="/p?x=1")) is None
    by_ip = ConsistentHash(use_source_ip=True)
    assert hash_key_for(by_ip, call(), source_ip="10.1.1.1") == hash64(b"10.1.1.1")
    assert hash_key_for(by_ip, call(peer=Peer(address="10.2.2.2"))) == hash64(b"10.2.2.2")
    assert hash_key_for(by_ip, call()) is None
    assert hash_key_for(ConsistentHash(), call()) is None


# -- locality priorities (the plan per client: test_locality.py) ------------------------------


def test_priority_loads_spill_over_with_overprovisioning() -> None:
    assert priority_loads([10, 10], [10, 10]) == [100.0, 0.0]
    # 8 of 10 healthy: 1.4 × 80 % ≥ 100 %, nothing spills.
    assert priority_loads([8, 10], [10, 10]) == [100.0, 0.0]
    loads = priority_loads([5, 10], [10, 10])
    assert loads == pytest.approx([70.0, 30.0])
    assert priority_loads([0, 0], [10, 10]) == [0.0, 0.0]
    assert priority_loads([1, 0], [10, 0]) == [100.0, 0.0]  # scaled up when all are weak


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 20)), min_size=1, max_size=4))
def test_priority_loads_sum_to_100_when_anything_is_healthy(levels: list[tuple[int, int]]) -> None:
    healthy = [min(h, t) for h, t in levels]
    totals = [t for _, t in levels]
    loads = priority_loads(healthy, totals)
    assert all(load >= 0 for load in loads)
    assert sum(loads) == pytest.approx(100.0 if any(healthy) else 0.0)


def test_choose_priority() -> None:
    assert choose_priority([70.0, 30.0], FixedRandom([], [0.5])) == 0
    assert choose_priority([70.0, 30.0], FixedRandom([], [0.8])) == 1
    assert choose_priority([0.0, 0.0], FixedRandom([], [0.1])) == -1
    assert choose_priority([50.0, 49.9999], FixedRandom([], [0.9999999])) == 1


def test_make_balancer_per_setting() -> None:
    eps = hosts(2)
    assert isinstance(make_balancer(LoadBalancer()), LeastRequestBalancer)
    assert isinstance(make_balancer(LoadBalancer(simple=Simple.ROUND_ROBIN)), RoundRobinBalancer)
    assert isinstance(make_balancer(LoadBalancer(simple=Simple.RANDOM)), RandomBalancer)
    assert isinstance(make_balancer(LoadBalancer(simple=Simple.PASSTHROUGH)), RandomBalancer)
    ring = LoadBalancer(consistent_hash=ConsistentHash(http_header_name="x"))
    assert isinstance(make_balancer(ring, eps), RingHashBalancer)
    maglev = LoadBalancer(consistent_hash=ConsistentHash(maglev=True, maglev_table_size=7))
    assert isinstance(make_balancer(maglev, eps), MaglevBalancer)
