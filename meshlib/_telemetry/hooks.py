"""The engine's telemetry hooks, built on the primitives: Istio metrics, spans, access logs.

``outbound_hooks`` gives the client flow its ``TelemetryHooks`` (``reporter="source"``),
``inbound_hooks`` the server flow its ``InboundHooks`` (``reporter="destination"``). Both keep
the unsampled hot path to dictionary hits: label sets are interned per (edge, code, flags),
edges per (cluster, endpoint) outbound and per peer inbound; spans exist only when an SDK tracer
provider is installed and the request is sampled; access log records are built only when an
access log is configured.

A source knows its destination from configuration only: app and version from the endpoint's
labels (ServiceEntry/WorkloadEntry), principal from the identity the endpoint must present.
A destination knows its source's principal and namespace from the mTLS peer, and its workload,
app, version and canonical service/revision from ``x-meshlib-peer-metadata`` (meshlib's small
metadata exchange, see ``PEER_METADATA_HEADER``), believed only from an mTLS peer of its own
trust domain; without it they stay ``unknown``.
"""

from __future__ import annotations

import contextvars
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, unquote

from opentelemetry import context as otel_context
from opentelemetry import trace

from meshlib._engine.runtime import PASSTHROUGH_CLUSTER, RequestRecord, TelemetryHooks
from meshlib._model.outcome import Classification
from meshlib._telemetry.context import (
    InboundContext,
    InboundToken,
    current_inbound,
    enter_inbound,
    exit_inbound,
)
from meshlib._telemetry.context import outbound_headers as _context_headers
from meshlib._telemetry.metrics import (
    MUTUAL_TLS,
    NO_TLS,
    REPORTER_DESTINATION,
    REPORTER_SOURCE,
    UNKNOWN,
    EdgeLabels,
    MetricsSink,
    WorkloadLabels,
    format_flags,
)
from meshlib._telemetry.tracing import MeshSpan, Tracing

if TYPE_CHECKING:
    # The inbound flow and the access log are loaded by what uses them (a server, an access
    # log), not by a client's telemetry.
    from meshlib._engine.clusters import ClusterRegistry
    from meshlib._engine.inbound import InboundHooks, InboundRecord
    from meshlib._model.call import Call, Peer
    from meshlib._model.commands import Attempt
    from meshlib._model.endpoint import Endpoint
    from meshlib._model.outcome import Outcome
    from meshlib._telemetry.accesslog import AccessLog

__all__ = [
    "PEER_METADATA_HEADER",
    "SPIFFE_SCHEME",
    "InboundTelemetry",
    "OutboundTelemetry",
    "encode_peer_metadata",
    "inbound_hooks",
    "outbound_hooks",
    "parse_peer_metadata",
    "service_parts",
]

SPIFFE_SCHEME: Final = "spiffe://"
FLAG_OVERFLOW: Final = "UO"
KUBERNETES_SERVICE_SUFFIX: Final = ".svc."
"""``name.namespace.svc.<domain>``: the only FQDN shape whose namespace Istio can read."""
WORKLOAD_NAME_LABEL: Final = "service.istio.io/workload-name"
CONTENT_LENGTH: Final = "content-length"
USER_AGENT: Final = "user-agent"
FORWARDED_FOR: Final = "x-forwarded-for"
HEADER_REQUEST_ID: Final = "x-request-id"
MS_PER_SECOND: Final = 1000.0
MAX_OPEN_SPANS: Final = 4096
"""Client spans waiting for their request's end; a bound so a driver bug cannot leak memory."""
MAX_EDGES: Final = 4096
"""Edges kept per direction; beyond it the cache restarts (label sets stay bounded in the sink)."""
HTTP_PROTOCOLS: Final[Mapping[str, str]] = {"http": "HTTP/1.1", "grpc": "HTTP/2"}
"""Access log ``%PROTOCOL%`` per request protocol (gRPC always runs over HTTP/2)."""
PEER_METADATA_HEADER: Final = "x-meshlib-peer-metadata"
"""The caller's workload labels, ``app=productpage;version=v1;workload=productpage-v1;...``."""
MAX_PEER_METADATA: Final = 1024
"""Longer values are ignored: the header is small by construction, a bigger one is not ours."""
_PEER_FIELDS: Final = ("app", "version", "workload", "namespace", "service", "revision")
"""Header keys; ``service``/``revision`` are the canonical service and revision."""
SPAN_PLACEHOLDER: Final = "outbound"
"""A client span is started before the flow tells which cluster it picked; renamed at the end."""

