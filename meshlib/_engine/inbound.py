"""The inbound flow: what a sidecar does in front of a workload's own handlers.

Order (DESIGN "inbound_flow"): the peer is checked against the workload's PeerAuthentication
mode for the port, the trace context is extracted (through hooks), the request is authorized
(403 ``RBAC: access denied`` / gRPC ``PERMISSION_DENIED``; 400 for a path normalization
rejects), and the driver delivers it with the normalized path. Whatever happens, the driver
calls ``InboundDecision.finish`` once, which detaches the trace context and records the
server-side telemetry through the hooks.

Pure and synchronous: no I/O and no event loop, so the ASGI, WSGI and gRPC server drivers all
run the same code. Times are monotonic seconds given by the driver. With no hooks nothing is
recorded and nothing is extracted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshlib._engine.snapshot import MeshSnapshot
from meshlib._model.call import Call, Peer
from meshlib._policy.authz import DENY_BODY, AuthzRequest, Decision
from meshlib._policy.paths import DEFAULT_PATH_NORMALIZATION, normalize_path, strip_query
from meshlib._policy.peerauth import MESH_DEFAULT_MTLS, MtlsMode

__all__ = [
    "BAD_PATH_BODY",
    "DETAILS_BAD_PATH",
    "DETAILS_EXEMPT",
    "DETAILS_MTLS_REQUIRED",
    "GRPC_INVALID_ARGUMENT",
    "GRPC_PERMISSION_DENIED",
    "GRPC_UNAUTHENTICATED",
    "MTLS_REQUIRED_BODY",
    "NO_EXEMPT_PATHS",
    "NO_INBOUND_HOOKS",
    "ExemptPaths",
    "InboundDecision",
    "InboundHooks",
    "InboundRecord",
    "inbound_flow",
    "rbac_details",
]

GRPC_INVALID_ARGUMENT = 3
GRPC_PERMISSION_DENIED = 7
GRPC_UNAUTHENTICATED = 16
STATUS_FORBIDDEN = 403
STATUS_BAD_REQUEST = 400

MTLS_REQUIRED_BODY = "mTLS required: PeerAuthentication STRICT refuses plaintext"
BAD_PATH_BODY = "Bad Request"
DETAILS_MTLS_REQUIRED = "mtls_required"
"""Envoy resets such a connection during the handshake; a driver that already accepted it
(a plain server) answers locally instead and says why in the record."""
DETAILS_BAD_PATH = "path_normalization_failed"
DETAILS_EXEMPT = "authz_exempt_path"


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """One finished inbound request, for server-side (``reporter="destination"``) telemetry."""

    call: Call
    status: int
    """HTTP status sent; 0 when the handler raised before answering or the client went away."""
    flags: tuple[str, ...]
    """Envoy response flags (``DC`` when the client disconnected)."""
    start: float
    end: float
    peer: Peer | None
    decision: Decision | None = None
    """The authorization decision (``None``: exempt path or refused before authorization);
    count it, and log its ``audit`` and ``dry_run`` matches."""
    grpc_status: int | None = None
    details: str = ""
    """Envoy's response code details for a local answer (``rbac_access_denied...``)."""
    response_bytes: int = 0
    """Response body bytes sent (what the driver saw; 0 when it cannot tell)."""

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def mtls(self) -> bool:
        return self.peer is not None and self.peer.mtls


ExtractHook = Callable[[Call, float], object]
"""``(call, now) -> token``: make the caller's trace context (and deadline) current."""
DetachHook = Callable[[object], None]
RecordHook = Callable[[InboundRecord], None]


@dataclass(frozen=True, slots=True)
class InboundHooks:
    """Server-side telemetry callbacks; each may be ``None`` (one test per request)."""

    on_request: RecordHook | None = None
    """Once per request, whatever its fate (refused, denied, answered, failed)."""
    extract: ExtractHook | None = None
    """After the peer check: extract and attach the trace context; returns a token."""
    detach: DetachHook | None = None
    """In ``finish``: given the token ``extract`` returned (called even if the handler raised)."""


NO_INBOUND_HOOKS = InboundHooks()


@dataclass(frozen=True, slots=True)
class ExemptPaths:
    """Paths answered without PeerAuthentication or authorization (Kubernetes probes).

    Istio reaches the same end by rewriting probes through its agent. ``/healthz`` is exact,
    ``/health/*`` a prefix; compared with the normalized path, query removed. Never implicit:
    only what the application lists.
    """

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, paths: Iterable[str]) -> ExemptPaths:
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in paths:
            if not path.startswith("/"):
                raise ValueError(f"exempt path {path!r} must start with '/'")
            if path.endswith("*"):
                prefixes.append(path[:-1])
            else:
                exact.add(path)
        return cls(frozenset(exact), tuple(prefixes))

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        return path in self.exact or (bool(self.prefixes) and path.startswith(self.prefixes))

    def describe(self) -> str:
        return ", ".join(sorted(self.exact) + [f"{p}*" for p in self.prefixes])


NO_EXEMPT_PATHS = ExemptPaths()


def rbac_details(decision: Decision) -> str:
    """Envoy's response code details for an RBAC denial."""
    if not decision.policy:
        return "rbac_access_denied_matched_policy[none]"
    namespace, _, name = decision.policy.partition("/")
    return (
        f"rbac_access_denied_matched_policy[ns[{namespace}]-policy[{name}]-rule[{decision.rule}]]"
    )


