"""The sync gRPC driver: a ``grpc.Channel`` whose multicallables run the outbound flow per call.

grpc client interceptors cannot choose the channel per call, so the mesh channel hands out its
own multicallables; each attempt goes out on a pooled channel to the endpoint the flow picked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc

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
    error_for_reply,
    outcome_of_error,
    parse_target,
    upstream_metadata,
)

__all__ = ["DEFAULT_FUTURE_WORKERS", "MeshChannel"]

DEFAULT_FUTURE_WORKERS = 32
"""Threads running ``.future()`` calls (each waits on its own RPC)."""
_OK = Outcome(status=200, grpc_status=0)
_STARTED = Outcome(status=200)
_WAIT_TIMED_OUT = Outcome(failure=FailureKind.TIMEOUT, detail="waiting for a connection")

# What a Send leaves for the next command: the attempt's result and its pooled channel.
# kind "unary": (response, call) or error; kind "stream": the rendezvous.
Pending = tuple[Any, BaseException | None, PooledChannel]
AttemptFn = Callable[[Attempt, PooledChannel], tuple[Outcome, Any, BaseException | None]]


def _sync_channel(address: str, credentials: Any, options: list[tuple[str, Any]]) -> Any:
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)


def _close_channel(channel: Any) -> None:
    channel.close()


def _wait_slot(command: WaitSlot) -> Outcome | None:
    cluster = command.cluster
    event = threading.Event()
    waiter = cluster.wait_for_slot(event.set)
    if waiter.admitted:
        return None
    try:
        woken = event.wait(command.timeout)
    except BaseException:
        if not cluster.cancel_wait(waiter):
            cluster.release()  # handed a slot meanwhile; the flow never learnt it held one
        raise
    if woken or not cluster.cancel_wait(waiter):
        return None
    return _WAIT_TIMED_OUT


class MeshChannel(grpc.Channel):  # type: ignore[misc]
    """A ``grpc.Channel`` routed through the mesh: ``stub = pb2_grpc.RatingsStub(channel)``.

    ``target`` is the logical service (``ratings:9090``); VirtualService routing, load balancing
    per call, retries, deadlines, limits, outlier detection and faults apply to every call.
    ``options`` go to every per-endpoint grpc channel. Thread-safe.
    """

    def __init__(
        self,
        runtime: OutboundRuntime,
        target: str,
        *,
        identity: RotatingIdentity | None = None,
        options: Any = None,
        future_workers: int = DEFAULT_FUTURE_WORKERS,
    ) -> None:
        self.runtime = runtime
        self.target = parse_target(target)
        if identity is None and isinstance(runtime.identity, RotatingIdentity):
            identity = runtime.identity
        self._pool = ChannelPool(_sync_channel, _close_channel, identity, options)
        self._future_workers = future_workers
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    # --- grpc.Channel ----------------------------------------------------------------------

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryUnaryMultiCallable:
        return _UnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.UnaryStreamMultiCallable:
        return _UnaryStream(self, method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamUnaryMultiCallable:
        return _StreamUnary(self, method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> grpc.StreamStreamMultiCallable:
        return _StreamStream(self, method, request_serializer, response_deserializer)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        # Connectivity belongs to the per-endpoint channels; the mesh channel is always ready.
        callback(grpc.ChannelConnectivity.READY)

    def unsubscribe(self, callback: Any) -> None:
        return None

    def close(self) -> None:
        for channel in self._pool.close():
            channel.close()
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> MeshChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def open_channels(self) -> int:
        """Per-endpoint grpc channels currently pooled (tests and debugging)."""
        return self._pool.open_channels

    def _submit(self, fn: Callable[[], Any]) -> Future[Any]:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._future_workers, thread_name_prefix="meshlib-grpc"
                )
            return self._executor.submit(fn)

    # --- the driver loop --------------------------------------------------------------------

    def _drive(
        self,
        call: Call,
        timeout: float | None,
        attempt_fn: AttemptFn,
        deliver: Callable[[Any, BaseException | None, PooledChannel, Deliver], Any],
    ) -> Any:
        runtime = self.runtime
        inherited = runtime.inherited_deadline
        flow = outbound_flow(
            call,
            runtime,
            caller_timeout=timeout,
            inherited_deadline=inherited() if inherited is not None else None,
        )
        pending: Pending | None = None
        error: BaseException | None = None
        attempts = 0
        pool = self._pool
        try:
            command = next(flow)
            while True:
                if pending is not None and not isinstance(command, Deliver):
                    _discard(pool, pending)
                    pending = None
                if isinstance(command, Send):
                    attempts += 1
                    entry = pool.acquire(command.attempt, self._authority(command.attempt))
                    try:
                        outcome, value, error = attempt_fn(command.attempt, entry)
                    except BaseException:
                        pool.release(entry)
                        raise
                    pending = (value, error, entry)
                    command = flow.send(outcome)
                elif isinstance(command, Deliver):
                    assert pending is not None
                    value, failed, entry = pending
                    pending = None
                    return deliver(value, failed, entry, command)
                elif isinstance(command, Reply):
                    raise error_for_reply(command, attempts)
                elif isinstance(command, Sleep):
                    runtime.sleep(command.seconds)
                    command = flow.send(None)
                elif isinstance(command, WaitSlot):
                    command = flow.send(_wait_slot(command))
                else:
                    assert isinstance(command, Fail)
                    raise error_for_fail(command, error, attempts)
        finally:
            if pending is not None:
                _discard(pool, pending)
            flow.close()

    def _authority(self, attempt: Attempt) -> str:
        return attempt.authority or self.target.authority


def _discard(pool: ChannelPool, pending: Pending) -> None:
    value, _, entry = pending
    try:
        cancel = getattr(value, "cancel", None)
        if cancel is not None:
            cancel()  # a stream not delivered: stop it before its channel may close
    finally:
        pool.release(entry)


class _Holder:
    """The RPC in flight for a ``.future()`` call, so that ``cancel`` can reach it."""

    __slots__ = ("cancelled", "current", "lock")

    def __init__(self) -> None:
        self.current: Any = None
        self.cancelled = False
        self.lock = threading.Lock()


class _Multi:
    __slots__ = ("_channel", "_deserializer", "_kind", "_method", "_serializer")

    _KIND = ""

    def __init__(
        self, channel: MeshChannel, method: str, serializer: Any, deserializer: Any
    ) -> None:
        self._channel = channel
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer

    def _inner(self, entry: PooledChannel, attempt: Attempt) -> Any:
        path = attempt.path or self._method
        kind = self._KIND
        serializer, deserializer = self._serializer, self._deserializer

        def make(channel: Any) -> Any:
            factory = getattr(channel, kind)
            return factory(path, request_serializer=serializer, response_deserializer=deserializer)

        return entry.callable(self, path, make)

    def _call(self, metadata: Metadata | None, replayable: bool) -> Call:
        return build_call(self._channel.target, self._method, metadata, replayable=replayable)


def _unary_deliver(
    pool: ChannelPool,
) -> Callable[[Any, BaseException | None, PooledChannel, Deliver], Any]:
    def deliver(value: Any, error: BaseException | None, entry: PooledChannel, cmd: Deliver) -> Any:
        pool.release(entry)
        if error is not None:
            cmd.complete(cmd.outcome)
            raise error
        cmd.complete(_OK)
        return value

    return deliver


class _UnaryUnary(_Multi, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    _KIND = "unary_unary"

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        # Without the Call object grpc skips building a rendezvous: the common path is cheaper.
        response, _ = self._run(
            request, timeout, metadata, wait_for_ready, compression, None, False
        )
        return response

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> tuple[Any, grpc.Call]:
        return self._run(request, timeout, metadata, wait_for_ready, compression, None, True)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        holder = _Holder()
        inner = self._channel._submit(
            lambda: self._run(request, timeout, metadata, wait_for_ready, compression, holder, True)
        )
        return _FutureCall(inner, holder)

    def _run(
        self,
        request: Any,
        timeout: float | None,
        metadata: Metadata | None,
        wait_for_ready: bool | None,
        compression: Any,
        holder: _Holder | None,
        want_call: bool,
    ) -> tuple[Any, grpc.Call]:
        call = self._call(metadata, True)

        def attempt_fn(
            attempt: Attempt, entry: PooledChannel
        ) -> tuple[Outcome, Any, BaseException | None]:
            inner = self._inner(entry, attempt)
            md = upstream_metadata(metadata, attempt)
            try:
                if not want_call:
                    result = (
                        inner(
                            request,
                            timeout=attempt.timeout,
                            metadata=md,
                            wait_for_ready=wait_for_ready,
                            compression=compression,
                        ),
                        None,
                    )
                elif holder is None:
                    result = inner.with_call(
                        request,
                        timeout=attempt.timeout,
                        metadata=md,
                        wait_for_ready=wait_for_ready,
                        compression=compression,
                    )
                else:
                    future = inner.future(
                        request,
                        timeout=attempt.timeout,
                        metadata=md,
                        wait_for_ready=wait_for_ready,
                        compression=compression,
                    )
                    with holder.lock:
                        holder.current = future
                        if holder.cancelled:
                            future.cancel()
                    result = (future.result(), future)
            except grpc.RpcError as error:
                return outcome_of_error(error), None, error
            return _STARTED, result, None

        result: tuple[Any, grpc.Call] = self._channel._drive(
            call, timeout, attempt_fn, _unary_deliver(self._channel._pool)
        )
        return result


class _StreamUnary(_Multi, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    _KIND = "stream_unary"

    def __call__(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        response, _ = self.with_call(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )
        return response

    def with_call(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> tuple[Any, grpc.Call]:
        return self._run(request_iterator, timeout, metadata, wait_for_ready, compression, None)

    def future(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        holder = _Holder()
        inner = self._channel._submit(
            lambda: self._run(
                request_iterator, timeout, metadata, wait_for_ready, compression, holder
            )
        )
        return _FutureCall(inner, holder)

    def _run(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None,
        metadata: Metadata | None,
        wait_for_ready: bool | None,
        compression: Any,
        holder: _Holder | None,
    ) -> tuple[Any, grpc.Call]:
        # A request stream is consumed by its first attempt: never replayed.
        call = self._call(metadata, False)
        stream_deadline = StreamDeadline(timeout)

        def attempt_fn(
            attempt: Attempt, entry: PooledChannel
        ) -> tuple[Outcome, Any, BaseException | None]:
            inner = self._inner(entry, attempt)
            md = upstream_metadata(metadata, attempt)
            try:
                future = inner.future(
                    request_iterator,
                    timeout=stream_deadline.remaining(),
                    metadata=md,
                    wait_for_ready=wait_for_ready,
                    compression=compression,
                )
                if holder is not None:
                    with holder.lock:
                        holder.current = future
                        if holder.cancelled:
                            future.cancel()
                result = (future.result(), future)
            except grpc.RpcError as error:
                return outcome_of_error(error), None, error
            return _STARTED, result, None

        result: tuple[Any, grpc.Call] = self._channel._drive(
            call, timeout, attempt_fn, _unary_deliver(self._channel._pool)
        )
        return result


def _stream_deliver(
    pool: ChannelPool,
) -> Callable[[Any, BaseException | None, PooledChannel, Deliver], Any]:
    def deliver(value: Any, error: BaseException | None, entry: PooledChannel, cmd: Deliver) -> Any:
        rendezvous = value
        done = threading.Lock()
        finished = [False]

        def finish() -> None:
            with done:
                if finished[0]:
                    return
                finished[0] = True
            try:
                pool.release(entry)
            finally:
                code = rendezvous.code()
                cmd.complete(Outcome(status=200, grpc_status=code.value[0]))

        if not rendezvous.add_callback(finish):
            finish()  # already over (a trailers-only answer the flow did not retry)
        return rendezvous

    return deliver


def _stream_attempt(
    multi: _Multi,
    request: Any,
    metadata: Metadata | None,
    wait_for_ready: bool | None,
    compression: Any,
    *,
    wait_headers: bool,
    timeout: float | None,
) -> AttemptFn:
    stream_deadline = StreamDeadline(timeout)

    def attempt_fn(
        attempt: Attempt, entry: PooledChannel
    ) -> tuple[Outcome, Any, BaseException | None]:
        inner = multi._inner(entry, attempt)
        rendezvous = inner(
            request,
            timeout=stream_deadline.remaining(),
            metadata=upstream_metadata(metadata, attempt),
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        if not wait_headers:
            return _STARTED, rendezvous, None
        # Response headers commit the call: until then a failure may be retried.
        rendezvous.initial_metadata()
        if rendezvous.done() and rendezvous.code() is not grpc.StatusCode.OK:
            return outcome_of_error(rendezvous), rendezvous, rendezvous
        return _STARTED, rendezvous, None

    return attempt_fn


class _UnaryStream(_Multi, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    _KIND = "unary_stream"

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        channel = self._channel
        return channel._drive(
            self._call(metadata, True),
            timeout,
            _stream_attempt(
                self,
                request,
                metadata,
                wait_for_ready,
                compression,
                wait_headers=True,
                timeout=timeout,
            ),
            _stream_deliver(channel._pool),
        )


class _StreamStream(_Multi, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    _KIND = "stream_stream"

    def __call__(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        channel = self._channel
        # A chat's server may answer only after reading requests: deliver without waiting
        # for response headers (so only what fails before the call starts can be retried).
        return channel._drive(
            self._call(metadata, False),
            timeout,
            _stream_attempt(
                self,
                request_iterator,
                metadata,
                wait_for_ready,
                compression,
                wait_headers=False,
                timeout=timeout,
            ),
            _stream_deliver(channel._pool),
        )


class _FutureCall(grpc.Call, grpc.Future):  # type: ignore[misc]
    """``.future()``: the flow runs on a worker thread; cancel reaches the RPC in flight."""

    def __init__(self, inner: Future[Any], holder: _Holder) -> None:
        self._inner = inner
        self._holder = holder

    def cancel(self) -> bool:
        if self._inner.done():
            return False
        holder = self._holder
        with holder.lock:
            holder.cancelled = True
            current = holder.current
        if current is not None:
            current.cancel()
        self._inner.cancel()
        return True

    def cancelled(self) -> bool:
        if self._inner.cancelled():
            return True
        return self._holder.cancelled and isinstance(self._exception(), grpc.FutureCancelledError)

    def running(self) -> bool:
        return not self._inner.done()

    def done(self) -> bool:
        return self._inner.done()

    def result(self, timeout: float | None = None) -> Any:
        try:
            response, _ = self._inner.result(timeout)
        except grpc.FutureCancelledError:
            raise
        except TimeoutError as error:
            raise grpc.FutureTimeoutError() from error
        return response

    def _exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return self._inner.exception(timeout)
        except TimeoutError as error:
            raise grpc.FutureTimeoutError() from error

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        error = self._exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._inner.add_done_callback(lambda _: fn(self))

    def _call_or_error(self) -> Any:
        error = self._exception()
        if error is not None:
            return error
        return self._inner.result()[1]

    def code(self) -> grpc.StatusCode:
        if self._holder.cancelled:
            return grpc.StatusCode.CANCELLED
        found = self._call_or_error()
        code = getattr(found, "code", None)
        return code() if code is not None else grpc.StatusCode.UNKNOWN

    def details(self) -> str | None:
        found = self._call_or_error()
        details = getattr(found, "details", None)
        return details() if details is not None else str(found)

    def initial_metadata(self) -> Any:
        getter = getattr(self._call_or_error(), "initial_metadata", None)
        return getter() if getter is not None else ()

    def trailing_metadata(self) -> Any:
        getter = getattr(self._call_or_error(), "trailing_metadata", None)
        return getter() if getter is not None else ()

    def is_active(self) -> bool:
        return not self._inner.done()

    def time_remaining(self) -> float | None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self._inner.done():
            return False
        self._inner.add_done_callback(lambda _: callback())
        return True
