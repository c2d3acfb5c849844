"""The pure helpers of the gRPC drivers: targets, metadata views, outcome mapping, errors."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._engine.outbound import Fail
from meshlib._model.commands import Attempt, Reply
from meshlib._model.endpoint import Endpoint
from meshlib._model.outcome import FailureKind, Outcome
from meshlib.grpc import MeshRpcError
from meshlib.grpc._common import (
    MetadataView,
    build_call,
    error_for_fail,
    error_for_reply,
    outcome_of_error,
    outcome_of_status,
    parse_target,
    reply_code,
    upstream_metadata,
)

pytestmark = pytest.mark.extras

HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True)


@given(host=HOSTS, port=st.integers(1, 65535), prefix=st.sampled_from(["", "dns:///", "dns:"]))
def test_parse_target_reads_host_and_port(host: str, port: int, prefix: str) -> None:
    target = parse_target(f"{prefix}{host}:{port}")
    assert (target.host, target.port, target.authority) == (host, port, f"{host}:{port}")


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("Ratings", "ratings", 443),
        ("[::1]:50051", "::1", 50051),
        ("ipv4://10.0.0.1:80", "10.0.0.1", 80),
        ("dns://8.8.8.8/ratings.default:9090", "ratings.default", 9090),
    ],
)
def test_parse_target_forms(text: str, host: str, port: int) -> None:
    target = parse_target(text)
    assert (target.host, target.port) == (host, port)


@pytest.mark.parametrize("text", ["", "unix:///tmp/sock", "dns:///", ":80"])
def test_parse_target_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="gRPC target"):
        parse_target(text)


def test_metadata_view_is_case_insensitive_and_joins() -> None:
    view = MetadataView([("End-User", "a"), ("end-user", "b"), ("x-bin", b"\x00"), ("k", "v")])
    assert view.get("end-user") == "a,b"
    assert view.get("K") == "v"
    assert view.get("x-bin") is None  # binary values never match
    assert view.get("absent") is None
    assert "x-bin" in view
    assert "absent" not in view
    assert 3 not in view
    assert MetadataView(None).get("k") is None


def test_build_call_is_post_to_the_method() -> None:
    call = build_call(parse_target("reviews:9080"), "/pkg.S/M", [("a", "1")], replayable=False)
    assert (call.protocol, call.method, call.path, call.authority) == (
        "grpc",
        "POST",
        "/pkg.S/M",
        "reviews:9080",
    )
    assert call.headers.get("a") == "1"
    assert call.body_replayable is False


def test_upstream_metadata_removes_sets_and_adds() -> None:
    attempt = Attempt(
        endpoint=Endpoint("127.0.0.1", 1),
        number=2,
        timeout=None,
        set_headers=(("x-set", "1"), ("connection", "close")),
        add_headers=(("x-add", "2"), ("te", "x")),
        remove_headers=("X-Gone",),
    )
    pairs = upstream_metadata([("x-gone", "a"), ("x-set", "old"), ("keep", "k")], attempt)
    assert pairs == [("keep", "k"), ("x-set", "1"), ("x-add", "2")]
    assert upstream_metadata(None, attempt)[0] == ("x-set", "1")


class _Error(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "failure", "status"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: refused",
            FailureKind.CONNECT_FAILURE,
            None,
        ),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", FailureKind.RESET, None),
        (grpc.StatusCode.UNAVAILABLE, "flaky", FailureKind.NONE, 14),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", FailureKind.TIMEOUT, None),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "server gave up", FailureKind.NONE, 4),
        (grpc.StatusCode.INTERNAL, None, FailureKind.NONE, 13),
    ],
)
def test_outcome_of_error(
    code: grpc.StatusCode, details: str | None, failure: FailureKind, status: int | None
) -> None:
    outcome = outcome_of_error(_Error(code, details))
    assert outcome.failure is failure
    assert outcome.grpc_status == status
    if failure is FailureKind.NONE:
        assert outcome.status == 200  # trailers-only: retries read grpc_status


def test_outcome_of_a_foreign_error_is_unknown() -> None:
    outcome = outcome_of_error(grpc.RpcError())
    assert (outcome.status, outcome.grpc_status) == (200, 2)
    assert outcome_of_status(grpc.StatusCode.OK, "").grpc_status == 0


def test_reply_codes_follow_envoy() -> None:
    assert reply_code(Reply(504, "upstream request timeout", ("UT",), grpc_status=14)) is (
        grpc.StatusCode.DEADLINE_EXCEEDED
    )
    assert reply_code(Reply(200, "x", grpc_status=8)) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reply_code(Reply(503, "x")) is grpc.StatusCode.UNKNOWN
    assert reply_code(Reply(200, "x", grpc_status=99)) is grpc.StatusCode.UNKNOWN


def test_mesh_rpc_error_is_a_finished_call_and_future() -> None:
    error = error_for_reply(
        Reply(200, "overflow", ("UO",), (("x-envoy-overloaded", "true"),), grpc_status=14), 1
    )
    assert isinstance(error, MeshRpcError)
    assert isinstance(error, grpc.Call)
    assert isinstance(error, grpc.Future)
    assert (error.code(), error.details(), error.flags, error.attempts) == (
        grpc.StatusCode.UNAVAILABLE,
        "overflow",
        ("UO",),
        1,
    )
    assert error.trailing_metadata() == (("x-envoy-overloaded", "true"),)
    assert error.initial_metadata() == ()
    assert "UNAVAILABLE" in str(error)
    assert "UO" in error.debug_error_string()
    assert not error.is_active()
    assert error.time_remaining() is None
    assert not error.add_callback(lambda: None)
    assert not error.cancel()
    assert not error.cancelled()
    assert not error.running()
    assert error.done()
    assert error.exception() is error
    assert error.traceback() is None
    with pytest.raises(MeshRpcError):
        error.result()
    seen: list[object] = []
    error.add_done_callback(seen.append)
    assert seen == [error]


def test_error_for_fail() -> None:
    caller = Fail(Outcome(failure=FailureKind.TIMEOUT, detail="caller timeout"))
    last = _Error(grpc.StatusCode.UNAVAILABLE, "refused")
    expired = error_for_fail(caller, last, 2)
    assert isinstance(expired, MeshRpcError)
    assert expired.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    passthrough = Fail(Outcome(failure=FailureKind.CONNECT_FAILURE, detail="refused"))
    assert error_for_fail(passthrough, last, 1) is last
    assert isinstance(error_for_fail(passthrough, None, 1), MeshRpcError)
