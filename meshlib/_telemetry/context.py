"""The request context that travels from an inbound request to the calls its handler makes.

One contextvar holds an immutable ``InboundContext``: request id, absolute deadline, peer,
and the trace context. asyncio tasks, ``gather`` and ``to_thread`` copy contextvars, so the
context follows the handler; ``ThreadPoolExecutor.submit``, ``run_in_executor(None, fn)`` and raw
threads do not (PLUMBING-NOTES §7), hence ``wrap``/``run_in_context``/``MeshThreadPoolExecutor``.

Trace context takes one of two roads, chosen per request:

* no tracer provider installed (the common case): the propagation headers are copied as they
  arrived (``passthrough``), no parsing, and written out again unchanged — what an OTel
  extract/attach/inject round trip would produce without the SDK, at a fraction of its cost;
* an SDK provider installed: extract through the propagator and attach the OTel context, so the
  handler's own spans and meshlib's client spans become children of the caller's trace.

If the handler changes the OTel context itself (a span, baggage), outbound calls notice (the
current OTel context is no longer the one seen at entry) and inject it properly.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from opentelemetry import context as otel_context

from meshlib._policy.deadlines import (
    parse_envoy_timeout_ms,
    parse_grpc_timeout,
    remaining_ms_header,
)
from meshlib._telemetry.tracing import (
    HEADER_REQUEST_ID,
    MeshSpan,
    Tracing,
    get_tracing,
    new_request_id,
)

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from meshlib._model.call import HeaderView, Peer
    from meshlib._telemetry.executor import (  # re-exported, loaded on first use
        MeshThreadPoolExecutor as MeshThreadPoolExecutor,  # noqa: PLC0414
    )

HEADER_EXPECTED_TIMEOUT: Final = "x-envoy-expected-rq-timeout-ms"
HEADER_GRPC_TIMEOUT: Final = "grpc-timeout"
PROTOCOL_GRPC: Final = "grpc"

P = ParamSpec("P")
R = TypeVar("R")


# Built once per inbound request: not frozen, because a frozen dataclass's __init__ pays
# object.__setattr__ per field (~2 µs here). Read-only by convention.
@dataclass(slots=True, eq=False)
class InboundContext:
    """What an inbound request hands to the outbound calls its handler makes (read-only)."""

    request_id: str
    deadline: float | None
    """Absolute monotonic time, from the caller's remaining budget; ``None`` if unbounded."""
    protocol: str
    peer: Peer | None = None
    sampled: bool = False
    """The trace decision; only computed when a tracer provider is installed."""
    trace_headers: tuple[tuple[str, str], ...] = ()
    """Propagation headers as received (passthrough road)."""
    otel_context: Context | None = None
    """The OTel context current after entry; outbound calls compare it with the current one."""
    span: MeshSpan | None = None
    """The server span, when sampled and a span name was given."""
    passthrough: bool = False
    """Whether ``trace_headers`` stand for the trace context (no OTel extract was done)."""


@dataclass(slots=True)
class InboundToken:
    """Returned by ``enter_inbound``; give it back to ``exit_inbound`` in the same context."""

    context: InboundContext
    _var_token: contextvars.Token[InboundContext | None]
    _otel_token: object | None


_CURRENT: contextvars.ContextVar[InboundContext | None] = contextvars.ContextVar(
    "meshlib_inbound", default=None
)


def _inherited_deadline(headers: HeaderView, now: float, protocol: str) -> float | None:
    seconds = parse_envoy_timeout_ms(headers.get(HEADER_EXPECTED_TIMEOUT))
    if protocol == PROTOCOL_GRPC:
        grpc_seconds = parse_grpc_timeout(headers.get(HEADER_GRPC_TIMEOUT))
        if grpc_seconds is not None and (seconds is None or grpc_seconds < seconds):
            seconds = grpc_seconds
    return None if seconds is None else now + seconds


