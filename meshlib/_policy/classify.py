"""The one reading of an attempt's Outcome shared by retries, outlier detection and metrics.

gRPC: a response whose ``grpc-status`` is known (trailers-only headers, or the trailers handed
to the completion) counts by that status mapped to HTTP the way Envoy feeds its outlier
detector (``Grpc::Utility::grpcToHttpStatus``): UNAVAILABLE is a 503 gateway error,
DEADLINE_EXCEEDED a 504 gateway error, INTERNAL/UNKNOWN/DATA_LOSS 500 and UNIMPLEMENTED 501
are 5xx, CANCELLED (499) and the client-side codes are 4xx, OK is success. Retry conditions do
not use this mapping: Envoy's ``5xx`` retry looks at the HTTP status only.
"""

from __future__ import annotations

from meshlib._model.outcome import Classification, FailureKind, Outcome

_GRPC_TO_HTTP: tuple[int, ...] = (
    200,  # OK
    499,  # CANCELLED
    500,  # UNKNOWN
    400,  # INVALID_ARGUMENT
    504,  # DEADLINE_EXCEEDED
    404,  # NOT_FOUND
    409,  # ALREADY_EXISTS
    403,  # PERMISSION_DENIED
    429,  # RESOURCE_EXHAUSTED
    400,  # FAILED_PRECONDITION
    409,  # ABORTED
    400,  # OUT_OF_RANGE
    501,  # UNIMPLEMENTED
    500,  # INTERNAL
    503,  # UNAVAILABLE
    500,  # DATA_LOSS
    401,  # UNAUTHENTICATED
)
_INVALID_GRPC_HTTP = 500


def grpc_to_http_status(code: int) -> int:
    """Envoy's gRPC→HTTP status mapping; unknown codes read as 500."""
    if 0 <= code < len(_GRPC_TO_HTTP):
        return _GRPC_TO_HTTP[code]
    return _INVALID_GRPC_HTTP


def effective_status(outcome: Outcome, protocol: str) -> int:
    """The HTTP status an outcome counts as (gRPC status mapped); 0 when nothing came back."""
    if outcome.failure is not FailureKind.NONE:
        return 0
    if protocol == "grpc" and outcome.grpc_status is not None:
        return grpc_to_http_status(outcome.grpc_status)
    return outcome.status


def classify(outcome: Outcome, protocol: str) -> Classification:
    """Success, 4xx, 5xx, gateway error (502/503/504), local-origin failure or cancelled."""
    failure = outcome.failure
    if failure is not FailureKind.NONE:
        if failure is FailureKind.CANCELLED:
            return Classification.CANCELLED
        return Classification.LOCAL_ORIGIN_FAILURE
    status = outcome.status
    if protocol == "grpc" and outcome.grpc_status is not None:
        status = grpc_to_http_status(outcome.grpc_status)
    if status >= 500:
        if 502 <= status <= 504:
            return Classification.GATEWAY_ERROR
        return Classification.HTTP_5XX
    if status >= 400:
        return Classification.HTTP_4XX
    if status == 0:
        # A driver that reports neither a status nor a failure kind lost the response.
        return Classification.LOCAL_ORIGIN_FAILURE
    return Classification.SUCCESS
