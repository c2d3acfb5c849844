"""What the sync and grpc.aio drivers share: everything but the I/O.

Calls, metadata, outcomes, local errors, the per-endpoint channel pool, the multicallable and
channel plumbing, the bookkeeping of one RPC's way through the outbound flow (:class:`Drive`)
and the route timeout of streams (:class:`StreamGuard`). ``_channel.py`` and ``aio.py`` keep
what differs by colour: blocking or awaiting, threads or the event loop.

A mesh channel never sends through one long-lived HTTP/2 connection to "the service": every
call runs the outbound flow, which picks an endpoint, and the attempt goes out on a real grpc
channel to that one endpoint (pooled here, keyed by endpoint, TLS generation and authority).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

import grpc

from meshlib._engine.outbound import DEADLINE_SLACK, Fail, FlowCommand, conclude, outbound_flow
from meshlib._engine.runtime import OutboundRuntime
from meshlib._engine.snapshot import MeshSnapshot
from meshlib._identity.grpc_credentials import grpc_channel_credentials
from meshlib._identity.rotation import Generation, RotatingIdentity
from meshlib._model.call import Call, Memo
from meshlib._model.commands import Attempt, Deliver, Reply
from meshlib._model.outcome import FailureKind, Outcome
from meshlib._policy.replies import FLAG_UPSTREAM_TIMEOUT, UPSTREAM_TIMEOUT_BODY
from meshlib._policy.routing import match_route

__all__ = [
    "CALLER_DEADLINE",
    "OK",
    "STARTED",
    "ChannelCore",
    "ChannelPool",
    "Drive",
    "MeshRpcError",
    "Metadata",
    "MetadataView",
    "MultiCallable",
    "PooledChannel",
    "StreamEnd",
    "StreamGuard",
    "Target",
    "build_call",
    "complete_unary",
    "error_for_fail",
    "error_for_reply",
    "outcome_of_error",
    "outcome_of_status",
    "parse_target",
    "reply_code",
    "stream_limits",
    "upstream_metadata",
]

Metadata = Sequence[tuple[str, str | bytes]]
DEFAULT_GRPC_PORT = 443
"""grpc's own default when a target names no port."""
CALLER_DEADLINE = "Deadline Exceeded"
"""grpc's own details for an expired deadline (what a plain channel raises)."""
OK = Outcome(status=200, grpc_status=0)
STARTED = Outcome(status=200)
"""An attempt that got response headers (or a stream the caller now holds)."""
TIMED_OUT = Outcome(failure=FailureKind.TIMEOUT, detail=UPSTREAM_TIMEOUT_BODY)
"""The mesh's bound on a stream cut it before its response started."""
_CONNECT_FAILURES = ("failed to connect", "connections to all backends failing")
_RESETS = ("socket closed", "connection reset", "broken pipe", "stream removed")
# Hop-by-hop names grpc refuses in metadata; ``connection: close`` from the flow has no gRPC
# equivalent (HTTP/2 has no keep-alive header) and is dropped.
_FORBIDDEN = frozenset({"connection", "te", "host", "content-type", "user-agent"})
_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
_DEADLINE_EXCEEDED: int = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
_UT = (FLAG_UPSTREAM_TIMEOUT,)
_E = TypeVar("_E", bound=BaseException)


class MetadataView:
    """A HeaderView over gRPC metadata tuples (never copied; ``-bin`` values are skipped)."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Metadata | None) -> None:
        self._pairs: Metadata = pairs or ()

    def get(self, key: str, /) -> str | None:
        wanted = key.lower()
        values = [v for k, v in self._pairs if k.lower() == wanted and isinstance(v, str)]
        if not values:
            return None
        return values[0] if len(values) == 1 else ",".join(values)

    def __contains__(self, key: object, /) -> bool:
        if not isinstance(key, str):
            return False
        wanted = key.lower()
        return any(k.lower() == wanted for k, _ in self._pairs)


_NO_METADATA = MetadataView(None)


class Target:
    """A channel target as the mesh reads it: the logical authority, host and port."""

    __slots__ = ("authority", "host", "port")

    def __init__(self, authority: str, host: str, port: int) -> None:
        self.authority = authority
        self.host = host
        self.port = port


def parse_target(target: str) -> Target:
    """``ratings:9090``, ``dns:///ratings:9090``, ``[::1]:50051``; no port means grpc's 443."""
    text = target
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme not in ("dns", "ipv4", "ipv6"):
            raise ValueError(f"unsupported gRPC target scheme {scheme!r} in {target!r}")
        text = rest.rpartition("/")[2] if rest.startswith("/") or "/" in rest else rest
    elif text.startswith("dns:"):
        text = text[4:]
    if not text:
        raise ValueError(f"gRPC target {target!r} names no host")
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port_text = tail.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"gRPC target {target!r} names no host")
    port = int(port_text) if port_text else DEFAULT_GRPC_PORT
    return Target(text, host.lower(), port)


