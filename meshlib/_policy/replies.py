"""Envoy's local replies: bodies, response flags and the HTTP to gRPC status mapping.

Callers see exactly what an Istio sidecar would have answered (ISTIO-SEMANTICS 1.11, 2.4,
5.3, 7.4), so dashboards, alerts and client code written against Istio keep working.
"""

from __future__ import annotations

from meshlib._model.commands import Reply
from meshlib._model.outcome import FailureKind, Outcome

# Response flags (ISTIO-SEMANTICS 7.4).
FLAG_NO_HEALTHY_UPSTREAM = "UH"
FLAG_CONNECT_FAILURE = "UF"
FLAG_OVERFLOW = "UO"
FLAG_NO_ROUTE = "NR"
FLAG_RETRY_LIMIT = "URX"
FLAG_NO_CLUSTER = "NC"
FLAG_UPSTREAM_TIMEOUT = "UT"
FLAG_LOCAL_RESET = "LR"
FLAG_REMOTE_RESET = "UR"
FLAG_CONNECTION_TERMINATION = "UC"
FLAG_DOWNSTREAM_TERMINATED = "DC"
FLAG_FAULT_DELAY = "DI"
FLAG_FAULT_ABORT = "FI"
FLAG_RATE_LIMITED = "RL"
FLAG_EXT_AUTHZ_DENIED = "UAEX"

# Local reply bodies.
RESET_BEFORE_HEADERS = "upstream connect error or disconnect/reset before headers. reset reason: "
OVERFLOW_BODY = RESET_BEFORE_HEADERS + "overflow"
CONNECT_FAILURE_BODY = RESET_BEFORE_HEADERS + "connection failure"
CONNECTION_TERMINATION_BODY = RESET_BEFORE_HEADERS + "connection termination"
REMOTE_RESET_BODY = RESET_BEFORE_HEADERS + "remote reset"
REFUSED_STREAM_BODY = RESET_BEFORE_HEADERS + "remote refused stream reset"
TRANSPORT_FAILURE_SEPARATOR = ", transport failure reason: "
"""Newer Envoy appends the transport failure reason to the connect-failure body."""
NO_HEALTHY_UPSTREAM_BODY = "no healthy upstream"
UPSTREAM_TIMEOUT_BODY = "upstream request timeout"
RBAC_DENIED_BODY = "RBAC: access denied"
FAULT_ABORT_BODY = "fault filter abort"

OVERLOADED_HEADER = "x-envoy-overloaded"
OVERLOADED_HEADERS: tuple[tuple[str, str], ...] = ((OVERLOADED_HEADER, "true"),)

STATUS_CLIENT_CLOSED = 499
"""What metrics and logs show for a caller that went away (Envoy reports 0 with flag DC)."""

# gRPC status codes used here (grpc/status.h numbering).
GRPC_OK = 0
GRPC_CANCELLED = 1
GRPC_UNKNOWN = 2
GRPC_DEADLINE_EXCEEDED = 4
GRPC_PERMISSION_DENIED = 7
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNIMPLEMENTED = 12
GRPC_INTERNAL = 13
GRPC_UNAVAILABLE = 14
GRPC_UNAUTHENTICATED = 16

_HTTP_TO_GRPC: dict[int, int] = {
    400: GRPC_INTERNAL,
    401: GRPC_UNAUTHENTICATED,
    403: GRPC_PERMISSION_DENIED,
    404: GRPC_UNIMPLEMENTED,
    429: GRPC_UNAVAILABLE,
    502: GRPC_UNAVAILABLE,
    503: GRPC_UNAVAILABLE,
    504: GRPC_UNAVAILABLE,
}


def grpc_status_for_http(status: int) -> int:
    """Envoy's HTTP→gRPC mapping for local replies to gRPC calls (ISTIO-SEMANTICS 1.11)."""
    return _HTTP_TO_GRPC.get(status, GRPC_UNKNOWN)


def for_grpc(reply: Reply) -> Reply:
    """The trailers-only form of a local reply: HTTP 200, ``grpc-status``, body as message."""
    if reply.grpc_status is not None:
        return reply
    return Reply(
        status=200,
        body=reply.body,
        flags=reply.flags,
        headers=reply.headers,
        grpc_status=grpc_status_for_http(reply.status),
    )


def with_flag(reply: Reply, flag: str) -> Reply:
    """``reply`` with one more response flag (``URX`` after exhausted retries...)."""
    if flag in reply.flags:
        return reply
    return Reply(
        status=reply.status,
        body=reply.body,
        flags=(*reply.flags, flag),
        headers=reply.headers,
        grpc_status=reply.grpc_status,
    )


