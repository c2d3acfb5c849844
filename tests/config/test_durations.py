"""Go-style and proto-JSON durations, istiod's duration rule, percentages."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._config.durations import (
    DURATION_NOT_MS,
    DURATION_TOO_SHORT,
    DurationError,
    format_duration,
    go_float,
    int_percent_error,
    parse_duration,
    parse_duration_ns,
    percent_error,
    percent_to_fraction,
    validate_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("3m", 180.0),
        ("1h30m", 5400.0),
        ("180.000s", 180.0),
        ("10us", 10e-6),
        ("10µs", 10e-6),
        ("10μs", 10e-6),
        ("250ns", 250e-9),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("0", 0.0),
        ("+2ms", 0.002),
        ("-1.5s", -1.5),
        ("1h0m0.001s", 3600.001),
        ("0.000000001s", 1e-9),
    ],
)
def test_parse_accepts_go_and_proto_json(text: str, seconds: float) -> None:
    assert math.isclose(parse_duration(text), seconds, rel_tol=0, abs_tol=1e-12)


def test_fraction_below_one_nanosecond_is_truncated_as_go_does() -> None:
    assert parse_duration_ns("1.0000000009s") == 1_000_000_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'invalid duration ""'),
        ("s", 'invalid duration "s"'),
        (".s", 'invalid duration ".s"'),
        ("-", 'invalid duration "-"'),
        ("1", 'missing unit in duration "1"'),
        ("10", 'missing unit in duration "10"'),
        ("1x", 'unknown unit "x" in duration "1x"'),
        ("1sec", 'unknown unit "sec" in duration "1sec"'),
        ("1 s", 'unknown unit " s" in duration "1 s"'),
        ("1d", 'unknown unit "d" in duration "1d"'),
        ("3000000h", 'invalid duration "3000000h"'),
    ],
)
def test_parse_rejects_with_go_messages(text: str, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1ms", None),
        ("0.5s", None),
        ("7s", None),
        ("0s", DURATION_TOO_SHORT),
        ("0", DURATION_TOO_SHORT),
        ("999us", DURATION_TOO_SHORT),
        ("-1s", DURATION_TOO_SHORT),
        ("1.5ms", DURATION_NOT_MS),
        ("1001us", DURATION_NOT_MS),
        ("ten", 'invalid duration "ten"'),
    ],
)
def test_validate_duration_applies_istiod_rule(text: str, message: str | None) -> None:
    assert validate_duration(text) == message


def test_istiod_messages() -> None:
    assert DURATION_TOO_SHORT == "duration must be greater than 1ms"
    assert DURATION_NOT_MS == "only durations to ms precision are supported"


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_format_round_trips_whole_milliseconds(millis: int) -> None:
    text = format_duration(millis / 1000)
    assert parse_duration_ns(text) == millis * 1_000_000


@given(
    st.integers(min_value=0, max_value=10**15), st.sampled_from(["ns", "us", "ms", "s", "m", "h"])
)
def test_single_term_is_exact(amount: int, unit: str) -> None:
    scale = {"ns": 1, "us": 1_000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    if amount * scale[unit] > 2**63 - 1:
        with pytest.raises(DurationError):
            parse_duration_ns(f"{amount}{unit}")
    else:
        assert parse_duration_ns(f"{amount}{unit}") == amount * scale[unit]


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=999))
def test_proto_json_seconds_with_millis(seconds: int, millis: int) -> None:
    assert parse_duration_ns(f"{seconds}.{millis:03d}s") == seconds * 10**9 + millis * 10**6


@given(st.text(alphabet="0123456789.hmsun+-x ", max_size=12))
def test_garbage_is_rejected_or_parsed_never_crashes(text: str) -> None:
    outcome: int | str
    try:
        outcome = parse_duration_ns(text)
    except DurationError as exc:
        outcome = str(exc)
    if isinstance(outcome, str):
        assert outcome.endswith(f'"{text}"')
        assert validate_duration(text) == outcome


@given(st.text(alphabet="abcdefgijklopqrtvwyz", min_size=1, max_size=5))
def test_letters_without_number_are_invalid(text: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration_ns(text)
    assert str(caught.value) == f'invalid duration "{text}"'


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1.5, "1.5s"),
        (0.25, "250ms"),
        (180, "180s"),
        (61.001, "61.001s"),
        (-1.5, "-1.5s"),
        (0, "0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (150, "150"),
        (1.5, "1.5"),
        (1e-05, "1e-05"),
        (-1, "-1"),
        (0, "0"),
        (1234567.0, "1.234567e+06"),
        (123456.0, "123456"),
        (1e21, "1e+21"),
        (-0.25, "-0.25"),
        (100.0001, "100.0001"),
    ],
)
def test_go_float(value: float, text: str) -> None:
    assert go_float(value) == text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, None),
        (0.0001, None),
        (50, None),
        (100, None),
        (-1, "percentage -1 is neither 0.0, nor in range [0.0001, 100.0]"),
        (100.5, "percentage 100.5 is neither 0.0, nor in range [0.0001, 100.0]"),
        (1e-05, "percentage 1e-05 is neither 0.0, nor in range [0.0001, 100.0]"),
    ],
)
def test_percent_error(value: float, message: str | None) -> None:
    assert percent_error(value) == message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, None),
        (100, None),
        (101, "percentage 101 is not in range 0..100"),
        (-1, "percentage -1 is not in range 0..100"),
    ],
)
def test_int_percent_error(value: int, message: str | None) -> None:
    assert int_percent_error(value) == message


@pytest.mark.parametrize(
    ("value", "default", "fraction"),
    [
        (None, 0.0, 0.0),
        (None, 1.0, 1.0),
        (50, 0.0, 0.5),
        (100, 0.0, 1.0),
        (0.1, 1.0, 0.001),
        (150, 0, 1.0),
        (-3, 1, 0.0),
    ],
)
def test_percent_to_fraction(value: float | None, default: float, fraction: float) -> None:
    assert math.isclose(percent_to_fraction(value, default=default), fraction)


@given(st.floats(min_value=0, max_value=100))
def test_percent_fraction_is_a_probability(value: float) -> None:
    assert percent_error(value) is None or 0 < value < 0.0001
    assert 0.0 <= percent_to_fraction(value, default=0.0) <= 1.0