def build_call(target: Target, method: str, metadata: Metadata | None, *, replayable: bool) -> Call:
    """The neutral view of one RPC: Istio sees gRPC as ``POST /pkg.Service/Method``."""
    return Call(
        protocol="grpc",
        method="POST",
        scheme="http",
        authority=target.authority,
        host=target.host,
        port=target.port,
        path=method,
        headers=MetadataView(metadata) if metadata else _NO_METADATA,
        body_replayable=replayable,
    )


def upstream_metadata(metadata: Metadata | None, attempt: Attempt) -> list[tuple[str, Any]]:
    """The metadata for one attempt: remove, then set (overwrite), then add (Envoy's order)."""
    pairs: list[tuple[str, Any]] = [
        (name.lower(), value) for name, value in attempt.set_headers if name not in _FORBIDDEN
    ]
    removed = attempt.remove_headers
    if metadata:
        drop = {name.lower() for name, _ in attempt.set_headers}
        if removed:
            drop.update(name.lower() for name in removed)
        pairs[:0] = [(k, v) for k, v in metadata if k.lower() not in drop]
    for name, value in attempt.add_headers:
        if name not in _FORBIDDEN:
            pairs.append((name.lower(), value))
    return pairs


def outcome_of_error(error: grpc.RpcError, elapsed: float = 0.0) -> Outcome:
    """What a failed attempt tells the flow.

    A status the server sent arrives as trailers-only (no message was read): HTTP 200 with
    ``grpc_status``, so retries on unavailable, cancelled... apply. grpc's own UNAVAILABLE
    without a connection is a connect failure; its local deadline a timeout.
    """
    code_of = getattr(error, "code", None)
    code: grpc.StatusCode = code_of() if code_of is not None else grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    return outcome_of_status(code, (details_of() if details_of is not None else "") or "", elapsed)


def outcome_of_status(code: grpc.StatusCode, details: str, elapsed: float = 0.0) -> Outcome:
    """:func:`outcome_of_error` from a status already read (grpc.aio reads it with await)."""
    lowered = details.lower()
    if code is grpc.StatusCode.UNAVAILABLE:
        if lowered.startswith(_CONNECT_FAILURES):
            return Outcome(failure=FailureKind.CONNECT_FAILURE, elapsed=elapsed, detail=details)
        if any(marker in lowered for marker in _RESETS):
            return Outcome(failure=FailureKind.RESET, elapsed=elapsed, detail=details)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and details == CALLER_DEADLINE:
        return Outcome(failure=FailureKind.TIMEOUT, elapsed=elapsed, detail=details)
    return Outcome(status=200, grpc_status=code.value[0], elapsed=elapsed, detail=details)


def reply_code(reply: Reply) -> grpc.StatusCode:
    """The status a local reply ends the call with.

    A route timeout is DEADLINE_EXCEEDED, as current Envoy answers gRPC timeouts (it used to
    map the 504 to UNAVAILABLE, which made clients retry expired calls).
    """
    if FLAG_UPSTREAM_TIMEOUT in reply.flags:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    status = reply.grpc_status if reply.grpc_status is not None else 2
    return _CODES.get(status, grpc.StatusCode.UNKNOWN)