OVERFLOW_REPLY = Reply(503, OVERFLOW_BODY, (FLAG_OVERFLOW,), OVERLOADED_HEADERS)
NO_HEALTHY_UPSTREAM_REPLY = Reply(503, NO_HEALTHY_UPSTREAM_BODY, (FLAG_NO_HEALTHY_UPSTREAM,))
NO_ROUTE_REPLY = Reply(404, "", (FLAG_NO_ROUTE,))
NO_CLUSTER_REPLY = Reply(503, "", (FLAG_NO_CLUSTER,))
UPSTREAM_TIMEOUT_REPLY = Reply(504, UPSTREAM_TIMEOUT_BODY, (FLAG_UPSTREAM_TIMEOUT,))
RBAC_DENIED_REPLY = Reply(403, RBAC_DENIED_BODY)
CONNECT_FAILURE_REPLY = Reply(503, CONNECT_FAILURE_BODY, (FLAG_CONNECT_FAILURE,))
CONNECTION_TERMINATION_REPLY = Reply(
    503, CONNECTION_TERMINATION_BODY, (FLAG_CONNECTION_TERMINATION,)
)
REMOTE_RESET_REPLY = Reply(503, REMOTE_RESET_BODY, (FLAG_REMOTE_RESET,))
REFUSED_STREAM_REPLY = Reply(503, REFUSED_STREAM_BODY, (FLAG_REMOTE_RESET,))
DOWNSTREAM_TERMINATED_REPLY = Reply(STATUS_CLIENT_CLOSED, "", (FLAG_DOWNSTREAM_TERMINATED,))

_FAILURE_REPLIES: dict[FailureKind, Reply] = {
    FailureKind.CONNECT_FAILURE: CONNECT_FAILURE_REPLY,
    # Without telling an HTTP/1 close from an HTTP/2 stream reset, a reset reads as the
    # more common connection termination (UC).
    FailureKind.RESET_BEFORE_REQUEST: CONNECTION_TERMINATION_REPLY,
    FailureKind.RESET: CONNECTION_TERMINATION_REPLY,
    FailureKind.REFUSED_STREAM: REFUSED_STREAM_REPLY,
    FailureKind.TIMEOUT: UPSTREAM_TIMEOUT_REPLY,
    FailureKind.CANCELLED: DOWNSTREAM_TERMINATED_REPLY,
}


def _prebuild() -> dict[tuple[FailureKind, bool, bool], Reply]:
    # Every variant built once so the common failure paths allocate nothing.
    table: dict[tuple[FailureKind, bool, bool], Reply] = {}
    for kind, reply in _FAILURE_REPLIES.items():
        for exhausted in (False, True):
            base = with_flag(reply, FLAG_RETRY_LIMIT) if exhausted else reply
            table[kind, exhausted, False] = base
            table[kind, exhausted, True] = for_grpc(base)
    return table


_PREBUILT = _prebuild()


def reply_for_failure(
    outcome: Outcome, *, retries_exhausted: bool = False, grpc: bool = False
) -> Reply:
    """The local reply for an attempt that got no response (ISTIO-SEMANTICS 2.4).

    ``retries_exhausted`` adds ``URX``; ``grpc`` gives the trailers-only form. A connect
    failure with a ``detail`` carries it as Envoy's transport failure reason.
    """
    kind = outcome.failure
    if kind is FailureKind.NONE:
        raise ValueError("an outcome with a response is not a failure")
    if kind is FailureKind.CONNECT_FAILURE and outcome.detail:
        reply = Reply(
            503,
            CONNECT_FAILURE_BODY + TRANSPORT_FAILURE_SEPARATOR + outcome.detail,
            (FLAG_CONNECT_FAILURE, FLAG_RETRY_LIMIT)
            if retries_exhausted
            else (FLAG_CONNECT_FAILURE,),
        )
        return for_grpc(reply) if grpc else reply
    return _PREBUILT[kind, retries_exhausted, grpc]


def fault_abort_reply(http_status: int | None, grpc_status: int | None, *, grpc: bool) -> Reply:
    """The fault filter's abort (ISTIO-SEMANTICS 1.7).

    A gRPC call gets HTTP 200 with the configured gRPC status (or the mapped HTTP one); an
    HTTP call gets the configured HTTP status, or 503 when only a gRPC status is configured.
    """
    if grpc:
        code = grpc_status if grpc_status is not None else grpc_status_for_http(http_status or 503)
        return Reply(200, FAULT_ABORT_BODY, (FLAG_FAULT_ABORT,), grpc_status=code)
    status = http_status if http_status is not None else 503
    return Reply(status, FAULT_ABORT_BODY, (FLAG_FAULT_ABORT,))
