"""DestinationRule ``loadBalancer`` settings."""

from __future__ import annotations

import enum
import heapq
import math
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from itertools import accumulate
from types import MappingProxyType
from urllib.parse import unquote

from meshlib._model.call import Call
from meshlib._model.endpoint import Endpoint
from meshlib._model.runtime import Random

DEFAULT_MINIMUM_RING_SIZE = 1024
DEFAULT_MAGLEV_TABLE_SIZE = 65537


class Simple(enum.Enum):
    LEAST_REQUEST = "LEAST_REQUEST"
    """Istio's default (``UNSPECIFIED`` and ``LEAST_CONN`` compile to this)."""
    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    PASSTHROUGH = "PASSTHROUGH"


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    http_header_name: str | None = None
    http_cookie_name: str | None = None
    http_cookie_path: str | None = None
    http_cookie_ttl: float | None = None
    http_cookie_attributes: tuple[tuple[str, str], ...] = ()
    """Extra ``Set-Cookie`` attributes of a generated cookie (``("SameSite", "Strict")``)."""
    use_source_ip: bool = False
    http_query_parameter_name: str | None = None
    maglev: bool = False
    """Ring hash (default) or maglev."""
    minimum_ring_size: int = DEFAULT_MINIMUM_RING_SIZE
    maglev_table_size: int = DEFAULT_MAGLEV_TABLE_SIZE


@dataclass(frozen=True, slots=True)
class LocalitySetting:
    """``localityLbSetting``; ``_policy.locality`` turns it into priorities and weights."""

    enabled: bool = True
    distribute: tuple[tuple[str, Mapping[str, int]], ...] = ()
    """``(from, {to: weight})`` rules, in order."""
    failover: tuple[tuple[str, str], ...] = ()
    """``(from region, to region)``."""
    failover_priority: tuple[str, ...] = ()
    failover_priority_values: tuple[tuple[str, str], ...] | None = None
    """``failoverPriority`` as ``(label, value)`` for this client, resolved when compiled (its
    labels, locality and ``label=value`` overrides); ``None``: the client has no labels and
    istiod ignores ``failoverPriority``."""


@dataclass(frozen=True, slots=True)
class Warmup:
    """``warmup`` / ``warmupDurationSecs``: Envoy's slow start (ROUND_ROBIN, LEAST_REQUEST)."""

    duration: float
    minimum_percent: float = 10.0
    aggression: float = 1.0


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    simple: Simple = Simple.LEAST_REQUEST
    consistent_hash: ConsistentHash | None = None
    locality: LocalitySetting | None = None
    warmup: Warmup | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


DEFAULT_LOAD_BALANCER = LoadBalancer()


# --------------------------------------------------------------------------------------------
# Balancers: the verbs. Pure and synchronous; ``ClusterState`` serialises calls with its lock.

MAX_HOST_SELECTION_ATTEMPTS = 5
"""Istio's ``host_selection_retry_max_attempts`` for ``retryIgnorePreviousHosts``."""
DEFAULT_ACTIVE_REQUEST_BIAS = 1.0
"""Envoy's ``active_request_bias`` (Istio does not expose it)."""
P2C_CHOICE_COUNT = 2
MAXIMUM_RING_SIZE = 8 * 1024 * 1024
"""Envoy's default ``maximum_ring_size``."""
LOCALITY_OVERPROVISIONING_FACTOR = 1.4
"""Envoy's default: a priority keeps all its traffic down to 71 % healthy endpoints."""

_HASH_SPACE = 1 << 64
ActiveCounts = dict[tuple[str, int], int]


def hash64(data: bytes, salt: bytes = b"") -> int:
    """A stable 64-bit hash (not Envoy's xxHash: byte-exact compatibility is not a goal)."""
    return int.from_bytes(blake2b(data, digest_size=8, salt=salt).digest(), "big")


