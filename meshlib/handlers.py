"""``@mesh.handler``: the inbound side for entry points that are not HTTP requests.

Queue consumers and scheduled jobs get what the middleware gives HTTP handlers: the caller's
trace context (from a carrier mapping such as message headers) made current so the calls they
make continue the trace, server-side telemetry through the Mesh's inbound hooks, and optionally
a principals check (against the peer of the HTTP request being handled) and a timeout.

Also the small pieces the ASGI/WSGI drivers share: the current peer and the default hooks.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from meshlib._engine.inbound import InboundDecision as _InboundDecision
from meshlib._engine.inbound import InboundHooks as _InboundHooks
from meshlib._model.call import Call as _Call
from meshlib._model.call import Peer as _Peer
from meshlib._policy.authz import compile_values as _compile_values
from meshlib._policy.deadlines import parse_envoy_timeout_ms as _parse_envoy_timeout_ms
from meshlib.errors import MeshError as _MeshError

if TYPE_CHECKING:
    from meshlib._mesh import Mesh

__all__ = [
    "HANDLER_PROTOCOL",
    "PEER_SCOPE_KEY",
    "PermissionDeniedError",
    "bind_peer",
    "context_hooks",
    "current_peer",
    "handler",
    "inbound_hooks_of",
    "unbind_peer",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

PEER_SCOPE_KEY = "meshlib.peer"
"""Where the drivers put the ``Peer`` (ASGI scope, WSGI environ)."""
HANDLER_PROTOCOL = "handler"
_EXPECTED_TIMEOUT = "x-envoy-expected-rq-timeout-ms"
_STATUS_OK = 200
_STATUS_DENIED = 403
_STATUS_TIMEOUT = 504
_STATUS_ERROR = 500

_PEER: contextvars.ContextVar[_Peer | None] = contextvars.ContextVar("meshlib_peer", default=None)

_CarrierSpec = str | Callable[..., Mapping[str, str] | None] | None
"""Where the trace context comes from: a parameter name or a function of the arguments."""


class PermissionDeniedError(_MeshError):
    """The caller's principal is not among the handler's ``principals``."""


def current_peer() -> _Peer | None:
    """The peer of the inbound request being handled (``None`` outside one)."""
    return _PEER.get()


def bind_peer(peer: _Peer | None) -> contextvars.Token[_Peer | None]:
    return _PEER.set(peer)


def unbind_peer(token: contextvars.Token[_Peer | None]) -> None:
    _PEER.reset(token)


def _enter(call: _Call, now: float) -> object:
    from meshlib._telemetry.context import enter_inbound

    return enter_inbound(call.headers, now=now, protocol=call.protocol, peer=call.peer)


def _exit(token: object) -> None:
    from meshlib._telemetry.context import InboundToken, exit_inbound

    exit_inbound(cast(InboundToken, token))


_CONTEXT_HOOKS = _InboundHooks(extract=_enter, detach=_exit)


def context_hooks() -> _InboundHooks:
    """Hooks that only make the trace context and deadline current (no metrics)."""
    return _CONTEXT_HOOKS


def inbound_hooks_of(mesh: Mesh) -> _InboundHooks:
    """The Mesh's inbound hooks, or the context-only ones when telemetry is not wired."""
    hooks = getattr(mesh, "inbound_hooks", None)
    if isinstance(hooks, _InboundHooks):
        return hooks
    telemetry_hooks = getattr(mesh, "_inbound_hooks", None)
    if telemetry_hooks is not None:
        # Metrics on by default: the Mesh builds its telemetry on first use.
        built = telemetry_hooks()
        if isinstance(built, _InboundHooks):
            return built
    return _CONTEXT_HOOKS


class _CarrierHeaders:
    """A case-insensitive ``HeaderView`` over a carrier, with the handler's own timeout."""

    __slots__ = ("_values",)

    def __init__(self, carrier: Mapping[str, str] | None, timeout: float | None) -> None:
        values = {str(k).lower(): str(v) for k, v in (carrier or {}).items()}
        if timeout is not None:
            inherited = _parse_envoy_timeout_ms(values.get(_EXPECTED_TIMEOUT))
            if inherited is None or timeout < inherited:
                values[_EXPECTED_TIMEOUT] = str(max(1, int(timeout * 1000)))
        self._values = values

    def get(self, key: str, /) -> str | None:
        return self._values.get(key.lower())

    def __contains__(self, key: object, /) -> bool:
        return isinstance(key, str) and key.lower() in self._values


