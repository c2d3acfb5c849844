"""Envoy retry conditions and the jittered exponential backoff."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._model import FailureKind, Outcome
from meshlib._policy.classify import classify
from meshlib._policy.retries import (
    DEFAULT_RETRY_POLICY,
    NO_RETRIES,
    RetryPolicy,
    backoff,
    backoff_intervals,
    max_tries,
    retry_on_bits,
    should_retry,
)


class Headers:
    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._values = {k.lower(): v for k, v in items}

    def get(self, key: str, /) -> str | None:
        return self._values.get(key.lower())

    def __contains__(self, key: object, /) -> bool:
        return isinstance(key, str) and key.lower() in self._values


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value

    def randrange(self, stop: int, /) -> int:
        raise AssertionError("backoff draws floats only")


def policy(*words: str, codes: Iterable[int] = ()) -> RetryPolicy:
    return RetryPolicy(
        attempts=2, retry_on=frozenset(words), retriable_status_codes=frozenset(codes)
    )


def retries(
    p: RetryPolicy, outcome: Outcome, protocol: str = "http", *, request_sent: bool = True
) -> bool:
    return should_retry(
        p, outcome, classify(outcome, protocol), protocol, request_sent=request_sent
    )


CONNECT = Outcome(failure=FailureKind.CONNECT_FAILURE)
RESET = Outcome(failure=FailureKind.RESET)
RESET_BEFORE = Outcome(failure=FailureKind.RESET_BEFORE_REQUEST)
REFUSED = Outcome(failure=FailureKind.REFUSED_STREAM)
TIMEOUT = Outcome(failure=FailureKind.TIMEOUT)
CANCELLED = Outcome(failure=FailureKind.CANCELLED)


def grpc_status(code: int) -> Outcome:
    return Outcome(status=200, grpc_status=code)


# --- Istio's default policy ---------------------------------------------------------------


def test_default_policy_retries_connect_failure_refused_stream_and_grpc_unavailable() -> None:
    p = DEFAULT_RETRY_POLICY
    assert retries(p, CONNECT)
    assert retries(p, REFUSED)
    assert retries(p, grpc_status(14), "grpc")
    assert retries(p, grpc_status(1), "grpc")


def test_default_policy_does_not_retry_503_timeouts_or_resets() -> None:
    p = DEFAULT_RETRY_POLICY
    assert not retries(p, Outcome(status=503))
    assert not retries(p, TIMEOUT)
    assert not retries(p, RESET)
    assert not retries(p, grpc_status(13), "grpc")
    assert not retries(p, Outcome(status=200))


def test_no_retries() -> None:
    assert not retries(NO_RETRIES, CONNECT)
    assert not retries(RetryPolicy(attempts=0), CONNECT)
    assert max_tries(DEFAULT_RETRY_POLICY) == 3
    assert max_tries(RetryPolicy(attempts=-1)) == 1


# --- conditions ---------------------------------------------------------------------------


def test_5xx() -> None:
    p = policy("5xx")
    for outcome in (
        Outcome(status=500),
        Outcome(status=503),
        CONNECT,
        RESET,
        RESET_BEFORE,
        REFUSED,
        TIMEOUT,
    ):
        assert retries(p, outcome)
    assert not retries(p, Outcome(status=404))
    assert not retries(p, grpc_status(14), "grpc")  # the HTTP status is 200


def test_gateway_error() -> None:
    p = policy("gateway-error")
    assert all(retries(p, Outcome(status=s)) for s in (502, 503, 504))
    assert not retries(p, Outcome(status=500))
    assert retries(p, RESET)
    assert retries(p, TIMEOUT)


def test_reset() -> None:
    p = policy("reset")
    assert retries(p, RESET)
    assert retries(p, CONNECT)
    assert retries(p, TIMEOUT)
    assert not retries(p, Outcome(status=503))


def test_reset_before_request() -> None:
    p = policy("reset-before-request")
    assert retries(p, RESET_BEFORE)
    assert retries(p, RESET, request_sent=False)
    assert not retries(p, RESET, request_sent=True)
    assert not retries(p, TIMEOUT, request_sent=False)
    assert not retries(p, CONNECT)


def test_connect_failure_only() -> None:
    p = policy("connect-failure")
    assert retries(p, CONNECT)
    assert not retries(p, RESET)
    assert not retries(p, RESET_BEFORE)
    assert not retries(p, REFUSED)
    assert not retries(p, TIMEOUT)


def test_refused_stream_only() -> None:
    p = policy("refused-stream")
    assert retries(p, REFUSED)
    assert not retries(p, RESET)


def test_retriable_4xx_is_409_only() -> None:
    p = policy("retriable-4xx")
    assert retries(p, Outcome(status=409))
    assert not retries(p, Outcome(status=404))
    assert not retries(p, Outcome(status=500))


def test_retriable_status_codes() -> None:
    p = policy("retriable-status-codes", codes=(503, 302))
    assert retries(p, Outcome(status=503))
    assert retries(p, Outcome(status=302))
    assert not retries(p, Outcome(status=502))
    without_word = RetryPolicy(retry_on=frozenset({"5xx"}), retriable_status_codes=frozenset({404}))
    assert not retries(without_word, Outcome(status=404))


def test_ratelimited_responses_need_envoy_ratelimited() -> None:
    limited = Outcome(status=503, headers=Headers([("x-envoy-ratelimited", "true")]))
    assert not retries(policy("5xx"), limited)
    assert retries(policy("envoy-ratelimited"), limited)
    ok_limited = Outcome(status=200, headers=Headers([("x-envoy-ratelimited", "")]))
    assert retries(policy("envoy-ratelimited"), ok_limited)


def test_overloaded_upstream_answer_is_never_retried() -> None:
    overloaded = Outcome(status=503, headers=Headers([("x-envoy-overloaded", "true")]))
    assert not retries(policy("5xx", "envoy-ratelimited"), overloaded)
    assert retries(policy("5xx"), Outcome(status=503, headers=Headers()))


@pytest.mark.parametrize(
    ("word", "code"),
    [
        ("cancelled", 1),
        ("deadline-exceeded", 4),
        ("resource-exhausted", 8),
        ("internal", 13),
        ("unavailable", 14),
    ],
)
def test_grpc_conditions_from_trailers_only_status(word: str, code: int) -> None:
    p = policy(word)
    assert retries(p, grpc_status(code), "grpc")
    assert not retries(p, grpc_status(2), "grpc")
    assert not retries(p, grpc_status(code), "http")
    assert not retries(p, Outcome(status=200), "grpc")  # status only in trailers: unknown here


def test_cancelled_caller_and_inert_words_never_retry() -> None:
    assert not retries(policy("5xx", "reset"), CANCELLED)
    p = policy("retriable-headers", "http3-post-connect-failure")
    assert not retries(p, Outcome(status=503))
    assert not retries(p, RESET)
    assert retry_on_bits(frozenset({"no-such-word"})) == 0
    assert not retries(policy("no-such-word"), CONNECT)


# --- backoff ------------------------------------------------------------------------------


def test_default_backoff_intervals() -> None:
    intervals = backoff_intervals(0.025)
    assert intervals == pytest.approx((0.025, 0.05, 0.1, 0.2, 0.25))
    near_one = FixedRandom(0.999999)
    expected = [0.025, 0.05, 0.1, 0.2, 0.25, 0.25, 0.25]
    for number, interval in enumerate(expected, start=1):
        wait = backoff(DEFAULT_RETRY_POLICY, number, near_one)
        assert interval * 0.999 < wait < interval
    assert backoff(DEFAULT_RETRY_POLICY, 3, FixedRandom(0.0)) == 0.0
    assert backoff(DEFAULT_RETRY_POLICY, 0, near_one) < 0.025


def test_zero_base_never_waits() -> None:
    assert backoff(RetryPolicy(backoff_base=0.0), 3, FixedRandom(0.5)) == 0.0


@given(
    st.floats(min_value=0.001, max_value=10.0),
    st.integers(min_value=-2, max_value=50),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_backoff_stays_below_cap_and_intervals_grow(base: float, number: int, draw: float) -> None:
    p = RetryPolicy(backoff_base=base)
    cap = base * 10
    wait = backoff(p, number, FixedRandom(draw))
    assert 0.0 <= wait < cap
    intervals = backoff_intervals(base)
    assert intervals[0] == base
    assert intervals[-1] == cap
    assert all(a < b for a, b in itertools.pairwise(intervals))
    assert len(intervals) <= 6
