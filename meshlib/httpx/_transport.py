"""The httpx drivers: run the outbound flow, doing its I/O with httpcore pools.

Each request builds an ``httpcore.Request`` with ``httpcore.URL`` towards the chosen endpoint
(``httpx.URL`` costs 25–40 µs; PLUMBING-NOTES section 3) and keeps the logical host in the
Host header and the ``sni_hostname`` extension.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
import httpcore
import httpx
import sniffio

from meshlib._engine.outbound import Fail, WaitSlot, conclude, outbound_flow
from meshlib._engine.runtime import OutboundRuntime
from meshlib._model.call import Call
from meshlib._model.commands import Attempt, Deliver, Reply, Send, Sleep, TlsOrigination
from meshlib._model.endpoint import Endpoint
from meshlib._model.outcome import FailureKind, Outcome
from meshlib._slots import wait_slot_async, wait_slot_blocking
from meshlib.httpx._common import (
    EXTENSION,
    RawHeaders,
    attempt_timeouts,
    build_call,
    core_request,
    failure_kind,
    local_response,
    raise_for,
    upstream_headers,
    with_response_ops,
)
from meshlib.httpx._pools import (
    DEFAULT_KEEPALIVE_EXPIRY,
    DEFAULT_MAX_IDLE,
    AsyncPools,
    Lease,
    PoolKey,
    SyncPools,
    connector,
)
from meshlib.httpx._sync_backend import SyncBackend
from meshlib.httpx._tls import mesh_backend, origination_context

if TYPE_CHECKING:
    import asyncio  # imported where a mirror needs it: a sync-only process never loads it
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["AsyncMeshTransport", "MeshTransport"]

_LOG = logging.getLogger("meshlib.httpx")
_STALE_RETRIES = 3
"""Idle connections found closed at send time before a new one is used (then a fresh one)."""
_HTTPS = b"https"
_SYSTEM_TLS = "system"


def _caller_timeouts(
    request: httpx.Request,
) -> tuple[Mapping[str, float | None] | None, float | None]:
    timeouts: Mapping[str, float | None] | None = request.extensions.get("timeout")
    return timeouts, (timeouts.get("read") if timeouts is not None else None)


MAX_MIRRORS_IN_FLIGHT = 64
"""Mirror copies a transport keeps in flight; more are dropped (the caller never waits)."""
MIRROR_THREADS = 4
"""Threads a sync transport sends its mirror copies from."""


class _InFlight:
    """A bounded count that never blocks: ``start`` says no at the bound."""

    __slots__ = ("_count", "_limit", "_lock")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._count = 0
        self._lock = threading.Lock()

    def start(self) -> bool:
        with self._lock:
            if self._count >= self._limit:
                return False
            self._count += 1
            return True

    def end(self) -> None:
        with self._lock:
            self._count -= 1

    @property
    def count(self) -> int:
        return self._count


class _Base:
    """Pool keys, TLS choices and the parts of a Send that do no I/O."""

    def __init__(
        self,
        runtime: OutboundRuntime,
        *,
        ssl_context: ssl.SSLContext | None,
        keepalive_expiry: float,
    ) -> None:
        self.runtime = runtime
        self._ssl_context = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._closed = False
        self._lock = threading.Lock()
        self._mirrors = _InFlight(MAX_MIRRORS_IN_FLIGHT)

    def _system_context(self) -> ssl.SSLContext:
        # Outside-the-mesh https verifies against the system CAs, like plain httpx.
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()
        return self._ssl_context

    def _pool_key(self, request: httpx.Request, attempt: Attempt) -> PoolKey:
        endpoint = attempt.endpoint
        reuse = attempt.connection
        if attempt.tls:
            # The backend swaps in the current SVID per connection: rotation keeps the pool.
            return (_HTTPS, endpoint.address, endpoint.port, attempt.expected_peers, reuse)
        origination = attempt.origination
        if origination is not None:
            # DestinationRule SIMPLE/MUTUAL: TLS whatever scheme the caller used (Istio's
            # egress pattern: the application speaks http, the proxy originates TLS).
            return (_HTTPS, endpoint.address, endpoint.port, origination, reuse)
        scheme = request.url.raw_scheme
        tls = _SYSTEM_TLS if scheme == _HTTPS else None
        return (scheme, endpoint.address, endpoint.port, tls, reuse)

    def _tls_for(self, key: PoolKey) -> tuple[ssl.SSLContext | None, frozenset[str] | None]:
        tls = key[3]
        if tls is None:
            return None, None
        if tls == _SYSTEM_TLS:
            return self._system_context(), None
        if isinstance(tls, TlsOrigination):
            return origination_context(tls), None
        assert isinstance(tls, frozenset)
        identity = self.runtime.identity
        assert identity is not None  # the flow asks for mTLS only with an identity
        context = identity.current_client_context()
        assert isinstance(context, ssl.SSLContext)
        return context, tls

    def _core_request(
        self,
        request: httpx.Request,
        call: Call,
        attempt: Attempt,
        scheme: bytes,
        timeouts: Mapping[str, float | None] | None,
    ) -> httpcore.Request:
        endpoint = attempt.endpoint
        path = attempt.path
        origination = attempt.origination
        sni = origination.sni if origination is not None else None
        return core_request(
            request.method.encode("ascii"),
            scheme,
            endpoint.address.encode("ascii"),
            endpoint.port,
            request.url.raw_path if path is None else path.encode("ascii"),
            upstream_headers(request.headers.raw, attempt),
            request.stream,
            {
                "timeout": attempt_timeouts(
                    timeouts, attempt.timeout, attempt.connection.connect_timeout
                ),
                "sni_hostname": call.host if sni is None else sni,
            },
        )


def _with_info(
    response: httpcore.Response, command: Deliver, attempts: int, endpoint: Endpoint | None
) -> MutableMapping[str, Any]:
    # httpcore built this dict for this response alone: extend it rather than copy it.
    extensions = response.extensions
    extensions[EXTENSION] = {
        "flags": command.flags,
        "attempts": attempts,
        "endpoint": None if endpoint is None else endpoint.text,
        "local_reply": False,
    }
    return extensions


# ------------------------------------------------------------------------------------ sync


class _Spendable:
    """What both bodies do once finished: let go of the response, the completion and the
    outcome. httpx's response and its bound stream refer to each other, so they (and the body)
    wait for the cyclic GC; what the request used is then freed at once instead: less work for
    the collector, and the next request reuses that memory while it is still in cache
    (``docs/performance.md``)."""

    __slots__ = ("_complete", "_outcome", "_response")
    _complete: Any
    _outcome: Outcome
    _response: httpcore.Response | None

    def _spend(self) -> Any:
        """The completion, to call once; the body keeps nothing of the request."""
        complete, self._complete = self._complete, None
        self._response = None
        self._outcome = _SPENT
        return complete


class _SyncBody(_Spendable, httpx.SyncByteStream):
    """The upstream body; fires the completion once at EOF, error or close."""

    __slots__ = ("_lease", "_pools", "_received")

    def __init__(
        self,
        response: httpcore.Response,
        complete: Any,
        outcome: Outcome,
        lease: Lease[httpcore.HTTPConnection],
        pools: SyncPools,
    ) -> None:
        self._response: httpcore.Response | None = response
        self._complete = complete
        self._outcome: Outcome = outcome
        self._lease: Lease[httpcore.HTTPConnection] | None = lease
        self._pools = pools
        self._received = 0

    def __iter__(self) -> Iterator[bytes]:
        response = self._response
        if response is None:
            raise httpx.StreamConsumed()
        try:
            # The stream itself, as httpx's own transport reads it: httpcore's iter_stream and
            # close re-check its type with typing.Iterable, ~1 µs each per response.
            stream: Any = response.stream
            del response  # a suspended iteration must not keep it alive after _finish
            for chunk in stream:
                self._received += len(chunk)
                yield chunk
            # Closing the exhausted stream makes the connection idle before it goes back.
            _close_stream(stream)
        except Exception as error:
            self._finish(Outcome(self._outcome.status, FailureKind.RESET, detail=str(error)))
            raise_for(error, _NO_REQUEST)
        self._finish(self._outcome)

    def close(self) -> None:
        response = self._response
        if response is None:
            return  # finished: the stream is closed and the completion has fired
        try:
            _close_stream(response.stream)
        finally:
            self._finish(self._outcome)

    def _finish(self, outcome: Outcome) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            self._pools.release(lease)
            self._spend()(outcome.with_response_bytes(self._received))


_NO_REQUEST = httpx.Request("GET", "http://meshlib.invalid/")
_SPENT = Outcome()
"""A finished body's outcome: the real one (and the response headers it holds) is let go."""


