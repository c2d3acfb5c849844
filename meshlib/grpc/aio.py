"""The grpc.aio twins: a mesh ``grpc.aio.Channel`` and the async server interceptor.

``channel = mesh.grpc_aio_channel("ratings:9090")``; ``await stub.Get(request)``. Each call runs
the outbound flow on the event loop; attempts go out on pooled grpc.aio channels per endpoint.
Everything without I/O lives in ``_common``; this file awaits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator, Iterable
from typing import Any

import grpc
import grpc.aio

from meshlib._engine.outbound import WaitSlot
from meshlib._engine.runtime import OutboundRuntime
from meshlib._identity.rotation import RotatingIdentity
from meshlib._model.commands import Attempt, Deliver, Send, Sleep
from meshlib._model.outcome import Outcome
from meshlib._slots import wait_slot_async
from meshlib.grpc._common import (
    STARTED,
    TIMED_OUT,
    ChannelCore,
    Drive,
    Metadata,
    MultiCallable,
    PooledChannel,
    StreamEnd,
    StreamGuard,
    complete_unary,
    outcome_of_status,
    route_timeout_error,
)
from meshlib.grpc._server import AioMeshServerInterceptor

__all__ = ["AioMeshServerInterceptor", "MeshAioChannel", "MeshAioRpcError"]

_REPORTS: set[asyncio.Future[None]] = set()

Result = tuple[Outcome, Any, BaseException | None]
"""What an attempt gives the flow: its outcome, the call to deliver, the failure marker."""


class MeshAioRpcError(grpc.aio.AioRpcError):  # type: ignore[misc]
    """A local reply of the mesh (fault abort, overflow, no route...) as grpc.aio raises it;
    ``flags`` holds Envoy's response flags."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: Any = (),
        flags: tuple[str, ...] = (),
        attempts: int = 0,
    ) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details, None)
        self.flags = flags
        self.attempts = attempts


def _aio_channel(address: str, credentials: Any, options: list[tuple[str, Any]]) -> Any:
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, credentials, options=options)


class MeshAioChannel(ChannelCore, grpc.aio.Channel):  # type: ignore[misc]
    """A ``grpc.aio.Channel`` routed through the mesh (one event loop, like grpc.aio's own)."""

    def __init__(
        self,
        runtime: OutboundRuntime,
        target: str,
        *,
        identity: RotatingIdentity | None = None,
        options: Any = None,
    ) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._setup(runtime, target, identity, _aio_channel, self._close_later, options)

    def _close_later(self, channel: Any) -> None:
        # Rotation is heard on the identity source's thread; grpc.aio closes on its loop.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(lambda: loop.create_task(channel.close()))

    def _multicallable(self, kind: str, method: str, serializer: Any, deserializer: Any) -> Any:
        return _Multi(self, kind, method, serializer, deserializer)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        # Connectivity belongs to the per-endpoint channels; the mesh channel is always ready.
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: Any) -> None:
        await asyncio.Event().wait()  # READY never changes: wait until cancelled

    async def channel_ready(self) -> None:
        return None

    async def close(self, grace: float | None = None) -> None:
        channels = self._pool.close()
        for channel in channels:
            await channel.close(grace)

    async def __aenter__(self) -> MeshAioChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)


class _AioDrive(Drive):
    __slots__ = ()
    error_type = MeshAioRpcError
    metadata_type = grpc.aio.Metadata


class _Multi(MultiCallable):
    """One multicallable of any cardinality; ``__call__`` returns a :class:`_MeshCall`."""

    __slots__ = ()

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _MeshCall:
        channel: MeshAioChannel = self._channel  # type: ignore[assignment]
        loop = channel._loop
        if loop is None:
            loop = channel._loop = asyncio.get_running_loop()
        pairs = tuple(metadata) if metadata is not None else None
        kind = self._kind
        schedule = None if kind == "unary_unary" else loop.call_at
        drive = _AioDrive(self, request, timeout, pairs, wait_for_ready, compression, schedule)
        return _MeshCall(drive, asyncio.ensure_future(_drive(drive, _SENDS[kind])))


# ------------------------------------------------------------------------- the driver loop


