"""ClusterState and ClusterRegistry: shared per-destination state behind one lock."""

from __future__ import annotations

import threading
from collections import Counter

from meshlib._engine.clusters import ClusterRegistry, ClusterSpec, ClusterState
from meshlib._model import Classification, Endpoint, SystemRandom
from meshlib._policy.balancing import LoadBalancer, LocalitySetting, Simple
from meshlib._policy.limits import Admission, ConnectionPool, RetryBudget
from meshlib._policy.outliers import OutlierDetection
from meshlib._policy.traffic import ResolvedPolicy

A = Endpoint("10.0.0.1", 80, locality="r1/z1/s1")
B = Endpoint("10.0.0.2", 80, locality="r1/z2/s1")
CASE8 = OutlierDetection(
    consecutive_5xx_errors=1, interval=1.0, base_ejection_time=30.0, max_ejection_percent=100
)


def test_admission_queue_hands_over_in_order() -> None:
    policy = ResolvedPolicy(
        connection_pool=ConnectionPool(max_connections=1, http1_max_pending_requests=2)
    )
    cluster = ClusterState(policy, [A])
    woken: list[str] = []
    assert cluster.admit() is Admission.ADMITTED
    assert cluster.admit() is Admission.QUEUED
    assert cluster.admit() is Admission.QUEUED
    assert cluster.admit() is Admission.OVERFLOW
    first = cluster.wait_for_slot(lambda: woken.append("first"))
    second = cluster.wait_for_slot(lambda: woken.append("second"))
    assert [first.admitted, second.admitted] == [False, False]
    cluster.release()
    assert [first.admitted, second.admitted] == [True, False]
    assert woken == ["first"]
    assert cluster.cancel_wait(first) is False  # already admitted: must release instead
    assert cluster.cancel_wait(second) is True
    cluster.release()
    assert woken == ["first"]
    assert (cluster.limiter.active, cluster.limiter.pending) == (0, 0)


def test_wait_after_a_release_is_admitted_at_once() -> None:
    policy = ResolvedPolicy(
        connection_pool=ConnectionPool(max_connections=1, http1_max_pending_requests=1)
    )
    cluster = ClusterState(policy, [A])
    assert cluster.admit() is Admission.ADMITTED
    assert cluster.admit() is Admission.QUEUED
    cluster.release()  # nobody registered yet: the slot stays free for the queued one
    waiter = cluster.wait_for_slot(lambda: None)
    assert waiter.admitted
    cluster.release()
    assert cluster.limiter.active == 0


def test_retry_slots() -> None:
    cluster = ClusterState(ResolvedPolicy(retry_budget=RetryBudget(min_retry_concurrency=1)), [A])
    assert cluster.try_acquire_retry()
    assert not cluster.try_acquire_retry()
    cluster.release_retry()
    assert cluster.try_acquire_retry()


def test_case8_pick_skips_ejected_then_503_uh() -> None:
    cluster = ClusterState(ResolvedPolicy(outlier_detection=CASE8), [A, B])
    rng = SystemRandom(1)
    assert cluster.record(A, Classification.HTTP_5XX, 500, 0.0)
    assert all(cluster.pick(rng, now=1.0) == B for _ in range(20))
    assert cluster.ejected() == [(A, 30.0)]
    assert cluster.record(B, Classification.HTTP_5XX, 500, 1.0)
    assert cluster.pick(rng, now=2.0) is None  # 503 UH
    assert cluster.pick(rng, now=31.0) == A
    assert cluster.detector is not None


def test_without_outlier_detection_nothing_is_recorded() -> None:
    cluster = ClusterState(ResolvedPolicy(), [A, B])
    assert not cluster.record(A, Classification.HTTP_5XX, 500, 0.0)
    assert cluster.ejected() == []
    assert cluster.detector is None
    assert cluster.pick(SystemRandom(1)) in (A, B)


def test_least_request_load_through_start_finish() -> None:
    cluster = ClusterState(ResolvedPolicy(), [A, B])
    for _ in range(3):
        cluster.start(A)
    rng = SystemRandom(3)
    picks = Counter(cluster.pick(rng).key for _ in range(200))  # type: ignore[union-attr]
    assert picks[B.key] > picks[A.key]
    for _ in range(3):
        cluster.finish(A)


