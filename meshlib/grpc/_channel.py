"""The sync gRPC driver: a ``grpc.Channel`` whose multicallables run the outbound flow per call.

grpc client interceptors cannot choose the channel per call, so the mesh channel hands out its
own multicallables; each attempt goes out on a pooled channel to the endpoint the flow picked.
Everything without I/O lives in ``_common``; this file blocks, and uses threads.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, NamedTuple

import grpc

from meshlib._engine.outbound import WaitSlot
from meshlib._engine.runtime import OutboundRuntime
from meshlib._identity.rotation import RotatingIdentity
from meshlib._model.commands import Attempt, Deliver, Send, Sleep
from meshlib._model.outcome import Outcome
from meshlib._slots import wait_slot_blocking
from meshlib.grpc._common import (
    STARTED,
    TIMED_OUT,
    ChannelCore,
    Drive,
    MeshRpcError,
    Metadata,
    MultiCallable,
    PooledChannel,
    Schedule,
    StreamEnd,
    StreamGuard,
    complete_unary,
    outcome_of_error,
    route_timeout_error,
)

__all__ = ["DEFAULT_FUTURE_WORKERS", "MeshChannel"]

DEFAULT_FUTURE_WORKERS = 32
"""Threads running ``.future()`` calls (each waits on its own RPC)."""

Result = tuple[Outcome, Any, BaseException | None]
"""What an attempt gives the flow: its outcome, what to deliver, the error to raise."""


def _sync_channel(address: str, credentials: Any, options: list[tuple[str, Any]]) -> Any:
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)


def _close_channel(channel: Any) -> None:
    channel.close()


class _Timer:
    __slots__ = ("callback", "cancelled", "owner")

    def __init__(self, owner: _Timers, callback: Callable[[], None]) -> None:
        self.owner = owner
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.owner.cancel(self)


class _Timers:
    """One thread for every stream's route timeout; it runs only while a timer is pending."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self._running = False
        self.cancelled = 0

    def schedule(self, when: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self, callback)
        with self._condition:
            heap = self._heap
            if self.cancelled > _SWEEP and self.cancelled * 2 > len(heap):
                # Streams that ended long before their route timeout leave timers behind.
                heap[:] = [item for item in heap if not item[2].cancelled]
                heapq.heapify(heap)
                self.cancelled = 0
            heapq.heappush(heap, (when, next(self._order), timer))
            if self._running:
                self._condition.notify()
            else:
                self._running = True
                threading.Thread(target=self._run, name="meshlib-grpc-timers", daemon=True).start()
        return timer

    def cancel(self, timer: _Timer) -> None:
        with self._condition:
            if not timer.cancelled:
                timer.cancelled = True
                self.cancelled += 1
                self._condition.notify()  # the thread may be waiting for this one: let it go

    def _run(self) -> None:
        condition = self._condition
        heap = self._heap
        with condition:
            while heap:
                when, _, timer = heap[0]
                if timer.cancelled:
                    heapq.heappop(heap)
                    self.cancelled -= 1
                    continue
                delay = when - time.monotonic()
                if delay > 0:
                    condition.wait(delay)
                    continue
                heapq.heappop(heap)
                condition.release()
                try:
                    timer.callback()  # cancels an RPC: never raises, never blocks
                finally:
                    condition.acquire()
            self._running = False


_SWEEP = 256
_TIMERS = _Timers()


class MeshChannel(ChannelCore, grpc.Channel):  # type: ignore[misc]
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
        self._setup(runtime, target, identity, _sync_channel, _close_channel, options)
        self._future_workers = future_workers
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    def _multicallable(self, kind: str, method: str, serializer: Any, deserializer: Any) -> Any:
        return _KINDS[kind](self, kind, method, serializer, deserializer)

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

    def _submit(self, fn: Callable[[], Any]) -> Future[Any]:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._future_workers, thread_name_prefix="meshlib-grpc"
                )
            return self._executor.submit(fn)


# ------------------------------------------------------------------------- the driver loop


class _Run(Drive):
    """One sync RPC; ``holder`` reaches the RPC in flight of a ``.future()`` call."""

    __slots__ = ("holder",)
    holder: _Holder | None


SendFn = Callable[[_Run, Attempt, PooledChannel], Result]
DeliverFn = Callable[[_Run, Deliver], Any]


def _drive(run: _Run, send: SendFn, deliver: DeliverFn) -> Any:
    flow = run.flow
    try:
        command = next(flow)
        while True:
            if type(command) is Send:
                attempt = command.attempt
                command = run.sent(*send(run, attempt, run.acquire(attempt)))
            elif type(command) is Sleep:
                run.multi._channel.runtime.sleep(command.seconds)
                command = flow.send(None)
            elif type(command) is WaitSlot:
                run.routed()
                command = flow.send(wait_slot_blocking(command))
            else:
                return deliver(run, run.finish(command))
    finally:
        run.close()


def _deliver_unary(run: _Run, command: Deliver) -> Any:
    entry = run.entry
    assert entry is not None
    run.entry = None
    run.multi._channel._pool.release(entry)
    complete_unary(command)
    if run.error is not None:
        raise run.error
    return run.value