class Balancer:
    """Picks one endpoint of a destination per attempt.

    ``candidates`` are the endpoints the caller allows now (healthy, this priority). Pass the
    same sequence object while it is unchanged: structures built for it (EDF heaps, rings)
    are cached by identity and rebuilt only when it changes.
    """

    __slots__ = ("_active", "_members", "_seq")

    def __init__(self, active: ActiveCounts | None = None) -> None:
        # Shared between the balancers of one cluster (one per locality priority).
        self._active: ActiveCounts = {} if active is None else active
        self._seq: Sequence[Endpoint] | None = None
        self._members: tuple[Endpoint, ...] = ()

    def pick(
        self,
        candidates: Sequence[Endpoint],
        rng: Random,
        *,
        hash_key: int | None = None,
        exclude: Collection[Endpoint] = (),
        draws: int = MAX_HOST_SELECTION_ATTEMPTS,
    ) -> Endpoint | None:
        """An endpoint, preferring ones not in ``exclude``: up to ``draws`` picks (five, like
        Envoy; one when the caller redraws itself, from priority and locality down)."""
        if not candidates:
            return None
        if candidates is not self._seq:
            self._refresh(candidates)
        chosen = self._pick_one(candidates, rng, hash_key)
        if exclude:
            attempts = 1
            while chosen in exclude and attempts < draws:
                chosen = self._pick_one(candidates, rng, hash_key)
                attempts += 1
        return chosen

    def on_start(self, endpoint: Endpoint) -> None:
        """A request to ``endpoint`` started (least-request load)."""
        key = endpoint.key
        self._active[key] = self._active.get(key, 0) + 1

    def on_end(self, endpoint: Endpoint) -> None:
        key = endpoint.key
        count = self._active.get(key, 0) - 1
        if count > 0:
            self._active[key] = count
        else:
            self._active.pop(key, None)

    def active(self, endpoint: Endpoint) -> int:
        return self._active.get(endpoint.key, 0)

    def _refresh(self, candidates: Sequence[Endpoint]) -> None:
        members = tuple(candidates)
        self._seq = candidates
        if members != self._members:
            self._members = members
            self._rebuild(members)

    def _rebuild(self, members: tuple[Endpoint, ...]) -> None:  # pragma: no cover - abstract
        pass

    def _pick_one(
        self, candidates: Sequence[Endpoint], rng: Random, hash_key: int | None
    ) -> Endpoint:  # pragma: no cover - abstract
        raise NotImplementedError


def _equal_weights(members: Sequence[Endpoint]) -> bool:
    first = members[0].weight
    return all(member.weight == first for member in members)


class _Edf:
    """Earliest-deadline-first scheduler: each pick advances the winner by 1/weight. O(log n)."""

    __slots__ = ("_heap", "_order")

    def __init__(self, weights: Sequence[float], rng: Random) -> None:
        self._heap = [(1.0 / weight, index, index) for index, weight in enumerate(weights)]
        heapq.heapify(self._heap)
        self._order = len(weights)
        # A random number of warm-up picks, so that clients do not all start on the same host.
        for _ in range(rng.randrange(len(weights))):
            self.pop_push(weights)

    def pop_push(self, weights: Sequence[float]) -> int:
        deadline, _, index = self._heap[0]
        self._order += 1
        heapq.heapreplace(self._heap, (deadline + 1.0 / weights[index], self._order, index))
        return index

    def next_with(self, weight: float) -> int:
        deadline, _, index = self._heap[0]
        self._order += 1
        heapq.heapreplace(self._heap, (deadline + 1.0 / weight, self._order, index))
        return index

    def peek(self) -> int:
        return self._heap[0][2]


class RoundRobinBalancer(Balancer):
    """Equal weights: rotation from a random start. Unequal: EDF (smooth weighted rotation)."""

    __slots__ = ("_cursor", "_edf", "_weights")

    def __init__(self, active: ActiveCounts | None = None) -> None:
        super().__init__(active)
        self._cursor = -1
        self._edf: _Edf | None = None
        self._weights: tuple[float, ...] = ()
        """Empty when all weights are equal."""

    def _rebuild(self, members: tuple[Endpoint, ...]) -> None:
        self._edf = None
        equal = _equal_weights(members)
        self._weights = () if equal else tuple(float(member.weight) for member in members)

    def _pick_one(
        self, candidates: Sequence[Endpoint], rng: Random, hash_key: int | None
    ) -> Endpoint:
        if self._weights:
            if self._edf is None:
                self._edf = _Edf(self._weights, rng)
            return candidates[self._edf.pop_push(self._weights)]
        if self._cursor < 0:
            self._cursor = rng.randrange(len(candidates))
        else:
            self._cursor += 1
        return candidates[self._cursor % len(candidates)]