def enter_inbound(
    headers: HeaderView,
    *,
    now: float,
    protocol: str,
    peer: Peer | None = None,
    tracing: Tracing | None = None,
    extract: bool | None = None,
    span_name: tuple[str, int] | None = None,
    method: str = "",
    url: str = "",
) -> InboundToken:
    """Make this request's context current; call ``exit_inbound(token)`` when it ends.

    ``headers`` is a read-only view (``get`` is all it needs). ``now`` is monotonic seconds.
    ``extract`` forces (``True``) or forbids (``False``) the OTel extract road; by default it
    is taken when a tracer provider is installed. ``span_name`` = ``(fqdn, port)`` starts a
    server span for sampled requests (with ``method`` and ``url`` as attributes).
    """
    tracing = tracing or get_tracing()
    request_id = headers.get(HEADER_REQUEST_ID) or new_request_id()
    deadline = _inherited_deadline(headers, now, protocol)
    use_otel = tracing.active() if extract is None else extract
    otel_token: object | None = None
    if use_otel:
        parent = tracing.extract(headers)
        sampled = tracing.sampled_for(request_id, headers, parent)
        span = None
        if sampled and span_name is not None:
            span = tracing.start_server_span(
                fqdn=span_name[0],
                port=span_name[1],
                method=method,
                url=url,
                request_id=request_id,
                protocol=protocol,
                peer_address=peer.address if peer is not None else None,
                peer_principal=peer.principal if peer is not None else None,
                parent=parent,
            )
        attached = span.context if span is not None else parent
        otel_token = otel_context.attach(attached)
        ctx = InboundContext(
            request_id=request_id,
            deadline=deadline,
            protocol=protocol,
            peer=peer,
            sampled=sampled,
            otel_context=attached,
            span=span,
        )
    else:
        trace_headers = []
        for name in tracing.passthrough:
            value = headers.get(name)
            if value is not None:
                trace_headers.append((name, value))
        ctx = InboundContext(
            request_id=request_id,
            deadline=deadline,
            protocol=protocol,
            peer=peer,
            trace_headers=tuple(trace_headers),
            otel_context=otel_context.get_current(),
            passthrough=True,
        )
    return InboundToken(ctx, _CURRENT.set(ctx), otel_token)


def exit_inbound(token: InboundToken, *, end_span: bool = True) -> None:
    """Restore the previous context; ends the server span if the driver did not (unless
    ``end_span`` is false: the caller finishes it with the response status)."""
    try:
        if end_span and token.context.span is not None:
            token.context.span.end()
    finally:
        if token._otel_token is not None:
            otel_context.detach(token._otel_token)  # type: ignore[arg-type]
        _CURRENT.reset(token._var_token)


def current_inbound() -> InboundContext | None:
    return _CURRENT.get()


def current_deadline() -> float | None:
    ctx = _CURRENT.get()
    return None if ctx is None else ctx.deadline


def current_request_id() -> str | None:
    ctx = _CURRENT.get()
    return None if ctx is None else ctx.request_id


def outbound_headers(
    now: float,
    deadline: float | None,
    *,
    span: MeshSpan | None = None,
    tracing: Tracing | None = None,
) -> list[tuple[str, str]]:
    """Headers an outbound request must carry; drivers *set* them (last writer wins).

    ``deadline`` is the outbound request's own absolute deadline (the flow already took the
    earliest of route timeout and ``current_deadline()``). ``span`` is the client span when
    the request is sampled; its context is injected instead of the inbound one.
    """
    ctx = _CURRENT.get()
    headers: list[tuple[str, str]]
    if span is not None:
        headers = (tracing or get_tracing()).inject(span.context)
    elif ctx is not None and ctx.passthrough and ctx.otel_context is otel_context.get_current():
        headers = list(ctx.trace_headers)
    else:
        current = otel_context.get_current()
        if not current:
            if ctx is None and deadline is None:
                return []
            headers = []
        else:
            # The OTel road, or the handler (or an outer instrumentation) changed the context.
            headers = (tracing or get_tracing()).inject(current)
    if ctx is not None:
        headers.append((HEADER_REQUEST_ID, ctx.request_id))
    if deadline is not None:
        remaining = remaining_ms_header(now, deadline)
        assert remaining is not None  # only None for an unbounded deadline
        headers.append((HEADER_EXPECTED_TIMEOUT, remaining))
    return headers


# --- carrying the context into threads -----------------------------------------------------


def wrap(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` bound to a copy of the caller's context (request, deadline, trace)."""
    ctx = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return ctx.run(fn, *args, **kwargs)

    return run


def run_in_context(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``fn`` now in a copy of the current context (contextvars it sets do not leak back)."""
    return contextvars.copy_context().run(fn, *args, **kwargs)


def thread(target: Callable[..., object], *args: Any, **kwargs: Any) -> threading.Thread:
    """A ``threading.Thread`` (not started) that runs ``target`` in the caller's context."""
    return threading.Thread(target=wrap(target), args=args, kwargs=kwargs)


if not TYPE_CHECKING:  # hidden from type checkers, which would then accept any context.<name>

    def __getattr__(name: str) -> object:
        # PEP 562: concurrent.futures (with queue and its thread module, about 0.2 MB) loads
        # with the executor, not with every process that makes an outbound call.
        if name == "MeshThreadPoolExecutor":
            from meshlib._telemetry.executor import MeshThreadPoolExecutor

            globals()[name] = MeshThreadPoolExecutor
            return MeshThreadPoolExecutor
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
