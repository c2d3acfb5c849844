"""Envoy/Istio access log lines, text or JSON, to the ``meshlib.access`` logger.

Off by default, as in Istio (``meshConfig.accessLogFile`` unset): the Mesh holds no
``AccessLog`` until asked. Drivers fill an ``AccessRecord`` at stream end; formatting happens
only when the record is kept by sampling and the logger is enabled for INFO.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

LOGGER_NAME: Final = "meshlib.access"
EMPTY: Final = "-"
"""Envoy writes ``-`` for an empty value in the text format (JSON writes ``null``)."""
FORMAT_TEXT: Final = "text"
FORMAT_JSON: Final = "json"
MS_PER_SECOND: Final = 1000
US_PER_SECOND: Final = 1_000_000

AccessLogFormat = Literal["text", "json"]


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One finished request, as the driver saw it; ``None``/empty means unknown."""

    start_time: float
    """Unix seconds (``time.time()``) when the request started."""
    method: str
    path: str
    """``x-envoy-original-path`` when a rewrite happened, else ``:path``."""
    protocol: str
    """``HTTP/1.1``, ``HTTP/2``..."""
    response_code: int
    """0 when no response was sent."""
    response_flags: str = EMPTY
    response_code_details: str | None = None
    """Envoy's ``via_upstream``, ``fault_filter_abort``, ``rbac_access_denied...``."""
    connection_termination_details: str | None = None
    upstream_transport_failure_reason: str | None = None
    bytes_received: int = 0
    bytes_sent: int = 0
    duration_ms: float = 0.0
    upstream_service_time_ms: float | None = None
    x_forwarded_for: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    authority: str | None = None
    upstream_host: str | None = None
    """``address:port`` of the endpoint that answered."""
    upstream_cluster: str | None = None
    """``outbound|<port>|<subset>|<fqdn>`` or ``inbound|<port>||``."""
    upstream_local_address: str | None = None
    downstream_local_address: str | None = None
    downstream_remote_address: str | None = None
    requested_server_name: str | None = None
    route_name: str | None = None


def format_start_time(unix_seconds: float) -> str:
    """Envoy's default ``%START_TIME%``: UTC ISO 8601 with milliseconds and ``Z``."""
    # Round to microseconds first: 1606339578.409 is stored as ...408.99999 and must print .409.
    millis = round(unix_seconds * US_PER_SECOND) // MS_PER_SECOND
    seconds, ms = divmod(millis, MS_PER_SECOND)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def _text(value: str | None) -> str:
    return value if value else EMPTY


def _ms(value: float | None) -> str:
    # Envoy prints durations as whole milliseconds.
    return EMPTY if value is None else str(int(value))


def format_text(record: AccessRecord) -> str:
    """The line Istio's default ``TEXT`` access log writes (ISTIO-SEMANTICS §7.3)."""
    r = record
    return (
        f"[{format_start_time(r.start_time)}] "
        f'"{_text(r.method)} {_text(r.path)} {_text(r.protocol)}" '
        f"{r.response_code} {_text(r.response_flags)} {_text(r.response_code_details)} "
        f"{_text(r.connection_termination_details)} "
        f'"{_text(r.upstream_transport_failure_reason)}" '
        f"{r.bytes_received} {r.bytes_sent} {_ms(r.duration_ms)} "
        f"{_ms(r.upstream_service_time_ms)} "
        f'"{_text(r.x_forwarded_for)}" "{_text(r.user_agent)}" "{_text(r.request_id)}" '
        f'"{_text(r.authority)}" "{_text(r.upstream_host)}" {_text(r.upstream_cluster)} '
        f"{_text(r.upstream_local_address)} {_text(r.downstream_local_address)} "
        f"{_text(r.downstream_remote_address)} {_text(r.requested_server_name)} "
        f"{_text(r.route_name)}"
    )


def _json_value(value: str | None) -> str | None:
    return value if value else None


def format_json(record: AccessRecord) -> str:
    """Istio's ``JSON`` encoding: the same fields, ``null`` when empty, keys in its order."""
    r = record
    flags = r.response_flags if r.response_flags and r.response_flags != EMPTY else None
    fields: dict[str, object] = {
        "start_time": format_start_time(r.start_time),
        "method": _json_value(r.method),
        "path": _json_value(r.path),
        "protocol": _json_value(r.protocol),
        "response_code": r.response_code,
        "response_flags": flags,
        "response_code_details": _json_value(r.response_code_details),
        "connection_termination_details": _json_value(r.connection_termination_details),
        "upstream_transport_failure_reason": _json_value(r.upstream_transport_failure_reason),
        "bytes_received": r.bytes_received,
        "bytes_sent": r.bytes_sent,
        "duration": int(r.duration_ms),
        "upstream_service_time": (
            None if r.upstream_service_time_ms is None else str(int(r.upstream_service_time_ms))
        ),
        "x_forwarded_for": _json_value(r.x_forwarded_for),
        "user_agent": _json_value(r.user_agent),
        "request_id": _json_value(r.request_id),
        "authority": _json_value(r.authority),
        "upstream_host": _json_value(r.upstream_host),
        "upstream_cluster": _json_value(r.upstream_cluster),
        "upstream_local_address": _json_value(r.upstream_local_address),
        "downstream_local_address": _json_value(r.downstream_local_address),
        "downstream_remote_address": _json_value(r.downstream_remote_address),
        "requested_server_name": _json_value(r.requested_server_name),
        "route_name": _json_value(r.route_name),
    }
    return json.dumps(fields, separators=(",", ":"))


class AccessLog:
    """Writes records to ``meshlib.access`` at INFO; ``sample`` keeps that fraction of them.

    Attach a handler to the logger (``logging.getLogger("meshlib.access")``) to see the lines;
    messages are the finished line, so a bare ``%(message)s`` formatter reproduces Envoy's.
    """

    __slots__ = ("_format", "_logger", "_random", "sample")

    def __init__(
        self,
        fmt: AccessLogFormat = FORMAT_TEXT,
        *,
        sample: float = 1.0,
        logger: logging.Logger | None = None,
        random_source: Callable[[], float] | None = None,
    ) -> None:
        if fmt not in {FORMAT_TEXT, FORMAT_JSON}:
            raise ValueError(f"access log format must be 'text' or 'json', got {fmt!r}")
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample must be within 0..1, got {sample}")
        self._format = format_text if fmt == FORMAT_TEXT else format_json
        self.sample = sample
        self._logger = logger or logging.getLogger(LOGGER_NAME)
        self._random = random_source or random.random

    def log(self, record: AccessRecord) -> bool:
        """Write the record unless sampled out or the logger is off; says whether it wrote."""
        if self.sample < 1.0 and self._random() >= self.sample:
            return False
        if not self._logger.isEnabledFor(logging.INFO):
            return False
        self._logger.info("%s", self._format(record))
        return True