async def _drive(drive: _AioDrive, send: SendFn) -> Any:
    flow = drive.flow
    sleep = drive.multi._channel.runtime.async_sleep or asyncio.sleep
    try:
        command = next(flow)
        while True:
            if type(command) is Send:
                attempt = command.attempt
                command = drive.sent(*await send(drive, attempt, drive.acquire(attempt)))
            elif type(command) is Sleep:
                await sleep(command.seconds)  # type: ignore[misc]
                command = flow.send(None)
            elif type(command) is WaitSlot:
                drive.routed()
                command = flow.send(await wait_slot_async(command))
            else:
                return _deliver(drive, drive.finish(command))
    finally:
        drive.close()


def _deliver(drive: _AioDrive, command: Deliver) -> Any:
    rpc = drive.value
    entry, guard = drive.delivered()
    pool = drive.multi._channel._pool
    if drive.multi._kind == "unary_unary":
        pool.release(entry)
        complete_unary(command)
        return rpc
    end = StreamEnd(pool, entry, command, guard)

    def finish(done: Any) -> None:
        if done.cancelled():
            end(grpc.StatusCode.CANCELLED)  # DEADLINE_EXCEEDED if the guard cancelled it
            return

        async def report() -> None:
            end(await done.code())

        task = asyncio.ensure_future(report())
        _REPORTS.add(task)  # a task only weakly referenced may be collected mid-way
        task.add_done_callback(_REPORTS.discard)

    if rpc.done():
        finish(rpc)
    else:
        rpc.add_done_callback(finish)
    return rpc


class _RpcFailure(Exception):
    """Marks that the last attempt's own grpc error is what the caller should see."""

    def __init__(self, rpc: Any) -> None:
        super().__init__("upstream call failed")
        self.rpc = rpc


# ------------------------------------------------------------------------- one attempt


async def _send_unary(drive: _AioDrive, attempt: Attempt, entry: PooledChannel) -> Result:
    rpc = drive.start(drive.multi.inner(entry, attempt), attempt, drive.request, attempt.timeout)
    try:
        await rpc
    except grpc.aio.AioRpcError as error:
        return outcome_of_status(error.code(), error.details() or ""), rpc, _RpcFailure(rpc)
    return STARTED, rpc, None


async def _send_server_stream(drive: _AioDrive, attempt: Attempt, entry: PooledChannel) -> Result:
    inner = drive.multi.inner(entry, attempt)
    rpc = drive.start(inner, attempt, drive.request, drive.caller_remaining())
    guard = drive.guard
    if guard is not None:
        guard.attempt(rpc.cancel, attempt.timeout)
    # Response headers commit the call: until then a failure may be retried.
    await rpc.initial_metadata()
    if guard is not None:
        guard.response_started()
    if rpc.done():
        code = await rpc.code()
        if code is not grpc.StatusCode.OK:
            if guard is not None and guard.cut:
                return TIMED_OUT, rpc, _RpcFailure(rpc)
            return outcome_of_status(code, await rpc.details() or ""), rpc, _RpcFailure(rpc)
    return STARTED, rpc, None


async def _send_client_stream(drive: _AioDrive, attempt: Attempt, entry: PooledChannel) -> Result:
    # Client streams are delivered at once: their server may answer only after requests.
    guard = drive.guard
    requests = drive.request
    if guard is not None and requests is not None:
        requests = _requests(requests, guard)
    inner = drive.multi.inner(entry, attempt)
    rpc = drive.start(inner, attempt, requests, drive.caller_remaining())
    if guard is not None:
        guard.attempt(rpc.cancel)
    return STARTED, rpc, None


async def _requests(
    requests: AsyncIterable[Any] | Iterable[Any], guard: StreamGuard
) -> AsyncIterator[Any]:
    # grpc.aio takes either kind of request iterator; the guard learns when it ends.
    if isinstance(requests, AsyncIterable):
        async for message in requests:
            yield message
    else:
        for message in requests:
            yield message
    guard.request_ended()


SendFn = Callable[[_AioDrive, Attempt, PooledChannel], Awaitable[Result]]
_SENDS: dict[str, SendFn] = {
    "unary_unary": _send_unary,
    "unary_stream": _send_server_stream,
    "stream_unary": _send_client_stream,
    "stream_stream": _send_client_stream,
}