class MeshRpcError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A call the mesh answered itself (fault abort, overflow, no route, no healthy upstream,
    route timeout, RBAC): what a sidecar's trailers-only reply looks like to a grpc client.

    Also a finished ``grpc.Call`` and ``grpc.Future``, like grpc's own errors. ``flags`` holds
    Envoy's response flags (``UO``, ``FI``...), which Envoy never sends to clients.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: Sequence[tuple[str, str]] = (),
        flags: tuple[str, ...] = (),
        attempts: int = 0,
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self._trailing = tuple(trailing_metadata)
        self.flags = flags
        self.attempts = attempts

    def __str__(self) -> str:
        return f"<MeshRpcError code={self._code.name} details={self._details!r}>"

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing

    def debug_error_string(self) -> str:
        return f"meshlib local reply: {self._code.name}: {self._details} flags={self.flags}"

    # grpc.RpcContext
    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False  # already terminated: the caller runs nothing later

    # grpc.Future
    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> BaseException:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


class ErrorType(Protocol):
    """The colour's local-reply error: :class:`MeshRpcError` or ``MeshAioRpcError``."""

    def __call__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: Sequence[tuple[str, str]] = (),
        flags: tuple[str, ...] = (),
        attempts: int = 0,
        /,
    ) -> BaseException: ...


def error_for_reply(
    reply: Reply, attempts: int, error_type: ErrorType = MeshRpcError
) -> BaseException:
    """A local reply as the colour's RpcError (a sidecar's trailers-only answer)."""
    return error_type(reply_code(reply), reply.body, reply.headers, reply.flags, attempts)


def error_for_fail(
    command: Fail,
    last: BaseException | None,
    attempts: int,
    error_type: ErrorType = MeshRpcError,
) -> BaseException:
    """The caller's own deadline expired (grpc's DEADLINE_EXCEEDED), or a pass-through error."""
    if last is not None and command.outcome.detail != "caller timeout":
        return last
    return error_type(grpc.StatusCode.DEADLINE_EXCEEDED, CALLER_DEADLINE, (), (), attempts)


def route_timeout_error(error_type: Callable[..., _E], attempts: int) -> _E:
    """A stream the route timeout (or the inherited deadline) cut: Envoy's 504 UT as gRPC."""
    return error_type(grpc.StatusCode.DEADLINE_EXCEEDED, UPSTREAM_TIMEOUT_BODY, (), _UT, attempts)


# ------------------------------------------------------------------------------ channels


PoolKey = tuple[str, int, str, int]
"""(address, port, authority, TLS generation or 0 for plaintext)."""


class PooledChannel:
    """One real grpc channel to one endpoint; closed once retired and idle."""

    __slots__ = ("callables", "channel", "in_use", "key", "retired")

    def __init__(self, key: PoolKey, channel: Any) -> None:
        self.key = key
        self.channel = channel
        self.in_use = 0
        self.retired = False
        self.callables: dict[tuple[object, str], Any] = {}
        """The endpoint channel's multicallables per (mesh multicallable, path): building one
        costs µs."""


Factory = Callable[[str, Any, list[tuple[str, Any]]], Any]
"""``(address, credentials or None, options) -> channel`` (sync or aio)."""
Closer = Callable[[Any], None]


