"""The single classification of an attempt's outcome."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._model import Classification, FailureKind, Outcome
from meshlib._policy.classify import classify, effective_status, grpc_to_http_status

C = Classification


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, C.SUCCESS),
        (302, C.SUCCESS),
        (404, C.HTTP_4XX),
        (409, C.HTTP_4XX),
        (500, C.HTTP_5XX),
        (501, C.HTTP_5XX),
        (502, C.GATEWAY_ERROR),
        (503, C.GATEWAY_ERROR),
        (504, C.GATEWAY_ERROR),
        (505, C.HTTP_5XX),
        (0, C.LOCAL_ORIGIN_FAILURE),
    ],
)
def test_http_statuses(status: int, expected: Classification) -> None:
    assert classify(Outcome(status=status), "http") is expected


@pytest.mark.parametrize(
    "failure",
    [
        FailureKind.CONNECT_FAILURE,
        FailureKind.RESET,
        FailureKind.RESET_BEFORE_REQUEST,
        FailureKind.REFUSED_STREAM,
        FailureKind.TIMEOUT,
    ],
)
def test_failures_are_local_origin(failure: FailureKind) -> None:
    assert classify(Outcome(failure=failure), "http") is C.LOCAL_ORIGIN_FAILURE
    assert effective_status(Outcome(failure=failure, status=503), "http") == 0


def test_cancelled() -> None:
    assert classify(Outcome(failure=FailureKind.CANCELLED), "grpc") is C.CANCELLED


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0, C.SUCCESS),
        (1, C.HTTP_4XX),  # CANCELLED -> 499
        (2, C.HTTP_5XX),  # UNKNOWN -> 500
        (4, C.GATEWAY_ERROR),  # DEADLINE_EXCEEDED -> 504
        (5, C.HTTP_4XX),
        (8, C.HTTP_4XX),  # RESOURCE_EXHAUSTED -> 429
        (12, C.HTTP_5XX),  # UNIMPLEMENTED -> 501
        (13, C.HTTP_5XX),
        (14, C.GATEWAY_ERROR),  # UNAVAILABLE -> 503
        (15, C.HTTP_5XX),
        (16, C.HTTP_4XX),
        (99, C.HTTP_5XX),  # unknown code
    ],
)
def test_grpc_status_counts_by_envoy_mapping(code: int, expected: Classification) -> None:
    outcome = Outcome(status=200, grpc_status=code)
    assert classify(outcome, "grpc") is expected
    assert classify(outcome, "http") is C.SUCCESS  # only gRPC calls read grpc-status


def test_grpc_to_http_table() -> None:
    assert [grpc_to_http_status(c) for c in range(17)] == [
        200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401,
    ]  # fmt: skip
    assert grpc_to_http_status(-1) == 500
    assert grpc_to_http_status(17) == 500


def test_effective_status() -> None:
    assert effective_status(Outcome(status=503), "http") == 503
    assert effective_status(Outcome(status=200, grpc_status=14), "grpc") == 503
    assert effective_status(Outcome(status=200), "grpc") == 200


@given(st.integers(min_value=100, max_value=599))
def test_classification_follows_status_class(status: int) -> None:
    result = classify(Outcome(status=status), "http")
    if status < 400:
        assert result is C.SUCCESS
    elif status < 500:
        assert result is C.HTTP_4XX
    elif status in (502, 503, 504):
        assert result is C.GATEWAY_ERROR
    else:
        assert result is C.HTTP_5XX
