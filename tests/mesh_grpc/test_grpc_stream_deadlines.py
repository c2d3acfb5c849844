"""The route timeout, the per-try timeout and the inherited deadline on streams, as Envoy applies
them: the route timeout runs from the end of the request to the end of the response, the
per-try timeout only until the response starts. Real grpc servers, both channel kinds."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_upstreams import (
    CHAT,
    COLLECT,
    HOST,
    STREAM,
    TARGET,
    WAIT,
    Upstream,
    make_runtime,
    virtual_service,
    wait_until,
)
from grpc_upstreams import service_entry as entry

from meshlib._engine.runtime import OutboundRuntime, RequestRecord, TelemetryHooks
from meshlib._identity.rotation import RotatingIdentity
from meshlib.errors import ConfigError
from meshlib.grpc import MeshChannel, MeshRpcError
from meshlib.grpc.aio import MeshAioChannel, MeshAioRpcError

pytestmark = pytest.mark.extras
UPSTREAM_TIMEOUT = "upstream request timeout"
LONG = {"count": 500, "pause": 0.02}
"""A server stream of about ten seconds."""
PER_TRY = 'retries: {attempts: 2, perTryTimeout: 0.3s, retryOn: "5xx"}'

Channel = MeshChannel | MeshAioChannel
Opener = Callable[[Any], Any]
"""``channel -> call``: the same expression opens a call on either kind of channel."""


def route(spec: str) -> str:
    return virtual_service(f"  - {spec}\n    route: [{{destination: {{host: reviews}}}}]")


class Records:
    """Finished requests as telemetry sees them."""

    def __init__(self) -> None:
        self.items: list[RequestRecord] = []
        self.lock = threading.Lock()

    def add(self, record: RequestRecord) -> None:
        with self.lock:
            self.items.append(record)


def runtime_for(
    upstreams: dict[str, Upstream],
    identity: RotatingIdentity,
    spec: str,
    records: Records | None = None,
    **kwargs: Any,
) -> OutboundRuntime:
    hooks = None if records is None else TelemetryHooks(on_request=records.add)
    text = entry([(upstreams["v1"].port, {})]) + (route(spec) if spec else "")
    return make_runtime(text, identity, hooks=hooks, **kwargs)


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def settled(runtime: OutboundRuntime, channel: Channel) -> bool:
    """Every permit back: cluster counters and the pooled channels' calls at zero."""
    target = runtime.cluster_for(runtime.snapshot(), HOST, None, 9080, "reviews")
    assert target is not None
    limiter = target.state.limiter
    in_use = sum(e.in_use for e in channel._pool._channels.values())
    return (limiter.active, limiter.pending, limiter.retries, in_use) == (0, 0, 0, 0)