def _deliver_stream(run: _Run, command: Deliver) -> Any:
    rendezvous = run.value
    entry, guard = run.delivered()
    end = StreamEnd(run.multi._channel._pool, entry, command, guard)
    if not rendezvous.add_callback(lambda: end(rendezvous.code())):
        end(rendezvous.code())  # already over (a trailers-only answer the flow did not retry)
    if guard is None:
        return rendezvous
    return _GuardedStream(rendezvous, guard, run.attempts)


def _requests(requests: Iterator[Any], guard: StreamGuard) -> Iterator[Any]:
    yield from requests
    guard.request_ended()


def _hold(run: _Run, future: Any) -> None:
    holder = run.holder
    assert holder is not None
    with holder.lock:
        holder.current = future
        if holder.cancelled:
            future.cancel()


# ------------------------------------------------------------------------- one attempt


def _unary(run: _Run, attempt: Attempt, method: Any, *, future: bool = False) -> Result:
    try:
        result = run.start(method, attempt, run.request, attempt.timeout)
        if future:
            _hold(run, result)
            result = (result.result(), result)
    except grpc.RpcError as error:
        return outcome_of_error(error), None, error
    return STARTED, result, None


def _send_unary(run: _Run, attempt: Attempt, entry: PooledChannel) -> Result:
    # Without the Call object grpc skips building a rendezvous: the common path is cheaper
    # (and it is _unary inlined: this runs on every plain unary call).
    try:
        response = run.start(run.multi.inner(entry, attempt), attempt, run.request, attempt.timeout)
    except grpc.RpcError as error:
        return outcome_of_error(error), None, error
    return STARTED, response, None


def _send_with_call(run: _Run, attempt: Attempt, entry: PooledChannel) -> Result:
    return _unary(run, attempt, run.multi.inner(entry, attempt).with_call)


def _send_future(run: _Run, attempt: Attempt, entry: PooledChannel) -> Result:
    return _unary(run, attempt, run.multi.inner(entry, attempt).future, future=True)


def _send_client_stream(run: _Run, attempt: Attempt, entry: PooledChannel) -> Result:
    guard = run.guard
    requests = run.request if guard is None else _requests(run.request, guard)
    try:
        future = run.start(
            run.multi.inner(entry, attempt).future, attempt, requests, run.caller_remaining()
        )
        if guard is not None:
            guard.attempt(future.cancel)
        if run.holder is not None:
            _hold(run, future)
        result = (future.result(), future)
    except (grpc.RpcError, grpc.FutureCancelledError) as error:
        if guard is not None and guard.cut:
            return TIMED_OUT, None, error
        if isinstance(error, grpc.FutureCancelledError):
            raise  # the caller cancelled its .future()
        return outcome_of_error(error), None, error
    return STARTED, result, None


def _send_client_stream_response(run: _Run, attempt: Attempt, entry: PooledChannel) -> Result:
    outcome, result, error = _send_client_stream(run, attempt, entry)
    return outcome, None if result is None else result[0], error


def _send_server_stream(run: _Run, attempt: Attempt, entry: PooledChannel) -> Result:
    inner = run.multi.inner(entry, attempt)
    rendezvous = run.start(inner, attempt, run.request, run.caller_remaining())
    guard = run.guard
    if guard is not None:
        guard.attempt(rendezvous.cancel, attempt.timeout)
    # Response headers commit the call: until then a failure may be retried.
    rendezvous.initial_metadata()
    if guard is not None:
        guard.response_started()
    if rendezvous.done() and rendezvous.code() is not grpc.StatusCode.OK:
        if guard is not None and guard.cut:
            return TIMED_OUT, rendezvous, rendezvous
        return outcome_of_error(rendezvous), rendezvous, rendezvous
    return STARTED, rendezvous, None


def _send_bidi(run: _Run, attempt: Attempt, entry: PooledChannel) -> Result:
    # A chat's server may answer only after reading requests: deliver without waiting for
    # response headers (so only what fails before the call starts can be retried).
    guard = run.guard
    requests = run.request if guard is None else _requests(run.request, guard)
    inner = run.multi.inner(entry, attempt)
    rendezvous = run.start(inner, attempt, requests, run.caller_remaining())
    if guard is not None:
        guard.attempt(rendezvous.cancel)
    return STARTED, rendezvous, None


# ---------------------------------------------------------------------- multicallables


class _Holder:
    """The RPC in flight for a ``.future()`` call, so that ``cancel`` can reach it."""

    __slots__ = ("cancelled", "current", "lock")

    def __init__(self) -> None:
        self.current: Any = None
        self.cancelled = False
        self.lock = threading.Lock()


class _Spec(NamedTuple):
    """What differs between the sync cardinalities."""

    send: SendFn
    """The attempt of ``__call__``: its value is the response, or the response stream."""
    deliver: DeliverFn
    schedule: Schedule | None = None
    """The timers of a stream's guard (a unary call has none)."""
    send_with_call: SendFn | None = None
    """Unary responses: an attempt whose value is ``(response, call)``."""
    send_future: SendFn | None = None