class LeastRequestBalancer(Balancer):
    """Equal weights: power of two choices on active requests. Unequal: EDF on w/(active+1)^bias."""

    __slots__ = ("_bias", "_edf", "_weighted")

    def __init__(
        self, active: ActiveCounts | None = None, bias: float = DEFAULT_ACTIVE_REQUEST_BIAS
    ) -> None:
        super().__init__(active)
        self._bias = bias
        self._edf: _Edf | None = None
        self._weighted = False

    def _rebuild(self, members: tuple[Endpoint, ...]) -> None:
        self._edf = None
        self._weighted = not _equal_weights(members)

    def _pick_one(
        self, candidates: Sequence[Endpoint], rng: Random, hash_key: int | None
    ) -> Endpoint:
        active = self._active
        if not self._weighted:
            count = len(candidates)
            best = candidates[rng.randrange(count)]
            best_load = active.get(best.key, 0)
            for _ in range(P2C_CHOICE_COUNT - 1):
                other = candidates[rng.randrange(count)]
                load = active.get(other.key, 0)
                if load < best_load:  # a tie keeps the first sample, as Envoy does
                    best, best_load = other, load
            return best
        if self._edf is None:
            self._edf = _Edf([float(member.weight) for member in candidates], rng)
        chosen = candidates[self._edf.peek()]
        # The winner goes back with the weight its load gives it now (Envoy recomputes on insert;
        # this request's own start is not counted yet, as in Envoy).
        weight = chosen.weight / (active.get(chosen.key, 0) + 1) ** self._bias
        self._edf.next_with(weight)
        return chosen


# --------------------------------------------------------------------------------------------
# Slow start

MIN_SLOW_START_AGE = 0.001
"""Envoy's time factor counts at least one millisecond."""

EndpointKey = tuple[str, int]


def slow_start_factor(warmup: Warmup, age: float) -> float:
    """Envoy's weight factor for an endpoint ``age`` seconds into its slow start window."""
    if age >= warmup.duration:
        return 1.0
    time_factor = max(age, MIN_SLOW_START_AGE) / warmup.duration
    return max(warmup.minimum_percent / 100.0, math.pow(time_factor, 1.0 / warmup.aggression))


class SlowStart:
    """The endpoints of one cluster that are warming up, and the clock they are judged by.

    Endpoints present when the cluster was first built are not in slow start (nor are Envoy's
    hosts at cluster creation); endpoints that join later are, from their first pick. The
    cluster calls ``observe(now)`` under its lock before each pick; balancers read ``active``
    and ``factor``.
    """

    __slots__ = ("_pending", "active", "joined", "now", "until", "warmup")

    def __init__(
        self,
        warmup: Warmup,
        joined: Mapping[EndpointKey, float] = MappingProxyType({}),
        pending: Collection[EndpointKey] = (),
    ) -> None:
        self.warmup = warmup
        self.joined = dict(joined)
        """Endpoint key -> the time it joined."""
        self._pending = tuple(pending)
        self.now = -math.inf
        self.until = max(self.joined.values(), default=-math.inf) + warmup.duration
        self.active = False

    @classmethod
    def carried(
        cls,
        warmup: Warmup,
        members: Sequence[Endpoint],
        previous: Collection[EndpointKey],
        earlier: SlowStart | None = None,
    ) -> SlowStart | None:
        """For a cluster rebuilt from one with ``previous`` endpoints: members it did not have
        join now; ``earlier`` (its slow start) keeps the others' join times. ``None``: nobody
        is warming up."""
        keys = {member.key for member in members}
        joined: dict[EndpointKey, float] = {}
        pending = [key for key in keys if key not in previous]
        if earlier is not None:
            joined = {key: time for key, time in earlier.joined.items() if key in keys}
            pending += [key for key in earlier._pending if key in keys and key not in pending]
        if not pending and not joined:
            return None
        return cls(warmup, joined, sorted(pending))

    def observe(self, now: float) -> bool:
        """Set the clock; True while some endpoint is within its window."""
        if self._pending:
            for key in self._pending:
                self.joined[key] = now
            self._pending = ()
            self.until = max(self.until, now + self.warmup.duration)
        self.now = now
        self.active = now < self.until
        return self.active

    @property
    def pending(self) -> bool:
        """Joined endpoints not yet seen by a pick (their window starts then)."""
        return bool(self._pending)

    def factor(self, endpoint: Endpoint) -> float:
        """The weight factor at the last ``observe`` (which leaves nobody pending)."""
        return self.factor_at(endpoint, self.now)

    def factor_at(self, endpoint: Endpoint, now: float) -> float:
        """The weight factor at ``now``, changing nothing (a pending endpoint is at age 0)."""
        key = endpoint.key
        joined = now if key in self._pending else self.joined.get(key)
        return 1.0 if joined is None else slow_start_factor(self.warmup, now - joined)