# ------------------------------------------------------------------- what callers hold


class _MeshCall:
    """What a mesh multicallable returns: awaitable (unary response), async-iterable (response
    stream), ``write``/``done_writing`` (request stream) and the ``grpc.aio.Call`` methods.

    A stream the guard cut reads as DEADLINE_EXCEEDED ``upstream request timeout`` instead of
    the cancellation that stopped it.
    """

    __slots__ = ("_drive", "_guard", "_setup")

    def __init__(self, drive: _AioDrive, setup: asyncio.Future[Any]) -> None:
        self._drive = drive
        self._guard = drive.guard
        self._setup = setup

    async def _rpc(self) -> Any:
        try:
            return await self._setup
        except _RpcFailure as failure:  # outside the mesh: the upstream call's own error
            return failure.rpc

    def _cut(self) -> MeshAioRpcError | None:
        guard = self._guard
        if guard is not None and guard.cut:
            return route_timeout_error(MeshAioRpcError, self._drive.attempts)
        return None

    async def _guarded(self, operation: Awaitable[Any]) -> Any:
        try:
            return await operation
        except (asyncio.CancelledError, asyncio.InvalidStateError):
            cut = self._cut()
            if cut is None:
                raise
            raise cut from None

    def __await__(self) -> Generator[Any, None, Any]:
        rpc = yield from self._rpc().__await__()
        if self._guard is None:
            return (yield from rpc.__await__())
        return (yield from self._guarded(rpc).__await__())

    async def _iterate(self) -> AsyncIterator[Any]:
        rpc = await self._rpc()
        guard = self._guard
        if guard is None:
            async for message in rpc:
                yield message
            return
        while True:
            message = await self._guarded(rpc.read())
            if message is grpc.aio.EOF:
                return
            guard.response_started()
            yield message

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def read(self) -> Any:
        message = await self._guarded((await self._rpc()).read())
        guard = self._guard
        if guard is not None and message is not grpc.aio.EOF:
            guard.response_started()
        return message

    async def write(self, request: Any) -> None:
        await self._guarded((await self._rpc()).write(request))

    async def done_writing(self) -> None:
        await self._guarded((await self._rpc()).done_writing())
        guard = self._guard
        if guard is not None:
            guard.request_ended()

    async def wait_for_connection(self) -> None:
        await (await self._rpc()).wait_for_connection()

    async def _status(self, what: str) -> Any:
        try:
            rpc = await self._rpc()
        except grpc.aio.AioRpcError as error:
            return getattr(error, what)()
        except asyncio.CancelledError:
            if what == "code":
                return grpc.StatusCode.CANCELLED
            return "Locally cancelled by application!" if what == "details" else None
        cut = self._cut()
        if cut is not None and what in ("code", "details"):
            return getattr(cut, what)()
        return await getattr(rpc, what)()

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._status("code")
        return code

    async def details(self) -> str:
        details: str = await self._status("details")
        return details

    async def initial_metadata(self) -> Any:
        return await self._status("initial_metadata")

    async def trailing_metadata(self) -> Any:
        return await self._status("trailing_metadata")

    def cancel(self) -> bool:
        setup = self._setup
        if not setup.done():
            return setup.cancel()
        if setup.cancelled() or setup.exception() is not None:
            return False
        cancelled: bool = setup.result().cancel()
        return cancelled

    def cancelled(self) -> bool:
        setup = self._setup
        if setup.cancelled():
            return True
        if not setup.done() or setup.exception() is not None or self._cut() is not None:
            return False
        return bool(setup.result().cancelled())

    def done(self) -> bool:
        setup = self._setup
        if not setup.done():
            return False
        if setup.cancelled() or setup.exception() is not None:
            return True
        return bool(setup.result().done())

    def time_remaining(self) -> float | None:
        setup = self._setup
        if setup.done() and not setup.cancelled() and setup.exception() is None:
            remaining: float | None = setup.result().time_remaining()
            return remaining
        return None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        def after_setup(setup: asyncio.Future[Any]) -> None:
            if setup.cancelled() or setup.exception() is not None:
                callback(self)
            else:
                setup.result().add_done_callback(lambda _: callback(self))

        self._setup.add_done_callback(after_setup)