_Edge = tuple[str, str, int, str]
_PendingSpan = tuple[float, MeshSpan]
_LAST_SPAN: contextvars.ContextVar[_PendingSpan | None] = contextvars.ContextVar(
    "meshlib_client_span", default=None
)


def _spiffe(identity: str | None) -> str:
    if not identity:
        return UNKNOWN
    return identity if identity.startswith(SPIFFE_SCHEME) else SPIFFE_SCHEME + identity


def _principal_namespace(principal: str) -> str | None:
    parts = principal.removeprefix(SPIFFE_SCHEME).split("/")
    for index in range(1, len(parts) - 1):
        if parts[index] == "ns":
            return parts[index + 1]
    return None


def service_parts(fqdn: str) -> tuple[str, str]:
    """(``destination_service_name``, ``destination_service_namespace``) of a service host.

    ``reviews.default.svc.cluster.local`` gives ``("reviews", "default")``; another host (a
    ServiceEntry's ``api.example.com``) is its own name, namespace unknown, as Istio reports.
    """
    if fqdn == PASSTHROUGH_CLUSTER:
        return PASSTHROUGH_CLUSTER, UNKNOWN
    head, sep, _ = fqdn.partition(KUBERNETES_SERVICE_SUFFIX)
    if sep:
        name, dot, namespace = head.partition(".")
        if dot and name and namespace and "." not in namespace:
            return name, namespace
    return fqdn, UNKNOWN


def encode_peer_metadata(own: WorkloadLabels) -> str | None:
    """The ``x-meshlib-peer-metadata`` value describing ``own``; None when nothing is known."""
    values = (
        own.app,
        own.version,
        own.workload,
        own.namespace,
        own.canonical_service,
        own.canonical_revision,
    )
    parts = [
        f"{key}={quote(value, safe='')}"
        for key, value in zip(_PEER_FIELDS, values, strict=True)
        if value and value != UNKNOWN
    ]
    return ";".join(parts) or None


def parse_peer_metadata(value: str) -> dict[str, str]:
    """The known fields of an ``x-meshlib-peer-metadata`` value; malformed parts are skipped."""
    found: dict[str, str] = {}
    if len(value) > MAX_PEER_METADATA:
        return found
    for part in value.split(";"):
        key, sep, raw = part.strip().partition("=")
        if sep and key in _PEER_FIELDS and raw:
            found[key] = unquote(raw)
    return found


def _trust_domain(principal: str) -> str | None:
    if not principal.startswith(SPIFFE_SCHEME):
        return None
    return principal.removeprefix(SPIFFE_SCHEME).partition("/")[0] or None


def _destination_workload(labels: Mapping[str, str]) -> str | None:
    # No metadata exchange: the WorkloadEntry may name its workload; else Istio's usual
    # Deployment naming (<app>-<version>) so Kiali's workload graph keeps versions apart.
    named = labels.get(WORKLOAD_NAME_LABEL)
    if named:
        return named
    app = labels.get("app")
    version = labels.get("version")
    if app and version:
        return f"{app}-{version}"
    return app


def _cluster_key(cluster: str) -> tuple[str, str | None, int] | None:
    """``outbound|9080|v1|reviews...`` -> the ClusterRegistry key ``(fqdn, subset, port)``."""
    parts = cluster.split("|")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    return (parts[3], parts[2] or None, int(parts[1]))


def _request_bytes(call: Call) -> int:
    # Istio counts wire bytes; without the driver's byte count the declared body length is
    # the honest approximation (0 for bodies of unknown length).
    known = call.request_bytes
    if known is not None:
        return known
    value = call.headers.get(CONTENT_LENGTH)
    if value is not None and value.isdigit():
        return int(value)
    return 0


