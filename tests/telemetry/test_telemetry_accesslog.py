"""Access log lines: Envoy's default text format byte for byte, Istio's JSON encoding."""

from __future__ import annotations

import calendar
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._telemetry.accesslog import (
    LOGGER_NAME,
    AccessLog,
    AccessRecord,
    format_json,
    format_start_time,
    format_text,
)

START = calendar.timegm((2020, 11, 25, 21, 26, 18)) + 0.409

# The example line of Istio's access-log task (httpbin returning 418 through the sidecar).
ISTIO_EXAMPLE = (
    '[2020-11-25T21:26:18.409Z] "GET /status/418 HTTP/1.1" 418 - via_upstream - "-" 0 135 4 4 '
    '"-" "curl/7.73.0-DEV" "84961386-6d84-929d-98bd-c5aee93b5c88" "httpbin:8000" '
    '"10.44.1.27:80" outbound|8000||httpbin.foo.svc.cluster.local 10.44.1.23:37652 '
    "10.0.45.184:8000 10.44.1.23:46520 - default"
)

RECORD = AccessRecord(
    start_time=START,
    method="GET",
    path="/status/418",
    protocol="HTTP/1.1",
    response_code=418,
    response_code_details="via_upstream",
    bytes_received=0,
    bytes_sent=135,
    duration_ms=4.7,
    upstream_service_time_ms=4.0,
    user_agent="curl/7.73.0-DEV",
    request_id="84961386-6d84-929d-98bd-c5aee93b5c88",
    authority="httpbin:8000",
    upstream_host="10.44.1.27:80",
    upstream_cluster="outbound|8000||httpbin.foo.svc.cluster.local",
    upstream_local_address="10.44.1.23:37652",
    downstream_local_address="10.0.45.184:8000",
    downstream_remote_address="10.44.1.23:46520",
    route_name="default",
)


def test_text_matches_istios_example_line() -> None:
    assert format_text(RECORD) == ISTIO_EXAMPLE


def test_text_for_a_local_reply_with_nothing_known() -> None:
    record = AccessRecord(
        start_time=0.0,
        method="POST",
        path="/pay",
        protocol="HTTP/2",
        response_code=503,
        response_flags="UF,URX",
        response_code_details="upstream_reset_before_response_started{connection_failure}",
        upstream_transport_failure_reason="delayed connect error: 111",
    )
    assert format_text(record) == (
        '[1970-01-01T00:00:00.000Z] "POST /pay HTTP/2" 503 UF,URX '
        "upstream_reset_before_response_started{connection_failure} - "
        '"delayed connect error: 111" 0 0 0 - "-" "-" "-" "-" "-" - - - - - -'
    )


def test_json_uses_istios_keys_and_null_for_empty() -> None:
    fields = json.loads(format_json(RECORD))
    assert list(fields) == [
        "start_time", "method", "path", "protocol", "response_code", "response_flags",
        "response_code_details", "connection_termination_details",
        "upstream_transport_failure_reason", "bytes_received", "bytes_sent", "duration",
        "upstream_service_time", "x_forwarded_for", "user_agent", "request_id", "authority",
        "upstream_host", "upstream_cluster", "upstream_local_address",
        "downstream_local_address", "downstream_remote_address", "requested_server_name",
        "route_name",
    ]  # fmt: skip
    assert fields["start_time"] == "2020-11-25T21:26:18.409Z"
    assert fields["response_code"] == 418
    assert fields["response_flags"] is None
    assert fields["duration"] == 4
    assert fields["upstream_service_time"] == "4"
    assert fields["x_forwarded_for"] is None
    assert fields["upstream_cluster"] == "outbound|8000||httpbin.foo.svc.cluster.local"
    local = json.loads(format_json(AccessRecord(0.0, "GET", "/", "HTTP/1.1", 0, "UH")))
    assert (local["response_flags"], local["upstream_service_time"]) == ("UH", None)


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_start_time_shape(unix: float) -> None:
    text = format_start_time(unix)
    assert len(text) == len("2020-11-25T21:26:18.409Z")
    assert text.endswith("Z")
    assert text[10] == "T"


def test_logger_writes_the_line(caplog: pytest.LogCaptureFixture) -> None:
    log = AccessLog()
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        assert log.log(RECORD)
    assert [r.getMessage() for r in caplog.records] == [ISTIO_EXAMPLE]
    assert caplog.records[0].name == "meshlib.access"


def test_json_logger(caplog: pytest.LogCaptureFixture) -> None:
    log = AccessLog("json")
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        log.log(RECORD)
    assert json.loads(caplog.records[0].getMessage())["request_id"] == RECORD.request_id


def test_nothing_is_formatted_when_the_logger_is_off() -> None:
    quiet = logging.getLogger("meshlib.access.test-quiet")
    quiet.setLevel(logging.WARNING)
    assert not AccessLog(logger=quiet).log(RECORD)


def test_sampling_keeps_the_asked_fraction(caplog: pytest.LogCaptureFixture) -> None:
    draws = iter([0.1, 0.5, 0.29, 0.9])
    log = AccessLog(sample=0.3, random_source=lambda: next(draws))
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        kept = [log.log(RECORD) for _ in range(4)]
    assert kept == [True, False, True, False]
    assert len(caplog.records) == 2


@pytest.mark.parametrize(("fmt", "sample"), [("xml", 1.0), ("text", 1.5), ("json", -0.1)])
def test_bad_settings(fmt: str, sample: float) -> None:
    with pytest.raises(ValueError, match="access log"):
        AccessLog(fmt, sample=sample)  # type: ignore[arg-type]
