"""All four cardinalities through the mesh channels: long server streams, bidirectional chat,
futures, with_call, cancellation, and the permits every ending gives back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_upstreams import (
    CHAT,
    COLLECT,
    GET,
    HOST,
    STREAM,
    TARGET,
    Upstream,
    make_runtime,
    wait_until,
)
from grpc_upstreams import service_entry as entry

from meshlib._engine.runtime import OutboundRuntime
from meshlib._identity.rotation import RotatingIdentity
from meshlib.grpc import MeshChannel
from meshlib.grpc.aio import MeshAioChannel

pytestmark = pytest.mark.extras
WAIT = 10.0
MANY = 10_000


def runtime_for(upstreams: dict[str, Upstream], identity: RotatingIdentity) -> OutboundRuntime:
    return make_runtime(entry([(upstreams["v1"].port, {}), (upstreams["v2"].port, {})]), identity)


def limiter(runtime: OutboundRuntime) -> Any:
    target = runtime.cluster_for(runtime.snapshot(), HOST, None, 9080, "reviews")
    assert target is not None
    return target.state.limiter


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# ----------------------------------------------------------------------------------- sync


def test_sync_server_stream_of_ten_thousand(
    upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    runtime = runtime_for(upstreams, client_identity)
    with MeshChannel(runtime, TARGET) as channel:
        call = channel.unary_stream(STREAM)(body(count=MANY), timeout=WAIT)
        count = sum(1 for _ in call)
        assert count == MANY
        assert call.code() == grpc.StatusCode.OK
        assert wait_until(lambda: limiter(runtime).active == 0)


def test_sync_bidirectional_chat_and_client_stream(
    upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    runtime = runtime_for(upstreams, client_identity)
    with MeshChannel(runtime, TARGET) as channel:
        replies = list(channel.stream_stream(CHAT)(iter([b"a", b"b", b"c"]), timeout=WAIT))
        assert [r.split(b":")[1] for r in replies] == [b"a", b"b", b"c"]
        assert len({r.split(b":")[0] for r in replies}) == 1  # one call, one endpoint
        response, call = channel.stream_unary(COLLECT).with_call(iter([b"x", b"y"]), timeout=WAIT)
        assert response == b"x|y"
        assert call.code() == grpc.StatusCode.OK
        assert channel.stream_unary(COLLECT)(iter([b"z"])) == b"z"
        future = channel.stream_unary(COLLECT).future(iter([b"1", b"2"]))
        assert future.result(WAIT) == b"1|2"
    assert limiter(runtime).active == 0


def test_sync_cancel_mid_stream_releases_every_permit(
    upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    runtime = runtime_for(upstreams, client_identity)
    with MeshChannel(runtime, TARGET) as channel:
        call = channel.unary_stream(STREAM)(body(count=MANY, pause=0.01), timeout=WAIT)
        first = next(iter(call))
        assert first == b"0"
        assert limiter(runtime).active == 1
        assert call.cancel()
        assert wait_until(lambda: limiter(runtime).active == 0)
        with pytest.raises(grpc.RpcError) as info:
            next(iter(call))
        assert info.value.code() == grpc.StatusCode.CANCELLED
        assert channel.unary_unary(GET)(b"{}", timeout=WAIT)  # the cluster still works


def test_sync_with_call_future_and_cancelled_future(
    upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    runtime = runtime_for(upstreams, client_identity)
    with MeshChannel(runtime, TARGET) as channel:
        get = channel.unary_unary(GET)
        response, call = get.with_call(b"{}", timeout=WAIT, wait_for_ready=True)
        assert json.loads(response)["name"] in {"v1", "v2"}
        assert call.code() == grpc.StatusCode.OK
        future = get.future(b"{}", timeout=WAIT)
        done: list[Any] = []
        future.add_done_callback(done.append)
        assert json.loads(future.result(WAIT))["name"] in {"v1", "v2"}
        assert future.code() == grpc.StatusCode.OK
        assert future.exception() is None
        assert wait_until(lambda: done == [future])
        slow = get.future(body(delay=5), timeout=WAIT)
        assert wait_until(lambda: limiter(runtime).active == 1)
        assert slow.cancel()
        assert slow.cancelled()
        with pytest.raises(grpc.FutureCancelledError):
            slow.result(WAIT)
        assert wait_until(lambda: limiter(runtime).active == 0)


# ------------------------------------------------------------------------------------ aio


def test_aio_streams_chat_and_cancellation(
    upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    runtime = runtime_for(upstreams, client_identity)

    async def go() -> None:
        async with MeshAioChannel(runtime, TARGET) as channel:
            call = channel.unary_stream(STREAM)(body(count=MANY), timeout=WAIT)
            count = 0
            async for _ in call:
                count += 1
            assert count == MANY
            assert await call.code() == grpc.StatusCode.OK

            async def requests() -> AsyncIterator[bytes]:
                for word in (b"a", b"b", b"c"):
                    yield word

            replies = [r async for r in channel.stream_stream(CHAT)(requests(), timeout=WAIT)]
            assert [r.split(b":")[1] for r in replies] == [b"a", b"b", b"c"]

            chat = channel.stream_stream(CHAT)(timeout=WAIT)
            await chat.write(b"hello")
            assert (await chat.read()).endswith(b":hello")
            await chat.done_writing()
            assert await chat.read() == grpc.aio.EOF

            collect = channel.stream_unary(COLLECT)(requests(), timeout=WAIT)
            assert await collect == b"a|b|c"

            slow = channel.unary_stream(STREAM)(body(count=MANY, pause=0.01), timeout=WAIT)
            assert await slow.read() == b"0"
            assert limiter(runtime).active == 1
            assert slow.cancel()
            for _ in range(500):
                if limiter(runtime).active == 0:
                    break
                await asyncio.sleep(0.01)
            assert limiter(runtime).active == 0
            assert await slow.code() == grpc.StatusCode.CANCELLED

            pending = asyncio.ensure_future(channel.unary_unary(GET)(body(delay=5)))
            for _ in range(500):
                if limiter(runtime).active == 1:
                    break
                await asyncio.sleep(0.01)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            assert limiter(runtime).active == 0

            unary = channel.unary_unary(GET)(b"{}", metadata=(("end-user", "x"),))
            assert json.loads(await unary)["name"] in {"v1", "v2"}
            assert await unary.code() == grpc.StatusCode.OK
            assert unary.done()

    asyncio.run(go())