class OutboundTelemetry:
    """Client-side telemetry state; ``hooks`` is what the runtime takes."""

    __slots__ = (
        "_clusters",
        "_edges",
        "_ejected",
        "_lock",
        "_open",
        "_peer_header",
        "_peer_only",
        "_principals",
        "_random",
        "access_log",
        "hooks",
        "sink",
        "source",
        "tracing",
    )

    def __init__(
        self,
        sink: MetricsSink,
        tracing: Tracing,
        *,
        source: WorkloadLabels,
        access_log: AccessLog | None = None,
        clusters: Callable[[], ClusterRegistry | None] | None = None,
        random_source: Callable[[], float] | None = None,
    ) -> None:
        self.sink = sink
        self.tracing = tracing
        self.source = source
        self.access_log = access_log
        self._clusters = clusters
        self._random = random_source or random.random
        self._edges: dict[_Edge, EdgeLabels] = {}
        self._principals: dict[_Edge, str] = {}
        self._open: dict[float, MeshSpan] = {}
        self._ejected: dict[str, frozenset[tuple[str, int]]] = {}
        self._lock = threading.Lock()
        encoded = encode_peer_metadata(source)
        self._peer_header = None if encoded is None else (PEER_METADATA_HEADER, encoded)
        self._peer_only: tuple[tuple[str, str], ...] = (
            () if self._peer_header is None else (self._peer_header,)
        )
        """What a request outside any inbound request or trace carries: the same tuple each time,
        so the flow can keep the attempt headers it builds from it."""
        self.hooks = TelemetryHooks(
            on_attempt=self.on_attempt,
            on_request=self.on_request,
            outbound_headers=self.outbound_headers,
        )

    # --- propagation and client spans ---------------------------------------------------

    def outbound_headers(self, start: float, deadline: float | None) -> Sequence[tuple[str, str]]:
        """Trace context, ``x-request-id`` and our peer metadata; starts the client span of a
        sampled request. The flow calls this only for routed (in-mesh) requests."""
        tracing = self.tracing
        span = None
        if tracing.active():
            span = self._start_span(start)
        elif current_inbound() is None and not otel_context.get_current():
            return self._peer_only
        # The flow writes the deadline header itself (per attempt): pass no deadline here.
        headers = _context_headers(start, None, span=span, tracing=tracing)
        if self._peer_header is not None:
            headers.append(self._peer_header)
        return headers

    def _sampled(self) -> bool:
        ctx = current_inbound()
        if ctx is not None and not ctx.passthrough:
            return ctx.sampled
        parent = trace.get_current_span().get_span_context()
        if parent.is_valid:
            return bool(parent.trace_flags.sampled)
        if ctx is not None:
            return self.tracing.sampled(ctx.request_id)
        return self._random() * 100.0 < self.tracing.sampling_percent

    def _start_span(self, start: float) -> MeshSpan | None:
        if not self._sampled() or start in self._open:
            return None
        ctx = current_inbound()
        span = self.tracing.start_client_span(
            fqdn=SPAN_PLACEHOLDER,
            port=0,
            method="",
            url="",
            cluster="",
            request_id=None if ctx is None else ctx.request_id,
        )
        if span is None:  # pragma: no cover - the provider went away since active()
            return None
        if len(self._open) >= MAX_OPEN_SPANS:
            self._open.clear()
        self._open[start] = span
        _LAST_SPAN.set((start, span))
        return span

    # --- per attempt: principal, retries, ejections -------------------------------------

    def on_attempt(
        self, call: Call, attempt: Attempt, outcome: Outcome, classification: Classification
    ) -> None:
        endpoint = attempt.endpoint
        key = (attempt.cluster, endpoint.address, endpoint.port, call.protocol)
        if attempt.tls and key not in self._principals:
            self._principals[key] = self._principal_of(attempt, endpoint)
        pending = _LAST_SPAN.get()
        if attempt.number > 1:
            self.sink.retry(attempt.cluster)
            if pending is not None:
                pending[1].retry(attempt.number, classification.value)
        if classification is not Classification.SUCCESS:
            self._check_ejection(attempt.cluster, pending)

    @staticmethod
    def _principal_of(attempt: Attempt, endpoint: Endpoint) -> str:
        if endpoint.service_account:
            return _spiffe(endpoint.service_account)
        if len(attempt.expected_peers) == 1:
            return _spiffe(next(iter(attempt.expected_peers)))
        return UNKNOWN

    def _check_ejection(self, cluster: str, pending: _PendingSpan | None) -> None:
        registry = self._clusters() if self._clusters is not None else None
        key = _cluster_key(cluster)
        if registry is None or key is None:
            return
        state = registry.get(key)
        if state is None:
            return
        now_ejected = frozenset(endpoint.key for endpoint, _ in state.ejected())
        with self._lock:
            before = self._ejected.get(cluster, frozenset())
            self._ejected[cluster] = now_ejected
        if now_ejected == before:
            return
        for address, port in now_ejected - before:
            self.sink.ejection(cluster)
            if pending is not None:
                pending[1].ejection(f"{address}:{port}", cluster)
        self.sink.ejected_hosts(cluster, len(now_ejected))

    # --- per request: metrics, span end, access log -------------------------------------

    def on_request(self, record: RequestRecord) -> None:
        call = record.call
        endpoint = record.endpoint
        if endpoint is None:
            key: _Edge = (record.cluster, "", 0, call.protocol)
        else:
            key = (record.cluster, endpoint.address, endpoint.port, call.protocol)
        edge = self._edges.get(key)
        if edge is None:
            edge = self._edge(key, record)
        flags = record.flags
        labels = edge.labels(record.status, flags, record.grpc_status)
        duration_ms = (record.end - record.start) * MS_PER_SECOND
        request_bytes = _request_bytes(call)
        self.sink.request(labels, duration_ms, request_bytes, record.response_bytes)
        if FLAG_OVERFLOW in flags:
            self.sink.overflow(record.cluster)
        if self._open:
            self._end_span(record, edge)
        if self.access_log is not None:
            self._log(record, duration_ms, request_bytes)

    def _edge(self, key: _Edge, record: RequestRecord) -> EdgeLabels:
        endpoint = record.endpoint
        service = record.service
        if record.cluster == PASSTHROUGH_CLUSTER:
            name, namespace = PASSTHROUGH_CLUSTER, UNKNOWN
        else:
            name, namespace = service_parts(service)
        labels: Mapping[str, str] = endpoint.labels if endpoint is not None else {}
        principal = self._principals.get(key, UNKNOWN)
        workload_namespace = (
            _principal_namespace(principal) if principal != UNKNOWN else None
        ) or (namespace if namespace != UNKNOWN else None)
        edge = EdgeLabels(
            reporter=REPORTER_SOURCE,
            source=self.source,
            destination=WorkloadLabels.from_workload(
                workload=_destination_workload(labels),
                namespace=workload_namespace,
                principal=principal,
                labels=labels,
            ),
            destination_service=service or UNKNOWN,
            destination_service_name=name,
            destination_service_namespace=namespace,
            request_protocol=record.call.protocol,
            connection_security_policy=UNKNOWN,  # Istio: the source reporter does not say
        )
        # A request reports an endpoint only after on_attempt saw it (its principal is known).
        if len(self._edges) >= MAX_EDGES:
            self._edges.clear()
        self._edges[key] = edge
        return edge

    def _end_span(self, record: RequestRecord, edge: EdgeLabels) -> None:
        span = self._open.pop(record.start, None)
        if span is None:
            return
        pending = _LAST_SPAN.get()
        if pending is not None and pending[1] is span:
            _LAST_SPAN.set(None)
        call = record.call
        inner = span.span
        port = _cluster_port(record.cluster, call.port)
        inner.update_name(f"{record.service}:{port}/*")
        inner.set_attribute("http.method", call.method)
        inner.set_attribute("http.url", f"{call.scheme}://{call.authority}{call.path}")
        inner.set_attribute("http.protocol", call.protocol)
        inner.set_attribute("upstream_cluster", record.cluster)
        inner.set_attribute("upstream_cluster.name", record.cluster)
        inner.set_attribute("istio.canonical_service", edge.destination.canonical_service)
        inner.set_attribute("istio.namespace", edge.destination_service_namespace)
        if record.attempts > 1:
            inner.set_attribute("retry.attempts", record.attempts)
        endpoint = record.endpoint
        span.finish(
            status_code=record.status,
            response_flags=format_flags(record.flags),
            grpc_status=record.grpc_status,
            upstream_host=None if endpoint is None else str(endpoint),
        )

    def _log(self, record: RequestRecord, duration_ms: float, request_bytes: int) -> None:
        from meshlib._telemetry.accesslog import AccessRecord  # loaded with the AccessLog

        log = self.access_log
        assert log is not None
        call = record.call
        ctx = current_inbound()
        request_id = call.headers.get(HEADER_REQUEST_ID) or (
            None if ctx is None else ctx.request_id
        )
        endpoint = record.endpoint
        log.log(
            AccessRecord(
                start_time=time.time() - (record.end - record.start),
                method=call.method,
                path=call.path,
                protocol=HTTP_PROTOCOLS.get(call.protocol, call.protocol),
                response_code=record.status,
                response_flags=format_flags(record.flags),
                # Envoy's view: received from the caller, sent back to it.
                bytes_received=request_bytes,
                bytes_sent=record.response_bytes,
                duration_ms=duration_ms,
                user_agent=call.headers.get(USER_AGENT),
                request_id=request_id,
                authority=call.authority,
                upstream_host=None if endpoint is None else str(endpoint),
                upstream_cluster=record.cluster or None,
            )
        )


