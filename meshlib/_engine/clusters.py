"""Per-destination shared state: in-flight counts, ejections, balancer cursors.

One ``ClusterState`` per Envoy cluster (host, subset, port). Every method takes the one
``threading.Lock`` for a few microseconds and never across I/O, so sync clients on many
threads and async clients on one loop share it safely. Wake-ups of waiting requests run
after the lock is released.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from meshlib._model.endpoint import Endpoint
from meshlib._model.outcome import Classification
from meshlib._model.runtime import Random
from meshlib._policy.balancing import (
    MAX_HOST_SELECTION_ATTEMPTS,
    ActiveCounts,
    Balancer,
    LoadBalancer,
    SlowStart,
    choose_priority,
    make_balancer,
    priority_loads,
    warms_up,
)
from meshlib._policy.limits import Admission, ConnectionPool, Limiter, RetryBudget
from meshlib._policy.locality import LocalityGroup, LocalityPlan, choose_locality, plan_localities
from meshlib._policy.outliers import OutlierDetection, OutlierDetector


class ClusterPolicy(Protocol):
    """What a cluster needs of a resolved traffic policy (``_policy.traffic.ResolvedPolicy``)."""

    @property
    def connection_pool(self) -> ConnectionPool: ...
    @property
    def outlier_detection(self) -> OutlierDetection | None: ...
    @property
    def load_balancer(self) -> LoadBalancer: ...
    @property
    def retry_budget(self) -> RetryBudget | None: ...


class Waiter:
    """A queued request's place in line. ``admitted`` turns True when it is handed a slot."""

    __slots__ = ("admitted", "wake")

    def __init__(self, wake: Callable[[], object]) -> None:
        self.wake = wake
        self.admitted = False


