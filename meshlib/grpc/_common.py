"""What the sync and grpc.aio drivers share: calls, metadata, outcomes, local errors, channels.

A mesh channel never sends through one long-lived HTTP/2 connection to "the service": every
call runs the outbound flow, which picks an endpoint, and the attempt goes out on a real grpc
channel to that one endpoint (pooled here, keyed by endpoint, TLS generation and authority).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

from meshlib._engine.outbound import Fail
from meshlib._identity.grpc_credentials import grpc_channel_credentials
from meshlib._identity.rotation import Generation, RotatingIdentity
from meshlib._model.call import Call
from meshlib._model.commands import Attempt, Reply
from meshlib._model.outcome import FailureKind, Outcome
from meshlib._policy.replies import FLAG_UPSTREAM_TIMEOUT

__all__ = [
    "CALLER_DEADLINE",
    "ChannelPool",
    "MeshRpcError",
    "Metadata",
    "MetadataView",
    "PooledChannel",
    "StreamDeadline",
    "Target",
    "build_call",
    "error_for_fail",
    "error_for_reply",
    "outcome_of_error",
    "outcome_of_status",
    "parse_target",
    "reply_code",
    "upstream_metadata",
]

Metadata = Sequence[tuple[str, str | bytes]]
DEFAULT_GRPC_PORT = 443
"""grpc's own default when a target names no port."""
CALLER_DEADLINE = "Deadline Exceeded"
"""grpc's own details for an expired deadline (what a plain channel raises)."""
_CONNECT_FAILURES = ("failed to connect", "connections to all backends failing")
_RESETS = ("socket closed", "connection reset", "broken pipe", "stream removed")
# Hop-by-hop names grpc refuses in metadata; ``connection: close`` from the flow has no gRPC
# equivalent (HTTP/2 has no keep-alive header) and is dropped.
_FORBIDDEN = frozenset({"connection", "te", "host", "content-type", "user-agent"})
_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


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
        headers=MetadataView(metadata),
        body_replayable=replayable,
    )


def upstream_metadata(metadata: Metadata | None, attempt: Attempt) -> list[tuple[str, Any]]:
    """The metadata for one attempt: remove, then set (overwrite), then add (Envoy's order)."""
    drop = {name.lower() for name in attempt.remove_headers}
    drop.update(name.lower() for name, _ in attempt.set_headers)
    pairs: list[tuple[str, Any]] = [(k, v) for k, v in (metadata or ()) if k.lower() not in drop]
    for name, value in attempt.set_headers:
        if name not in _FORBIDDEN:
            pairs.append((name.lower(), value))
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


def error_for_reply(reply: Reply, attempts: int) -> MeshRpcError:
    return MeshRpcError(reply_code(reply), reply.body, tuple(reply.headers), reply.flags, attempts)


def error_for_fail(command: Fail, last: BaseException | None, attempts: int) -> BaseException:
    """The caller's own deadline expired (grpc's DEADLINE_EXCEEDED), or a pass-through error."""
    if last is not None and command.outcome.detail != "caller timeout":
        return last
    return MeshRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, CALLER_DEADLINE, attempts=attempts)


class StreamDeadline:
    """The caller's own deadline for a streaming call, as grpc timeouts per attempt.

    Streams are not bounded by the route or per-try timeout: those end at response headers
    for a retry decision, and a long stream that works must not be cut (see docs/grpc.md).
    """

    __slots__ = ("_deadline",)

    def __init__(self, timeout: float | None) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)


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

    def callable(self, owner: object, method: str, make: Callable[[Any], Any]) -> Any:
        """The endpoint channel's multicallable for ``owner`` (cached: building one costs µs)."""
        key = (owner, method)
        found = self.callables.get(key)
        if found is None:
            found = self.callables[key] = make(self.channel)
        return found


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
        if attempt.tls and self._identity is not None:
            generation = self._identity.generation.number
        else:
            generation = 0
        key: PoolKey = (endpoint.address, endpoint.port, authority, generation)
        with self._lock:
            if self._closed:
                raise RuntimeError("the mesh gRPC channel is closed")
            entry = self._channels.get(key)
            if entry is None:
                entry = self._open(key, attempt, authority)
                self._channels[key] = entry
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
