"""The inbound request context: request id, deadline, trace headers, and carrying it around."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from opentelemetry import baggage
from opentelemetry import context as otel_context

from meshlib._model import Peer
from meshlib._telemetry.context import (
    InboundContext,
    MeshThreadPoolExecutor,
    current_deadline,
    current_inbound,
    current_request_id,
    enter_inbound,
    exit_inbound,
    outbound_headers,
    run_in_context,
    thread,
    wrap,
)
from meshlib._telemetry.tracing import Tracing

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
RID = "f47ac10b-58cc-4372-a567-0e02b2c3d479"
W3C = "tracecontext,baggage"


def passthrough_tracing() -> Tracing:
    pytest.importorskip("opentelemetry.propagators.b3")
    return Tracing(propagator="b3multi,tracecontext,baggage")


def test_no_context_outside_a_request() -> None:
    assert current_inbound() is None
    assert current_deadline() is None
    assert current_request_id() is None
    assert outbound_headers(10.0, None) == []


def test_request_id_is_kept_and_the_context_restored() -> None:
    token = enter_inbound({"x-request-id": RID}, now=0.0, protocol="http")
    try:
        assert current_request_id() == RID
        ctx = current_inbound()
        assert isinstance(ctx, InboundContext)
        assert ctx.protocol == "http"
        assert ctx.passthrough
    finally:
        exit_inbound(token)
    assert current_inbound() is None


def test_request_id_is_generated_as_uuid4_when_absent() -> None:
    token = enter_inbound({}, now=0.0, protocol="http")
    try:
        rid = current_request_id()
        assert rid is not None
        assert uuid.UUID(rid).version == 4
    finally:
        exit_inbound(token)


def test_peer_travels() -> None:
    peer = Peer(spiffe_id="spiffe://cluster.local/ns/default/sa/sleep", mtls=True)
    token = enter_inbound({}, now=0.0, protocol="http", peer=peer)
    try:
        ctx = current_inbound()
        assert ctx is not None
        assert ctx.peer is peer
    finally:
        exit_inbound(token)


@pytest.mark.parametrize(
    ("headers", "protocol", "deadline"),
    [
        ({}, "http", None),
        ({"x-envoy-expected-rq-timeout-ms": "1500"}, "http", 101.5),
        ({"x-envoy-expected-rq-timeout-ms": "0"}, "http", None),
        ({"x-envoy-expected-rq-timeout-ms": "soon"}, "http", None),
        ({"grpc-timeout": "200m"}, "http", None),  # only gRPC reads grpc-timeout
        ({"grpc-timeout": "200m"}, "grpc", 100.2),
        ({"grpc-timeout": "2S", "x-envoy-expected-rq-timeout-ms": "500"}, "grpc", 100.5),
        ({"grpc-timeout": "100m", "x-envoy-expected-rq-timeout-ms": "500"}, "grpc", 100.1),
        ({"grpc-timeout": "bad"}, "grpc", None),
    ],
)
def test_deadline_from_the_callers_budget(
    headers: dict[str, str], protocol: str, deadline: float | None
) -> None:
    token = enter_inbound(headers, now=100.0, protocol=protocol)
    try:
        got = current_deadline()
        if deadline is None:
            assert got is None
        else:
            assert got == pytest.approx(deadline)
    finally:
        exit_inbound(token)


def test_outbound_carries_request_id_trace_headers_and_remaining_budget() -> None:
    headers = {
        "x-request-id": RID,
        "traceparent": TRACEPARENT,
        "tracestate": "k=v",
        "x-b3-traceid": TRACE_ID,
        "x-b3-spanid": "b7ad6b7169203331",
        "x-b3-sampled": "1",
        "x-b3-parentspanid": "aaaaaaaaaaaaaaaa",
        "user-agent": "curl",
    }
    token = enter_inbound(headers, now=0.0, protocol="http", tracing=passthrough_tracing())
    try:
        out = outbound_headers(1.0, 3.5)
    finally:
        exit_inbound(token)
    assert dict(out) == {
        "traceparent": TRACEPARENT,
        "tracestate": "k=v",
        "x-b3-traceid": TRACE_ID,
        "x-b3-spanid": "b7ad6b7169203331",
        "x-b3-sampled": "1",
        "x-b3-parentspanid": "aaaaaaaaaaaaaaaa",
        "x-request-id": RID,
        "x-envoy-expected-rq-timeout-ms": "2500",
    }
    assert len(out) == len(dict(out)), "no header twice"


def test_outbound_without_inbound_but_with_deadline() -> None:
    assert outbound_headers(0.0, 0.25) == [("x-envoy-expected-rq-timeout-ms", "250")]


def test_application_context_without_inbound_is_injected() -> None:
    tracing = Tracing(propagator=W3C)
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        assert outbound_headers(0.0, None, tracing=tracing) == [("baggage", "tenant=acme")]
    finally:
        otel_context.detach(token)


def test_a_changed_otel_context_is_injected_instead_of_passthrough() -> None:
    tracing = Tracing(propagator=W3C)
    token = enter_inbound(
        {"traceparent": TRACEPARENT, "x-request-id": RID},
        now=0.0,
        protocol="http",
        tracing=tracing,
    )
    try:
        # With the API only, the raw header is forwarded as it came.
        assert ("traceparent", TRACEPARENT) in outbound_headers(0.0, None, tracing=tracing)
        inner = otel_context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            out = dict(outbound_headers(0.0, None, tracing=tracing))
        finally:
            otel_context.detach(inner)
    finally:
        exit_inbound(token)
    # The handler's own context (no span, so no traceparent) wins over the raw inbound header.
    assert out == {"baggage": "tenant=acme", "x-request-id": RID}


def test_otel_road_extracts_and_injects_the_same_trace() -> None:
    tracing = Tracing(propagator=W3C)
    token = enter_inbound(
        {"traceparent": TRACEPARENT}, now=0.0, protocol="http", tracing=tracing, extract=True
    )
    try:
        ctx = current_inbound()
        assert ctx is not None
        assert not ctx.passthrough
        assert ctx.sampled, "the parent's sampled flag decides"
        out = dict(outbound_headers(0.0, None, tracing=tracing))
    finally:
        exit_inbound(token)
    assert out["traceparent"] == TRACEPARENT
    assert otel_context.get_current() == otel_context.Context()


def test_otel_road_without_trace_headers_writes_none() -> None:
    tracing = Tracing(propagator=W3C)
    token = enter_inbound({}, now=0.0, protocol="http", tracing=tracing, extract=True)
    try:
        out = outbound_headers(0.0, None, tracing=tracing)
    finally:
        exit_inbound(token)
    assert [name for name, _ in out] == ["x-request-id"]


# --- the context follows the handler ------------------------------------------------------


def _seen() -> str | None:
    return current_request_id()


async def test_asyncio_tasks_gather_and_to_thread_keep_the_context() -> None:
    token = enter_inbound({"x-request-id": RID}, now=0.0, protocol="http")
    try:

        async def child() -> str | None:
            await asyncio.sleep(0)
            return current_request_id()

        task_result = await asyncio.create_task(child())
        gathered = await asyncio.gather(child(), child())
        threaded = await asyncio.to_thread(_seen)
    finally:
        exit_inbound(token)
    assert task_result == RID
    assert list(gathered) == [RID, RID]
    assert threaded == RID


async def test_run_in_executor_loses_it_and_the_mesh_executor_keeps_it() -> None:
    loop = asyncio.get_running_loop()
    token = enter_inbound({"x-request-id": RID}, now=0.0, protocol="http")
    try:
        with ThreadPoolExecutor(max_workers=1) as plain:
            lost = await loop.run_in_executor(plain, _seen)
        with MeshThreadPoolExecutor(max_workers=1) as mesh_pool:
            kept = await loop.run_in_executor(mesh_pool, _seen)
    finally:
        exit_inbound(token)
    assert lost is None
    assert kept == RID


def test_executor_submit_and_map() -> None:
    token = enter_inbound({"x-request-id": RID}, now=0.0, protocol="http")
    try:
        with ThreadPoolExecutor(max_workers=1) as plain:
            lost = plain.submit(_seen).result(timeout=10)
        with MeshThreadPoolExecutor(max_workers=2) as pool:
            kept = pool.submit(_seen).result(timeout=10)
            mapped = list(pool.map(lambda _: current_request_id(), range(3), timeout=10))
        with ThreadPoolExecutor(max_workers=1) as plain:
            wrapped = plain.submit(wrap(_seen)).result(timeout=10)
    finally:
        exit_inbound(token)
    assert lost is None
    assert kept == RID
    assert mapped == [RID, RID, RID]
    assert wrapped == RID


def test_raw_threads_lose_it_and_the_helper_thread_keeps_it() -> None:
    results: dict[str, Any] = {}

    def record(key: str) -> None:
        results[key] = current_request_id()

    token = enter_inbound({"x-request-id": RID}, now=0.0, protocol="http")
    try:
        raw = threading.Thread(target=record, args=("raw",))
        helped = thread(record, "helped")
        raw.start()
        helped.start()
        raw.join(10)
        helped.join(10)
    finally:
        exit_inbound(token)
    assert results == {"raw": None, "helped": RID}


def test_run_in_context_does_not_leak_back() -> None:
    def enter_and_report() -> str | None:
        enter_inbound({"x-request-id": "inner"}, now=0.0, protocol="http")
        return current_request_id()

    assert run_in_context(enter_and_report) == "inner"
    assert current_request_id() is None
