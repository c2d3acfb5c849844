"""Models of the Istio resources meshlib reads (the edge; never used on the hot path).

Field lists follow the istio/api protos (networking v1alpha3 = v1beta1 = v1, security v1beta1 = v1).
Every field is optional with a ``None`` default so that an absent field stays distinct from a zero;
``oneof`` groups and Istio's semantic rules are checked by ``validate.py``, not here, so that every
problem of a document is reported at once. Durations stay strings (``durations.py`` parses them).
Class names are the proto message names; nested messages whose short name would clash get their
parent's name as prefix (``HTTPCookieAttribute``, ``LocalityFailover``...).

The models are ``edge.EdgeModel`` classes (validated by pydantic-core; see ``edge.py`` for why not
pydantic's ``BaseModel``). The security kinds' models live in ``resources_security.py`` and are
imported on first use: this module still exposes them by name.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from meshlib._config.edge import Before, EdgeModel, Strict, camel, field

__all__ = [
    "API_VERSIONS",
    "RESOURCE_MODELS",
    "Abort",
    "AuthorizationPolicy",
    "AuthorizationPolicySpec",
    "ClientTLSSettings",
    "Condition",
    "ConnectionKeepalive",
    "ConnectionPoolSettings",
    "ConsistentHashLB",
    "CorsPolicy",
    "Delay",
    "Delegate",
    "Destination",
    "DestinationRule",
    "DestinationRuleSpec",
    "ExtensionProvider",
    "HTTPBody",
    "HTTPCookie",
    "HTTPCookieAttribute",
    "HTTPDirectResponse",
    "HTTPFaultInjection",
    "HTTPMatchRequest",
    "HTTPMirrorPolicy",
    "HTTPRedirect",
    "HTTPRetry",
    "HTTPRewrite",
    "HTTPRoute",
    "HTTPRouteDestination",
    "HTTPSettings",
    "HeaderOperations",
    "Headers",
    "L4MatchAttributes",
    "LoadBalancerSettings",
    "LocalityDistribute",
    "LocalityFailover",
    "LocalityLoadBalancerSetting",
    "MagLev",
    "MutualTLS",
    "NetworkingWorkloadSelector",
    "ObjectMeta",
    "Operation",
    "OutlierDetection",
    "PeerAuthentication",
    "PeerAuthenticationSpec",
    "Percent",
    "PolicyTargetReference",
    "PortSelector",
    "PortTrafficPolicy",
    "ProxyProtocol",
    "RegexRewrite",
    "Resource",
    "RetryBudget",
    "RingHash",
    "RouteDestination",
    "Rule",
    "RuleFrom",
    "RuleTo",
    "ServiceEntry",
    "ServiceEntrySpec",
    "ServicePort",
    "Source",
    "SpecModel",
    "StringMatch",
    "Subset",
    "TCPRoute",
    "TCPSettings",
    "TLSMatchAttributes",
    "TLSRoute",
    "TcpKeepalive",
    "TrafficPolicy",
    "TunnelSettings",
    "VirtualService",
    "VirtualServiceSpec",
    "WarmupConfiguration",
    "WorkloadEntry",
    "WorkloadEntrySpec",
    "WorkloadSelector",
    "ZoneAwareFailover",
    "ZoneAwareLoadBalancerSetting",
    "camel",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")


def _integer(low: int, high: int) -> Before:
    # Kubernetes YAML sometimes quotes numbers; booleans and fractions are never integers.
    def check(value: object) -> int:
        if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        if not low <= value <= high:
            raise ValueError(f"expected an integer between {low} and {high}")
        return value

    return Before(check)


def _double(value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError("expected a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError("expected a finite number")
    return result


Int32 = Annotated[int, _integer(INT32_MIN, INT32_MAX)]
UInt32 = Annotated[int, _integer(0, UINT32_MAX)]
UInt64 = Annotated[int, _integer(0, UINT64_MAX)]
Double = Annotated[float, Before(_double)]
StrictBool = Annotated[bool, Strict()]
Duration = str
"""A duration as written (``"1.5s"``, ``"180.000s"``); parsed by ``durations.py``."""


class _Model(EdgeModel):
    """Every spec model: fields in snake_case, read from camelCase keys (snake_case accepted too);
    an unknown key is an error."""


# ---------------------------------------------------------------------------------- shared
class StringMatch(_Model):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


class Percent(_Model):
    value: Double | None = None


class PortSelector(_Model):
    number: UInt32 | None = None


class WorkloadSelector(_Model):
    """``istio.type.v1beta1.WorkloadSelector`` (DestinationRule and the security kinds)."""

    match_labels: dict[str, str] | None = None


class NetworkingWorkloadSelector(_Model):
    """``networking.v1alpha3.WorkloadSelector`` (ServiceEntry): ``labels``, not ``matchLabels``."""

    labels: dict[str, str] | None = None


# ---------------------------------------------------------------------------------- VirtualService
class Destination(_Model):
    host: str | None = None
    subset: str | None = None
    port: PortSelector | None = None


class HeaderOperations(_Model):
    set: dict[str, str] | None = None
    add: dict[str, str] | None = None
    remove: list[str] | None = None


class Headers(_Model):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPMatchRequest(_Model):
    name: str | None = None
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] | None = None
    port: UInt32 | None = None
    source_labels: dict[str, str] | None = None
    gateways: list[str] | None = None
    query_params: dict[str, StringMatch] | None = None
    ignore_uri_case: StrictBool | None = None
    without_headers: dict[str, StringMatch] | None = None
    source_namespace: str | None = None
    stat_prefix: str | None = None


class HTTPRouteDestination(_Model):
    destination: Destination | None = None
    weight: Int32 | None = None
    headers: Headers | None = None


class RouteDestination(_Model):
    destination: Destination | None = None
    weight: Int32 | None = None


class Delegate(_Model):
    name: str | None = None
    namespace: str | None = None


class HTTPRedirect(_Model):
    uri: str | None = None
    authority: str | None = None
    port: UInt32 | None = None
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str | None = None
    redirect_code: UInt32 | None = None
    prefix_rewrite: str | None = None


class HTTPBody(_Model):
    string: str | None = None
    bytes: str | None = None
    """Base64, as proto-JSON writes ``bytes``."""


class HTTPDirectResponse(_Model):
    status: UInt32 | None = None
    body: HTTPBody | None = None


class RegexRewrite(_Model):
    match: str | None = None
    rewrite: str | None = None


class HTTPRewrite(_Model):
    uri: str | None = None
    authority: str | None = None
    uri_regex_rewrite: RegexRewrite | None = None


class HTTPRetry(_Model):
    attempts: Int32 | None = None
    per_try_timeout: Duration | None = None
    retry_on: str | None = None
    retry_remote_localities: StrictBool | None = None
    retry_ignore_previous_hosts: StrictBool | None = None
    backoff: Duration | None = None


class Delay(_Model):
    """``HTTPFaultInjection.Delay``."""

    percent: Int32 | None = None
    """Deprecated; used only when ``percentage`` is absent."""
    fixed_delay: Duration | None = None
    exponential_delay: Duration | None = None
    percentage: Percent | None = None


class Abort(_Model):
    """``HTTPFaultInjection.Abort``."""

    http_status: Int32 | None = None
    grpc_status: str | None = None
    http2_error: str | None = None
    percentage: Percent | None = None


class HTTPFaultInjection(_Model):
    delay: Delay | None = None
    abort: Abort | None = None


class HTTPMirrorPolicy(_Model):
    destination: Destination | None = None
    percentage: Percent | None = None


class CorsPolicy(_Model):
    allow_origin: list[str] | None = None
    """Deprecated in favour of ``allow_origins``."""
    allow_origins: list[StringMatch] | None = None
    allow_methods: list[str] | None = None
    allow_headers: list[str] | None = None
    expose_headers: list[str] | None = None
    max_age: Duration | None = None
    allow_credentials: StrictBool | None = None
    unmatched_preflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] | None = None


class HTTPRoute(_Model):
    name: str | None = None
    match: list[HTTPMatchRequest] | None = None
    route: list[HTTPRouteDestination] | None = None
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: Duration | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: list[HTTPMirrorPolicy] | None = None
    mirror_percent: UInt32 | None = None
    """Deprecated in favour of ``mirror_percentage``."""
    mirror_percentage: Percent | None = None
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None


class TLSMatchAttributes(_Model):
    sni_hosts: list[str] | None = None
    destination_subnets: list[str] | None = None
    port: UInt32 | None = None
    source_labels: dict[str, str] | None = None
    gateways: list[str] | None = None
    source_namespace: str | None = None


class L4MatchAttributes(_Model):
    destination_subnets: list[str] | None = None
    port: UInt32 | None = None
    source_subnet: str | None = None
    source_labels: dict[str, str] | None = None
    gateways: list[str] | None = None
    source_namespace: str | None = None


class TLSRoute(_Model):
    match: list[TLSMatchAttributes] | None = None
    route: list[RouteDestination] | None = None


class TCPRoute(_Model):
    match: list[L4MatchAttributes] | None = None
    route: list[RouteDestination] | None = None


class VirtualServiceSpec(_Model):
    hosts: list[str] | None = None
    gateways: list[str] | None = None
    http: list[HTTPRoute] | None = None
    tls: list[TLSRoute] | None = None
    tcp: list[TCPRoute] | None = None
    export_to: list[str] | None = None


# ---------------------------------------------------------------------------------- DestinationRule
class RingHash(_Model):
    minimum_ring_size: UInt64 | None = None


class MagLev(_Model):
    table_size: UInt64 | None = None


class HTTPCookieAttribute(_Model):
    """``ConsistentHashLB.HTTPCookie.Attribute``."""

    name: str | None = None
    value: str | None = None


class HTTPCookie(_Model):
    name: str | None = None
    path: str | None = None
    ttl: Duration | None = None
    attributes: list[HTTPCookieAttribute] | None = None


class ConsistentHashLB(_Model):
    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: StrictBool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: MagLev | None = None
    minimum_ring_size: UInt64 | None = None
    """Deprecated in favour of ``ring_hash.minimum_ring_size``."""


class LocalityDistribute(_Model):
    """``LocalityLoadBalancerSetting.Distribute``."""

    from_: str | None = None
    to: dict[str, UInt32] | None = None


class LocalityFailover(_Model):
    """``LocalityLoadBalancerSetting.Failover``."""

    from_: str | None = None
    to: str | None = None


class LocalityLoadBalancerSetting(_Model):
    distribute: list[LocalityDistribute] | None = None
    failover: list[LocalityFailover] | None = None
    failover_priority: list[str] | None = None
    enabled: StrictBool | None = None


class ZoneAwareFailover(_Model):
    """``ZoneAwareLoadBalancerSetting.Failover``."""

    from_: str | None = None
    to: str | None = None


class ZoneAwareLoadBalancerSetting(_Model):
    enabled: StrictBool | None = None
    failover: list[ZoneAwareFailover] | None = None
    failover_priority: list[str] | None = None
    min_cluster_size: UInt64 | None = None


class WarmupConfiguration(_Model):
    duration: Duration | None = None
    minimum_percent: Double | None = None
    aggression: Double | None = None


SimpleLB = Literal[
    "UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"
]


class LoadBalancerSettings(_Model):
    simple: SimpleLB | None = None
    consistent_hash: ConsistentHashLB | None = None
    locality_lb_setting: LocalityLoadBalancerSetting | None = None
    zone_aware_lb_setting: ZoneAwareLoadBalancerSetting | None = None
    warmup_duration_secs: Duration | None = None
    """Deprecated in favour of ``warmup``."""
    warmup: WarmupConfiguration | None = None


class TcpKeepalive(_Model):
    """``ConnectionPoolSettings.TCPSettings.TcpKeepalive``."""

    probes: UInt32 | None = None
    time: Duration | None = None
    interval: Duration | None = None


class TCPSettings(_Model):
    """``ConnectionPoolSettings.TCPSettings``."""

    max_connections: Int32 | None = None
    connect_timeout: Duration | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: Duration | None = None
    idle_timeout: Duration | None = None


class ConnectionKeepalive(_Model):
    """``ConnectionPoolSettings.HTTPSettings.ConnectionKeepalive``."""

    interval: Duration | None = None
    timeout: Duration | None = None


class HTTPSettings(_Model):
    """``ConnectionPoolSettings.HTTPSettings``."""

    http1_max_pending_requests: Int32 | None = None
    http2_max_requests: Int32 | None = None
    max_requests_per_connection: Int32 | None = None
    max_retries: Int32 | None = None
    idle_timeout: Duration | None = None
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    use_client_protocol: StrictBool | None = None
    max_concurrent_streams: Int32 | None = None
    http2_keep_alive: ConnectionKeepalive | None = None


class ConnectionPoolSettings(_Model):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(_Model):
    consecutive_errors: Int32 | None = None
    """Deprecated in favour of ``consecutive_5xx_errors``."""
    split_external_local_origin_errors: StrictBool | None = None
    consecutive_local_origin_failures: UInt32 | None = None
    consecutive_gateway_errors: UInt32 | None = None
    consecutive_5xx_errors: UInt32 | None = None
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: Int32 | None = None
    min_health_percent: Int32 | None = None
    outlier_detection_http_error_codes: list[UInt32] | None = None


TLSmode = Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]


class ClientTLSSettings(_Model):
    mode: TLSmode | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    credential_name: str | None = None
    subject_alt_names: list[str] | None = None
    sni: str | None = None
    insecure_skip_verify: StrictBool | None = None
    ca_crl: str | None = None


class TunnelSettings(_Model):
    """``TrafficPolicy.TunnelSettings``."""

    protocol: str | None = None
    target_host: str | None = None
    target_port: UInt32 | None = None


class ProxyProtocol(_Model):
    """``TrafficPolicy.ProxyProtocol``."""

    version: Literal["V1", "V2"] | None = None


class RetryBudget(_Model):
    """``TrafficPolicy.RetryBudget``."""

    percent: Double | None = None
    min_retry_concurrency: UInt32 | None = None
    budget_interval: Duration | None = None


class PortTrafficPolicy(_Model):
    """``TrafficPolicy.PortTrafficPolicy``."""

    port: PortSelector | None = None
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TrafficPolicy(_Model):
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: list[PortTrafficPolicy] | None = None
    tunnel: TunnelSettings | None = None
    proxy_protocol: ProxyProtocol | None = None
    retry_budget: RetryBudget | None = None


class Subset(_Model):
    name: str | None = None
    labels: dict[str, str] | None = None
    traffic_policy: TrafficPolicy | None = None


class DestinationRuleSpec(_Model):
    host: str | None = None
    traffic_policy: TrafficPolicy | None = None
    subsets: list[Subset] | None = None
    export_to: list[str] | None = None
    workload_selector: WorkloadSelector | None = None


# ---------------------------------------------------------------------------------- ServiceEntry
class WorkloadEntrySpec(_Model):
    address: str | None = None
    ports: dict[str, UInt32] | None = None
    labels: dict[str, str] | None = None
    network: str | None = None
    locality: str | None = None
    weight: UInt32 | None = None
    service_account: str | None = None


class ServicePort(_Model):
    number: UInt32 | None = None
    protocol: str | None = None
    name: str | None = None
    target_port: UInt32 | None = None


class ServiceEntrySpec(_Model):
    hosts: list[str] | None = None
    addresses: list[str] | None = None
    ports: list[ServicePort] | None = None
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] | None = None
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"] | None = None
    endpoints: list[WorkloadEntrySpec] | None = None
    workload_selector: NetworkingWorkloadSelector | None = None
    export_to: list[str] | None = None
    subject_alt_names: list[str] | None = None


# ---------------------------------------------------------------------------------- envelope
NETWORKING_GROUP = "networking.istio.io"
SECURITY_GROUP = "security.istio.io"

_NETWORKING = frozenset(f"{NETWORKING_GROUP}/{v}" for v in ("v1", "v1beta1", "v1alpha3"))
_SECURITY = frozenset(f"{SECURITY_GROUP}/{v}" for v in ("v1", "v1beta1"))

API_VERSIONS: dict[str, frozenset[str]] = {
    "VirtualService": _NETWORKING,
    "DestinationRule": _NETWORKING,
    "ServiceEntry": _NETWORKING,
    "WorkloadEntry": _NETWORKING,
    "PeerAuthentication": _SECURITY,
    "AuthorizationPolicy": _SECURITY,
}
"""The kinds meshlib reads and the ``apiVersion`` values accepted for each."""


class ObjectMeta(_Model):
    """Kubernetes metadata: the fields meshlib reads plus those ``kubectl get -o yaml`` adds."""

    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: Any = None
    """A string in YAML, but PyYAML turns unquoted timestamps into ``datetime``."""
    deletion_timestamp: Any = None
    deletion_grace_period_seconds: int | None = None
    generate_name: str | None = None
    self_link: str | None = None
    finalizers: list[str] | None = None
    owner_references: list[dict[str, Any]] | None = None
    managed_fields: list[dict[str, Any]] | None = None


class Resource(_Model):
    """The Kubernetes envelope. Use the per-kind subclass from ``RESOURCE_MODELS`` so that ``spec``
    is typed by ``kind`` and one validation reports every problem of the document."""

    api_version: str
    kind: str
    metadata: ObjectMeta = field(default_factory=ObjectMeta)
    spec: _Model | None = None
    """A spec model; each per-kind subclass narrows it to its kind's."""
    status: Any = field(default=None, exclude=True)
    """Written by istiod; ignored."""

    @classmethod
    def before_validation(cls, data: Any) -> Any:
        # ``spec:`` and ``metadata:`` with nothing after them are YAML nulls; Kubernetes stores {}.
        if isinstance(data, dict):
            data = dict(data)
            for key in ("spec", "metadata"):
                if key in data and data[key] is None:
                    data[key] = {}
        return data


