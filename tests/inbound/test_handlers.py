"""``@mesh.handler``: trace context from a carrier, telemetry, principals and timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

import meshlib
from meshlib._engine.inbound import InboundHooks, InboundRecord
from meshlib._model.call import Peer
from meshlib._telemetry.context import current_deadline, current_inbound
from meshlib.handlers import (
    PermissionDeniedError,
    bind_peer,
    context_hooks,
    current_peer,
    unbind_peer,
)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
WEB = Peer(spiffe_id="spiffe://cluster.local/ns/default/sa/web", mtls=True)


@pytest.fixture
def mesh() -> Iterator[meshlib.Mesh]:
    with meshlib.Mesh.from_text("", service_account="worker") as built:
        yield built


@pytest.fixture
def records(mesh: meshlib.Mesh) -> list[InboundRecord]:
    found: list[InboundRecord] = []
    hooks = context_hooks()
    mesh.inbound_hooks = InboundHooks(
        on_request=found.append, extract=hooks.extract, detach=hooks.detach
    )
    return found


def test_bare_decorator_records_and_keeps_the_function(
    mesh: meshlib.Mesh, records: list[InboundRecord]
) -> None:
    @mesh.handler
    def consume(message: str) -> str:
        """Docstring kept."""
        return message.upper()

    assert consume("a") == "A"
    assert consume.__doc__ == "Docstring kept."
    assert [(r.status, r.call.protocol, r.call.path) for r in records] == [
        (200, "handler", consume.__qualname__)
    ]


def test_trace_context_from_a_named_carrier(mesh: meshlib.Mesh) -> None:
    seen: list[Any] = []

    @mesh.handler(carrier="headers", name="orders")
    def consume(body: bytes, headers: Mapping[str, str]) -> None:
        seen.append(current_inbound())

    consume(b"x", headers={"Traceparent": TRACEPARENT, "x-request-id": "r-1"})
    context = seen[0]
    assert context is not None
    assert context.request_id == "r-1"
    assert ("traceparent", TRACEPARENT) in context.trace_headers
    assert current_inbound() is None  # detached after the call


def test_carrier_function_and_timeout_deadline(mesh: meshlib.Mesh) -> None:
    deadlines: list[float | None] = []

    @mesh.handler(carrier=lambda msg: msg["headers"], timeout=30)
    def consume(msg: dict[str, Any]) -> None:
        deadlines.append(current_deadline())

    before = time.monotonic()
    consume({"headers": {"x-envoy-expected-rq-timeout-ms": "60000"}})
    consume({"headers": {"x-envoy-expected-rq-timeout-ms": "5000"}})
    first, second = deadlines
    assert first is not None
    assert second is not None
    assert before < first <= time.monotonic() + 30  # the handler's own, shorter budget
    assert second < first  # the caller's shorter budget wins


def test_carrier_that_is_not_a_mapping_is_ignored(mesh: meshlib.Mesh) -> None:
    @mesh.handler(carrier="headers")
    def consume(headers: object = None) -> object:
        context = current_inbound()
        return context.trace_headers if context is not None else None

    assert consume(headers="nope") == ()
    with pytest.raises(ValueError, match="not a parameter"):
        mesh.handler(carrier="missing")(lambda x: x)


def test_principals_use_the_current_peer(mesh: meshlib.Mesh, records: list[InboundRecord]) -> None:
    @mesh.handler(principals=["cluster.local/ns/default/sa/web", "*/sa/admin"])
    def handle() -> str:
        peer = current_peer()
        return peer.principal or "" if peer is not None else ""

    with pytest.raises(PermissionDeniedError, match="without mTLS identity"):
        handle()
    token = bind_peer(WEB)
    try:
        assert handle() == "cluster.local/ns/default/sa/web"
    finally:
        unbind_peer(token)
    token = bind_peer(Peer(spiffe_id="spiffe://cluster.local/ns/default/sa/other", mtls=True))
    try:
        with pytest.raises(PermissionDeniedError, match="sa/other is not allowed"):
            handle()
    finally:
        unbind_peer(token)
    assert [r.status for r in records] == [403, 200, 403]
    assert records[0].details == "handler_principals_denied"


def test_bad_arguments(mesh: meshlib.Mesh) -> None:
    with pytest.raises(ValueError, match="refuse every call"):
        mesh.handler(principals=[])(lambda: None)
    with pytest.raises(ValueError, match="positive"):
        mesh.handler(timeout=0)(lambda: None)


def test_sync_errors_are_recorded(mesh: meshlib.Mesh, records: list[InboundRecord]) -> None:
    @mesh.handler
    def broken() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        broken()
    assert records[-1].status == 500


async def test_async_handler_timeout_and_cancellation(
    mesh: meshlib.Mesh, records: list[InboundRecord]
) -> None:
    release = asyncio.Event()

    @mesh.handler(timeout=0.05)
    async def slow() -> None:
        await release.wait()  # never set: the handler's timeout ends it

    @mesh.handler
    async def fast(value: int) -> int:
        await asyncio.sleep(0)
        return value * 2

    @mesh.handler
    async def broken() -> None:
        raise ValueError("bad")

    assert await fast(21) == 42
    with pytest.raises(TimeoutError):
        await slow()
    with pytest.raises(ValueError, match="bad"):
        await broken()
    task = asyncio.create_task(mesh.handler(release.wait)())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(r.status, r.flags) for r in records] == [
        (200, ()),
        (504, ("UT",)),
        (500, ()),
        (0, ("DC",)),
    ]


def test_without_hooks_nothing_is_recorded_but_context_is_set(mesh: meshlib.Mesh) -> None:
    assert mesh.inbound_hooks is None

    @mesh.handler(carrier="headers")
    def consume(headers: dict[str, str]) -> bool:
        return current_inbound() is not None

    assert consume({"traceparent": TRACEPARENT})