async def eventually(check: Callable[[], bool]) -> bool:
    """Poll ``check`` on the event loop for at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.01)
    return False


async def settled_soon(runtime: OutboundRuntime, channel: Channel) -> bool:
    return await eventually(lambda: settled(runtime, channel))


async def collect_async(call: Any, into: list[bytes]) -> None:
    async for message in call:
        into.append(message)


async def read_async(call: Any, into: list[bytes]) -> None:
    while (message := await call.read()) is not grpc.aio.EOF:
        into.append(message)


def failure(kind: str, runtime: OutboundRuntime, open_call: Opener, *, stream: bool = True) -> Any:
    """Run one call to its error on a channel of ``kind``; every permit must come back."""
    if kind == "sync":
        with MeshChannel(runtime, TARGET) as channel:
            with pytest.raises(grpc.RpcError) as info:
                list(open_call(channel)) if stream else open_call(channel)
            assert wait_until(lambda: settled(runtime, channel))
            return info.value

    async def go() -> BaseException:
        async with MeshAioChannel(runtime, TARGET) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await (collect_async(open_call(channel), []) if stream else open_call(channel))
            assert await settled_soon(runtime, channel)
            return info.value

    return asyncio.run(go())


def messages(kind: str, runtime: OutboundRuntime, open_call: Opener) -> list[bytes]:
    """A response stream read to its OK end on a channel of ``kind``; every permit back."""
    if kind == "sync":
        with MeshChannel(runtime, TARGET) as channel:
            call = open_call(channel)
            received = list(call)
            assert call.code() == grpc.StatusCode.OK
            assert wait_until(lambda: settled(runtime, channel))
            return received

    async def go() -> list[bytes]:
        async with MeshAioChannel(runtime, TARGET) as channel:
            call = open_call(channel)
            received = [m async for m in call]
            assert await call.code() == grpc.StatusCode.OK
            assert await settled_soon(runtime, channel)
            return received

    return asyncio.run(go())


def assert_route_timeout(error: BaseException) -> None:
    assert isinstance(error, MeshRpcError | MeshAioRpcError)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() == UPSTREAM_TIMEOUT
    assert "UT" in error.flags


# ------------------------------------------------------------------- server streams


def test_server_stream_is_cut_by_the_route_timeout(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    records = Records()
    runtime = runtime_for(upstreams, client_identity, "timeout: 0.5s", records)
    received: list[bytes] = []
    if kind == "sync":
        with MeshChannel(runtime, TARGET) as channel:
            call = channel.unary_stream(STREAM)(body(**LONG), timeout=WAIT)
            with pytest.raises(grpc.RpcError) as info:
                received.extend(call)
            assert_route_timeout(info.value)
            assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert call.details() == UPSTREAM_TIMEOUT
            assert not call.cancelled()  # timed out, not cancelled by the caller
            assert call.done()
            assert not call.is_active()
            assert isinstance(call.exception(), MeshRpcError)
            assert call.traceback() is None
            with pytest.raises(MeshRpcError):
                call.result()
            assert callable(call.next)  # the rest of grpc's rendezvous, underneath
            assert wait_until(lambda: settled(runtime, channel))
    else:

        async def go() -> None:
            async with MeshAioChannel(runtime, TARGET) as channel:
                call = channel.unary_stream(STREAM)(body(**LONG), timeout=WAIT)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await collect_async(call, received)
                assert_route_timeout(info.value)
                assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert await call.details() == UPSTREAM_TIMEOUT
                assert not call.cancelled()
                assert await settled_soon(runtime, channel)

        asyncio.run(go())
    assert 0 < len(received) < LONG["count"]  # cut mid-stream, after the response started
    assert wait_until(lambda: len(records.items) == 1)
    assert records.items[0].grpc_status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "UT" in records.items[0].flags  # metrics and the access log show the cut


@pytest.mark.parametrize("spec", ["", "timeout: 10s"], ids=["no-timeout", "long-timeout"])
def test_a_stream_within_its_route_timeout_is_left_alone(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity, spec: str
) -> None:
    # Istio's default (no timeout) never cuts a stream; about 1.2 s of messages here.
    runtime = runtime_for(upstreams, client_identity, spec)
    request = body(count=60, pause=0.02)
    assert len(messages(kind, runtime, lambda c: c.unary_stream(STREAM)(request))) == 60


def test_timeout_0s_is_refused_as_istiod_does(client_identity: RotatingIdentity) -> None:
    # ValidateDuration wants >= 1ms: a streaming route omits ``timeout`` instead.
    with pytest.raises(ConfigError, match="timeout"):
        make_runtime(entry([(1, {})]) + route("timeout: 0s"), client_identity)


def test_inherited_deadline_cuts_a_stream(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # The inbound request being served has 0.5 s left; no route timeout.
    deadline = time.monotonic() + 0.5
    runtime = runtime_for(upstreams, client_identity, "", inherited_deadline=lambda: deadline)
    assert_route_timeout(failure(kind, runtime, lambda c: c.unary_stream(STREAM)(body(**LONG))))


def test_the_callers_own_deadline_stays_grpcs(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # Earlier than the route timeout: the caller sees what a plain channel raises.
    runtime = runtime_for(upstreams, client_identity, "timeout: 10s")
    error = failure(kind, runtime, lambda c: c.unary_stream(STREAM)(body(**LONG), timeout=0.5))
    assert not isinstance(error, MeshRpcError | MeshAioRpcError)  # grpc's own, passed through
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "Deadline Exceeded" in error.details()


def test_per_try_timeout_bounds_a_server_stream_until_it_starts(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # No message (hence no response headers) for 5 s: each try is cut and retried.
    runtime = runtime_for(upstreams, client_identity, PER_TRY)
    request = body(count=3, first=5)
    assert_route_timeout(failure(kind, runtime, lambda c: c.unary_stream(STREAM)(request)))
    assert upstreams["v1"].state.requests == 3


def test_per_try_timeout_ends_when_the_response_starts(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # The first message comes at once; the whole stream outlasts the per-try timeout.
    runtime = runtime_for(upstreams, client_identity, PER_TRY)
    request = body(count=40, pause=0.02)
    assert len(messages(kind, runtime, lambda c: c.unary_stream(STREAM)(request))) == 40
    assert upstreams["v1"].state.requests == 1


# ------------------------------------------------------------------- client streams


def test_bidi_chat_is_cut_by_the_route_timeout(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # After the client half-closes, the server goes on for about four seconds.
    runtime = runtime_for(upstreams, client_identity, "timeout: 0.5s")
    requests = [b"hello", b"tail:200:0.02"]
    received: list[bytes] = []
    if kind == "sync":
        with MeshChannel(runtime, TARGET) as channel:
            call = channel.stream_stream(CHAT)(iter(requests), timeout=WAIT)
            with pytest.raises(grpc.RpcError) as info:
                received.extend(call)
            assert_route_timeout(info.value)
            assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert wait_until(lambda: settled(runtime, channel))
    else:

        async def go() -> None:
            async with MeshAioChannel(runtime, TARGET) as channel:
                chat = channel.stream_stream(CHAT)(timeout=WAIT)
                for request in requests:
                    await chat.write(request)
                await chat.done_writing()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await read_async(chat, received)
                assert_route_timeout(info.value)
                assert await chat.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                with pytest.raises(grpc.aio.AioRpcError):
                    await chat.write(b"late")
                assert await settled_soon(runtime, channel)

        asyncio.run(go())
    assert received[0].endswith(b":hello")
    assert 1 < len(received) < 201


def test_route_timeout_starts_when_the_request_stream_ends(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # The client talks for about 0.8 s, longer than the route timeout, then half-closes; the
    # server's answer ends with the requests. Envoy's timer had not started: no cut.
    runtime = runtime_for(upstreams, client_identity, "timeout: 0.5s")
    words = [b"%d" % n for n in range(8)]

    def slowly() -> Iterator[bytes]:
        for word in words:
            time.sleep(0.1)
            yield word

    async def slowly_async() -> AsyncIterator[bytes]:
        for word in words:
            await asyncio.sleep(0.1)
            yield word

    requests = slowly if kind == "sync" else slowly_async
    answers = messages(kind, runtime, lambda c: c.stream_stream(CHAT)(requests()))
    assert [m.split(b":")[1] for m in answers] == words


def test_client_stream_is_cut_by_the_route_timeout(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # The server answers five seconds after the request stream ended.
    runtime = runtime_for(upstreams, client_identity, "timeout: 0.5s")
    requests = [b"a", b"sleep:5"]

    def collect(channel: Any) -> Any:
        return channel.stream_unary(COLLECT)(iter(requests), timeout=WAIT)

    assert_route_timeout(failure(kind, runtime, collect, stream=False))
    if kind == "sync":
        with MeshChannel(runtime, TARGET) as channel:
            future = channel.stream_unary(COLLECT).future(iter(requests), timeout=WAIT)
            assert_route_timeout(future.exception(WAIT))
            assert wait_until(lambda: settled(runtime, channel))


def test_per_try_timeout_bounds_a_chat_until_its_first_answer(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # Nothing comes back for five seconds after the half-close; a chat is never retried.
    runtime = runtime_for(upstreams, client_identity, PER_TRY)
    chat = failure(kind, runtime, lambda c: c.stream_stream(CHAT)(iter([b"tail:3:5"])))
    assert_route_timeout(chat)
    assert upstreams["v1"].state.requests == 1


def test_a_chat_that_answered_runs_past_its_per_try_timeout(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # The first answer comes at once, the rest over about a second: only the route timeout
    # (five seconds) bounds the chat once it has answered.
    runtime = runtime_for(upstreams, client_identity, "timeout: 5s\n    " + PER_TRY)
    requests = [b"hello", b"tail:20:0.05"]
    assert len(messages(kind, runtime, lambda c: c.stream_stream(CHAT)(iter(requests)))) == 21


def test_cancelling_before_the_response_starts_stops_the_upstream_call(
    upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    # grpc.aio: the task waiting for response headers is cancelled; the upstream RPC must not
    # run on to its end (five seconds) with nobody reading it.
    runtime = runtime_for(upstreams, client_identity, PER_TRY.replace("0.3s", "9s"))
    state = upstreams["v1"].state

    async def go() -> None:
        async with MeshAioChannel(runtime, TARGET) as channel:
            call = channel.unary_stream(STREAM)(body(count=3, first=5), timeout=WAIT)
            assert await eventually(lambda: state.requests == 1)  # waiting for headers
            assert call.cancel()
            assert await call.code() == grpc.StatusCode.CANCELLED
            assert await settled_soon(runtime, channel)

    asyncio.run(go())
    assert wait_until(lambda: state.abandoned == 1)