class VirtualService(Resource):
    spec: VirtualServiceSpec = field(default_factory=VirtualServiceSpec)


class DestinationRule(Resource):
    spec: DestinationRuleSpec = field(default_factory=DestinationRuleSpec)


class ServiceEntry(Resource):
    spec: ServiceEntrySpec = field(default_factory=ServiceEntrySpec)


class WorkloadEntry(Resource):
    spec: WorkloadEntrySpec = field(default_factory=WorkloadEntrySpec)


_SECURITY_MODULE = "meshlib._config.resources_security"
_SECURITY_NAMES = frozenset(
    {
        "AuthorizationPolicy",
        "AuthorizationPolicySpec",
        "Condition",
        "ExtensionProvider",
        "MtlsMode",
        "MutualTLS",
        "Operation",
        "PeerAuthentication",
        "PeerAuthenticationSpec",
        "PolicyTargetReference",
        "Rule",
        "RuleFrom",
        "RuleTo",
        "Source",
    }
)
"""The models of the security kinds, built on first use (``resources_security``): a mesh
whose configuration has no AuthorizationPolicy or PeerAuthentication never builds them."""


class _ResourceModels(Mapping[str, type[Resource]]):
    """Envelope model per kind, in ``API_VERSIONS`` order; the security kinds' models are
    imported on first lookup."""

    def __init__(self, built: Mapping[str, type[Resource]]) -> None:
        self._models = dict(built)

    def __getitem__(self, kind: str) -> type[Resource]:
        model = self._models.get(kind)
        if model is None:
            if kind not in API_VERSIONS:
                raise KeyError(kind)
            model = getattr(importlib.import_module(_SECURITY_MODULE), kind)
            self._models[kind] = model
        return model

    def __iter__(self) -> Iterator[str]:
        return iter(API_VERSIONS)

    def __len__(self) -> int:
        return len(API_VERSIONS)


