"""Deadlines as absolute monotonic times, and their wire formats.

``None`` always means unbounded. Route timeout, caller timeout and an inherited deadline
combine by the earliest (a caller can shorten but never extend what the route allows).
"""

from __future__ import annotations

import math
import re

MS_PER_SECOND = 1000
GRPC_TIMEOUT_MAX_DIGITS = 8
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_GRPC_UNIT_SECONDS: dict[str, float] = {
    "H": 3600.0,
    "M": 60.0,
    "S": 1.0,
    "m": 1e-3,
    "u": 1e-6,
    "n": 1e-9,
}
_NS_PER_UNIT: tuple[tuple[int, str], ...] = (
    (1, "n"),
    (1_000, "u"),
    (1_000_000, "m"),
    (1_000_000_000, "S"),
    (60_000_000_000, "M"),
    (3_600_000_000_000, "H"),
)
_GRPC_TIMEOUT_LIMIT = 10**GRPC_TIMEOUT_MAX_DIGITS
_GRPC_TIMEOUT_MAX = f"{_GRPC_TIMEOUT_LIMIT - 1}H"


def overall_deadline(
    now: float,
    route_timeout: float | None,
    caller_timeout: float | None,
    inherited_deadline: float | None,
) -> float | None:
    """The request's absolute deadline: the earliest of the three, ``None`` if none is set."""
    deadline = inherited_deadline
    if route_timeout is not None:
        candidate = now + route_timeout
        if deadline is None or candidate < deadline:
            deadline = candidate
    if caller_timeout is not None:
        candidate = now + caller_timeout
        if deadline is None or candidate < deadline:
            deadline = candidate
    return deadline


def attempt_timeout(
    now: float, deadline: float | None, per_try_timeout: float | None
) -> float | None:
    """Seconds one try may take: the per-try timeout capped by what is left; <= 0 is expired."""
    if deadline is None:
        return per_try_timeout
    remaining = deadline - now
    if per_try_timeout is None or remaining < per_try_timeout:
        return remaining
    return per_try_timeout


def expired(now: float, deadline: float | None) -> bool:
    return deadline is not None and now >= deadline


def remaining_ms_header(now: float, deadline: float | None) -> str | None:
    """``x-envoy-expected-rq-timeout-ms`` for the upstream, or ``None`` when unbounded.

    Whole milliseconds rounded down, at least 1: Envoy reads ``0`` as "no timeout".
    """
    if deadline is None:
        return None
    millis = math.floor((deadline - now) * MS_PER_SECOND)
    return str(millis if millis > 1 else 1)


def parse_grpc_timeout(value: str | None) -> float | None:
    """Seconds from a ``grpc-timeout`` header (1–8 digits and a unit); ``None`` if invalid."""
    if value is None:
        return None
    match = _GRPC_TIMEOUT.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)) * _GRPC_UNIT_SECONDS[match.group(2)]


def format_grpc_timeout(seconds: float) -> str:
    """The ``grpc-timeout`` value for ``seconds``: the finest unit that fits 8 digits.

    Rounded up to the unit so a deadline is never shortened by the encoding; negative or
    zero gives ``0n`` (already expired).
    """
    if not seconds > 0:
        return "0n"
    if seconds >= _GRPC_TIMEOUT_LIMIT * 3600.0:
        return _GRPC_TIMEOUT_MAX
    nanos = max(1, round(seconds * 1e9))
    for per_unit, unit in _NS_PER_UNIT:
        value = -(-nanos // per_unit)
        if value < _GRPC_TIMEOUT_LIMIT:
            return f"{value}{unit}"
    return _GRPC_TIMEOUT_MAX  # just under the bound, rounding up reached it


def parse_envoy_timeout_ms(value: str | None) -> float | None:
    """Seconds from ``x-envoy-upstream-rq-timeout-ms``-style headers.

    ``None`` when absent, not a non-negative integer, or ``0`` (Envoy: no timeout).
    """
    if value is None or not value.isascii() or not value.isdigit():
        return None
    millis = int(value)
    if millis == 0:
        return None
    return millis / MS_PER_SECOND