class SlowStartBalancer(Balancer):
    """ROUND_ROBIN or LEAST_REQUEST with ``warmup``.

    While nobody warms up it is the plain balancer. While someone does, Envoy leaves rotation
    and power-of-two choices for EDF on ``weight × slow-start factor`` (LEAST_REQUEST: divided
    by ``(active + 1)^bias``), recomputing a host's weight each time it is queued again, so a
    warming host's share grows with its age.
    """

    __slots__ = ("_bias", "_edf", "_plain", "_slow")

    def __init__(
        self,
        plain: RoundRobinBalancer | LeastRequestBalancer,
        slow: SlowStart,
        active: ActiveCounts,
        bias: float = 0.0,
    ) -> None:
        super().__init__(active)
        self._plain = plain
        self._slow = slow
        self._bias = bias
        self._edf: _Edf | None = None

    def pick(
        self,
        candidates: Sequence[Endpoint],
        rng: Random,
        *,
        hash_key: int | None = None,
        exclude: Collection[Endpoint] = (),
        draws: int = MAX_HOST_SELECTION_ATTEMPTS,
    ) -> Endpoint | None:
        if not self._slow.active:
            return self._plain.pick(
                candidates, rng, hash_key=hash_key, exclude=exclude, draws=draws
            )
        return super().pick(candidates, rng, hash_key=hash_key, exclude=exclude, draws=draws)

    def _rebuild(self, members: tuple[Endpoint, ...]) -> None:
        self._edf = None

    def _weight(self, endpoint: Endpoint) -> float:
        weight = endpoint.weight * self._slow.factor(endpoint)
        if self._bias:
            weight /= math.pow(self._active.get(endpoint.key, 0) + 1, self._bias)
        return weight

    def _pick_one(
        self, candidates: Sequence[Endpoint], rng: Random, hash_key: int | None
    ) -> Endpoint:
        edf = self._edf
        if edf is None:
            edf = self._edf = _Edf([self._weight(member) for member in candidates], rng)
        chosen = candidates[edf.peek()]
        edf.next_with(self._weight(chosen))
        return chosen


class RandomBalancer(Balancer):
    """Uniform, or proportional to weight (prefix sums + bisection, O(log n))."""

    __slots__ = ("_cumulative",)

    def __init__(self, active: ActiveCounts | None = None) -> None:
        super().__init__(active)
        self._cumulative: list[int] = []

    def _rebuild(self, members: tuple[Endpoint, ...]) -> None:
        self._cumulative = (
            [] if _equal_weights(members) else list(accumulate(m.weight for m in members))
        )

    def _pick_one(
        self, candidates: Sequence[Endpoint], rng: Random, hash_key: int | None
    ) -> Endpoint:
        if not self._cumulative:
            return candidates[rng.randrange(len(candidates))]
        return candidates[bisect_right(self._cumulative, rng.randrange(self._cumulative[-1]))]


