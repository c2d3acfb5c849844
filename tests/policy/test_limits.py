"""Connection-pool limits and retry budgets (ISTIO-SEMANTICS 2.4, conformance case 7)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshlib._policy.limits import Admission, ConnectionPool, Limiter, RetryBudget

CASE7 = ConnectionPool(
    max_connections=1, http1_max_pending_requests=1, max_requests_per_connection=1
)


def test_case7_concurrency_one_is_always_admitted() -> None:
    limiter = Limiter(CASE7)
    for _ in range(20):
        assert limiter.try_acquire_request() is Admission.ADMITTED
        assert limiter.release_request() is False
    assert limiter.overflows == 0


def test_case7_third_concurrent_request_overflows() -> None:
    limiter = Limiter(CASE7)
    assert limiter.try_acquire_request() is Admission.ADMITTED
    assert limiter.try_acquire_request() is Admission.QUEUED
    assert limiter.try_acquire_request() is Admission.OVERFLOW
    assert limiter.pending_overflows == 1
    assert limiter.overflows == 1
    # The first ends: the waiting one takes its connection.
    assert limiter.release_request() is True
    assert limiter.promote() is True
    assert (limiter.active, limiter.pending) == (1, 0)
    assert limiter.promote() is False  # nobody waiting


def test_newcomers_queue_behind_waiters() -> None:
    limiter = Limiter(ConnectionPool(max_connections=1, http1_max_pending_requests=5))
    assert limiter.try_acquire_request() is Admission.ADMITTED
    assert limiter.try_acquire_request() is Admission.QUEUED
    limiter.release_request()
    # A connection is free but someone waits: no barging.
    assert limiter.try_acquire_request() is Admission.QUEUED
    assert limiter.promote() is True
    assert limiter.promote() is False  # the connection is taken again
    limiter.abandon()
    assert (limiter.active, limiter.pending) == (1, 0)


def test_max_requests_bounds_outstanding() -> None:
    limiter = Limiter(ConnectionPool(http2_max_requests=2), multiplexed=True)
    assert limiter.try_acquire_request() is Admission.ADMITTED
    assert limiter.try_acquire_request() is Admission.ADMITTED
    assert limiter.try_acquire_request() is Admission.OVERFLOW
    assert limiter.request_overflows == 1
    limiter.release_request()
    assert limiter.try_acquire_request() is Admission.ADMITTED


def test_multiplexed_ignores_connection_count() -> None:
    limiter = Limiter(
        ConnectionPool(max_connections=1, http1_max_pending_requests=1), multiplexed=True
    )
    assert all(limiter.try_acquire_request() is Admission.ADMITTED for _ in range(10))


def test_max_retries() -> None:
    limiter = Limiter(ConnectionPool(max_retries=1))
    assert limiter.try_acquire_retry()
    assert not limiter.try_acquire_retry()
    assert limiter.retry_overflows == 1
    limiter.release_retry()
    assert limiter.try_acquire_retry()


def test_retry_budget_scales_with_load() -> None:
    limiter = Limiter(ConnectionPool(), RetryBudget(percent=20.0, min_retry_concurrency=3))
    for _ in range(3):
        assert limiter.try_acquire_retry()
    assert not limiter.try_acquire_retry()  # floor of 3 with no load
    for _ in range(25):
        limiter.try_acquire_request()
    assert limiter.try_acquire_retry()
    assert limiter.try_acquire_retry()  # 20 % of 25 = 5
    assert not limiter.try_acquire_retry()


@given(st.lists(st.sampled_from(["acquire", "release", "promote", "abandon"]), max_size=60))
def test_counters_stay_within_limits(ops: list[str]) -> None:
    pool = ConnectionPool(max_connections=2, http1_max_pending_requests=2, http2_max_requests=3)
    limiter = Limiter(pool)
    for op in ops:
        if op == "acquire":
            limiter.try_acquire_request()
        elif op == "release" and limiter.active:
            limiter.release_request()
        elif op == "promote":
            limiter.promote()
        elif op == "abandon" and limiter.pending:
            limiter.abandon()
        assert 0 <= limiter.active <= 2
        assert 0 <= limiter.pending <= 2
        assert limiter.active + limiter.pending <= 3