RESOURCE_MODELS: Mapping[str, type[Resource]] = _ResourceModels(
    {
        "VirtualService": VirtualService,
        "DestinationRule": DestinationRule,
        "ServiceEntry": ServiceEntry,
        "WorkloadEntry": WorkloadEntry,
    }
)
"""Envelope model per kind meshlib reads."""

if TYPE_CHECKING:
    from meshlib._config.resources_security import (
        AuthorizationPolicy,
        AuthorizationPolicySpec,
        Condition,
        ExtensionProvider,
        MtlsMode,  # noqa: F401  # re-exported, as before the split
        MutualTLS,
        Operation,
        PeerAuthentication,
        PeerAuthenticationSpec,
        PolicyTargetReference,
        Rule,
        RuleFrom,
        RuleTo,
        Source,
    )

    SpecModel: TypeAlias = (
        VirtualServiceSpec
        | DestinationRuleSpec
        | ServiceEntrySpec
        | WorkloadEntrySpec
        | PeerAuthenticationSpec
        | AuthorizationPolicySpec
    )
else:  # hidden from type checkers, which would then accept any resources.<name>

    def __getattr__(name: str) -> Any:
        # PEP 562: the security models (and SpecModel, which names two of them) on first use.
        if name in _SECURITY_NAMES:
            value = getattr(importlib.import_module(_SECURITY_MODULE), name)
        elif name == "SpecModel":
            security = importlib.import_module(_SECURITY_MODULE)
            value = (
                VirtualServiceSpec
                | DestinationRuleSpec
                | ServiceEntrySpec
                | WorkloadEntrySpec
                | security.PeerAuthenticationSpec
                | security.AuthorizationPolicySpec
            )
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value  # bound here: later lookups never reach __getattr__
        return value