class ClusterState:
    """Limits, outlier detection and load balancing of one cluster, behind one lock.

    Driver protocol for one attempt::

        admission = cluster.admit()
        if admission is Admission.OVERFLOW: reply 503 UO
        if admission is Admission.QUEUED:
            waiter = cluster.wait_for_slot(event.set)       # or a loop-safe future setter
            if not waiter.admitted and not wait(event, timeout) and cluster.cancel_wait(waiter):
                reply 503 (gave up waiting)
        try:
            endpoint = cluster.pick(rng, hash_key, tried, now)   # None: 503 UH
            cluster.start(endpoint); ... send ...; cluster.finish(endpoint)
            cluster.record(endpoint, classification, status, now)
        finally:
            cluster.release()
    """

    __slots__ = (
        "_balancers",
        "_detector",
        "_full_groups",
        "_general",
        "_groups",
        "_level_cache",
        "_level_sizes",
        "_levels",
        "_limiter",
        "_lock",
        "_offsets",
        "_slow_start",
        "_waiters",
        "endpoints",
        "local_locality",
        "multiplexed",
        "policy",
        "removed",
    )

    def __init__(
        self,
        policy: ClusterPolicy,
        endpoints: Sequence[Endpoint],
        *,
        local_locality: str = "",
        multiplexed: bool = False,
        previous: ClusterState | None = None,
    ) -> None:
        """``previous`` is the state this one replaces (same cluster, new endpoints or policy):
        endpoints it did not have start in slow start when ``warmup`` is set."""
        self.policy = policy
        self.local_locality = local_locality
        self.multiplexed = multiplexed
        self._lock = threading.Lock()
        self._limiter = Limiter(
            policy.connection_pool, policy.retry_budget, multiplexed=multiplexed
        )
        # Made by the first request that has to wait: most clusters never queue, and an empty
        # deque holds a 64-slot block (~600 bytes) per cluster.
        self._waiters: deque[Waiter] | None = None
        od = policy.outlier_detection
        settings = policy.load_balancer
        # Istio programs locality failover only when outlier detection is configured.
        plan = plan_localities(
            endpoints,
            local_locality,
            settings.locality,
            failover=od is not None,
            weighted=settings.consistent_hash is None,
        )
        self.removed: tuple[Endpoint, ...] = plan.removed
        """Endpoints of localities ``distribute`` gives no weight (istiod drops them)."""
        gone = {endpoint.key for endpoint in plan.removed}
        self.endpoints: tuple[Endpoint, ...] = tuple(e for e in endpoints if e.key not in gone)
        self._detector = None if od is None else OutlierDetector(od, self.endpoints)
        self._levels: tuple[tuple[Endpoint, ...], ...] = plan.levels or (self.endpoints,)
        self._level_sizes = tuple(len(level) for level in self._levels)
        self._groups = plan.groups
        self._full_groups: tuple[tuple[Sequence[Endpoint], ...], ...] = tuple(
            tuple(group.endpoints for group in level) for level in plan.groups or ()
        )
        self._level_cache: (
            tuple[int, tuple[Sequence[Endpoint], ...], tuple[tuple[Sequence[Endpoint], ...], ...]]
            | None
        ) = None
        self._slow_start: SlowStart | None = None
        if previous is not None and settings.warmup is not None and warms_up(settings):
            self._slow_start = SlowStart.carried(
                settings.warmup,
                self.endpoints,
                {endpoint.key for endpoint in previous.endpoints},
                previous._slow_start,
            )
        active: ActiveCounts = {}
        # One balancer per priority, or per locality of each priority when weighted; they
        # share the load counts.
        members = self._levels if plan.groups is None else [g.endpoints for g in _flat(plan)]
        self._balancers: tuple[Balancer, ...] = tuple(
            make_balancer(settings, group, active=active, slow_start=self._slow_start)
            for group in members
        )
        self._offsets = tuple(accumulate((len(level) for level in plan.groups or ()), initial=0))
        self._general = self._needs_general()

    def _needs_general(self) -> bool:
        # The plain path serves one priority without locality weights or warming endpoints.
        return len(self._levels) > 1 or self._groups is not None or self._slow_start is not None

    # -- admission -----------------------------------------------------------------------------

    def admit(self) -> Admission:
        with self._lock:
            return self._limiter.try_acquire_request()

    def wait_for_slot(self, wake: Callable[[], object]) -> Waiter:
        """After ``QUEUED``: join the line. ``wake`` is called (outside the lock, maybe from
        another thread) when the slot is handed over; check ``admitted`` first — it may
        already be True, and then ``wake`` is not called."""
        waiter = Waiter(wake)
        with self._lock:
            waiters = self._waiters
            if not waiters and self._limiter.promote():
                waiter.admitted = True
            else:
                if waiters is None:
                    waiters = self._waiters = deque()
                waiters.append(waiter)
        return waiter

    def cancel_wait(self, waiter: Waiter) -> bool:
        """Give up waiting. False if the slot was handed over meanwhile: then the request is
        admitted after all and must ``release()``."""
        with self._lock:
            if waiter.admitted:
                return False
            waiters = self._waiters
            assert waiters is not None  # not admitted: it queued, so the deque exists
            try:
                waiters.remove(waiter)
            except ValueError:  # pragma: no cover - admitted is set under the same lock
                return False
            self._limiter.abandon()
            return True

    def release(self) -> None:
        """An admitted request ended (success, failure or cancellation)."""
        woken: Waiter | None = None
        with self._lock:
            if self._limiter.release_request() and self._waiters and self._limiter.promote():
                woken = self._waiters.popleft()
                woken.admitted = True
        if woken is not None:
            woken.wake()

    def try_acquire_retry(self) -> bool:
        with self._lock:
            return self._limiter.try_acquire_retry()

    def release_retry(self) -> None:
        with self._lock:
            self._limiter.release_retry()

    # -- endpoints -----------------------------------------------------------------------------

    def pick(
        self,
        rng: Random,
        hash_key: int | None = None,
        exclude: Collection[Endpoint] = (),
        now: float = 0.0,
    ) -> Endpoint | None:
        """A non-ejected endpoint (all of them in panic), closest locality first; None: 503 UH."""
        with self._lock:
            return self._pick(rng, hash_key, exclude, now)

    def begin(
        self,
        rng: Random,
        hash_key: int | None,
        exclude: Collection[Endpoint],
        now: float,
    ) -> tuple[Admission, Endpoint | None]:
        """``admit``, then when admitted ``pick`` and ``start``: one lock round-trip.

        ``(ADMITTED, None)`` holds a request slot but found no endpoint (503 UH): release it.
        """
        with self._lock:
            admission = self._limiter.try_acquire_request()
            if admission is not Admission.ADMITTED:
                return admission, None
            endpoint = self._pick(rng, hash_key, exclude, now)
            if endpoint is not None:
                self._balancers[0].on_start(endpoint)
            return admission, endpoint

    def pick_and_start(
        self,
        rng: Random,
        hash_key: int | None,
        exclude: Collection[Endpoint],
        now: float,
    ) -> Endpoint | None:
        """``pick`` and ``start`` under one lock (after a queued request was admitted)."""
        with self._lock:
            endpoint = self._pick(rng, hash_key, exclude, now)
            if endpoint is not None:
                self._balancers[0].on_start(endpoint)
            return endpoint

    def _pick(
        self,
        rng: Random,
        hash_key: int | None,
        exclude: Collection[Endpoint],
        now: float,
    ) -> Endpoint | None:
        if self._general:
            return self._pick_general(rng, hash_key, exclude, now)
        detector = self._detector
        everyone = self.endpoints if detector is None else detector.healthy(self.endpoints, now)
        if len(everyone) == 1:
            # Every balancer picks the only endpoint (an excluded one too, after its
            # attempts): skip its random draws.
            return everyone[0]
        return self._balancers[0].pick(everyone, rng, hash_key=hash_key, exclude=exclude)

    def _pick_general(
        self,
        rng: Random,
        hash_key: int | None,
        exclude: Collection[Endpoint],
        now: float,
    ) -> Endpoint | None:
        """Priorities (locality failover), locality weights and slow start."""
        slow = self._slow_start
        if slow is not None and not slow.observe(now):
            self._slow_start = None  # everyone has warmed up, for good
            self._general = self._needs_general()
        detector = self._detector
        endpoints = self.endpoints
        everyone = endpoints if detector is None else detector.healthy(endpoints, now)
        if not everyone:
            return None
        if everyone is endpoints:  # nothing ejected, or panic
            levels: Sequence[Sequence[Endpoint]] = self._levels
            groups = self._full_groups
        else:
            assert detector is not None
            levels, groups = self._healthy_levels(detector, now)
        chosen = self._pick_once(levels, groups, rng, hash_key, exclude)
        # Like Envoy's host selection retries, a retry that drew an excluded host draws again
        # from the top (priority and locality too), up to five times in all.
        attempts = 1
        while exclude and chosen in exclude and attempts < MAX_HOST_SELECTION_ATTEMPTS:
            chosen = self._pick_once(levels, groups, rng, hash_key, exclude)
            attempts += 1
        return chosen

    def _pick_once(
        self,
        levels: Sequence[Sequence[Endpoint]],
        groups: Sequence[Sequence[Sequence[Endpoint]]],
        rng: Random,
        hash_key: int | None,
        exclude: Collection[Endpoint],
    ) -> Endpoint | None:
        index = 0
        if len(levels) > 1:
            loads = priority_loads([len(h) for h in levels], self._level_sizes)
            index = choose_priority(loads, rng)
        # One draw: ``_pick_general`` redraws from the top, so a retry makes at most five
        # draws in all, as Envoy's host selection retries do.
        if self._groups is None:
            return self._balancers[index].pick(
                levels[index], rng, hash_key=hash_key, exclude=exclude, draws=1
            )
        healthy = groups[index]
        local = choose_locality(self._groups[index], [len(g) for g in healthy], rng)
        balancer = self._balancers[self._offsets[index] + local]
        return balancer.pick(healthy[local], rng, hash_key=hash_key, exclude=exclude, draws=1)

    def _healthy_levels(
        self, detector: OutlierDetector, now: float
    ) -> tuple[tuple[Sequence[Endpoint], ...], tuple[tuple[Sequence[Endpoint], ...], ...]]:
        """Non-ejected endpoints per priority, and per locality of each priority."""
        # Cached per ejection version: balancers then see the same sequences and keep state.
        cached = self._level_cache
        if cached is not None and cached[0] == detector.version:
            return cached[1], cached[2]
        ejected = {endpoint.key for endpoint, _ in detector.ejected()}

        def usable(members: tuple[Endpoint, ...]) -> Sequence[Endpoint]:
            return tuple(e for e in members if e.key not in ejected) if ejected else members

        levels = tuple(usable(level) for level in self._levels)
        groups = tuple(
            tuple(usable(group.endpoints) for group in level) for level in self._groups or ()
        )
        self._level_cache = (detector.version, levels, groups)
        return levels, groups

    # -- explain -------------------------------------------------------------------------------

    def placement(self, now: float) -> dict[tuple[str, int], dict[str, float | int | None]]:
        """Per endpoint key: its ``priority`` (0 is tried first), its locality's share of that
        priority in percent (``locality_weight``, ``None`` without locality weighting) and its
        slow-start weight factor now (``warmup_factor``, ``None`` when not warming up)."""
        with self._lock:
            slow = self._slow_start
            result: dict[tuple[str, int], dict[str, float | int | None]] = {}
            for priority, level in enumerate(self._levels):
                groups = self._groups[priority] if self._groups is not None else ()
                total = sum(group.weight for group in groups)
                shares = {
                    e.key: 100.0 * group.weight / total for group in groups for e in group.endpoints
                }
                for endpoint in level:
                    factor = slow.factor_at(endpoint, now) if slow is not None else 1.0
                    result[endpoint.key] = {
                        "priority": priority,
                        "locality_weight": shares.get(endpoint.key),
                        "warmup_factor": factor if factor < 1.0 else None,
                    }
            return result

    def record(
        self, endpoint: Endpoint, classification: Classification, status: int, now: float
    ) -> bool:
        """Feed outlier detection; True when this result ejected the endpoint."""
        detector = self._detector
        if detector is None:
            return False
        with self._lock:
            return detector.record(endpoint, classification, status, now)

    def start(self, endpoint: Endpoint) -> None:
        with self._lock:
            self._balancers[0].on_start(endpoint)  # the balancers share their load counts

    def finish(self, endpoint: Endpoint) -> None:
        with self._lock:
            self._balancers[0].on_end(endpoint)

    def end(self, endpoint: Endpoint | None, *, slot: bool, retry: bool) -> None:
        """``finish`` (when ``endpoint``), ``release`` (when ``slot``) and ``release_retry``
        (when ``retry``) under one lock round-trip; a waiter handed the slot wakes after it."""
        woken: Waiter | None = None
        with self._lock:
            if endpoint is not None:
                self._balancers[0].on_end(endpoint)
            limiter = self._limiter
            if retry:
                limiter.release_retry()
            if slot and limiter.release_request() and self._waiters and limiter.promote():
                woken = self._waiters.popleft()
                woken.admitted = True
        if woken is not None:
            woken.wake()

    # -- metrics and explain -------------------------------------------------------------------

    @property
    def limiter(self) -> Limiter:
        """Counters (read without the lock: a slightly stale number is fine for metrics)."""
        return self._limiter

    @property
    def detector(self) -> OutlierDetector | None:
        return self._detector

    def ejected(self) -> list[tuple[Endpoint, float]]:
        if self._detector is None:
            return []
        with self._lock:
            return self._detector.ejected()


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What a configuration generation says about one cluster."""

    policy: ClusterPolicy
    endpoints: tuple[Endpoint, ...]
    local_locality: str = ""
    multiplexed: bool = False

    def build(self, previous: ClusterState | None = None) -> ClusterState:
        """``previous``: the state this one replaces (its endpoints are not new: no warmup)."""
        return ClusterState(
            self.policy,
            self.endpoints,
            local_locality=self.local_locality,
            multiplexed=self.multiplexed,
            previous=previous,
        )


class ClusterRegistry:
    """Cluster key → ``ClusterState``, kept across reloads when nothing about it changed.

    Keys are the caller's (e.g. ``(host, subset, port)``). ``get`` reads one dict reference
    without locking; ``rebuild`` and ``get_or_create`` swap in a new dict under a lock.
    """

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: Mapping[Hashable, tuple[ClusterSpec, ClusterState]] = {}

    def get(self, key: Hashable) -> ClusterState | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def get_or_create(self, key: Hashable, spec: ClusterSpec) -> ClusterState:
        """For clusters discovered on first use (hosts resolved by DNS, no ServiceEntry)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not _same(entry[0], spec):
                entry = (spec, spec.build(None if entry is None else entry[1]))
                self._entries = {**self._entries, key: entry}
            return entry[1]

    def rebuild(self, specs: Mapping[Hashable, ClusterSpec]) -> None:
        """Adopt a new generation: equal specs keep their state (counters, ejections, load)."""
        with self._lock:
            old = self._entries
            fresh: dict[Hashable, tuple[ClusterSpec, ClusterState]] = {}
            for key, spec in specs.items():
                entry = old.get(key)
                if entry is None or not _same(entry[0], spec):
                    entry = (spec, spec.build(None if entry is None else entry[1]))
                fresh[key] = entry
            self._entries = fresh

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._entries)

    def items(self) -> list[tuple[Hashable, ClusterState]]:
        return [(key, entry[1]) for key, entry in self._entries.items()]


def _same(old: ClusterSpec, new: ClusterSpec) -> bool:
    return old is new or old == new


def _flat(plan: LocalityPlan) -> list[LocalityGroup]:
    return [group for level in plan.groups or () for group in level]
