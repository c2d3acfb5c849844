"""VirtualService ``retries`` with Envoy's retry conditions and backoff (ISTIO-SEMANTICS 8)."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshlib._model.outcome import Classification, FailureKind, Outcome
from meshlib._model.runtime import Random

DEFAULT_RETRY_ATTEMPTS = 2
DEFAULT_RETRY_ON: frozenset[str] = frozenset(
    {"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"}
)
DEFAULT_BACKOFF_BASE = 0.025
"""Envoy's base interval; the cap is ten times the base."""
BACKOFF_CAP_FACTOR = 10

RATELIMITED_HEADER = "x-envoy-ratelimited"
OVERLOADED_HEADER = "x-envoy-overloaded"

# retryOn words as bits, so a decision is a few integer tests.
ON_5XX = 1 << 0
ON_GATEWAY_ERROR = 1 << 1
ON_RESET = 1 << 2
ON_RESET_BEFORE_REQUEST = 1 << 3
ON_CONNECT_FAILURE = 1 << 4
ON_RETRIABLE_4XX = 1 << 5
ON_REFUSED_STREAM = 1 << 6
ON_RETRIABLE_STATUS_CODES = 1 << 7
ON_RETRIABLE_HEADERS = 1 << 8
ON_ENVOY_RATELIMITED = 1 << 9
ON_HTTP3_POST_CONNECT_FAILURE = 1 << 10
ON_GRPC_CANCELLED = 1 << 11
ON_GRPC_DEADLINE_EXCEEDED = 1 << 12
ON_GRPC_INTERNAL = 1 << 13
ON_GRPC_RESOURCE_EXHAUSTED = 1 << 14
ON_GRPC_UNAVAILABLE = 1 << 15

RETRY_ON_BITS: dict[str, int] = {
    "5xx": ON_5XX,
    "gateway-error": ON_GATEWAY_ERROR,
    "reset": ON_RESET,
    "reset-before-request": ON_RESET_BEFORE_REQUEST,
    "connect-failure": ON_CONNECT_FAILURE,
    "retriable-4xx": ON_RETRIABLE_4XX,
    "refused-stream": ON_REFUSED_STREAM,
    "retriable-status-codes": ON_RETRIABLE_STATUS_CODES,
    # Accepted like Istio does, but Istio has no field for the header list: never fires.
    "retriable-headers": ON_RETRIABLE_HEADERS,
    "envoy-ratelimited": ON_ENVOY_RATELIMITED,
    # HTTP/3 only; meshlib speaks HTTP/1.1 and HTTP/2.
    "http3-post-connect-failure": ON_HTTP3_POST_CONNECT_FAILURE,
    "cancelled": ON_GRPC_CANCELLED,
    "deadline-exceeded": ON_GRPC_DEADLINE_EXCEEDED,
    "internal": ON_GRPC_INTERNAL,
    "resource-exhausted": ON_GRPC_RESOURCE_EXHAUSTED,
    "unavailable": ON_GRPC_UNAVAILABLE,
}

_GRPC_CODE_BITS: dict[int, int] = {
    1: ON_GRPC_CANCELLED,
    4: ON_GRPC_DEADLINE_EXCEEDED,
    8: ON_GRPC_RESOURCE_EXHAUSTED,
    13: ON_GRPC_INTERNAL,
    14: ON_GRPC_UNAVAILABLE,
}
_ANY_RESET = ON_5XX | ON_GATEWAY_ERROR | ON_RESET
"""Conditions that retry every reset and every per-try timeout."""
_CONFLICT = 409


def retry_on_bits(words: frozenset[str]) -> int:
    """The bit set of known retryOn words (unknown words are validation's business)."""
    bits = 0
    for word in words:
        bits |= RETRY_ON_BITS.get(word, 0)
    return bits