class _HashBalancer(Balancer):
    """Shared by ring hash and maglev.

    The lookup structure is built over every endpoint of the destination once; endpoints that
    are not candidates now (ejected, other priority, excluded by a retry) are skipped by walking
    forward from the hashed slot. For the ring this is exactly what rebuilding without them
    gives (Envoy rebuilds); for maglev it moves only the keys of the missing hosts, and it
    keeps an ejection from costing a table rebuild under the cluster lock.
    """

    __slots__ = ("_allowed", "_owners", "_universe", "_universe_keys")

    def __init__(self, endpoints: Sequence[Endpoint], active: ActiveCounts | None = None) -> None:
        super().__init__(active)
        self._universe: tuple[Endpoint, ...] = ()
        self._universe_keys: dict[tuple[str, int], int] = {}
        self._owners: list[int] = []
        self._allowed: frozenset[int] | None = None
        if endpoints:
            self._build_universe(tuple(endpoints))

    def _build_universe(self, endpoints: tuple[Endpoint, ...]) -> None:
        self._universe = endpoints
        self._universe_keys = {endpoint.key: index for index, endpoint in enumerate(endpoints)}
        self._build_table(endpoints)

    def _build_table(self, endpoints: tuple[Endpoint, ...]) -> None:  # pragma: no cover
        raise NotImplementedError

    def _rebuild(self, members: tuple[Endpoint, ...]) -> None:
        keys = self._universe_keys
        indexes: list[int] = []
        for member in members:
            index = keys.get(member.key)
            if index is None or self._universe[index] != member:
                # An endpoint the table does not know: the candidates become the universe.
                self._build_universe(members)
                self._allowed = None
                return
            indexes.append(index)
        self._allowed = None if len(members) == len(self._universe) else frozenset(indexes)

    def _slot(self, hash_value: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def pick(
        self,
        candidates: Sequence[Endpoint],
        rng: Random,
        *,
        hash_key: int | None = None,
        exclude: Collection[Endpoint] = (),
        draws: int = MAX_HOST_SELECTION_ATTEMPTS,
    ) -> Endpoint | None:
        # ``draws`` does not apply: a hash walks past excluded hosts in one pick.
        if not candidates:
            return None
        if candidates is not self._seq:
            self._refresh(candidates)
        allowed = self._allowed
        if exclude:
            # Re-picking is useless for a deterministic hash: walk past excluded hosts instead,
            # unless they are all the candidates there are.
            universe = self._universe
            pool = range(len(universe)) if allowed is None else allowed
            narrowed = frozenset(i for i in pool if universe[i] not in exclude)
            if narrowed:
                allowed = narrowed
        # No key (header absent...): a random point, so the spread follows the weights.
        point = int(rng.random() * _HASH_SPACE) if hash_key is None else hash_key
        slot = self._slot(point)
        owners = self._owners
        if allowed is None:
            return self._universe[owners[slot]]
        size = len(owners)
        for step in range(size):
            owner = owners[(slot + step) % size]
            if owner in allowed:
                return self._universe[owner]
        raise AssertionError("unreachable: every host owns a slot")  # pragma: no cover


class RingHashBalancer(_HashBalancer):
    """Ketama-style ring: entries proportional to weight, at least ``minimum_ring_size``."""

    __slots__ = ("_hashes", "_minimum_ring_size")

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        minimum_ring_size: int = DEFAULT_MINIMUM_RING_SIZE,
        active: ActiveCounts | None = None,
    ) -> None:
        self._minimum_ring_size = max(1, minimum_ring_size)
        self._hashes: list[int] = []
        super().__init__(endpoints, active)

    @property
    def ring_size(self) -> int:
        return len(self._hashes)

    def _build_table(self, endpoints: tuple[Endpoint, ...]) -> None:
        total = sum(endpoint.weight for endpoint in endpoints)
        shares = [endpoint.weight / total for endpoint in endpoints]
        smallest = min(shares)
        # Replicas per host depend on the lightest share rounded up to a power of two, not on
        # the exact host count: adding a host then rarely changes the others' replicas, so
        # only about 1/N of the keys move (Envoy's exact sizing moves ~1.5× more).
        unit = 1 << (math.ceil(self._minimum_ring_size * smallest - 1e-9) - 1).bit_length()
        per_share = min(unit / smallest, MAXIMUM_RING_SIZE)
        entries: list[tuple[int, int]] = []
        for index, (endpoint, share) in enumerate(zip(endpoints, shares, strict=True)):
            name = str(endpoint).encode()
            for replica in range(max(1, round(per_share * share))):
                entries.append((hash64(name + b"_" + str(replica).encode()), index))
        entries.sort()
        self._hashes = [entry[0] for entry in entries]
        self._owners = [entry[1] for entry in entries]

    def _slot(self, hash_value: int) -> int:
        slot = bisect_left(self._hashes, hash_value)
        return 0 if slot == len(self._hashes) else slot