class ChannelPool:
    """Per-endpoint channels of one mesh channel, shared by every thread (or one event loop).

    Rotation: grpc channel credentials cannot change (PLUMBING-NOTES §4), so a new identity
    generation gets new channels; the old ones close when their last call ends (closing a grpc
    channel cancels the calls on it).
    """

    def __init__(
        self,
        factory: Factory,
        closer: Closer,
        identity: RotatingIdentity | None,
        options: Iterable[tuple[str, Any]] | None,
    ) -> None:
        self._factory = factory
        self._closer = closer
        self._identity = identity
        self._options = list(options or ())
        self._lock = threading.Lock()
        self._channels: dict[PoolKey, PooledChannel] = {}
        self._credentials: tuple[int, Any] | None = None
        self._closed = False
        self._unsubscribe = identity.subscribe(self._rotated) if identity is not None else None

    def _rotated(self, generation: Generation) -> None:
        idle: list[PooledChannel] = []
        with self._lock:
            for key, entry in list(self._channels.items()):
                if key[3] and key[3] != generation.number:
                    entry.retired = True
                    del self._channels[key]
                    if entry.in_use == 0:
                        idle.append(entry)
        for entry in idle:
            self._closer(entry.channel)

    def _channel_credentials(self, number: int) -> Any:
        cached = self._credentials
        if cached is not None and cached[0] == number:
            return cached[1]
        assert self._identity is not None
        credentials = grpc_channel_credentials(self._identity)
        self._credentials = (number, credentials)
        return credentials

    def acquire(self, attempt: Attempt, authority: str) -> PooledChannel:
        endpoint = attempt.endpoint
        identity = self._identity
        generation = identity.generation.number if attempt.tls and identity is not None else 0
        key: PoolKey = (endpoint.address, endpoint.port, authority, generation)
        with self._lock:
            if self._closed:
                raise RuntimeError("the mesh gRPC channel is closed")
            entry = self._channels.get(key)
            if entry is None:
                entry = self._channels[key] = self._open(key, attempt, authority)
            entry.in_use += 1
        return entry

    def _open(self, key: PoolKey, attempt: Attempt, authority: str) -> PooledChannel:
        address = str(attempt.endpoint)
        credentials = None
        if key[3]:
            credentials = self._channel_credentials(key[3])
            # grpc checks a DNS SAN and cannot skip it; mesh servers carry their service FQDN.
            # It also refuses an authority whose host differs from that name, so the server
            # sees the FQDN (with the port the caller named) as :authority.
            service = attempt.cluster.rpartition("|")[2] or authority.rpartition(":")[0]
            _, colon, port = authority.rpartition(":")
            options = [
                *self._options,
                ("grpc.ssl_target_name_override", service),
                ("grpc.default_authority", f"{service}:{port}" if colon else service),
            ]
        else:
            options = [*self._options, ("grpc.default_authority", authority)]
        return PooledChannel(key, self._factory(address, credentials, options))

    def release(self, entry: PooledChannel) -> None:
        with self._lock:
            entry.in_use -= 1
            close = entry.retired and entry.in_use == 0
        if close:
            self._closer(entry.channel)

    @property
    def open_channels(self) -> int:
        with self._lock:
            return len(self._channels)

    def close(self) -> list[Any]:
        """Forget every channel; returns them for the caller to close (sync or aio)."""
        with self._lock:
            self._closed = True
            channels = [entry.channel for entry in self._channels.values()]
            self._channels.clear()
        if self._unsubscribe is not None:
            self._unsubscribe()
        return channels


def discard(pool: ChannelPool, value: Any, entry: PooledChannel) -> None:
    """An attempt the caller will not get: stop its RPC before its channel may close."""
    try:
        cancel = getattr(value, "cancel", None)
        if cancel is not None:
            cancel()
    finally:
        pool.release(entry)


# --------------------------------------------------------------- channels and multicallables


