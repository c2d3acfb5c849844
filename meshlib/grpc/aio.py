"""The grpc.aio twins: a mesh ``grpc.aio.Channel`` and the async server interceptor.

``channel = mesh.grpc_aio_channel("ratings:9090")``; ``await stub.Get(request)``. Each call runs
the outbound flow on the event loop; attempts go out on pooled grpc.aio channels per endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import grpc
import grpc.aio

from meshlib._engine.outbound import Fail, WaitSlot, outbound_flow
from meshlib._engine.runtime import OutboundRuntime
from meshlib._identity.rotation import RotatingIdentity
from meshlib._model.call import Call
from meshlib._model.commands import Attempt, Deliver, Reply, Send, Sleep
from meshlib._model.outcome import FailureKind, Outcome
from meshlib.grpc._common import (
    ChannelPool,
    Metadata,
    PooledChannel,
    StreamDeadline,
    build_call,
    error_for_fail,
    outcome_of_status,
    parse_target,
    reply_code,
    upstream_metadata,
)
from meshlib.grpc._server import AioMeshServerInterceptor

__all__ = ["AioMeshServerInterceptor", "MeshAioChannel", "MeshAioRpcError"]

_OK = Outcome(status=200, grpc_status=0)
_STARTED = Outcome(status=200)
_WAIT_TIMED_OUT = Outcome(failure=FailureKind.TIMEOUT, detail="waiting for a connection")
_CANCELLED: int = grpc.StatusCode.CANCELLED.value[0]
_REPORTS: set[asyncio.Future[None]] = set()


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


def _aio_error(error: BaseException) -> BaseException:
    code_of = getattr(error, "code", None)
    if isinstance(error, grpc.aio.AioRpcError) or code_of is None:
        return error
    return MeshAioRpcError(
        code_of(),
        error.details(),  # type: ignore[attr-defined]
        error.trailing_metadata(),  # type: ignore[attr-defined]
        getattr(error, "flags", ()),
        getattr(error, "attempts", 0),
    )


def _aio_channel(address: str, credentials: Any, options: list[tuple[str, Any]]) -> Any:
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, credentials, options=options)


async def _wait_slot(command: WaitSlot) -> Outcome | None:
    cluster = command.cluster
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not future.done():
            future.set_result(None)

    def wake() -> None:
        loop.call_soon_threadsafe(settle)  # a sync client on another thread may hand it over

    waiter = cluster.wait_for_slot(wake)
    if waiter.admitted:
        return None
    try:
        async with asyncio.timeout(command.timeout):
            await future
    except TimeoutError:
        if cluster.cancel_wait(waiter):
            return _WAIT_TIMED_OUT
        return None
    except BaseException:
        if not cluster.cancel_wait(waiter):
            cluster.release()  # handed a slot meanwhile; the flow never learnt it held one
        raise
    return None


class MeshAioChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A ``grpc.aio.Channel`` routed through the mesh (one event loop, like grpc.aio's own)."""

    def __init__(
        self,
        runtime: OutboundRuntime,
        target: str,
        *,
        identity: RotatingIdentity | None = None,
        options: Any = None,
    ) -> None:
        self.runtime = runtime
        self.target = parse_target(target)
        if identity is None and isinstance(runtime.identity, RotatingIdentity):
            identity = runtime.identity
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool = ChannelPool(_aio_channel, self._close_later, identity, options)

    def _close_later(self, channel: Any) -> None:
        # Rotation is heard on the identity source's thread; grpc.aio closes on its loop.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(lambda: loop.create_task(channel.close()))

    # --- grpc.aio.Channel -------------------------------------------------------------------

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _Multi(self, "unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _Multi(self, "unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _Multi(self, "stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return _Multi(self, "stream_stream", method, request_serializer, response_deserializer)

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

    @property
    def open_channels(self) -> int:
        return self._pool.open_channels


class _Multi:
    """One multicallable of any cardinality; ``__call__`` returns a :class:`_MeshCall`."""

    __slots__ = ("_channel", "_deserializer", "_kind", "_method", "_serializer")

    def __init__(self, channel: MeshAioChannel, kind: str, method: str, ser: Any, de: Any) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._serializer = ser
        self._deserializer = de

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
        channel = self._channel
        if channel._loop is None:
            channel._loop = asyncio.get_running_loop()
        pairs = tuple(metadata) if metadata is not None else None
        client_streaming = self._kind.startswith("stream_")
        call = build_call(channel.target, self._method, pairs, replayable=not client_streaming)
        mesh_call = _MeshCall()
        mesh_call._setup = asyncio.ensure_future(
            self._drive(mesh_call, call, request, timeout, pairs, wait_for_ready, compression)
        )
        return mesh_call

    def _inner(self, entry: PooledChannel, attempt: Attempt) -> Any:
        path = attempt.path or self._method
        kind = self._kind
        ser, de = self._serializer, self._deserializer

        def make(channel: Any) -> Any:
            return getattr(channel, kind)(path, request_serializer=ser, response_deserializer=de)

        return entry.callable(self, path, make)

    async def _attempt(
        self,
        attempt: Attempt,
        entry: PooledChannel,
        request: Any,
        metadata: Metadata | None,
        wait_for_ready: bool | None,
        compression: Any,
        stream_deadline: StreamDeadline,
    ) -> tuple[Outcome, Any]:
        inner = self._inner(entry, attempt)
        md = grpc.aio.Metadata(*upstream_metadata(metadata, attempt))
        kind = self._kind
        # Streams run under the caller's own deadline: the route and per-try timeouts would
        # cut a long stream that is working (they bound unary calls only).
        rpc = inner(
            request,
            timeout=attempt.timeout if kind == "unary_unary" else stream_deadline.remaining(),
            metadata=md,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        if kind == "unary_unary":
            try:
                await rpc
            except grpc.aio.AioRpcError as error:
                return outcome_of_status(error.code(), error.details() or ""), rpc
            return _STARTED, rpc
        if kind == "unary_stream":
            # Response headers commit the call: until then a failure may be retried.
            await rpc.initial_metadata()
            if rpc.done():
                code = await rpc.code()
                if code is not grpc.StatusCode.OK:
                    return outcome_of_status(code, await rpc.details() or ""), rpc
        # Client streams are delivered at once: their server may answer only after requests.
        return _STARTED, rpc

    async def _drive(
        self,
        mesh_call: _MeshCall,
        call: Call,
        request: Any,
        timeout: float | None,  # noqa: ASYNC109 - grpc's own parameter, given to the flow
        metadata: Metadata | None,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> Any:
        channel = self._channel
        runtime = channel.runtime
        pool = channel._pool
        inherited = runtime.inherited_deadline
        flow = outbound_flow(
            call,
            runtime,
            caller_timeout=timeout,
            inherited_deadline=inherited() if inherited is not None else None,
        )
        pending: tuple[Any, PooledChannel] | None = None
        last: BaseException | None = None
        attempts = 0
        sleep = runtime.async_sleep or asyncio.sleep
        stream_deadline = StreamDeadline(timeout)
        try:
            command = next(flow)
            while True:
                if pending is not None and not isinstance(command, Deliver):
                    _discard(pool, pending)
                    pending = None
                if isinstance(command, Send):
                    attempts += 1
                    attempt = command.attempt
                    entry = pool.acquire(attempt, attempt.authority or channel.target.authority)
                    try:
                        outcome, rpc = await self._attempt(
                            attempt,
                            entry,
                            request,
                            metadata,
                            wait_for_ready,
                            compression,
                            stream_deadline,
                        )
                    except BaseException:
                        pool.release(entry)
                        raise
                    pending = (rpc, entry)
                    last = None if outcome is _STARTED else _RpcFailure(rpc)
                    command = flow.send(outcome)
                elif isinstance(command, Deliver):
                    assert pending is not None
                    rpc, entry = pending
                    pending = None
                    return self._deliver(rpc, entry, command)
                elif isinstance(command, Reply):
                    raise MeshAioRpcError(
                        reply_code(command), command.body, command.headers, command.flags, attempts
                    )
                elif isinstance(command, Sleep):
                    await sleep(command.seconds)  # type: ignore[misc]
                    command = flow.send(None)
                elif isinstance(command, WaitSlot):
                    command = flow.send(await _wait_slot(command))
                else:
                    assert isinstance(command, Fail)
                    raise _aio_error(error_for_fail(command, last, attempts))
        finally:
            if pending is not None:
                _discard(pool, pending)
            flow.close()

    def _deliver(self, rpc: Any, entry: PooledChannel, command: Deliver) -> Any:
        pool = self._channel._pool
        if self._kind == "unary_unary":
            pool.release(entry)
            command.complete(_OK if command.outcome.grpc_status is None else command.outcome)
            return rpc
        finished = [False]

        def finish(done: Any) -> None:
            if finished[0]:
                return
            finished[0] = True
            pool.release(entry)
            if done.cancelled():
                command.complete(Outcome(status=200, grpc_status=_CANCELLED))
                return

            async def report() -> None:
                code = await done.code()
                command.complete(Outcome(status=200, grpc_status=code.value[0]))

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


def _discard(pool: ChannelPool, pending: tuple[Any, PooledChannel]) -> None:
    rpc, entry = pending
    try:
        rpc.cancel()  # not delivered: stop it before its channel may close
    finally:
        pool.release(entry)


class _MeshCall:
    """What a mesh multicallable returns: awaitable (unary response), async-iterable (response
    stream), ``write``/``done_writing`` (request stream) and the ``grpc.aio.Call`` methods."""

    __slots__ = ("_setup",)

    def __init__(self) -> None:
        self._setup: asyncio.Future[Any]

    async def _rpc(self) -> Any:
        try:
            return await self._setup
        except _RpcFailure as failure:  # outside the mesh: the upstream call's own error
            return failure.rpc

    def __await__(self) -> Generator[Any, None, Any]:
        rpc = yield from self._rpc().__await__()
        return (yield from rpc.__await__())

    async def _iterate(self) -> AsyncIterator[Any]:
        rpc = await self._rpc()
        async for message in rpc:
            yield message

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def read(self) -> Any:
        return await (await self._rpc()).read()

    async def write(self, request: Any) -> None:
        await (await self._rpc()).write(request)

    async def done_writing(self) -> None:
        await (await self._rpc()).done_writing()

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
        if not setup.done() or setup.exception() is not None:
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
