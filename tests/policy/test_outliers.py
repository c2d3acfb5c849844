"""Outlier detection timelines on a fake clock (ISTIO-SEMANTICS 2.5, conformance case 8)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshlib._model import Classification, Endpoint
from meshlib._policy.outliers import OutlierDetection, OutlierDetector

C = Classification
A = Endpoint("10.0.0.1", 80)
B = Endpoint("10.0.0.2", 80)
CASE8 = OutlierDetection(
    consecutive_5xx_errors=1, interval=1.0, base_ejection_time=30.0, max_ejection_percent=100
)


def test_case8_ejection_timeline() -> None:
    detector = OutlierDetector(CASE8, [A, B], start=0.0)
    assert detector.record(A, C.HTTP_5XX, 500, 0.0) is True
    assert detector.is_ejected(A, 29.9)
    assert detector.healthy([A, B], 29.9) == (B,)
    # Back at the first sweep at or after 30 s, not before.
    assert not detector.is_ejected(A, 30.0)
    assert detector.healthy([A, B], 30.0) == [A, B]
    # Second ejection lasts 60 s (30 s × 2), returning at the sweep after 90.5 s.
    assert detector.record(A, C.HTTP_5XX, 500, 30.5) is True
    assert detector.is_ejected(A, 90.9)
    assert not detector.is_ejected(A, 91.0)
    assert detector.ejections_total == 2


def test_case8_both_failing_means_no_healthy_host() -> None:
    detector = OutlierDetector(CASE8, [A, B])
    assert detector.record(A, C.HTTP_5XX, 500, 5.0)
    assert detector.record(B, C.GATEWAY_ERROR, 503, 5.2)
    assert detector.healthy([A, B], 6.0) == ()  # min_health 0: caller replies 503 UH
    assert sorted(str(e) for e, _ in detector.ejected()) == [str(A), str(B)]
    assert detector.ejected_count == 2


def test_return_happens_only_at_sweeps() -> None:
    settings = OutlierDetection(consecutive_5xx_errors=1, interval=10.0, base_ejection_time=30.0)
    detector = OutlierDetector(settings, [A, B], start=0.0)
    detector.record(A, C.HTTP_5XX, 500, 3.0)  # elapses at 33, next sweep at 40
    assert detector.is_ejected(A, 39.0)
    assert not detector.is_ejected(A, 40.0)


def test_max_ejection_percent_with_two_hosts_still_ejects_one() -> None:
    settings = OutlierDetection(consecutive_5xx_errors=1, max_ejection_percent=10)
    detector = OutlierDetector(settings, [A, B])
    assert detector.record(A, C.HTTP_5XX, 500, 0.0)
    assert not detector.record(B, C.HTTP_5XX, 500, 0.1)  # 50 % already ejected ≥ 10 %
    assert detector.healthy([A, B], 0.2) == (B,)
    # The refused host's counter was reset: it needs a full run again once allowed.
    assert not detector.is_ejected(B, 0.2)


def test_consecutive_counts_and_resets() -> None:
    settings = OutlierDetection(consecutive_5xx_errors=3, max_ejection_percent=100)
    detector = OutlierDetector(settings, [A])
    assert not detector.record(A, C.HTTP_5XX, 500, 0.0)
    assert not detector.record(A, C.HTTP_5XX, 500, 0.0)
    assert not detector.record(A, C.SUCCESS, 200, 0.0)  # resets
    assert not detector.record(A, C.HTTP_5XX, 500, 0.0)
    assert not detector.record(A, C.CANCELLED, 0, 0.0)  # says nothing
    assert not detector.record(A, C.HTTP_4XX, 404, 0.0)  # resets
    assert not detector.record(A, C.HTTP_5XX, 500, 0.0)
    assert not detector.record(A, C.HTTP_5XX, 500, 0.0)
    assert detector.record(A, C.HTTP_5XX, 500, 0.0)
    # Already ejected: further errors do not eject it again.
    for _ in range(5):
        assert not detector.record(A, C.HTTP_5XX, 500, 0.0)


def test_gateway_errors_and_local_origin_without_split() -> None:
    settings = OutlierDetection(
        consecutive_5xx_errors=0, consecutive_gateway_errors=2, max_ejection_percent=100
    )
    detector = OutlierDetector(settings, [A, B])
    assert not detector.record(A, C.GATEWAY_ERROR, 502, 0.0)
    assert not detector.record(A, C.HTTP_5XX, 500, 0.0)  # a non-gateway 5xx resets the count
    assert not detector.record(A, C.LOCAL_ORIGIN_FAILURE, 0, 0.0)  # connect failure = 503
    assert detector.record(A, C.GATEWAY_ERROR, 504, 0.0)
    # No status (classification only): the class decides.
    assert not detector.record(B, C.GATEWAY_ERROR, 0, 0.0)
    assert detector.record(B, C.GATEWAY_ERROR, 0, 0.0)


def test_split_local_origin_errors() -> None:
    settings = OutlierDetection(
        consecutive_5xx_errors=2,
        split_external_local_origin_errors=True,
        consecutive_local_origin_failures=2,
        max_ejection_percent=100,
    )
    detector = OutlierDetector(settings, [A, B])
    assert not detector.record(A, C.LOCAL_ORIGIN_FAILURE, 0, 0.0)
    assert not detector.record(A, C.HTTP_5XX, 500, 0.0)  # a response: local run reset
    assert not detector.record(A, C.LOCAL_ORIGIN_FAILURE, 0, 0.0)  # local only: 5xx run stays 1
    assert detector.record(A, C.HTTP_5XX, 500, 0.0)
    assert not detector.record(B, C.LOCAL_ORIGIN_FAILURE, 0, 0.0)
    assert detector.record(B, C.LOCAL_ORIGIN_FAILURE, 0, 0.0)


def test_http_error_codes_replace_5xx() -> None:
    settings = OutlierDetection(
        consecutive_5xx_errors=1, http_error_codes=frozenset({429}), max_ejection_percent=100
    )
    detector = OutlierDetector(settings, [A, B])
    assert not detector.record(A, C.HTTP_5XX, 500, 0.0)
    assert detector.record(A, C.HTTP_4XX, 429, 0.0)
    assert detector.record(B, C.HTTP_5XX, 0, 0.0)  # status unknown: the class decides


def test_multiplier_decays_while_healthy() -> None:
    settings = OutlierDetection(
        consecutive_5xx_errors=1, interval=1.0, base_ejection_time=10.0, max_ejection_percent=100
    )
    detector = OutlierDetector(settings, [A, B], start=0.0)
    detector.record(A, C.HTTP_5XX, 500, 0.5)  # k=1: 10 s, back at sweep 11
    assert not detector.is_ejected(A, 11.0)
    # Healthy through sweeps 12 (decays to 0): the next ejection is 10 s again.
    detector.record(A, C.HTTP_5XX, 500, 12.5)
    assert detector.is_ejected(A, 22.0)
    assert not detector.is_ejected(A, 23.0)
    # Within the same interval as its return: k=2 ⇒ 20 s.
    detector.record(A, C.HTTP_5XX, 500, 23.2)
    assert detector.is_ejected(A, 43.0)
    assert not detector.is_ejected(A, 44.0)
    # A long quiet spell of many sweeps at once decays it fully (lazy replay).
    detector.sweep(500.0)
    detector.record(A, C.HTTP_5XX, 500, 500.5)
    assert not detector.is_ejected(A, 511.0)


def test_ejection_time_is_capped_at_300s() -> None:
    settings = OutlierDetection(
        consecutive_5xx_errors=1, interval=1.0, base_ejection_time=200.0, max_ejection_percent=100
    )
    detector = OutlierDetector(settings, [A, B], start=0.0)
    detector.record(A, C.HTTP_5XX, 500, 0.0)
    assert not detector.is_ejected(A, 200.0)
    detector.record(A, C.HTTP_5XX, 500, 200.0)  # k=2 would be 400 s
    assert detector.is_ejected(A, 499.0)
    assert not detector.is_ejected(A, 500.0)


def test_panic_threshold_returns_everyone() -> None:
    settings = OutlierDetection(
        consecutive_5xx_errors=1, max_ejection_percent=100, min_health_percent=50
    )
    hosts = [Endpoint(f"10.0.1.{i}", 80) for i in range(4)]
    detector = OutlierDetector(settings, hosts)
    detector.record(hosts[0], C.HTTP_5XX, 500, 0.0)
    healthy = detector.healthy(hosts, 0.0)
    assert list(healthy) == hosts[1:]
    assert detector.healthy(hosts, 0.1) is healthy  # cached while nothing changes
    detector.record(hosts[1], C.HTTP_5XX, 500, 0.2)
    assert list(detector.healthy(hosts, 0.3)) == hosts[2:]  # exactly 50 %: no panic
    detector.record(hosts[2], C.HTTP_5XX, 500, 0.4)
    assert detector.healthy(hosts, 0.5) is hosts  # 25 % < 50 %: panic


def test_unknown_endpoints_are_tracked_lazily() -> None:
    detector = OutlierDetector(CASE8)
    assert not detector.is_ejected(A, 0.0)
    assert detector.record(A, C.HTTP_5XX, 500, 0.0)
    assert detector.is_ejected(A, 1.0)
    assert detector.ejected() == [(A, 30.0)]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(range(5)),
            st.sampled_from(list(Classification)),
            st.sampled_from([0, 200, 404, 500, 502, 503]),
            st.floats(0, 5),
        ),
        max_size=80,
    ),
    st.integers(1, 100),
)
def test_ejection_invariants(
    events: list[tuple[int, Classification, int, float]], max_percent: int
) -> None:
    hosts = [Endpoint(f"10.0.2.{i}", 80) for i in range(5)]
    settings = OutlierDetection(
        consecutive_5xx_errors=1,
        consecutive_gateway_errors=2,
        interval=1.0,
        base_ejection_time=3.0,
        max_ejection_percent=max_percent,
    )
    detector = OutlierDetector(settings, hosts, start=0.0)
    now = 0.0
    for index, classification, status, step in events:
        now += step
        before = detector.ejected_count
        detector.record(hosts[index], classification, status, now)
        count = detector.ejected_count
        assert count == len(detector.ejected())
        # Never beyond max percent, except the one host always allowed.
        if count > before:
            assert before == 0 or before * 100 < max_percent * len(hosts)
        assert all(until > now - 3.0 * 10 for _, until in detector.ejected())
        healthy = detector.healthy(hosts, now)
        assert len(healthy) + count == len(hosts)


def test_a_success_from_a_host_not_seen_before_registers_it() -> None:
    # The success fast path needs a known host; an unknown one takes the counting path.
    known, newcomer = Endpoint("10.0.3.1", 80), Endpoint("10.0.3.2", 80)
    detector = OutlierDetector(OutlierDetection(consecutive_5xx_errors=1), [known], start=0.0)
    assert not detector.record(newcomer, Classification.SUCCESS, 200, 1.0)
    assert detector.record(newcomer, Classification.HTTP_5XX, 500, 2.0)  # counted from then on
    assert detector.is_ejected(newcomer, 2.0)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([None, A, B]),
            st.sampled_from([C.SUCCESS, C.HTTP_5XX, C.GATEWAY_ERROR]),
            st.sampled_from([0.0, 0.1, 0.3, 0.7, 1.0, 2.5]),
        ),
        max_size=60,
    ),
    st.sampled_from([0.1, 0.3, 1.0, 2.0]),
)
def test_healthy_skips_sweeps_only_when_none_is_due(
    steps: list[tuple[Endpoint | None, Classification, float]], interval: float
) -> None:
    # healthy() sweeps only once the next tick may be due; a twin forced to sweep on every
    # call must see exactly the same hosts at every step (None: no request ended meanwhile).
    settings = OutlierDetection(
        consecutive_5xx_errors=1,
        consecutive_gateway_errors=1,
        interval=interval,
        base_ejection_time=interval,
        max_ejection_percent=100,
        min_health_percent=0,
    )
    guarded = OutlierDetector(settings, [A, B], start=0.0)
    eager = OutlierDetector(settings, [A, B], start=0.0)
    now = 0.0
    for endpoint, classification, step in steps:
        now += step
        if endpoint is not None:
            status = 200 if classification is C.SUCCESS else 503
            guarded.record(endpoint, classification, status, now)
            eager.record(endpoint, classification, status, now)
        eager.sweep(now)
        assert list(guarded.healthy([A, B], now)) == list(eager.healthy([A, B], now))
