"""Envoy local replies: texts, flags and the gRPC forms."""

from __future__ import annotations

import pytest

from meshlib._model import FailureKind, Outcome, Reply
from meshlib._policy import replies
from meshlib._policy.replies import (
    CONNECT_FAILURE_REPLY,
    NO_CLUSTER_REPLY,
    NO_HEALTHY_UPSTREAM_REPLY,
    OVERFLOW_REPLY,
    RBAC_DENIED_REPLY,
    UPSTREAM_TIMEOUT_REPLY,
    fault_abort_reply,
    for_grpc,
    grpc_status_for_http,
    reply_for_failure,
    with_flag,
)

PREFIX = "upstream connect error or disconnect/reset before headers. reset reason: "


def test_local_reply_texts_and_flags() -> None:
    assert (
        Reply(503, PREFIX + "overflow", ("UO",), (("x-envoy-overloaded", "true"),))
        == OVERFLOW_REPLY
    )
    assert Reply(503, "no healthy upstream", ("UH",)) == NO_HEALTHY_UPSTREAM_REPLY
    assert Reply(504, "upstream request timeout", ("UT",)) == UPSTREAM_TIMEOUT_REPLY
    assert Reply(403, "RBAC: access denied") == RBAC_DENIED_REPLY
    assert Reply(503, "", ("NC",)) == NO_CLUSTER_REPLY
    assert CONNECT_FAILURE_REPLY.body == PREFIX + "connection failure"
    assert replies.FAULT_ABORT_BODY == "fault filter abort"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, 13),
        (401, 16),
        (403, 7),
        (404, 12),
        (429, 14),
        (502, 14),
        (503, 14),
        (504, 14),
        (500, 2),
        (200, 2),
    ],
)
def test_http_to_grpc_mapping(status: int, code: int) -> None:
    assert grpc_status_for_http(status) == code


def test_for_grpc_is_trailers_only() -> None:
    denied = for_grpc(RBAC_DENIED_REPLY)
    assert (denied.status, denied.grpc_status, denied.body) == (200, 7, "RBAC: access denied")
    assert for_grpc(denied) is denied
    overflow = for_grpc(OVERFLOW_REPLY)
    assert (overflow.status, overflow.grpc_status, overflow.flags) == (200, 14, ("UO",))
    assert overflow.headers == OVERFLOW_REPLY.headers


def test_with_flag() -> None:
    assert with_flag(CONNECT_FAILURE_REPLY, "URX").flags == ("UF", "URX")
    assert with_flag(CONNECT_FAILURE_REPLY, "UF") is CONNECT_FAILURE_REPLY


@pytest.mark.parametrize(
    ("failure", "status", "flag", "reason"),
    [
        (FailureKind.CONNECT_FAILURE, 503, "UF", PREFIX + "connection failure"),
        (FailureKind.RESET, 503, "UC", PREFIX + "connection termination"),
        (FailureKind.RESET_BEFORE_REQUEST, 503, "UC", PREFIX + "connection termination"),
        (FailureKind.REFUSED_STREAM, 503, "UR", PREFIX + "remote refused stream reset"),
        (FailureKind.TIMEOUT, 504, "UT", "upstream request timeout"),
        (FailureKind.CANCELLED, 499, "DC", ""),
    ],
)
def test_reply_for_failure(failure: FailureKind, status: int, flag: str, reason: str) -> None:
    outcome = Outcome(failure=failure)
    reply = reply_for_failure(outcome)
    assert (reply.status, reply.flags, reply.body) == (status, (flag,), reason)
    exhausted = reply_for_failure(outcome, retries_exhausted=True)
    assert exhausted.flags == (flag, "URX")
    grpc = reply_for_failure(outcome, retries_exhausted=True, grpc=True)
    assert (grpc.status, grpc.flags, grpc.grpc_status) == (
        200,
        (flag, "URX"),
        grpc_status_for_http(status),
    )
    assert reply_for_failure(outcome) is reply  # prebuilt


def test_connect_failure_carries_transport_reason() -> None:
    outcome = Outcome(failure=FailureKind.CONNECT_FAILURE, detail="delayed connect error: 111")
    reply = reply_for_failure(outcome)
    expected = PREFIX + "connection failure, transport failure reason: delayed connect error: 111"
    assert (reply.body, reply.flags) == (expected, ("UF",))
    assert reply_for_failure(outcome, retries_exhausted=True).flags == ("UF", "URX")
    grpc = reply_for_failure(outcome, grpc=True)
    assert (grpc.status, grpc.grpc_status, grpc.body) == (200, 14, expected)


def test_response_is_not_a_failure() -> None:
    with pytest.raises(ValueError, match="not a failure"):
        reply_for_failure(Outcome(status=503))


def test_fault_abort_reply() -> None:
    assert fault_abort_reply(500, None, grpc=False) == Reply(500, "fault filter abort", ("FI",))
    assert fault_abort_reply(None, 14, grpc=False).status == 503
    assert fault_abort_reply(None, 5, grpc=True).grpc_status == 5
    assert fault_abort_reply(403, None, grpc=True).grpc_status == 7
    assert fault_abort_reply(None, None, grpc=True).grpc_status == 14