def test_locality_priority_with_outlier_detection() -> None:
    policy = ResolvedPolicy(outlier_detection=CASE8)
    near = [Endpoint(f"10.1.0.{i}", 80, locality="r1/z1/s1") for i in range(2)]
    far = [Endpoint(f"10.2.0.{i}", 80, locality="r2/z1/s1") for i in range(2)]
    cluster = ClusterState(policy, near + far, local_locality="r1/z1/s1")
    rng = SystemRandom(5)
    assert all(cluster.pick(rng, now=0.0) in near for _ in range(50))
    # Half of the near hosts ejected: 1.4 × 50 % = 70 % stays, 30 % spills to the far ones.
    cluster.record(near[0], Classification.HTTP_5XX, 500, 0.0)
    picks = [cluster.pick(rng, now=0.5) for _ in range(1000)]
    assert near[0] not in picks
    spilled = sum(p in far for p in picks)
    assert 200 < spilled < 400
    cluster.record(near[1], Classification.HTTP_5XX, 500, 0.6)
    assert all(cluster.pick(rng, now=0.7) in far for _ in range(50))
    for endpoint in far:
        cluster.record(endpoint, Classification.HTTP_5XX, 500, 0.8)
    assert cluster.pick(rng, now=0.9) is None


def test_locality_is_flat_without_outlier_detection_or_when_disabled() -> None:
    near = Endpoint("10.1.0.1", 80, locality="r1/z1/s1")
    far = Endpoint("10.2.0.1", 80, locality="r2/z1/s1")
    rng = SystemRandom(2)
    for policy in (
        ResolvedPolicy(load_balancer=LoadBalancer(simple=Simple.ROUND_ROBIN)),
        ResolvedPolicy(
            outlier_detection=CASE8,
            load_balancer=LoadBalancer(locality=LocalitySetting(enabled=False)),
        ),
    ):
        cluster = ClusterState(policy, [near, far], local_locality="r1/z1/s1")
        assert {cluster.pick(rng).key for _ in range(20)} == {near.key, far.key}  # type: ignore[union-attr]


def test_registry_keeps_unchanged_clusters_across_rebuild() -> None:
    registry = ClusterRegistry()
    spec = ClusterSpec(ResolvedPolicy(outlier_detection=CASE8), (A, B))
    registry.rebuild(
        {"reviews|v1|9080": spec, "ratings||9080": ClusterSpec(ResolvedPolicy(), (A,))}
    )
    kept = registry.get("reviews|v1|9080")
    changed = registry.get("ratings||9080")
    assert kept is not None
    assert changed is not None
    kept.record(A, Classification.HTTP_5XX, 500, 0.0)
    equal_spec = ClusterSpec(ResolvedPolicy(outlier_detection=CASE8), (A, B))
    registry.rebuild(
        {
            "reviews|v1|9080": equal_spec,
            "ratings||9080": ClusterSpec(ResolvedPolicy(), (A, B)),
        }
    )
    assert registry.get("reviews|v1|9080") is kept  # ejection state survives
    assert registry.get("ratings||9080") is not changed
    assert len(registry) == 2
    assert set(registry) == {"reviews|v1|9080", "ratings||9080"}
    assert dict(registry.items())["reviews|v1|9080"] is kept
    registry.rebuild({})
    assert registry.get("reviews|v1|9080") is None


def test_registry_get_or_create() -> None:
    registry = ClusterRegistry()
    spec = ClusterSpec(ResolvedPolicy(), (A,), multiplexed=True)
    state = registry.get_or_create("x", spec)
    assert (
        registry.get_or_create("x", ClusterSpec(ResolvedPolicy(), (A,), multiplexed=True)) is state
    )
    assert state.multiplexed
    replaced = registry.get_or_create("x", ClusterSpec(ResolvedPolicy(), (B,)))
    assert replaced is not state
    assert replaced.endpoints == (B,)


def test_threads_hammering_admit_release_return_to_zero() -> None:
    policy = ResolvedPolicy(
        connection_pool=ConnectionPool(max_connections=3, http1_max_pending_requests=4),
        outlier_detection=CASE8,
    )
    cluster = ClusterState(policy, [A, B])
    rng_lock = threading.Lock()
    admitted = Counter[str]()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = SystemRandom(seed)
        try:
            for _ in range(300):
                admission = cluster.admit()
                with rng_lock:
                    admitted[admission.name] += 1
                if admission is Admission.OVERFLOW:
                    continue
                if admission is Admission.QUEUED:
                    event = threading.Event()
                    waiter = cluster.wait_for_slot(event.set)
                    if not waiter.admitted and not event.wait(5.0) and cluster.cancel_wait(waiter):
                        continue
                try:
                    endpoint = cluster.pick(rng, now=0.0)
                    if endpoint is not None:
                        cluster.start(endpoint)
                        cluster.finish(endpoint)
                        cluster.record(endpoint, Classification.SUCCESS, 200, 0.0)
                finally:
                    cluster.release()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sum(admitted.values()) == 8 * 300
    assert (cluster.limiter.active, cluster.limiter.pending) == (0, 0)
    assert cluster.limiter.overflows == admitted["OVERFLOW"]