@dataclass(slots=True, eq=False)
class InboundDecision:
    """What the driver does with one request, and its completion.

    ``allowed``: deliver the request, with ``path`` as its target when it is not ``None``
    (normalization changed it; Envoy forwards the normalized path with the original query).
    Otherwise answer ``status`` / ``grpc_status`` with ``body`` locally. Either way call
    ``finish`` exactly once (a second call does nothing).
    """

    call: Call
    start: float
    allowed: bool = True
    status: int = 0
    grpc_status: int | None = None
    body: str = ""
    details: str = ""
    path: str | None = None
    decision: Decision | None = None
    hooks: InboundHooks = NO_INBOUND_HOOKS
    token: object = field(default=None, repr=False)
    finished: bool = False

    def finish(
        self,
        end: float,
        status: int | None = None,
        *,
        grpc_status: int | None = None,
        flags: tuple[str, ...] = (),
        response_bytes: int = 0,
    ) -> InboundRecord | None:
        """Detach the trace context and record the request; returns the record (if hooks)."""
        if self.finished:
            return None
        self.finished = True
        hooks = self.hooks
        try:
            if self.token is not None and hooks.detach is not None:
                hooks.detach(self.token)
        finally:
            self.token = None
        if hooks.on_request is None:
            return None
        if status is None:
            status = self.status
        if grpc_status is None:
            grpc_status = self.grpc_status
        record = InboundRecord(
            call=self.call,
            status=status,
            flags=flags,
            start=self.start,
            end=end,
            peer=self.call.peer,
            decision=self.decision,
            grpc_status=grpc_status,
            details=self.details,
            response_bytes=response_bytes,
        )
        hooks.on_request(record)
        return record


def _peer_allowed(mode: MtlsMode, peer: Peer | None) -> bool:
    mtls = peer is not None and peer.mtls
    return mtls or mode.accepts_plaintext


def inbound_flow(
    call: Call,
    snapshot: MeshSnapshot,
    *,
    now: float,
    hooks: InboundHooks | None = None,
    source_ip: str | None = None,
    sni: str | None = None,
    destination_ip: str | None = None,
    request_principal: str | None = None,
    claims: Mapping[str, Any] | None = None,
    exempt: ExemptPaths = NO_EXEMPT_PATHS,
) -> InboundDecision:
    """Decide one inbound request (``call.peer`` from the connection, ``call.port`` the
    workload port) against ``snapshot``.

    ``call.protocol == "grpc"`` fills ``grpc_status`` on refusals. A DISABLE port ignores a
    client certificate (Istio does not terminate mTLS there), so principals never match.
    """
    hooks = hooks or NO_INBOUND_HOOKS
    grpc = call.protocol == "grpc"
    raw = call.path
    authorizer = snapshot.authorization
    mode_of_paths = (
        authorizer.path_normalization if authorizer is not None else DEFAULT_PATH_NORMALIZATION
    )
    normalized = normalize_path(raw, mode_of_paths)
    flow = InboundDecision(call, now, hooks=hooks)
    if normalized is None:
        flow.allowed = False
        flow.status = STATUS_BAD_REQUEST
        flow.grpc_status = GRPC_INVALID_ARGUMENT if grpc else None
        flow.body = BAD_PATH_BODY
        flow.details = DETAILS_BAD_PATH
        return flow
    without_query = strip_query(raw) if ("?" in raw or "#" in raw) else raw
    if normalized != without_query:
        query = raw.partition("#")[0].partition("?")[2]
        flow.path = f"{normalized}?{query}" if query else normalized
    if exempt and normalized in exempt:
        flow.details = DETAILS_EXEMPT
        return flow
    resolved = snapshot.peer_authentication
    mode = resolved.mode_for(call.port) if resolved is not None else MESH_DEFAULT_MTLS
    peer = call.peer
    if mode is MtlsMode.DISABLE and peer is not None and peer.mtls:
        peer = Peer(address=peer.address, port=peer.port)
        call.peer = peer
    if not _peer_allowed(mode, peer):
        flow.allowed = False
        flow.status = STATUS_FORBIDDEN
        flow.grpc_status = GRPC_UNAUTHENTICATED if grpc else None
        flow.body = MTLS_REQUIRED_BODY
        flow.details = DETAILS_MTLS_REQUIRED
        return flow
    if hooks.extract is not None:
        flow.token = hooks.extract(call, now)
    if authorizer is None:
        return flow
    request = AuthzRequest.from_call(
        call,
        source_ip=source_ip,
        request_principal=request_principal,
        claims=claims,
        sni=sni,
        destination_ip=destination_ip,
    )
    decision = authorizer.check(request)
    flow.decision = decision
    if decision.allowed:
        return flow
    flow.allowed = False
    flow.path = None
    if decision.bad_path:  # pragma: no cover - normalization already rejected it above
        flow.status = STATUS_BAD_REQUEST
        flow.grpc_status = GRPC_INVALID_ARGUMENT if grpc else None
        flow.body = BAD_PATH_BODY
        flow.details = DETAILS_BAD_PATH
        return flow
    flow.status = STATUS_FORBIDDEN
    flow.grpc_status = GRPC_PERMISSION_DENIED if grpc else None
    flow.body = DENY_BODY
    flow.details = rbac_details(decision)
    return flow