class MaglevBalancer(_HashBalancer):
    """Maglev lookup table (prime size): near-equal shares, small disruption on host changes."""

    __slots__ = ("_table_size",)

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        table_size: int = DEFAULT_MAGLEV_TABLE_SIZE,
        active: ActiveCounts | None = None,
    ) -> None:
        self._table_size = table_size
        super().__init__(endpoints, active)

    def _build_table(self, endpoints: tuple[Endpoint, ...]) -> None:
        size = self._table_size
        offsets: list[int] = []
        skips: list[int] = []
        for endpoint in endpoints:
            name = str(endpoint).encode()
            offsets.append(hash64(name) % size)
            skips.append(hash64(name, salt=b"skip") % (size - 1) + 1)
        heaviest = max(endpoint.weight for endpoint in endpoints)
        shares = [endpoint.weight / heaviest for endpoint in endpoints]
        targets = [0.0] * len(endpoints)
        nexts = [0] * len(endpoints)
        table = [-1] * size
        filled = 0
        iteration = 0
        # Weighted Maglev: a host takes a turn each round its accumulated share allows.
        while True:
            iteration += 1
            for index in range(len(endpoints)):
                if iteration * shares[index] < targets[index]:
                    continue
                targets[index] += 1.0
                offset, skip, position = offsets[index], skips[index], nexts[index]
                slot = (offset + skip * position) % size
                while table[slot] >= 0:
                    position += 1
                    slot = (offset + skip * position) % size
                table[slot] = index
                nexts[index] = position + 1
                filled += 1
                if filled == size:
                    self._owners = table
                    return

    def _slot(self, hash_value: int) -> int:
        return hash_value % self._table_size


# --------------------------------------------------------------------------------------------
# Consistent-hash keys


def hash_key_for(
    consistent_hash: ConsistentHash, call: Call, *, source_ip: str | None = None
) -> int | None:
    """The request's hash key, or ``None`` when it has none (the balancer then picks at random).

    ``source_ip`` is this workload's own address for ``useSourceIp`` (a sidecar hashes the
    downstream pod IP); without it the inbound peer address is used if known.
    """
    value: str | None
    if consistent_hash.http_header_name is not None:
        value = call.headers.get(consistent_hash.http_header_name)
    elif consistent_hash.http_cookie_name is not None:
        value = _cookie(call.headers.get("cookie"), consistent_hash.http_cookie_name)
    elif consistent_hash.http_query_parameter_name is not None:
        value = _query_parameter(call.query, consistent_hash.http_query_parameter_name)
    elif consistent_hash.use_source_ip:
        value = source_ip if source_ip is not None else (call.peer.address if call.peer else None)
    else:
        value = None
    return None if value is None else hash64(value.encode())


def generated_cookie(consistent_hash: ConsistentHash, rng: Random) -> tuple[int, str] | None:
    """Envoy's generated hash cookie, for a request that has none while ``ttl`` is set.

    Returns the hash key to pick with and the ``Set-Cookie`` value for the response (Envoy's
    format: quoted value, ``Max-Age`` unless the ttl is 0, ``Path`` when set, the configured
    attributes, ``HttpOnly``).
    Envoy derives the value from the downstream connection's addresses; an in-process client
    has no downstream connection, so the value is random. Later requests that carry it hash
    to the same endpoint.
    """
    name = consistent_hash.http_cookie_name
    ttl = consistent_hash.http_cookie_ttl
    if name is None or ttl is None:
        return None
    value = f"{rng.randrange(1 << 64):016x}"
    parts = [f'{name}="{value}"']
    if ttl >= 1:
        parts.append(f"Max-Age={int(ttl)}")
    if consistent_hash.http_cookie_path:
        parts.append(f"Path={consistent_hash.http_cookie_path}")
    parts.extend(
        f"{key}={text}" if text else key for key, text in consistent_hash.http_cookie_attributes
    )
    parts.append("HttpOnly")
    return hash64(value.encode()), "; ".join(parts)


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            return value.strip().strip('"')
    return None