def _carrier_getter(
    fn: Callable[..., Any], carrier: _CarrierSpec
) -> Callable[[tuple[Any, ...], dict[str, Any]], Mapping[str, str] | None]:
    if carrier is None:
        return lambda args, kwargs: None
    if callable(carrier):
        spec = carrier
        return lambda args, kwargs: spec(*args, **kwargs)
    signature = inspect.signature(fn)
    if carrier not in signature.parameters:
        raise ValueError(f"carrier {carrier!r} is not a parameter of {fn.__qualname__}")
    name = carrier

    def pick(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Mapping[str, str] | None:
        value = signature.bind_partial(*args, **kwargs).arguments.get(name)
        return value if isinstance(value, Mapping) else None

    return pick


class _Handler:
    """What one decorated function shares between calls."""

    def __init__(
        self,
        mesh: Mesh,
        fn: Callable[..., Any],
        principals: Iterable[str] | None,
        timeout: float | None,
        carrier: _CarrierSpec,
        name: str | None,
    ) -> None:
        self.mesh = mesh
        self.name = name or fn.__qualname__
        listed = list(principals) if principals is not None else None
        self.principals = _compile_values(listed, "principals") if listed else None
        if listed is not None and not listed:
            raise ValueError("principals=[] would refuse every call; omit it to allow all")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive seconds")
        self.timeout = timeout
        self.carrier = _carrier_getter(fn, carrier)

    def begin(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _InboundDecision:
        peer = _PEER.get()
        headers = _CarrierHeaders(self.carrier(args, kwargs), self.timeout)
        call = _Call(
            protocol=HANDLER_PROTOCOL,
            method="",
            scheme="",
            authority=self.name,
            host=self.name,
            port=0,
            path=self.name,
            headers=headers,
            peer=peer,
        )
        now = time.monotonic()
        hooks = inbound_hooks_of(self.mesh)
        flow = _InboundDecision(call, now, hooks=hooks)
        if self.principals is not None:
            principal = peer.principal if peer is not None and peer.mtls else None
            if not self.principals.matches(principal):
                flow.allowed = False
                flow.status = _STATUS_DENIED
                flow.details = "handler_principals_denied"
                flow.finish(time.monotonic())
                raise PermissionDeniedError(
                    f"{self.name}: caller {principal or 'without mTLS identity'} is not allowed"
                )
        if hooks.extract is not None:
            flow.token = hooks.extract(call, now)
        return flow


def _finish(flow: _InboundDecision, error: BaseException | None) -> None:
    flags: tuple[str, ...]
    if error is None:
        status, flags = _STATUS_OK, ()
    elif isinstance(error, TimeoutError):
        status, flags = _STATUS_TIMEOUT, ("UT",)
    elif isinstance(error, Exception):
        status, flags = _STATUS_ERROR, ()
    else:
        status, flags = 0, ("DC",)
    flow.finish(time.monotonic(), status, flags=flags)


def _wrap(state: _Handler, fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            flow = state.begin(args, kwargs)
            try:
                if state.timeout is None:
                    result = await fn(*args, **kwargs)
                else:
                    async with asyncio.timeout(state.timeout):
                        result = await fn(*args, **kwargs)
            except BaseException as error:
                _finish(flow, error)
                raise
            _finish(flow, None)
            return result

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        # A thread cannot be interrupted: the timeout bounds the mesh calls made inside
        # (deadline propagation), it does not stop the function.
        flow = state.begin(args, kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            _finish(flow, error)
            raise
        _finish(flow, None)
        return result

    return run


@overload
def handler(mesh: Mesh, fn: Callable[_P, _R], /) -> Callable[_P, _R]: ...


@overload
def handler(
    mesh: Mesh,
    fn: None = None,
    /,
    *,
    principals: Iterable[str] | None = None,
    timeout: float | None = None,
    carrier: _CarrierSpec = None,
    name: str | None = None,
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]: ...


def handler(
    mesh: Mesh,
    fn: Callable[_P, _R] | None = None,
    /,
    *,
    principals: Iterable[str] | None = None,
    timeout: float | None = None,
    carrier: _CarrierSpec = None,
    name: str | None = None,
) -> Callable[_P, _R] | Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a sync or async entry point (``mesh.handler`` is this, bound to the Mesh).

    ``carrier``: the name of a parameter holding the message headers (a mapping), or a function
    of the call's arguments returning them; the trace context and an
    ``x-envoy-expected-rq-timeout-ms`` deadline are taken from there. ``principals``: Istio
    principal patterns (``cluster.local/ns/default/sa/web``, ``*/sa/web``...) the mTLS peer of
    the current request must match, else ``PermissionDeniedError``. ``timeout`` (seconds):
    async handlers are cancelled with ``TimeoutError``; for both colours it is the deadline the
    mesh calls made inside inherit.
    """

    def decorate(target: Callable[_P, _R]) -> Callable[_P, _R]:
        state = _Handler(mesh, target, principals, timeout, carrier, name)
        return cast(Callable[_P, _R], _wrap(state, target))

    if fn is not None:
        return decorate(fn)
    return decorate
