"""The gRPC server drivers: interceptors that put each RPC behind the inbound flow.

Server interceptors only see the method and metadata, not the peer (PLUMBING-NOTES §4), so the
interceptor wraps the returned ``RpcMethodHandler``: the wrapper has the servicer context,
reads the peer's SPIFFE ID from ``auth_context()``, runs ``inbound_flow`` and aborts with its
status (``PERMISSION_DENIED`` / ``RBAC: access denied``) or calls the handler.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from meshlib._engine.inbound import InboundDecision, inbound_flow
from meshlib._model.call import Call, Peer
from meshlib.grpc._common import MetadataView
from meshlib.handlers import bind_peer, inbound_hooks_of, unbind_peer

if TYPE_CHECKING:
    from meshlib._mesh import Mesh

__all__ = ["AioMeshServerInterceptor", "MeshServerInterceptor", "peer_of"]

_OK = 0
_UNKNOWN: int = grpc.StatusCode.UNKNOWN.value[0]
_CANCELLED: int = grpc.StatusCode.CANCELLED.value[0]
_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def peer_of(context: Any) -> Peer:
    """The verified peer of an RPC: SPIFFE ID from the TLS auth context, address from peer()."""
    auth = context.auth_context() or {}
    ids = auth.get("peer_spiffe_id") or ()
    security = auth.get("transport_security_type") or ()
    mtls = b"ssl" in security and bool(auth.get("x509_pem_cert"))
    spiffe_id = ids[0].decode("ascii") if ids and mtls else None
    address, port = _address(context.peer() or "")
    return Peer(
        spiffe_id=spiffe_id, address=address, port=port, mtls=mtls and spiffe_id is not None
    )


def _address(peer: str) -> tuple[str | None, int | None]:
    # "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:/path"
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None, None
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    return (host or None), (int(port) if port.isdigit() else None)


def _authority(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == ":authority" and isinstance(value, str):
            return value
    return ""


class _Inbound:
    """What the sync and aio interceptors share: the Call and the decision."""

    def __init__(self, mesh: Mesh, port: int | None) -> None:
        self.mesh = mesh
        self.port = port if port is not None else 0

    def decide(self, method: str, metadata: Any, context: Any) -> InboundDecision:
        peer = peer_of(context)
        authority = _authority(metadata)
        host = authority.rpartition(":")[0] if ":" in authority else authority
        call = Call(
            protocol="grpc",
            method="POST",
            scheme="https" if peer.mtls else "http",
            authority=authority,
            host=host.lower(),
            port=self.port,
            path=method,
            headers=MetadataView(metadata),
            peer=peer,
        )
        mesh = self.mesh
        return inbound_flow(
            call,
            mesh.snapshot,
            now=time.monotonic(),
            hooks=inbound_hooks_of(mesh),
            source_ip=peer.address,
        )


def _status_of(context: Any, error: BaseException | None) -> int:
    if error is not None:
        code = getattr(error, "code", None)
        if callable(code):
            try:
                value = code()
                if isinstance(value, grpc.StatusCode):
                    return int(value.value[0])
            except Exception:  # pragma: no cover - a foreign error type
                pass
        if not isinstance(error, Exception):
            return _CANCELLED
    code_of = getattr(context, "code", None)
    value = code_of() if code_of is not None else None
    if isinstance(value, grpc.StatusCode):
        return int(value.value[0])
    if isinstance(value, int):
        return int(value)
    return _UNKNOWN if error is not None else _OK


class _Served:
    """The handler's part of one allowed RPC: the peer bound while it runs, and its record
    (with the status it ended with) once it has."""

    __slots__ = ("_context", "_decision", "_token")

    def __init__(self, decision: InboundDecision, context: Any) -> None:
        self._decision = decision
        self._context = context
        self._token: Any = None

    def __enter__(self) -> None:
        self._token = bind_peer(self._decision.call.peer)

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        unbind_peer(self._token)
        self._decision.finish(time.monotonic(), 200, grpc_status=_status_of(self._context, error))


def _behaviour(handler: Any) -> Callable[..., Any]:
    behaviour: Callable[..., Any] = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return behaviour


class MeshServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """``grpc.server(pool, interceptors=[mesh.grpc_server_interceptor()])``."""

    def __init__(self, mesh: Mesh, *, port: int | None = None) -> None:
        self._inbound = _Inbound(mesh, port)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return handler
        method: str = details.method
        metadata = details.invocation_metadata
        inbound = self._inbound
        behaviour = _behaviour(handler)

        def unary(request: Any, context: Any) -> Any:
            decision = inbound.decide(method, metadata, context)
            if not decision.allowed:
                _refuse(decision, context)
            with _Served(decision, context):
                return behaviour(request, context)

        def streaming(request: Any, context: Any) -> Iterator[Any]:
            decision = inbound.decide(method, metadata, context)
            if not decision.allowed:
                _refuse(decision, context)
            with _Served(decision, context):
                yield from behaviour(request, context)

        return _rebuild(handler, streaming if handler.response_streaming else unary)


def _refuse(decision: InboundDecision, context: Any) -> None:
    try:
        context.abort(_CODES.get(decision.grpc_status or _UNKNOWN), decision.body)
    finally:
        decision.finish(time.monotonic(), 200)


def _rebuild(handler: Any, behaviour: Callable[..., Any]) -> Any:
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AioMeshServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """``grpc.aio.server(interceptors=[mesh.grpc_aio_server_interceptor()])``."""

    def __init__(self, mesh: Mesh, *, port: int | None = None) -> None:
        self._inbound = _Inbound(mesh, port)

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        method: str = details.method
        metadata = details.invocation_metadata
        inbound = self._inbound
        behaviour = _behaviour(handler)

        async def unary(request: Any, context: Any) -> Any:
            decision = inbound.decide(method, metadata, context)
            if not decision.allowed:
                await _refuse_aio(decision, context)
            with _Served(decision, context):
                result = behaviour(request, context)
                if hasattr(result, "__await__"):
                    result = await result
                return result

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            decision = inbound.decide(method, metadata, context)
            if not decision.allowed:
                await _refuse_aio(decision, context)
            with _Served(decision, context):
                result = behaviour(request, context)
                if hasattr(result, "__aiter__"):
                    async for message in result:
                        yield message
                elif hasattr(result, "__await__"):
                    await result  # a handler that writes with context.write()
                else:
                    for message in result:
                        yield message

        return _rebuild(handler, streaming if handler.response_streaming else unary)


async def _refuse_aio(decision: InboundDecision, context: Any) -> None:
    try:
        await context.abort(_CODES.get(decision.grpc_status or _UNKNOWN), decision.body)
    finally:
        decision.finish(time.monotonic(), 200)