def _cluster_port(cluster: str, default: int) -> int:
    key = _cluster_key(cluster)
    return default if key is None else key[2]


def outbound_hooks(
    sink: MetricsSink,
    tracing: Tracing,
    access_log: AccessLog | None = None,
    *,
    workload: str | None = None,
    namespace: str | None = None,
    principal: str | None = None,
    labels: Mapping[str, str] | None = None,
    cluster: str | None = None,
    clusters: Callable[[], ClusterRegistry | None] | None = None,
) -> TelemetryHooks:
    """The client flow's hooks: source-reporter Istio metrics, client spans, access log.

    ``workload``..``labels`` describe this workload (the ``source_*`` labels); ``clusters``
    returns the runtime's cluster registry (for ejection counts) once it exists.
    """
    return OutboundTelemetry(
        sink,
        tracing,
        source=WorkloadLabels.from_workload(
            workload=workload,
            namespace=namespace,
            principal=_spiffe(principal) if principal else None,
            labels=labels,
            cluster=cluster,
        ),
        access_log=access_log,
        clusters=clusters,
    ).hooks


# --- inbound --------------------------------------------------------------------------------

_Peer = tuple[str | None, bool, str, str | None]
_ENDING: contextvars.ContextVar[InboundContext | None] = contextvars.ContextVar(
    "meshlib_ending_inbound", default=None
)
"""The context ``detach`` just left, for ``on_request`` (called next by the same ``finish``)."""