def backoff_intervals(base: float) -> tuple[float, ...]:
    """Envoy's JitteredExponentialBackOffStrategy intervals: b, 2b, 4b… while < cap/2, then cap."""
    if base <= 0:
        return (0.0,)
    cap = base * BACKOFF_CAP_FACTOR
    intervals = [base]
    current = base
    while current < cap:  # doubling: at most four steps with a factor of 10
        current = current * 2 if current < cap / 2 else cap
        intervals.append(current)
    return tuple(intervals)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = DEFAULT_RETRY_ATTEMPTS
    """Retries, not requests: at most ``1 + attempts`` tries."""
    per_try_timeout: float | None = None
    retry_on: frozenset[str] = DEFAULT_RETRY_ON
    """Envoy condition words (``5xx``, ``gateway-error``, ``unavailable``...)."""
    retriable_status_codes: frozenset[int] = frozenset()
    backoff_base: float = DEFAULT_BACKOFF_BASE
    retry_remote_localities: bool = False
    retry_ignore_previous_hosts: bool = True
    _bits: int = field(init=False, repr=False, compare=False)
    _intervals: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_bits", retry_on_bits(self.retry_on))
        object.__setattr__(self, "_intervals", backoff_intervals(self.backoff_base))


DEFAULT_RETRY_POLICY = RetryPolicy()
"""Istio's policy for a route that sets no ``retries`` (and for hosts with no VirtualService)."""
NO_RETRIES = RetryPolicy(attempts=0, retry_on=frozenset())


def should_retry(
    policy: RetryPolicy,
    outcome: Outcome,
    classification: Classification,
    protocol: str,
    *,
    request_sent: bool,
) -> bool:
    """Whether Envoy's retry conditions ask for another try of this outcome.

    Only the conditions: counting attempts, the overall deadline, the retry budget and body
    replayability are the flow's checks. A local overflow never becomes an Outcome, and an
    upstream answer carrying ``x-envoy-overloaded`` is never retried, as in Envoy.
    """
    bits = policy._bits
    if policy.attempts <= 0 or not bits:
        return False
    failure = outcome.failure
    if failure is not FailureKind.NONE:
        if failure is FailureKind.CANCELLED:
            return False
        if failure is FailureKind.TIMEOUT:
            # A per-try timeout is retried only by the conditions that cover resets.
            return bool(bits & _ANY_RESET)
        if bits & _ANY_RESET:
            return True
        if bits & ON_RESET_BEFORE_REQUEST and (
            failure is FailureKind.RESET_BEFORE_REQUEST or not request_sent
        ):
            return True
        if failure is FailureKind.CONNECT_FAILURE:
            return bool(bits & ON_CONNECT_FAILURE)
        if failure is FailureKind.REFUSED_STREAM:
            return bool(bits & ON_REFUSED_STREAM)
        return False
    headers = outcome.headers
    if headers is not None:
        if OVERLOADED_HEADER in headers:
            return False
        if RATELIMITED_HEADER in headers:
            return bool(bits & ON_ENVOY_RATELIMITED)
    if (
        classification is Classification.SUCCESS
        and protocol != "grpc"
        and not policy.retriable_status_codes
    ):
        return False  # the common case: nothing below can fire
    status = outcome.status
    if status >= 500:
        if bits & ON_5XX:
            return True
        if bits & ON_GATEWAY_ERROR and 502 <= status <= 504:
            return True
    elif status == _CONFLICT and bits & ON_RETRIABLE_4XX:
        return True
    if bits & ON_RETRIABLE_STATUS_CODES and status in policy.retriable_status_codes:
        return True
    # gRPC conditions read grpc-status from response headers only (trailers-only replies).
    if protocol == "grpc" and outcome.grpc_status is not None:
        return bool(bits & _GRPC_CODE_BITS.get(outcome.grpc_status, 0))
    return False


def max_tries(policy: RetryPolicy) -> int:
    """Requests the policy allows in total: the first try plus ``attempts`` retries."""
    return 1 + max(policy.attempts, 0)


def backoff(policy: RetryPolicy, retry_number: int, rng: Random) -> float:
    """Seconds to wait before retry ``retry_number`` (1-based): uniform in [0, interval)."""
    intervals = policy._intervals
    index = retry_number - 1
    if index < 0:
        index = 0
    elif index >= len(intervals):
        index = len(intervals) - 1
    return rng.random() * intervals[index]