def _query_parameter(query: str, name: str) -> str | None:
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if unquote(key) == name:
            return unquote(value)
    return None


# --------------------------------------------------------------------------------------------
# Locality priorities (the plan per client is ``_policy.locality``)


def priority_loads(healthy: Sequence[int], totals: Sequence[int]) -> list[float]:
    """Envoy's share of traffic per priority, in percent (summing to 100, or all 0 if none healthy).

    A priority's health is ``min(100, 140 × healthy / total)``; the closest priority takes as
    much as its health allows and the rest spills over to the next ones.
    """
    health = [
        min(100.0, LOCALITY_OVERPROVISIONING_FACTOR * 100.0 * h / t) if t else 0.0
        for h, t in zip(healthy, totals, strict=True)
    ]
    normalised_total = min(100.0, sum(health))
    loads: list[float] = []
    remaining = 100.0
    for value in health:
        share = 0.0 if normalised_total == 0 else min(remaining, value * 100.0 / normalised_total)
        loads.append(share)
        remaining -= share
    return loads


def choose_priority(loads: Sequence[float], rng: Random) -> int:
    """A priority index drawn by ``loads``; -1 when every load is 0."""
    return weighted_index(loads, rng.random() * 100.0)


def weighted_index(weights: Sequence[float], point: float) -> int:
    """The index whose span of the cumulated ``weights`` holds ``point``; -1 when all are 0."""
    last = -1
    for index, weight in enumerate(weights):
        if weight > 0:
            last = index
            if point < weight:
                return index
            point -= weight
    return last  # rounding left a sliver past the end


# --------------------------------------------------------------------------------------------


def warms_up(settings: LoadBalancer) -> bool:
    """Whether ``warmup`` acts: Istio programs slow start for ROUND_ROBIN and LEAST_REQUEST."""
    return (
        settings.warmup is not None
        and settings.warmup.duration > 0
        and settings.consistent_hash is None
        and settings.simple in (Simple.ROUND_ROBIN, Simple.LEAST_REQUEST)
    )


def make_balancer(
    settings: LoadBalancer,
    endpoints: Sequence[Endpoint] = (),
    *,
    active: ActiveCounts | None = None,
    slow_start: SlowStart | None = None,
) -> Balancer:
    """The balancer for a destination's ``loadBalancer`` settings.

    ``endpoints`` seeds the hash structures (others build lazily on the first pick). Balancers
    of one cluster's priorities share ``active`` so that load is counted once, and its
    ``slow_start`` (used when ``warms_up(settings)``).
    """
    consistent = settings.consistent_hash
    if consistent is not None:
        if consistent.maglev:
            return MaglevBalancer(endpoints, consistent.maglev_table_size, active)
        return RingHashBalancer(endpoints, consistent.minimum_ring_size, active)
    if slow_start is not None and warms_up(settings):
        shared: ActiveCounts = {} if active is None else active
        if settings.simple is Simple.ROUND_ROBIN:
            return SlowStartBalancer(RoundRobinBalancer(shared), slow_start, shared)
        return SlowStartBalancer(
            LeastRequestBalancer(shared), slow_start, shared, DEFAULT_ACTIVE_REQUEST_BIAS
        )
    if settings.simple is Simple.ROUND_ROBIN:
        return RoundRobinBalancer(active)
    if settings.simple is Simple.RANDOM:
        return RandomBalancer(active)
    if settings.simple is Simple.PASSTHROUGH:
        # The driver sends to the original destination; a random pick is the fallback.
        return RandomBalancer(active)
    return LeastRequestBalancer(active)