class InboundTelemetry:
    """Server-side telemetry state; ``hooks`` is what the inbound drivers take."""

    __slots__ = (
        "_edges",
        "_fqdn",
        "_span_port",
        "_trust_domain",
        "access_log",
        "destination",
        "hooks",
        "service_name",
        "service_namespace",
        "sink",
        "tracing",
    )

    def __init__(
        self,
        sink: MetricsSink,
        tracing: Tracing,
        *,
        destination: WorkloadLabels,
        service: str,
        access_log: AccessLog | None = None,
    ) -> None:
        from meshlib._engine.inbound import InboundHooks

        self.sink = sink
        self.tracing = tracing
        self.destination = destination
        self.access_log = access_log
        self._fqdn = service
        self.service_name, self.service_namespace = service_parts(service)
        self._edges: dict[_Peer, EdgeLabels] = {}
        self._trust_domain = _trust_domain(destination.principal)
        self.hooks = InboundHooks(
            on_request=self.on_request, extract=self.extract, detach=self.detach
        )

    def extract(self, call: Call, now: float) -> object:
        """Make the caller's trace context, request id and deadline current."""
        return enter_inbound(
            call.headers,
            now=now,
            protocol=call.protocol,
            peer=call.peer,
            tracing=self.tracing,
            span_name=(self._fqdn, call.port),
            method=call.method,
            url=call.path,
        )

    def detach(self, token: object) -> None:
        assert isinstance(token, InboundToken)
        # on_request (next, in the same finish call) ends the span with the response status
        # and logs the request id, generated or not.
        _ENDING.set(token.context)
        exit_inbound(token, end_span=False)

    def on_request(self, record: InboundRecord) -> None:
        call = record.call
        peer = record.peer
        metadata = None
        # Only an mTLS peer of our trust domain (a meshlib client or a mesh proxy) is believed;
        # the ASGI/WSGI drivers also strip the header from anyone else before the app sees it.
        if peer is not None and peer.mtls and peer.trust_domain == self._trust_domain:
            metadata = call.headers.get(PEER_METADATA_HEADER)
        key = (None if peer is None else peer.spiffe_id, record.mtls, call.protocol, metadata)
        edge = self._edges.get(key)
        if edge is None:
            edge = self._edge(key, peer)
        labels = edge.labels(record.status, record.flags, record.grpc_status)
        duration_ms = (record.end - record.start) * MS_PER_SECOND
        request_bytes = _request_bytes(call)
        self.sink.request(labels, duration_ms, request_bytes, record.response_bytes)
        if record.decision is not None:
            self.sink.authz_decision(
                "allow" if record.decision.allowed else "deny", record.decision.policy or ""
            )
        ending = _ENDING.get()
        if ending is not None:
            _ENDING.set(None)
            if ending.span is not None:
                ending.span.finish(
                    status_code=record.status,
                    response_flags=format_flags(record.flags),
                    grpc_status=record.grpc_status,
                )
        if self.access_log is not None:
            self._log(record, duration_ms, request_bytes, ending)

    def _edge(self, key: _Peer, peer: Peer | None) -> EdgeLabels:
        spiffe_id, mtls, protocol, metadata = key
        edge = EdgeLabels(
            reporter=REPORTER_DESTINATION,
            source=_source_labels(spiffe_id, None if peer is None else peer.namespace, metadata),
            destination=self.destination,
            destination_service=self._fqdn,
            destination_service_name=self.service_name,
            destination_service_namespace=self.service_namespace,
            request_protocol=protocol,
            connection_security_policy=MUTUAL_TLS if mtls else NO_TLS,
        )
        if len(self._edges) >= MAX_EDGES:
            self._edges.clear()
        self._edges[key] = edge
        return edge

    def _log(
        self,
        record: InboundRecord,
        duration_ms: float,
        request_bytes: int,
        ctx: InboundContext | None,
    ) -> None:
        from meshlib._telemetry.accesslog import AccessRecord  # loaded with the AccessLog

        log = self.access_log
        assert log is not None
        call = record.call
        peer = record.peer
        remote = None
        if peer is not None and peer.address is not None:
            remote = f"{peer.address}:{peer.port}" if peer.port is not None else peer.address
        log.log(
            AccessRecord(
                start_time=time.time() - record.duration,
                method=call.method,
                path=call.path,
                protocol=HTTP_PROTOCOLS.get(call.protocol, call.protocol),
                response_code=record.status,
                response_flags=format_flags(record.flags),
                response_code_details=record.details or None,
                bytes_received=request_bytes,
                bytes_sent=record.response_bytes,
                duration_ms=duration_ms,
                x_forwarded_for=call.headers.get(FORWARDED_FOR),
                user_agent=call.headers.get(USER_AGENT),
                request_id=call.headers.get(HEADER_REQUEST_ID)
                or (None if ctx is None else ctx.request_id),
                authority=call.authority,
                upstream_cluster=f"inbound|{call.port}||",
                downstream_remote_address=remote,
            )
        )