def _close_stream(stream: Any) -> None:
    # httpx's own transport closes the stream the same way (connection streams have close).
    close = getattr(stream, "close", None)
    if close is not None:
        close()


async def _aclose_stream(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class MeshTransport(httpx.BaseTransport):
    """An ``httpx.BaseTransport`` that routes every request through the mesh.

    ``httpx.Client(transport=MeshTransport(runtime))``; one transport per runtime is enough
    for any number of threads.
    """

    def __init__(
        self,
        runtime: OutboundRuntime,
        *,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
        max_idle_per_endpoint: int = DEFAULT_MAX_IDLE,
    ) -> None:
        self._base = _Base(runtime, ssl_context=ssl_context, keepalive_expiry=keepalive_expiry)
        self.runtime = runtime
        self._pools = SyncPools(max_idle_per_endpoint)
        self._executor: ThreadPoolExecutor | None = None
        self._backend = SyncBackend()
        """Every connection's sockets (mTLS ones through the identity's backend around it)."""

    def _factory(self, key: PoolKey) -> Any:
        context, peers = self._base._tls_for(key)
        backend = self._backend
        if peers is not None:
            assert self.runtime.identity is not None
            backend = mesh_backend(self.runtime.identity, peers, is_async=False, inner=backend)
        return connector(
            httpcore.HTTPConnection, key, context, backend, self._base._keepalive_expiry
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._base._closed:
            raise RuntimeError("the MeshTransport is closed")
        runtime = self.runtime
        call = build_call(request)
        timeouts, caller_timeout = _caller_timeouts(request)
        inherited = runtime.inherited_deadline
        flow = outbound_flow(
            call,
            runtime,
            caller_timeout=caller_timeout,
            inherited_deadline=inherited() if inherited is not None else None,
        )
        pending: tuple[httpcore.Response, Lease[Any]] | None = None
        error: BaseException | None = None
        attempts = 0
        endpoint: Endpoint | None = None
        try:
            command = next(flow)
            while True:
                if pending is not None and not isinstance(command, Deliver):
                    self._close(pending)
                    pending = None
                if isinstance(command, Send):
                    attempt = command.attempt
                    attempts += 1
                    endpoint = attempt.endpoint
                    if command.shadows:
                        self._mirror(request, call, command.shadows, timeouts)
                    outcome, pending, error = self._send(request, call, attempt, timeouts)
                    command = flow.send(outcome)
                elif isinstance(command, Deliver):
                    conclude(flow)
                    assert pending is not None
                    response, lease = pending
                    pending = None
                    return httpx.Response(
                        response.status,
                        headers=with_response_ops(
                            response.headers,
                            command.response_headers_set,
                            command.response_headers_add,
                            command.response_headers_remove,
                        ),
                        stream=_SyncBody(
                            response, command.complete, command.outcome, lease, self._pools
                        ),
                        extensions=_with_info(response, command, attempts, endpoint),
                    )
                elif isinstance(command, Reply):
                    conclude(flow)
                    return local_response(
                        command, attempts, None if endpoint is None else str(endpoint)
                    )
                elif isinstance(command, Sleep):
                    runtime.sleep(command.seconds)
                    command = flow.send(None)
                elif isinstance(command, WaitSlot):
                    command = flow.send(wait_slot_blocking(command))
                else:
                    assert isinstance(command, Fail)
                    conclude(flow)
                    raise_for(error, request, command.outcome)
                    raise AssertionError("unreachable")  # pragma: no cover
        finally:
            if pending is not None:
                self._close(pending)
            flow.close()

    def _send(
        self,
        request: httpx.Request,
        call: Call,
        attempt: Attempt,
        timeouts: Mapping[str, float | None] | None,
    ) -> tuple[Outcome, tuple[httpcore.Response, Lease[Any]] | None, BaseException | None]:
        key = self._base._pool_key(request, attempt)
        pools = self._pools
        core = self._base._core_request(request, call, attempt, key[0], timeouts)
        for _ in range(_STALE_RETRIES):
            lease = pools.acquire(key, self._factory)
            try:
                response = lease.connection.handle_request(core)
            except httpcore.ConnectionNotAvailable:
                pools.release(lease)  # closed under our feet between the check and the send
                continue
            except Exception as error:
                pools.release(lease)
                kind = failure_kind(error)
                if kind is None:
                    raise_for(error, request)
                    raise
                return Outcome(failure=kind, detail=str(error)), None, error
            except BaseException:
                pools.release(lease)
                raise
            outcome = Outcome(status=response.status, headers=RawHeaders(response.headers))
            return outcome, (response, lease), None
        raise httpx.ConnectError("no usable connection", request=request)

    def _close(self, pending: tuple[httpcore.Response, Lease[httpcore.HTTPConnection]]) -> None:
        response, lease = pending
        try:
            response.close()
        finally:
            self._pools.release(lease)

    def _mirror(
        self,
        request: httpx.Request,
        call: Call,
        shadows: tuple[Attempt, ...],
        timeouts: Mapping[str, float | None] | None,
    ) -> None:
        for shadow in shadows:
            if not self._base._mirrors.start():
                continue  # too many copies still in flight: drop this one, as Envoy may
            with self._base._lock:
                if self._executor is None:
                    # Only mirrors need threads: a client that never mirrors never loads them.
                    from concurrent.futures import ThreadPoolExecutor

                    self._executor = ThreadPoolExecutor(
                        MIRROR_THREADS, thread_name_prefix="meshlib-mirror"
                    )
                executor = self._executor
            try:
                executor.submit(self._shadow, request, call, shadow, timeouts)
            except RuntimeError:  # closed meanwhile
                self._base._mirrors.end()

    def _shadow(
        self,
        request: httpx.Request,
        call: Call,
        attempt: Attempt,
        timeouts: Mapping[str, float | None] | None,
    ) -> None:
        try:
            outcome, pending, _ = self._send(request, call, attempt, timeouts)
            if pending is None:
                _LOG.debug("mirror to %s failed: %s", attempt.endpoint, outcome.detail)
            else:
                try:
                    pending[0].read()  # drained: the connection can serve the next request
                finally:
                    self._close(pending)
        except Exception as error:  # the caller never sees a mirror's failure
            _LOG.debug("mirror to %s failed: %s", attempt.endpoint, error)
        finally:
            self._base._mirrors.end()

    def close(self) -> None:
        self._base._closed = True
        with self._base._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self._pools.close()

    @property
    def connection_count(self) -> int:
        """Open upstream connections (tests and debugging)."""
        return self._pools.connection_count()


# ----------------------------------------------------------------------------------- async


class _AsyncBody(_Spendable, httpx.AsyncByteStream):
    """``_SyncBody`` for ``AsyncMeshTransport``."""

    __slots__ = ("_lease", "_pools", "_received")

    def __init__(
        self,
        response: httpcore.Response,
        complete: Any,
        outcome: Outcome,
        lease: Lease[httpcore.AsyncHTTPConnection],
        pools: AsyncPools,
    ) -> None:
        self._response: httpcore.Response | None = response
        self._complete = complete
        self._outcome: Outcome = outcome
        self._lease: Lease[httpcore.AsyncHTTPConnection] | None = lease
        self._pools = pools
        self._received = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        response = self._response
        if response is None:
            raise httpx.StreamConsumed()
        try:
            stream: Any = response.stream  # as in _SyncBody: skip the type re-checks
            del response  # as in _SyncBody
            async for chunk in stream:
                self._received += len(chunk)
                yield chunk
            # Closing the exhausted stream makes the connection idle before it goes back.
            await _aclose_stream(stream)
        except Exception as error:
            await self._finish(Outcome(self._outcome.status, FailureKind.RESET, detail=str(error)))
            raise_for(error, _NO_REQUEST)
        await self._finish(self._outcome)

    async def aclose(self) -> None:
        response = self._response
        if response is None:
            return  # finished: the stream is closed and the completion has fired
        try:
            await _aclose_stream(response.stream)
        finally:
            await self._finish(self._outcome)

    async def _finish(self, outcome: Outcome) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                # Most responses keep their connection: no await, so no shield to pay for
                # (anyio's shielded scope costs about 11 µs per request under asyncio).
                closing = self._pools.put_back(lease)
                if closing is not None:
                    with anyio.CancelScope(shield=True):
                        await closing.aclose()
            finally:
                self._spend()(outcome.with_response_bytes(self._received))


class AsyncMeshTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` that routes every request through the mesh.

    Sharded per-endpoint pools keep httpcore's bookkeeping small, so one shared
    ``httpx.AsyncClient`` does not collapse with many requests in flight.
    """

    def __init__(
        self,
        runtime: OutboundRuntime,
        *,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
        max_idle_per_endpoint: int = DEFAULT_MAX_IDLE,
    ) -> None:
        self._base = _Base(runtime, ssl_context=ssl_context, keepalive_expiry=keepalive_expiry)
        self.runtime = runtime
        self._pools = AsyncPools(max_idle_per_endpoint)
        self._mirror_tasks: set[asyncio.Task[None]] = set()
        # Imported here, as asyncio is: a sync-only process never loads either.
        from meshlib.httpx._asyncio_backend import AsyncioBackend

        self._backend = AsyncioBackend()
        """Every connection's sockets (mTLS ones through the identity's backend around it)."""

    def _factory(self, key: PoolKey) -> Any:
        context, peers = self._base._tls_for(key)
        backend: Any = self._backend
        if peers is not None:
            assert self.runtime.identity is not None
            backend = mesh_backend(self.runtime.identity, peers, is_async=True, inner=backend)
        return connector(
            httpcore.AsyncHTTPConnection, key, context, backend, self._base._keepalive_expiry
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._base._closed:
            raise RuntimeError("the AsyncMeshTransport is closed")
        runtime = self.runtime
        call = build_call(request)
        timeouts, caller_timeout = _caller_timeouts(request)
        inherited = runtime.inherited_deadline
        flow = outbound_flow(
            call,
            runtime,
            caller_timeout=caller_timeout,
            inherited_deadline=inherited() if inherited is not None else None,
        )
        pending: tuple[httpcore.Response, Lease[Any]] | None = None
        error: BaseException | None = None
        attempts = 0
        endpoint: Endpoint | None = None
        try:
            command = next(flow)
            while True:
                if pending is not None and not isinstance(command, Deliver):
                    await self._close(pending)
                    pending = None
                if isinstance(command, Send):
                    attempt = command.attempt
                    attempts += 1
                    endpoint = attempt.endpoint
                    if command.shadows:
                        self._mirror(request, call, command.shadows, timeouts)
                    outcome, pending, error = await self._send(request, call, attempt, timeouts)
                    command = flow.send(outcome)
                elif isinstance(command, Deliver):
                    conclude(flow)
                    assert pending is not None
                    response, lease = pending
                    pending = None
                    return httpx.Response(
                        response.status,
                        headers=with_response_ops(
                            response.headers,
                            command.response_headers_set,
                            command.response_headers_add,
                            command.response_headers_remove,
                        ),
                        stream=_AsyncBody(
                            response, command.complete, command.outcome, lease, self._pools
                        ),
                        extensions=_with_info(response, command, attempts, endpoint),
                    )
                elif isinstance(command, Reply):
                    conclude(flow)
                    return local_response(
                        command, attempts, None if endpoint is None else str(endpoint)
                    )
                elif isinstance(command, Sleep):
                    sleep = runtime.async_sleep
                    if sleep is None:
                        await anyio.sleep(command.seconds)
                    else:
                        await sleep(command.seconds)  # type: ignore[misc]
                    command = flow.send(None)
                elif isinstance(command, WaitSlot):
                    command = flow.send(await wait_slot_async(command))
                else:
                    assert isinstance(command, Fail)
                    conclude(flow)
                    raise_for(error, request, command.outcome)
                    raise AssertionError("unreachable")  # pragma: no cover
        finally:
            if pending is not None:
                # Cancelled with a response in hand: its connection cannot be reused.
                with anyio.CancelScope(shield=True):
                    await self._close(pending)
            flow.close()

    async def _send(
        self,
        request: httpx.Request,
        call: Call,
        attempt: Attempt,
        timeouts: Mapping[str, float | None] | None,
    ) -> tuple[Outcome, tuple[httpcore.Response, Lease[Any]] | None, BaseException | None]:
        key = self._base._pool_key(request, attempt)
        pools = self._pools
        core = self._base._core_request(request, call, attempt, key[0], timeouts)
        for _ in range(_STALE_RETRIES):
            lease = await pools.acquire(key, self._factory)
            try:
                response = await lease.connection.handle_async_request(core)
            except httpcore.ConnectionNotAvailable:
                await pools.release(lease)  # closed under our feet between check and send
                continue
            except Exception as error:
                await pools.release(lease)
                kind = failure_kind(error)
                if kind is None:
                    raise_for(error, request)
                    raise
                return Outcome(failure=kind, detail=str(error)), None, error
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await pools.release(lease)
                raise
            outcome = Outcome(status=response.status, headers=RawHeaders(response.headers))
            return outcome, (response, lease), None
        raise httpx.ConnectError("no usable connection", request=request)

    async def _close(
        self, pending: tuple[httpcore.Response, Lease[httpcore.AsyncHTTPConnection]]
    ) -> None:
        response, lease = pending
        try:
            await response.aclose()
        finally:
            await self._pools.release(lease)

    def _mirror(
        self,
        request: httpx.Request,
        call: Call,
        shadows: tuple[Attempt, ...],
        timeouts: Mapping[str, float | None] | None,
    ) -> None:
        if sniffio.current_async_library() != "asyncio":
            return  # copies need a task that outlives the request: asyncio only
        import asyncio

        loop = asyncio.get_running_loop()
        for shadow in shadows:
            if not self._base._mirrors.start():
                continue  # too many copies still in flight: drop this one, as Envoy may
            task = loop.create_task(self._shadow(request, call, shadow, timeouts))
            self._mirror_tasks.add(task)  # a reference until it ends, or it may be collected
            task.add_done_callback(self._mirror_tasks.discard)

    async def _shadow(
        self,
        request: httpx.Request,
        call: Call,
        attempt: Attempt,
        timeouts: Mapping[str, float | None] | None,
    ) -> None:
        try:
            outcome, pending, _ = await self._send(request, call, attempt, timeouts)
            if pending is None:
                _LOG.debug("mirror to %s failed: %s", attempt.endpoint, outcome.detail)
            else:
                try:
                    await pending[0].aread()  # drained: the connection can serve the next one
                finally:
                    await self._close(pending)
        except Exception as error:  # the caller never sees a mirror's failure
            _LOG.debug("mirror to %s failed: %s", attempt.endpoint, error)
        finally:
            self._base._mirrors.end()

    async def aclose(self) -> None:
        self._base._closed = True
        for task in list(self._mirror_tasks):
            task.cancel()
        await self._pools.aclose()

    @property
    def connection_count(self) -> int:
        return self._pools.connection_count()