class _SyncMulti(MultiCallable):
    __slots__ = ()

    spec: ClassVar[_Spec]

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        spec = self.spec
        run = _Run(self, request, timeout, metadata, wait_for_ready, compression, spec.schedule)
        run.holder = None
        return _drive(run, spec.send, spec.deliver)

    def _run(
        self,
        request: Any,
        timeout: float | None,
        metadata: Metadata | None,
        wait_for_ready: bool | None,
        compression: Any,
        holder: _Holder | None = None,
    ) -> _Run:
        spec = self.spec
        run = _Run(self, request, timeout, metadata, wait_for_ready, compression, spec.schedule)
        run.holder = holder
        return run


class _UnaryResponse(_SyncMulti):
    """unary-unary and stream-unary add ``with_call`` and ``future``."""

    __slots__ = ()

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> tuple[Any, grpc.Call]:
        send = self.spec.send_with_call
        assert send is not None
        run = self._run(request, timeout, metadata, wait_for_ready, compression)
        return _drive(run, send, _deliver_unary)  # type: ignore[no-any-return]

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        """The flow runs on a worker thread; ``cancel`` reaches the RPC in flight."""
        send = self.spec.send_future
        assert send is not None
        holder = _Holder()
        run = self._run(request, timeout, metadata, wait_for_ready, compression, holder)
        channel: MeshChannel = self._channel  # type: ignore[assignment]
        return _FutureCall(channel._submit(lambda: _drive(run, send, _deliver_unary)), holder)


class _UnaryUnary(_UnaryResponse, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    spec = _Spec(
        _send_unary,
        _deliver_unary,
        send_with_call=_send_with_call,
        send_future=_send_future,
    )


class _StreamUnary(_UnaryResponse, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    spec = _Spec(
        _send_client_stream_response,
        _deliver_unary,
        _TIMERS.schedule,
        send_with_call=_send_client_stream,
        send_future=_send_client_stream,
    )


class _UnaryStream(_SyncMulti, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    spec = _Spec(_send_server_stream, _deliver_stream, _TIMERS.schedule)


class _StreamStream(_SyncMulti, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()
    spec = _Spec(_send_bidi, _deliver_stream, _TIMERS.schedule)


_KINDS: dict[str, type[MultiCallable]] = {
    "unary_unary": _UnaryUnary,
    "unary_stream": _UnaryStream,
    "stream_unary": _StreamUnary,
    "stream_stream": _StreamStream,
}


# ------------------------------------------------------------------- what callers hold


class _GuardedStream(grpc.Call, grpc.Future):  # type: ignore[misc]
    """A delivered stream under the route timeout (or the inherited deadline): grpc's own
    rendezvous, except that once the guard cut it, it reads as DEADLINE_EXCEEDED
    ``upstream request timeout`` instead of the cancellation that stopped it."""

    __slots__ = ("_attempts", "_guard", "_rendezvous")

    def __init__(self, rendezvous: Any, guard: StreamGuard, attempts: int) -> None:
        self._rendezvous = rendezvous
        self._guard = guard
        self._attempts = attempts

    def _cut(self) -> MeshRpcError | None:
        if self._guard.cut:
            return route_timeout_error(MeshRpcError, self._attempts)
        return None

    def __iter__(self) -> _GuardedStream:
        return self

    def __next__(self) -> Any:
        try:
            message = next(self._rendezvous)
        except grpc.RpcError:
            cut = self._cut()
            if cut is None:
                raise
            raise cut from None
        self._guard.response_started()
        return message

    def code(self) -> grpc.StatusCode:
        cut = self._cut()
        code: grpc.StatusCode = (cut or self._rendezvous).code()
        return code

    def details(self) -> str | None:
        cut = self._cut()
        details: str | None = (cut or self._rendezvous).details()
        return details

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rendezvous, name)  # the rest of grpc's rendezvous, as it is

    def initial_metadata(self) -> Any:
        return self._rendezvous.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._rendezvous.trailing_metadata()

    def is_active(self) -> bool:
        return bool(self._rendezvous.is_active())

    def time_remaining(self) -> float | None:
        remaining: float | None = self._rendezvous.time_remaining()
        return remaining

    def cancel(self) -> bool:
        return bool(self._rendezvous.cancel())

    def cancelled(self) -> bool:
        return bool(self._rendezvous.cancelled()) and not self._guard.cut

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._rendezvous.add_callback(callback))

    def running(self) -> bool:
        return bool(self._rendezvous.running())

    def done(self) -> bool:
        return bool(self._rendezvous.done())

    # A cancelled rendezvous raises FutureCancelledError from its Future methods.
    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._rendezvous.result(timeout)
        except (grpc.RpcError, grpc.FutureCancelledError):
            cut = self._cut()
            if cut is None:
                raise
            raise cut from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        cut = self._cut()
        if cut is not None:
            return cut
        error: BaseException | None = self._rendezvous.exception(timeout)
        return error

    def traceback(self, timeout: float | None = None) -> Any:
        cut = self._cut()
        return None if cut is not None else self._rendezvous.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._rendezvous.add_done_callback(lambda _: fn(self))


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
