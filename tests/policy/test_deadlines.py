"""Deadline arithmetic and the grpc-timeout / Envoy timeout header formats."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._policy.deadlines import (
    attempt_timeout,
    expired,
    format_grpc_timeout,
    overall_deadline,
    parse_envoy_timeout_ms,
    parse_grpc_timeout,
    remaining_ms_header,
)


def test_overall_deadline_earliest_wins() -> None:
    assert overall_deadline(100.0, None, None, None) is None
    assert overall_deadline(100.0, 3.0, None, None) == 103.0
    assert overall_deadline(100.0, 3.0, 1.0, None) == 101.0
    assert overall_deadline(100.0, 1.0, 3.0, None) == 101.0
    assert overall_deadline(100.0, 3.0, 5.0, 102.0) == 102.0
    assert overall_deadline(100.0, None, None, 150.0) == 150.0
    assert overall_deadline(100.0, None, 2.0, 150.0) == 102.0


def test_attempt_timeout() -> None:
    assert attempt_timeout(10.0, None, None) is None
    assert attempt_timeout(10.0, None, 0.5) == 0.5
    assert attempt_timeout(10.0, 13.0, None) == 3.0
    assert attempt_timeout(10.0, 13.0, 0.5) == 0.5
    assert attempt_timeout(10.0, 10.2, 0.5) == pytest.approx(0.2)
    remaining = attempt_timeout(10.0, 9.0, 0.5)
    assert remaining is not None
    assert remaining <= 0


def test_expired() -> None:
    assert not expired(5.0, None)
    assert not expired(5.0, 6.0)
    assert expired(6.0, 6.0)
    assert expired(7.0, 6.0)


def test_remaining_ms_header() -> None:
    assert remaining_ms_header(1.0, None) is None
    assert remaining_ms_header(1.0, 3.5) == "2500"
    assert remaining_ms_header(1.0, 1.0019) == "1"
    assert remaining_ms_header(1.0, 1.0) == "1"  # never "0": Envoy reads it as no timeout
    assert remaining_ms_header(2.0, 1.0) == "1"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("3S", 3.0),
        ("250m", 0.25),
        ("7u", 7e-6),
        ("99999999n", 0.099999999),
        ("0S", 0.0),
    ],
)
def test_parse_grpc_timeout(text: str, seconds: float) -> None:
    assert parse_grpc_timeout(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "S", "123456789S", "-1S", "1s", "1 S", "1.5S", "１S"])
def test_parse_grpc_timeout_rejects(text: str | None) -> None:
    assert parse_grpc_timeout(text) is None


def test_format_grpc_timeout() -> None:
    assert format_grpc_timeout(0.25) == "250000u"
    assert format_grpc_timeout(0.099999999) == "99999999n"
    assert format_grpc_timeout(3.0) == "3000000u"
    assert format_grpc_timeout(1000.0) == "1000000m"
    assert format_grpc_timeout(1e-12) == "1n"  # rounded up, never shortened to zero
    assert format_grpc_timeout(0.0) == "0n"
    assert format_grpc_timeout(-3.0) == "0n"
    assert format_grpc_timeout(math.nan) == "0n"
    assert format_grpc_timeout(1e12) == "99999999H"
    assert format_grpc_timeout(math.inf) == "99999999H"
    assert format_grpc_timeout(math.nextafter(3.6e11, 0.0)) == "99999999H"
    assert format_grpc_timeout(200_000.0) == "200000S"
    assert format_grpc_timeout(3e8) == "5000000M"
    assert format_grpc_timeout(3e10 + 1) == "8333334H"


@given(st.floats(min_value=0.0, max_value=3.5e11, allow_nan=False))
def test_grpc_timeout_round_trip_never_shortens(seconds: float) -> None:
    text = format_grpc_timeout(seconds)
    assert len(text) <= 9
    parsed = parse_grpc_timeout(text)
    assert parsed is not None
    assert parsed >= seconds - 1e-9 - seconds * 1e-12
    assert parsed <= seconds * (1 + 1e-5) + 1e-9


@given(st.integers(min_value=0, max_value=99_999_999), st.sampled_from("HMSmun"))
def test_grpc_timeout_parse_format_parse(value: int, unit: str) -> None:
    parsed = parse_grpc_timeout(f"{value}{unit}")
    assert parsed is not None
    again = parse_grpc_timeout(format_grpc_timeout(parsed))
    assert again == pytest.approx(parsed, rel=1e-5, abs=1e-9)


def test_parse_envoy_timeout_ms() -> None:
    assert parse_envoy_timeout_ms(None) is None
    assert parse_envoy_timeout_ms("1500") == 1.5
    assert parse_envoy_timeout_ms("0") is None  # Envoy: zero disables the timeout
    assert parse_envoy_timeout_ms("-5") is None
    assert parse_envoy_timeout_ms("1.5") is None
    assert parse_envoy_timeout_ms("") is None
    assert parse_envoy_timeout_ms("²") is None


@given(st.integers(min_value=1, max_value=10**12))
def test_envoy_timeout_round_trip(millis: int) -> None:
    assert parse_envoy_timeout_ms(str(millis)) == millis / 1000