def _source_labels(
    spiffe_id: str | None, namespace: str | None, metadata: str | None
) -> WorkloadLabels:
    plain = WorkloadLabels.from_workload(namespace=namespace, principal=spiffe_id)
    if metadata is None:
        return plain
    fields = parse_peer_metadata(metadata)
    workload = fields.get("workload", UNKNOWN)
    app = fields.get("app", UNKNOWN)
    return WorkloadLabels(
        workload=workload,
        # The certificate's namespace is verified; the header's only fills a gap.
        namespace=namespace or fields.get("namespace", UNKNOWN),
        principal=plain.principal,
        app=app,
        version=fields.get("version", UNKNOWN),
        canonical_service=fields.get("service") or (app if app != UNKNOWN else workload),
        canonical_revision=fields.get("revision", plain.canonical_revision),
    )


def inbound_hooks(
    sink: MetricsSink,
    tracing: Tracing,
    access_log: AccessLog | None = None,
    *,
    service: str,
    workload: str | None = None,
    namespace: str | None = None,
    principal: str | None = None,
    labels: Mapping[str, str] | None = None,
    cluster: str | None = None,
) -> InboundHooks:
    """The server flow's hooks: destination-reporter Istio metrics, server spans, access log.

    ``service`` is this workload's service FQDN (``destination_service``, span names).
    """
    return InboundTelemetry(
        sink,
        tracing,
        destination=WorkloadLabels.from_workload(
            workload=workload,
            namespace=namespace,
            principal=_spiffe(principal) if principal else None,
            labels=labels,
            cluster=cluster,
        ),
        service=service,
        access_log=access_log,
    ).hooks


