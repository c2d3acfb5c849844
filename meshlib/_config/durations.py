"""Durations and percentages as Istio reads them.

Istio turns YAML durations into ``google.protobuf.Duration`` with Go's ``time.ParseDuration`` syntax
(``500ms``, ``1h30m``, ``.5s``); proto-JSON output (``180.000s``) is a subset of it. Where istiod
runs ``ValidateDuration`` the value must also be at least 1 ms and a whole number of milliseconds.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = [
    "DURATION_NOT_MS",
    "DURATION_TOO_SHORT",
    "DurationError",
    "format_duration",
    "go_float",
    "int_percent_error",
    "parse_duration",
    "parse_duration_ns",
    "percent_error",
    "percent_to_fraction",
    "validate_duration",
]

NANOS_PER_SECOND = 1_000_000_000
NANOS_PER_MILLI = 1_000_000
MAX_DURATION_NS = 2**63 - 1
"""Go's ``time.Duration`` is an int64 of nanoseconds (about 292 years)."""

MIN_PERCENT = 0.0
MAX_PERCENT = 100.0
MIN_NONZERO_PERCENT = 0.0001
"""Smaller non-zero values would round to 0 in Envoy's per-million fraction."""

DURATION_TOO_SHORT = "duration must be greater than 1ms"
DURATION_NOT_MS = "only durations to ms precision are supported"
"""istiod's own ``ValidateDuration`` messages."""

_UNITS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC greek mu
    "ms": NANOS_PER_MILLI,
    "s": NANOS_PER_SECOND,
    "m": 60 * NANOS_PER_SECOND,
    "h": 3600 * NANOS_PER_SECOND,
}
_TERM = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


class DurationError(ValueError):
    """A duration that Go's ``time.ParseDuration`` would reject; the message is Go's, unprefixed."""


def parse_duration_ns(text: str) -> int:
    """Exact nanoseconds of a Go-style duration (fractions below 1 ns are truncated, as Go does)."""
    quoted = '"' + text + '"'
    rest = text
    negative = False
    if rest[:1] in ("+", "-"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise DurationError(f"invalid duration {quoted}")
    total = Fraction(0)
    while rest:
        term = _TERM.match(rest)
        assert term is not None  # the pattern matches the empty string
        whole, frac, unit = term.group(1), term.group(2), term.group(3)
        if not whole and not frac:
            raise DurationError(f"invalid duration {quoted}")
        if not unit:
            raise DurationError(f"missing unit in duration {quoted}")
        # A unit runs until the next digit or dot, as in Go: "1sec" names the unit "sec".
        if unit not in _UNITS:
            raise DurationError(f'unknown unit "{unit}" in duration {quoted}')
        number = Fraction(int(whole or "0"))
        if frac:
            number += Fraction(int(frac), 10 ** len(frac))
        total += number * _UNITS[unit]
        if total > MAX_DURATION_NS:
            raise DurationError(f"invalid duration {quoted}")
        rest = rest[term.end() :]
    nanos = int(total)  # Fraction truncation towards zero
    return -nanos if negative else nanos


def parse_duration(text: str) -> float:
    """Float seconds of a Go-style or proto-JSON duration (``"1.5s"`` -> ``1.5``)."""
    return parse_duration_ns(text) / NANOS_PER_SECOND


def validate_duration(text: str) -> str | None:
    """The message istiod would give for a duration field it validates, or ``None`` if fine."""
    try:
        nanos = parse_duration_ns(text)
    except DurationError as exc:
        return str(exc)
    if nanos < NANOS_PER_MILLI:
        return DURATION_TOO_SHORT
    if nanos % NANOS_PER_MILLI:
        return DURATION_NOT_MS
    return None


def format_duration(seconds: float) -> str:
    """A Go-style duration string that ``parse_duration`` reads back to the same millisecond count
    (``1.5`` -> ``"1.5s"``, ``0.25`` -> ``"250ms"``)."""
    millis = round(seconds * 1000)
    if millis % 1000 == 0:
        return f"{millis // 1000}s"
    if abs(millis) < 1000:
        return f"{millis}ms"
    sign = "-" if millis < 0 else ""
    whole, frac = divmod(abs(millis), 1000)
    return f"{sign}{whole}.{frac:03d}".rstrip("0") + "s"


def go_float(value: float) -> str:
    """Go's ``%v`` of a float64, so messages read exactly like istiod's (``150``, ``1e-05``)."""
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    # Shortest digits that round-trip, as Go's FormatFloat(f, 'g', -1, 64) picks them.
    significant = next(text for p in range(18) if float(text := f"{magnitude:.{p}e}") == magnitude)
    mantissa, _, exponent_text = significant.partition("e")
    exponent = int(exponent_text)
    if exponent < -4 or exponent >= 6:
        return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    plain = f"{magnitude:.{max(0, len(mantissa.replace('.', '')) - 1 - exponent)}f}"
    return sign + plain


def percent_error(value: float) -> str | None:
    """istiod's check of ``Percent.value``: 0, or within [0.0001, 100]; ``None`` when acceptable."""
    if value < MIN_PERCENT or value > MAX_PERCENT or 0 < value < MIN_NONZERO_PERCENT:
        return f"percentage {go_float(value)} is neither 0.0, nor in range [0.0001, 100.0]"
    return None


def int_percent_error(value: int) -> str | None:
    """istiod's check of the deprecated integer ``percent`` fields."""
    if value < 0 or value > 100:
        return f"percentage {value} is not in range 0..100"
    return None


def percent_to_fraction(value: float | None, *, default: float) -> float:
    """``Percent.value`` as a probability in [0, 1]; ``default`` (a fraction) when absent."""
    if value is None:
        return default
    return min(max(value, MIN_PERCENT), MAX_PERCENT) / MAX_PERCENT