def _multicallable_factory(kind: str) -> Callable[..., Any]:
    # grpc's four factories differ only by cardinality.
    def factory(
        self: ChannelCore,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._multicallable(kind, method, request_serializer, response_deserializer)

    factory.__name__ = factory.__qualname__ = kind
    return factory


class ChannelCore:
    """What a sync or aio mesh channel holds: the runtime, the logical target and the pool of
    per-endpoint channels; it hands out the colour's multicallables."""

    runtime: OutboundRuntime
    target: Target
    _pool: ChannelPool

    unary_unary = _multicallable_factory("unary_unary")
    unary_stream = _multicallable_factory("unary_stream")
    stream_unary = _multicallable_factory("stream_unary")
    stream_stream = _multicallable_factory("stream_stream")

    def _setup(
        self,
        runtime: OutboundRuntime,
        target: str,
        identity: RotatingIdentity | None,
        factory: Factory,
        closer: Closer,
        options: Any,
    ) -> None:
        self.runtime = runtime
        self.target = parse_target(target)
        if identity is None and isinstance(runtime.identity, RotatingIdentity):
            identity = runtime.identity
        self._pool = ChannelPool(factory, closer, identity, options)

    def _multicallable(self, kind: str, method: str, serializer: Any, deserializer: Any) -> Any:
        raise NotImplementedError

    @property
    def open_channels(self) -> int:
        """Per-endpoint grpc channels currently pooled (tests and debugging)."""
        return self._pool.open_channels


class MultiCallable:
    """A mesh multicallable of any cardinality: the method, its serializers and what it costs
    to build once (the Call of a metadata-less RPC, the endpoint channels' multicallables)."""

    __slots__ = (
        "_bare_call",
        "_channel",
        "_deserializer",
        "_kind",
        "_method",
        "_replayable",
        "_serializer",
        "_unary_request",
    )

    def __init__(
        self, channel: ChannelCore, kind: str, method: str, serializer: Any, deserializer: Any
    ) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        # A request stream is consumed by its first attempt: never replayed.
        self._unary_request = self._replayable = kind.startswith("unary_")
        # Policies only read a Call: one without metadata is the same for every RPC, and the
        # flow keeps what it routed it to in its memo.
        self._bare_call = build_call(channel.target, method, None, replayable=self._replayable)
        self._bare_call.memo = Memo()

    def call_for(self, metadata: Metadata | None) -> Call:
        if not metadata:
            return self._bare_call
        return build_call(self._channel.target, self._method, metadata, replayable=self._replayable)

    def inner(self, entry: PooledChannel, attempt: Attempt) -> Any:
        """The endpoint channel's multicallable for this method (the route may rewrite it)."""
        path = attempt.path or self._method
        found = entry.callables.get((self, path))
        if found is None:
            factory = getattr(entry.channel, self._kind)
            found = entry.callables[self, path] = factory(
                path,
                request_serializer=self._serializer,
                response_deserializer=self._deserializer,
            )
        return found


# ----------------------------------------------------------------------------- one RPC


Schedule = Callable[[float, Callable[[], None]], Any]
"""``(when on time.monotonic, callback) -> handle with cancel()``: a timer thread or
``loop.call_at``."""


class Drive:
    """One RPC's way through the outbound flow, minus the I/O.

    The colour's loop performs ``Send``/``Sleep``/``WaitSlot`` and hands every other command
    to :meth:`finish`. Between them this counts attempts, holds the attempt's pooled channel
    until the flow decides (an attempt it will not deliver is stopped and released at once)
    and turns local replies into the colour's RpcError.
    """

    __slots__ = (
        "attempts",
        "caller_deadline",
        "compression",
        "entry",
        "error",
        "flow",
        "guard",
        "metadata",
        "multi",
        "request",
        "value",
        "wait_for_ready",
    )

    error_type: ClassVar[ErrorType] = MeshRpcError
    metadata_type: ClassVar[Callable[..., Any] | None] = None
    """What the colour's grpc wants metadata as (grpc.aio: ``grpc.aio.Metadata``)."""

    def __init__(
        self,
        multi: MultiCallable,
        request: Any,
        timeout: float | None,
        metadata: Metadata | None,
        wait_for_ready: bool | None,
        compression: Any,
        schedule: Schedule | None = None,
    ) -> None:
        self.multi = multi
        self.request = request
        self.metadata = metadata
        self.wait_for_ready = wait_for_ready
        self.compression = compression
        self.attempts = 0
        self.entry: PooledChannel | None = None
        self.value: Any = None
        self.error: BaseException | None = None
        runtime = multi._channel.runtime
        inherited_of = runtime.inherited_deadline
        inherited = inherited_of() if inherited_of is not None else None
        call = multi.call_for(metadata)
        snapshot = None
        self.guard: StreamGuard | None = None
        self.caller_deadline: float | None = None
        if schedule is not None:
            # Streams: grpc keeps the caller's own deadline, the guard the mesh's bounds.
            now = time.monotonic()
            if timeout is not None:
                self.caller_deadline = now + timeout
            snapshot, route_timeout, per_try = stream_limits(runtime, call)
            if route_timeout is not None or per_try is not None or inherited is not None:
                # The inherited deadline is on the runtime's clock, timers on time.monotonic.
                real = None if inherited is None else now + inherited - runtime.clock.now()
                self.guard = StreamGuard(
                    schedule, route_timeout, per_try, real, unary_request=multi._unary_request
                )
        self.flow = outbound_flow(
            call, runtime, caller_timeout=timeout, inherited_deadline=inherited, snapshot=snapshot
        )

    def start(self, method: Any, attempt: Attempt, request: Any, timeout: float | None) -> Any:
        """Call ``method`` (an endpoint multicallable, or its ``with_call``/``future``) for
        ``attempt``: the request, its timeout and the attempt's metadata. What it returns is
        held as :attr:`value` at once, so that :meth:`close` stops an RPC whose attempt is
        interrupted (an aio task cancelled while it waits for response headers)."""
        metadata: Any = upstream_metadata(self.metadata, attempt)
        wrap = self.metadata_type
        self.value = started = method(
            request,
            timeout=timeout,
            metadata=metadata if wrap is None else wrap(*metadata),
            wait_for_ready=self.wait_for_ready,
            compression=self.compression,
        )
        return started

    def caller_remaining(self) -> float | None:
        """What is left of the caller's own timeout: grpc's deadline for a stream's attempt."""
        deadline = self.caller_deadline
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def acquire(self, attempt: Attempt) -> PooledChannel:
        """The pooled channel for ``attempt``; released by :meth:`close` if the attempt raises."""
        self.attempts += 1
        channel = self.multi._channel
        entry = self.entry = channel._pool.acquire(
            attempt, attempt.authority or channel.target.authority
        )
        self.value = None
        guard = self.guard
        if guard is not None:
            guard.routed()
        return entry

    def routed(self) -> None:
        """The flow sends (or queues for a slot): a unary request has ended, Envoy's clock runs."""
        guard = self.guard
        if guard is not None:
            guard.routed()

    def sent(self, outcome: Outcome, value: Any, error: BaseException | None) -> FlowCommand:
        """The attempt's outcome to the flow; what it will not deliver is dropped at once."""
        self.value = value
        self.error = error
        command = self.flow.send(outcome)
        if type(command) is not Deliver:
            entry = self.entry
            if entry is not None:
                self.entry = None
                discard(self.multi._channel._pool, value, entry)
        return command

    def finish(self, command: FlowCommand) -> Deliver:
        """The final command: a Deliver is returned (the caller now owns :attr:`entry`,
        :attr:`value` and :attr:`guard`), a local reply or failure is raised."""
        conclude(self.flow)
        if type(command) is Deliver:
            return command
        if type(command) is Reply:
            raise error_for_reply(command, self.attempts, self.error_type)
        assert isinstance(command, Fail)
        raise error_for_fail(command, self.error, self.attempts, self.error_type)

    def delivered(self) -> tuple[PooledChannel, StreamGuard | None]:
        """Hand the delivered attempt's channel (and the stream's guard) to the caller."""
        entry, guard = self.entry, self.guard
        assert entry is not None
        self.entry = self.guard = None
        return entry, guard

    def close(self) -> None:
        """Give back what the RPC still holds (errors, cancellation, local replies)."""
        entry = self.entry
        if entry is not None:
            self.entry = None
            discard(self.multi._channel._pool, self.value, entry)
        guard = self.guard
        if guard is not None:
            guard.close()
        self.flow.close()


def complete_unary(command: Deliver) -> None:
    """A unary response was delivered: OK, or the trailers-only status the flow let through."""
    command.complete(OK if command.outcome.grpc_status is None else command.outcome)


_CUT = Outcome(
    status=200,
    failure=FailureKind.TIMEOUT,
    grpc_status=_DEADLINE_EXCEEDED,
    detail=UPSTREAM_TIMEOUT_BODY,
)
"""A delivered stream the mesh cut at its deadline."""


class StreamEnd:
    """Ends a delivered stream exactly once: its guard off, its channel back, the flow told the
    final status (DEADLINE_EXCEEDED when the guard cut it)."""

    __slots__ = ("_command", "_done", "_entry", "_guard", "_lock", "_pool")

    def __init__(
        self, pool: ChannelPool, entry: PooledChannel, command: Deliver, guard: StreamGuard | None
    ) -> None:
        self._pool = pool
        self._entry = entry
        self._command = command
        self._guard = guard
        self._lock = threading.Lock()
        self._done = False

    def __call__(self, code: grpc.StatusCode) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        guard = self._guard
        outcome = Outcome(status=200, grpc_status=code.value[0])
        try:
            if guard is not None:
                guard.close()
                if guard.cut:  # the flow adds Envoy's UT flag for this outcome
                    outcome = _CUT
            self._pool.release(self._entry)
        finally:
            self._command.complete(outcome)


# ---------------------------------------------------------------------- streams' deadlines


def stream_limits(
    runtime: OutboundRuntime, call: Call
) -> tuple[MeshSnapshot, float | None, float | None]:
    """The snapshot for a stream's flow, and its route's timeout and per-try timeout.

    Envoy starts the route timeout when the request ends and stops it when the response ends;
    the flow's deadline starts at routing and ends at response headers, so the driver needs
    the route's own values. The same snapshot goes to the flow: both see the same route.
    """
    snapshot = runtime.snapshot()
    config = snapshot.lookup_host(call.authority, call.port)
    if config is None or config.routes is None:
        return snapshot, None, None  # outside the mesh, or Istio's default route: no timeouts
    matched = match_route(config.routes, call, call.port)
    if matched is None:
        return snapshot, None, None  # the flow answers UNIMPLEMENTED
    route = matched[0]
    return snapshot, route.timeout, route.retries.per_try_timeout


class StreamGuard:
    """The mesh's bounds on one streaming RPC, enforced by cancelling the upstream call.

    As Envoy: the route timeout runs from the end of the request (at once for a unary request,
    at half-close for a client stream) to the end of the response; the per-try timeout only
    until the response starts; the deadline inherited from the inbound request throughout.
    ``cut`` tells the driver to answer DEADLINE_EXCEEDED ``upstream request timeout`` instead
    of the cancellation. Thread-safe: the sync driver calls it from grpc's threads.
    """

    __slots__ = (
        "_armed",
        "_cancel",
        "_closed",
        "_first_byte",
        "_handle",
        "_inherited",
        "_lock",
        "_per_try",
        "_request_end",
        "_route_timeout",
        "_schedule",
        "_started",
        "_unary_request",
        "cut",
    )

    def __init__(
        self,
        schedule: Schedule,
        route_timeout: float | None,
        per_try: float | None,
        inherited: float | None,
        *,
        unary_request: bool,
    ) -> None:
        self._schedule = schedule
        self._route_timeout = route_timeout
        self._per_try = per_try
        self._inherited = inherited
        self._unary_request = unary_request
        self._lock = threading.Lock()
        self._handle: Any = None
        self._armed = 0
        self._cancel: Callable[[], Any] | None = None
        self._request_end: float | None = None
        self._first_byte: float | None = None
        self._started = False
        self._closed = False
        self.cut = False

    def routed(self) -> None:
        """The flow reached its first attempt (or queue): a unary request's timer starts."""
        if self._unary_request and self._request_end is None:
            self._request_end = time.monotonic()

    def attempt(self, cancel: Callable[[], Any], first_byte: float | None = None) -> None:
        """An attempt started: ``cancel`` stops it; ``first_byte`` (seconds) bounds it until its
        response starts (the flow's per-try and overall budget for a server stream)."""
        with self._lock:
            self._cancel = cancel
            self.cut = False
            self._started = False
            if first_byte is not None:
                self._first_byte = time.monotonic() + first_byte
            self._arm()

    def request_ended(self) -> None:
        """A client stream half-closed: Envoy starts the route and per-try timeouts here."""
        with self._lock:
            now = time.monotonic()
            self._request_end = now
            if self._per_try is not None and not self._started:
                self._first_byte = now + self._per_try
            self._arm()

    def response_started(self) -> None:
        """Response headers (or a first message) arrived: the per-try timeout no longer applies."""
        self._started = True  # a timer due for the per-try timeout re-arms for the rest

    def _deadline(self) -> float | None:
        deadline = self._inherited
        if self._request_end is not None and self._route_timeout is not None:
            candidate = self._request_end + self._route_timeout
            if deadline is None or candidate < deadline:
                deadline = candidate
        first_byte = None if self._started else self._first_byte
        if first_byte is not None and (deadline is None or first_byte < deadline):
            deadline = first_byte
        return deadline

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed += 1
        deadline = self._deadline()
        if deadline is not None and not self._closed:
            armed = self._armed
            self._handle = self._schedule(deadline, lambda: self._fire(armed))

    def _fire(self, armed: int) -> None:
        with self._lock:
            if armed != self._armed or self._closed or self._cancel is None:
                return  # re-armed meanwhile (a timer thread may fire a cancelled one late)
            self._handle = None
            deadline = self._deadline()
            if deadline is None:
                return
            if time.monotonic() < deadline - DEADLINE_SLACK:  # early wake, or started since
                self._arm()
                return
            self.cut = True
            cancel = self._cancel
        cancel()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