# --- what a Mesh holds ----------------------------------------------------------------------

METRICS_PROMETHEUS: Final = "prometheus"
METRICS_OTEL: Final = "otel"
METRICS_DEFAULT: Final = "default"
"""prometheus-client when installed, else nothing recorded."""


def prometheus_installed() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def make_sink(
    metrics: str | None, *, registry: object = None, meter_provider: object = None
) -> MetricsSink:
    """The metrics backend named by ``metrics`` (``prometheus``, ``otel``, ``default``, None)."""
    from meshlib._telemetry.metrics import NOOP_SINK, OtelMetricsSink, PrometheusSink

    if metrics == METRICS_DEFAULT:
        metrics = METRICS_PROMETHEUS if prometheus_installed() else None
    if metrics is None:
        return NOOP_SINK
    if metrics == METRICS_PROMETHEUS:
        return PrometheusSink(registry)
    if metrics == METRICS_OTEL:
        return OtelMetricsSink(meter_provider)  # type: ignore[arg-type]
    raise ValueError(f"metrics must be 'prometheus', 'otel' or None, got {metrics!r}")


class CounterSync:
    """Turns a running total read at scrape time into counter increments."""

    __slots__ = ("_seen", "_step")

    def __init__(self, step: Callable[[], None]) -> None:
        self._seen = 0
        self._step = step

    def update(self, total: int) -> None:
        while self._seen < total:
            self._seen += 1
            self._step()


class MeshTelemetry:
    """A Mesh's telemetry: one sink and tracing settings shared by both directions.

    The inbound side is built on first use: a client-only process never loads the inbound flow.
    """

    __slots__ = (
        "_inbound",
        "_lock",
        "_own",
        "_service",
        "access_log",
        "outbound",
        "sink",
        "tracing",
    )

    def __init__(
        self,
        *,
        sink: MetricsSink,
        tracing: Tracing,
        access_log: AccessLog | None,
        workload: str,
        namespace: str,
        principal: str | None,
        labels: Mapping[str, str],
        service: str,
        clusters: Callable[[], ClusterRegistry | None] | None = None,
    ) -> None:
        self.sink = sink
        self.tracing = tracing
        self.access_log = access_log
        own = WorkloadLabels.from_workload(
            workload=workload,
            namespace=namespace,
            principal=_spiffe(principal) if principal else None,
            labels=labels,
        )
        self.outbound = OutboundTelemetry(
            sink, tracing, source=own, access_log=access_log, clusters=clusters
        )
        self._own = own
        self._service = service
        self._inbound: InboundTelemetry | None = None
        self._lock = threading.Lock()

    @property
    def inbound(self) -> InboundTelemetry:
        inbound = self._inbound
        if inbound is None:
            with self._lock:  # one InboundTelemetry (one edge cache) even if threads race here
                inbound = self._inbound
                if inbound is None:
                    inbound = InboundTelemetry(
                        self.sink,
                        self.tracing,
                        destination=self._own,
                        service=self._service,
                        access_log=self.access_log,
                    )
                    self._inbound = inbound
        return inbound

    @property
    def outbound_hooks(self) -> TelemetryHooks:
        return self.outbound.hooks

    @property
    def inbound_hooks(self) -> InboundHooks:
        return self.inbound.hooks
