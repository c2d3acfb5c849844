"""Istio's single-resource validation rules, located by field.

The rules and most messages follow istiod's admission validation (``pkg/config/validation``), so a
resource istiod would refuse is refused here too, and one it accepts loads. A few checks that
istiod gets from proto parsing (``oneof`` groups) are added with meshlib's own messages. Fields that
load but that meshlib does not act on produce a warning, ``accepted, not enforced by meshlib``.
Cross-resource checks (unknown subsets, conflicting hosts) belong to the compiler, not here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from meshlib._config.durations import (
    DurationError,
    int_percent_error,
    parse_duration_ns,
    percent_error,
    validate_duration,
)
from meshlib._config.edge import EdgeModel
from meshlib._config.issues import ConfigIssue, Severity
from meshlib._config.resources import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    Destination,
    DestinationRuleSpec,
    Headers,
    HTTPMatchRequest,
    HTTPRoute,
    HTTPRouteDestination,
    LoadBalancerSettings,
    LocalityLoadBalancerSetting,
    OutlierDetection,
    RouteDestination,
    ServiceEntrySpec,
    StringMatch,
    TrafficPolicy,
    VirtualServiceSpec,
    WorkloadEntrySpec,
    WorkloadSelector,
    camel,
)

if TYPE_CHECKING:
    from meshlib._config.loader import LoadedResource

_NETWORKING_SPECS = (VirtualServiceSpec, DestinationRuleSpec, ServiceEntrySpec, WorkloadEntrySpec)
"""The spec models of the networking kinds; the security kinds' are validated by
``validate_security`` (imported with the first such resource)."""

__all__ = [
    "CODE_DEPRECATED",
    "CODE_INVALID",
    "CODE_NOT_ENFORCED",
    "CODE_WARNING",
    "NOT_ENFORCED",
    "NOT_ENFORCED_MESSAGE",
    "regex_error",
    "validate_resource",
]

CODE_INVALID = "meshlib.invalid"
CODE_WARNING = "meshlib.warning"
CODE_DEPRECATED = "meshlib.deprecated"
CODE_NOT_ENFORCED = "meshlib.not-enforced"
NOT_ENFORCED_MESSAGE = "accepted, not enforced by meshlib"

MAX_REGEX_LENGTH = 1024
"""istiod approximates Envoy's RE2 program-size limit by the pattern length."""
MAX_DIRECT_RESPONSE_BODY = 1024 * 1024
WARN_DIRECT_RESPONSE_BODY = 100 * 1024
MAX_MAGLEV_TABLE_SIZE = 5_000_011
MAX_PORT = 65535
MESH_GATEWAY = "mesh"

_TRAFFIC_POLICIES = (
    "spec.trafficPolicy",
    "spec.trafficPolicy.portLevelSettings[]",
    "spec.subsets[].trafficPolicy",
    "spec.subsets[].trafficPolicy.portLevelSettings[]",
)
_POLICY_FIELDS_NOT_ENFORCED = (
    "tunnel",
    "proxyProtocol",
    "loadBalancer.zoneAwareLbSetting",
    "connectionPool.http.h2UpgradePolicy",
    "connectionPool.http.useClientProtocol",
    "connectionPool.http.maxConcurrentStreams",
    "connectionPool.tcp.tcpKeepalive",
    "connectionPool.tcp.maxConnectionDuration",
    # Secrets by name need Istio's SDS (a sidecar takes them only with a workloadSelector).
    "tls.credentialName",
)

NOT_ENFORCED: frozenset[str] = frozenset(
    {
        # VirtualService
        "VirtualService:spec.tcp",
        "VirtualService:spec.tls",
        "VirtualService:spec.http[].corsPolicy",
        "VirtualService:spec.http[].delegate",
        "VirtualService:spec.http[].match[].statPrefix",
        "VirtualService:spec.http[].retries.retryRemoteLocalities",
        # DestinationRule
        *(
            f"DestinationRule:{where}.{what}"
            for where in _TRAFFIC_POLICIES
            for what in _POLICY_FIELDS_NOT_ENFORCED
        ),
        # ServiceEntry
        "ServiceEntry:spec.resolution=DNS_ROUND_ROBIN",
        # AuthorizationPolicy: a sidecar never applies targetRef(s) policies.
        "AuthorizationPolicy:spec.targetRef",
        "AuthorizationPolicy:spec.targetRefs",
    }
)
"""``Kind:dotted.pattern`` of fields that load but that meshlib does not act on. ``[]`` stands for
any index; ``=VALUE`` restricts the entry to that value (a trailing ``*`` makes it a prefix)."""

RETRY_ON_POLICIES = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "envoy-ratelimited",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)

# The statuses Go's net/http knows a text for: istiod accepts exactly these as retryOn codes.
GO_HTTP_STATUSES = frozenset(
    {100, 101, 102, 103, *range(200, 209), 226, *range(300, 306), 307, 308}
    | {*range(400, 419), *range(421, 427), 428, 429, 431, 451, *range(500, 509), 510, 511}
)

GRPC_STATUS_NAMES = frozenset(
    {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)

CORS_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"}
)
PROTOCOLS = frozenset(
    {"tcp", "udp", "grpc", "grpc-web", "http", "http_proxy", "http2", "https", "tls"}
    | {"mongo", "redis", "mysql"}
)
HTTP_PROTOCOLS = frozenset({"http", "http2", "grpc", "grpc-web", "http_proxy"})
TLS_PROTOCOLS = frozenset({"https", "tls"})
DYNAMIC_DNS_PROTOCOLS = frozenset({"http", "tls", "grpc", "http2"})
PSEUDO_HEADERS = frozenset({":method", ":scheme", ":authority", ":path", ":status"})
TOPOLOGY_LABELS = frozenset(
    {"topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"}
)

_DNS1123_LABEL = re.compile(r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
_WILDCARD_LABEL = re.compile(r"\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~A-Za-z0-9]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_QUALIFIED_NAME = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_KEY = re.compile(
    rf"((?:[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)*)/)?({_QUALIFIED_NAME})"
)
_LABEL_VALUE = re.compile(rf"(?:{_QUALIFIED_NAME})?")
_JWT_CLAIM_PREFIX = "@request.auth.claims"
DRY_RUN_ANNOTATION = "istio.io/dry-run"
DRY_RUN_FIELD = f"metadata.annotations.{DRY_RUN_ANNOTATION}"
DNS1123_LABEL_MAX = 63
DNS_NAME_MAX = 255
DNS_PREFIX_MAX = 253


def validate_resource(res: LoadedResource) -> list[ConfigIssue]:
    """Every problem istiod would report for this one resource, plus meshlib's warnings."""
    v = _Validator(res)
    spec = res.spec
    if isinstance(spec, VirtualServiceSpec):
        _virtual_service(v, spec)
    elif isinstance(spec, DestinationRuleSpec):
        _destination_rule(v, spec)
    elif isinstance(spec, ServiceEntrySpec):
        _service_entry(v, spec)
    elif isinstance(spec, WorkloadEntrySpec):
        _workload_entry(v, "spec", spec, service_ports=None, allow_fqdn=True)
    else:
        # PeerAuthentication or AuthorizationPolicy: their rules load with their models.
        from meshlib._config.validate_security import validate_security

        validate_security(v, spec)
    _annotations(v)
    _not_enforced(v, res.kind, "spec", spec)
    return v.issues


class _Validator:
    def __init__(self, res: LoadedResource) -> None:
        self.res = res
        self.issues: list[ConfigIssue] = []

    def add(self, severity: Severity, field: str, message: str, code: str) -> None:
        self.issues.append(
            ConfigIssue(
                severity,
                message,
                file=self.res.file,
                document=self.res.document,
                resource=self.res.ref,
                field=field,
                code=code,
            )
        )

    def err(self, field: str, message: str | None) -> None:
        if message is not None:
            self.add(Severity.ERROR, field, message, CODE_INVALID)

    def warn(self, field: str, message: str, code: str = CODE_WARNING) -> None:
        self.add(Severity.WARNING, field, message, code)


def _q(text: str) -> str:
    """Go's ``%q`` for the strings istiod quotes."""
    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------- primitives
def is_dns1123_label(value: str) -> bool:
    return len(value) <= DNS1123_LABEL_MAX and _DNS1123_LABEL.fullmatch(value) is not None


def _dns_preconditions(name: str) -> str | None:
    if len(name) > DNS_NAME_MAX:
        return f"domain name {_q(name)} too long (max 255)"
    if not name:
        return "empty domain name not allowed"
    return None


def _dns_labels(domain: str) -> str | None:
    parts = domain.split(".")
    top = parts[-1]
    if re.fullmatch(r"[+-]?[0-9]+", top):
        return (
            f"domain name {_q(domain)} invalid (top level domain {_q(top)} cannot be all-numeric)"
        )
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return None  # a trailing dot, as in ``istio.io.``
        if not is_dns1123_label(label):
            return f"domain name {_q(domain)} invalid (label {_q(label)} invalid)"
    return None


def fqdn_error(fqdn: str) -> str | None:
    return _dns_preconditions(fqdn) or _dns_labels(fqdn)


def wildcard_domain_error(domain: str) -> str | None:
    """istiod's ``ValidateWildcardDomain``: a wildcard only in the first label."""
    if problem := _dns_preconditions(domain):
        return problem
    first, dot, rest = domain.partition(".")
    if len(first) > DNS1123_LABEL_MAX or not _WILDCARD_LABEL.fullmatch(first):
        return f"domain name {_q(domain)} invalid (label {_q(first)} invalid)"
    return _dns_labels(rest) if dot else None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _subnet_error(subnet: str) -> str | None:
    if subnet.count("/") == 1:
        try:
            ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            return f"{subnet} is not a valid CIDR block"
        return None
    return None if _is_ip(subnet) else f"{subnet} is not a valid IP"


def _port_error(port: int) -> str | None:
    return None if 1 <= port <= MAX_PORT else f"port number {port} must be in the range 1..65535"


def _labels(v: _Validator, path: str, labels: Mapping[str, str] | None) -> None:
    for key, value in (labels or {}).items():
        match = _LABEL_KEY.fullmatch(key)
        if match is None:
            v.err(f"{path}.{key}", f"invalid tag key: {_q(key)}")
        elif match.group(1) and len(match.group(1)) - 1 > DNS_PREFIX_MAX:
            v.err(f"{path}.{key}", f"invalid tag key: {_q(key)} (DNS prefix is too long)")
        elif len(match.group(2)) > DNS1123_LABEL_MAX:
            v.err(f"{path}.{key}", f"invalid tag key: {_q(key)} (name is too long)")
        if not _LABEL_VALUE.fullmatch(value):
            v.err(f"{path}.{key}", f"invalid tag value: {_q(value)}")


def _duration(v: _Validator, path: str, value: str | None) -> int | None:
    """Validate a duration istiod checks with ``ValidateDuration``; nanoseconds if parseable."""
    if value is None:
        return None
    v.err(path, validate_duration(value))
    try:
        return parse_duration_ns(value)
    except DurationError:
        return None


def _syntax_only_duration(v: _Validator, path: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_duration_ns(value)
    except DurationError as exc:
        v.err(path, str(exc))
        return None


def _percentage(v: _Validator, path: str, value: float | None) -> None:
    if value is not None:
        v.err(path, percent_error(value))


# ---------------------------------------- regex
_UNSUPPORTED_GROUPS = (
    ("(?<=", "lookbehind"),
    ("(?<!", "lookbehind"),
    ("(?=", "lookahead"),
    ("(?!", "lookahead"),
    ("(?>", "atomic group"),
    ("(?P=", "backreference"),
    ("(?(", "conditional"),
    ("(?#", "comment group"),
)


def _re2_incompatibility(pattern: str) -> str | None:
    """The first construct Python accepts but RE2 refuses, as ``'<token>' (<what>)``."""
    i, in_class, n = 0, False, len(pattern)
    previous_quantifier = False
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if not in_class:
                if nxt in "123456789" and not (i + 2 < n and pattern[i + 2].isdigit()):
                    return f"'\\{nxt}' (backreference)"
                if nxt == "k" and i + 2 < n and pattern[i + 2] in "<{'":
                    return "'\\k' (backreference)"
                if nxt in "ZG":
                    return f"'\\{nxt}' (escape)"
            i += 2
            previous_quantifier = False
            continue
        if in_class:
            if char == "]":
                in_class = False
            i += 1
            continue
        if char == "[":
            in_class = True
            i += 1
            # A ``]`` right after ``[`` or ``[^`` is a literal member.
            if i < n and pattern[i] == "^":
                i += 1
            if i < n and pattern[i] == "]":
                i += 1
            previous_quantifier = False
            continue
        if char == "(":
            for token, what in _UNSUPPORTED_GROUPS:
                if pattern.startswith(token, i):
                    return f"'{token}' ({what})"
        if char == "+" and previous_quantifier:
            return f"'{pattern[i - 1]}+' (possessive quantifier)"
        previous_quantifier = char in "*+?}" and not (
            char == "?" and i > 0 and pattern[i - 1] in "*+?}"
        )
        i += 1
    return None


def regex_error(pattern: str) -> str | None:
    """Why Envoy's RE2 would refuse ``pattern`` (length, RE2-only syntax, compile errors)."""
    if len(pattern) > MAX_REGEX_LENGTH:
        return "regex is too large, max length allowed is 1024"
    incompatible = _re2_incompatibility(pattern)
    if incompatible:
        return f"invalid regex: {incompatible} is not supported by RE2"
    try:
        with warnings.catch_warnings():
            # Python warns about ``[[`` (a future set syntax); RE2 reads it as a plain ``[``.
            warnings.simplefilter("ignore", FutureWarning)
            # RE2's \z (end of text) is spelled \Z in Python.
            re.compile(re.sub(r"(?<!\\)((?:\\\\)*)\\z", r"\1\\Z", pattern))
    except (re.error, RecursionError, OverflowError) as exc:
        return f"invalid regex: {getattr(exc, 'msg', exc)}"
    return _re2_error(pattern)


def _re2_error(pattern: str) -> str | None:
    """The real RE2's verdict when the optional google-re2 wheel is installed."""
    try:
        import re2
    except ImportError:  # pragma: no cover - the core install has no re2
        return None
    options = re2.Options()
    options.log_errors = False  # RE2 would also print every refused pattern to stderr
    try:
        re2.compile(pattern, options)
    except re2.error as exc:
        (reason,) = exc.args  # google-re2 raises with the RE2 message as bytes
        return f"invalid regex: {bytes(reason).decode(errors='replace')}"
    return None


# ---------------------------------------- shared
def _string_match(
    v: _Validator, path: str, sm: StringMatch | None, *, allow_empty_prefix: bool = False
) -> None:
    if sm is None:
        return
    set_count = sum(x is not None for x in (sm.exact, sm.prefix, sm.regex))
    if set_count > 1:
        v.err(path, "only one of exact, prefix or regex may be set")
        return
    if sm.prefix is not None and sm.prefix == "" and not allow_empty_prefix:
        v.err(f"{path}.prefix", "prefix string match should not be empty")
    if sm.regex is not None:
        if sm.regex == "":
            v.err(f"{path}.regex", "regex string match should not be empty")
        else:
            v.err(f"{path}.regex", regex_error(sm.regex))


def _export_to(
    v: _Validator,
    path: str,
    export_to: Sequence[str] | None,
    *,
    service_entry: bool = False,
    dr_with_selector: bool = False,
) -> None:
    if not export_to:
        return
    namespace = v.res.namespace
    seen: set[str] = set()
    for i, entry in enumerate(export_to):
        key = namespace if entry == "." else entry
        where = f"{path}[{i}]"
        if key in seen:
            if key != entry:
                v.err(where, f"duplicate entries in exportTo: . and current namespace {namespace}")
            else:
                v.err(where, f"duplicate entries in exportTo for entry {entry}")
            continue
        if entry == "~" and service_entry:
            seen.add(key)
        elif entry == "~":
            v.err(where, "exportTo ~ (none) is not allowed for Istio configuration objects")
        elif key != "*" and not is_dns1123_label(key):
            v.err(where, "only .,*, or a valid DNS 1123 label is allowed as exportTo entry")
        else:
            seen.add(key)
    if dr_with_selector and seen:
        if namespace not in seen:
            v.err(
                path,
                "destination rule with workload selector cannot have exportTo beyond current "
                "namespace",
            )
        elif len(seen) > 1:
            v.err(
                path,
                "destination rule with workload selector cannot have multiple entries in exportTo",
            )
    if "*" in seen and len(export_to) > 1:
        v.err(path, "cannot have both public (*) and non-public exportTo values for a resource")
    if "~" in seen and len(export_to) > 1:
        v.err(path, "cannot export service entry to no one (~) and someone")


def _workload_selector(v: _Validator, path: str, selector: WorkloadSelector | None) -> None:
    if selector is None:
        return
    labels = selector.match_labels or {}
    for key, value in labels.items():
        pair = _q(f"{key}={value}")
        if key == "":
            v.err(f"{path}.matchLabels", f"empty key is not supported in selector: {pair}")
        if "*" in key or "*" in value:
            v.err(f"{path}.matchLabels.{key}", f"wildcard is not supported in selector: {pair}")
    if not labels:
        v.warn(path, "workload selector specified without labels")


def _gateway_names(v: _Validator, path: str, names: Sequence[str] | None) -> None:
    for i, name in enumerate(names or ()):
        where = f"{path}[{i}]"
        namespace, slash, gateway = name.partition("/")
        if not slash:
            if "." in name:
                parts = name.split(".")
                v.warn(
                    where,
                    f"using legacy gatewayName format {_q(name)}; prefer the <namespace>/<name> "
                    f"format: {_q(parts[1] + '/' + parts[0])}",
                )
            v.err(where, fqdn_error(name))
            continue
        if not namespace or not gateway:
            v.err(where, "config namespace and gateway name cannot be empty")
        if not is_dns1123_label(namespace):
            v.err(where, f"invalid value for namespace: {_q(namespace)}")
        if not is_dns1123_label(gateway):
            v.err(where, f"invalid value for gateway name: {_q(gateway)}")


# ---------------------------------------- VirtualService
def _host_matches(a: str, b: str) -> bool:
    """istio ``host.Name.Matches``: equal, or one wildcard covers the other."""
    a_wild, b_wild = a.startswith("*"), b.startswith("*")
    if a_wild and b_wild:
        shorter, longer = sorted((a, b), key=len)
        return longer[1:].endswith(shorter[1:])
    if a_wild:
        return b.endswith(a[1:])
    if b_wild:
        return a.endswith(b[1:])
    return a == b


def _host_subset_of(a: str, b: str) -> bool:
    a_wild, b_wild = a.startswith("*"), b.startswith("*")
    if a_wild:
        return b_wild and len(a) >= len(b) and a[1:].endswith(b[1:])
    if b_wild:
        return a.endswith(b[1:])
    return a == b


def _virtual_service(v: _Validator, spec: VirtualServiceSpec) -> None:
    hosts = spec.hosts or []
    gateways = spec.gateways or []
    if not hosts:  # a delegate VirtualService
        if gateways:
            v.err("spec.gateways", "delegate virtual service must have no gateways specified")
        if spec.tls:
            v.err("spec.tls", "delegate virtual service must have no tls route specified")
        if spec.tcp:
            v.err("spec.tcp", "delegate virtual service must have no tcp route specified")
    applies_to_gateway = bool(gateways) and MESH_GATEWAY not in gateways
    if gateways:
        _gateway_names(v, "spec.gateways", gateways)
        if applies_to_gateway:
            v.warn(
                "spec.gateways",
                "bound to gateways only (no 'mesh'): ignored by meshlib",
                CODE_NOT_ENFORCED,
            )
    if not applies_to_gateway:
        for i, route in enumerate(spec.http or ()):
            for j, match in enumerate(route.match or ()):
                for field_name in ("headers", "without_headers"):
                    for key in getattr(match, field_name) or {}:
                        if key.startswith(_JWT_CLAIM_PREFIX):
                            v.err(
                                f"spec.http[{i}].match[{j}].{camel(field_name)}.{key}",
                                f"JWT claim based routing (key: {key}) is only supported for "
                                f"gateway, found no gateways: [{' '.join(gateways)}]",
                            )
    all_valid = True
    for i, host in enumerate(hosts):
        problem = wildcard_domain_error(host)
        if problem is not None and not _is_ip(host):
            v.err(f"spec.hosts[{i}]", problem)
            all_valid = False
        elif problem is None and not applies_to_gateway and host == "*":
            v.err(
                f"spec.hosts[{i}]",
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            )
            all_valid = False
    if all_valid:
        for i, first in enumerate(hosts):
            for j in range(i + 1, len(hosts)):
                if _host_matches(first, hosts[j]):
                    v.err(
                        f"spec.hosts[{j}]",
                        f"duplicate hosts in virtual service: {first} & {hosts[j]}",
                    )
    if not spec.http and not spec.tcp and not spec.tls:
        v.err("spec", "http, tcp or tls must be provided in virtual service")
    for i, route in enumerate(spec.http or ()):
        _http_route(v, f"spec.http[{i}]", route, delegate=not hosts)
    for i, tls in enumerate(spec.tls or ()):
        path = f"spec.tls[{i}]"
        if not tls.match:
            v.err(f"{path}.match", "TLS route must have at least one match condition")
        for j, tls_match in enumerate(tls.match or ()):
            where = f"{path}.match[{j}]"
            if not tls_match.sni_hosts:
                v.err(f"{where}.sniHosts", "TLS match must have at least one SNI host")
            for k, sni in enumerate(tls_match.sni_hosts or ()):
                _sni_host(v, f"{where}.sniHosts[{k}]", sni, hosts)
            _l4_match(v, where, tls_match.destination_subnets, tls_match.port)
            _labels(v, f"{where}.sourceLabels", tls_match.source_labels)
            _gateway_names(v, f"{where}.gateways", tls_match.gateways)
        if not tls.route:
            v.err(f"{path}.route", "TLS route is required")
        _route_destinations(v, f"{path}.route", tls.route or [])
    for i, tcp in enumerate(spec.tcp or ()):
        path = f"spec.tcp[{i}]"
        for j, l4 in enumerate(tcp.match or ()):
            where = f"{path}.match[{j}]"
            _l4_match(v, where, l4.destination_subnets, l4.port)
            _labels(v, f"{where}.sourceLabels", l4.source_labels)
            _gateway_names(v, f"{where}.gateways", l4.gateways)
        if not tcp.route:
            v.err(f"{path}.route", "TCP route is required")
        _route_destinations(v, f"{path}.route", tcp.route or [])
    _export_to(v, "spec.exportTo", spec.export_to)
    _unreachable_http(v, spec.http or [])


def _sni_host(v: _Validator, path: str, sni: str, hosts: Sequence[str]) -> None:
    problem = wildcard_domain_error(sni)
    if problem is not None:
        if _is_ip(sni):
            v.warn(
                path,
                f"using an IP address ({_q(sni)}) goes against SNI spec and most clients do not "
                "support this",
            )
        else:
            v.err(path, problem)
        return
    if not any(_host_subset_of(sni, host) for host in hosts):
        v.err(
            path,
            f"SNI host {_q(sni)} is not a compatible subset of any of the virtual service hosts: "
            f"[{', '.join(hosts)}]",
        )


def _l4_match(v: _Validator, path: str, subnets: Sequence[str] | None, port: int | None) -> None:
    for k, subnet in enumerate(subnets or ()):
        v.err(f"{path}.destinationSubnets[{k}]", _subnet_error(subnet))
    if port:
        v.err(f"{path}.port", _port_error(port))


def _unreachable_http(v: _Validator, routes: Sequence[HTTPRoute]) -> None:
    # istiod's VirtualServiceUnreachableRule: a route without match catches everything after it.
    for i, route in enumerate(routes[:-1]):
        if not route.match:
            for j in range(i + 1, len(routes)):
                v.warn(
                    f"spec.http[{j}]",
                    f"virtualService rule #{j} not used (only the last rule can have no matches)",
                )
            return


def _http_route(v: _Validator, path: str, route: HTTPRoute, *, delegate: bool) -> None:
    _route_conflicts(v, path, route, delegate=delegate)
    for j, match in enumerate(route.match or ()):
        _http_match(v, f"{path}.match[{j}]", match)
    _header_operations(v, f"{path}.headers", route.headers)
    _cors(v, f"{path}.corsPolicy", route)
    _fault(v, f"{path}.fault", route)
    if route.mirror_percent is not None:
        if route.mirror_percent > 100:
            v.err(
                f"{path}.mirrorPercent",
                f"mirror_percent must have a max value of 100 (it has {route.mirror_percent})",
            )
        v.warn(
            f"{path}.mirrorPercent",
            'using deprecated setting "mirrorPercent", use "mirrorPercentage" instead',
            CODE_DEPRECATED,
        )
    if route.mirror_percentage is not None and route.mirror_percentage.value is not None:
        value = route.mirror_percentage.value
        if value > 100:
            v.err(
                f"{path}.mirrorPercentage.value",
                f"mirror_percentage must have a max value of 100 (it has {value:f})",
            )
        if value < 0:
            v.err(
                f"{path}.mirrorPercentage.value",
                f"mirror_percentage must have a min value of 0 (it has {value:f})",
            )
    _destination(v, f"{path}.mirror", route.mirror)
    for k, mirror in enumerate(route.mirrors or ()):
        where = f"{path}.mirrors[{k}]"
        if mirror.destination is None:
            v.err(f"{where}.destination", "destination is required for mirrors")
            continue
        _destination(v, f"{where}.destination", mirror.destination)
        if mirror.percentage is not None and mirror.percentage.value is not None:
            value = mirror.percentage.value
            if value > 100:
                v.err(
                    f"{where}.percentage.value",
                    f"mirror percentage must have a max value of 100 (it has {value:f})",
                )
            if value < 0:
                v.err(
                    f"{where}.percentage.value",
                    f"mirror percentage must have a min value of 0 (it has {value:f})",
                )
    _redirect(v, f"{path}.redirect", route)
    _direct_response(v, f"{path}.directResponse", route)
    _retries(v, f"{path}.retries", route)
    _rewrite(v, f"{path}.rewrite", route)
    _authority_rewrite(v, path, route)
    _http_route_destinations(v, f"{path}.route", route.route or [])
    if route.timeout is not None:
        _duration(v, f"{path}.timeout", route.timeout)


def _route_conflicts(v: _Validator, path: str, route: HTTPRoute, *, delegate: bool) -> None:
    name = route.name or ""
    if route.delegate is not None and not delegate:
        if route.redirect is not None:
            v.err(f"{path}.redirect", f"root HTTP route {name} must not specify redirect")
        if route.route is not None:
            v.err(f"{path}.route", f"root HTTP route {name} must not specify route")
        return
    if delegate and route.delegate is not None:
        v.err(f"{path}.delegate", "delegate HTTP route cannot contain delegate")
    if route.redirect is not None:
        if route.route:
            v.err(path, "HTTP route cannot contain both route and redirect")
        if route.fault is not None:
            v.err(path, "HTTP route cannot contain both fault and redirect")
        if route.rewrite is not None:
            v.err(path, "HTTP route rule cannot contain both rewrite and redirect")
        if route.direct_response is not None:
            v.err(path, "HTTP route rule cannot contain both directResponse and redirect")
    elif route.direct_response is not None:
        if route.route:
            v.err(path, "HTTP route cannot contain both route and directResponse")
        if route.fault is not None:
            v.err(path, "HTTP route cannot contain both fault and directResponse")
        if route.rewrite is not None:
            v.err(path, "HTTP route rule cannot contain both rewrite and directResponse")
    elif not route.route:
        v.err(path, "HTTP route, redirect or directResponse is required")
    if route.mirror is not None and route.mirrors:
        v.err(path, "HTTP route cannot contain both mirror and mirrors")


def _header_name_for_match(name: str) -> str | None:
    if name == "":
        return "header name cannot be empty"
    if name.startswith(_JWT_CLAIM_PREFIX) or name in PSEUDO_HEADERS:
        return None
    if not _HEADER_NAME.fullmatch(name):
        return f"header name {name} is not a valid header name"
    return None


def _http_match(v: _Validator, path: str, match: HTTPMatchRequest) -> None:
    for name, header in (match.headers or {}).items():
        where = f"{path}.headers.{name}"
        v.err(where, _header_name_for_match(name))
        _string_match(v, where, header)
    for name, header in (match.without_headers or {}).items():
        where = f"{path}.withoutHeaders.{name}"
        v.err(where, _header_name_for_match(name))
        if header.regex != "*":
            _string_match(v, where, header)
    _string_match(v, f"{path}.uri", match.uri, allow_empty_prefix=True)
    _string_match(v, f"{path}.scheme", match.scheme)
    _string_match(v, f"{path}.method", match.method)
    _string_match(v, f"{path}.authority", match.authority)
    for name, param in (match.query_params or {}).items():
        _string_match(v, f"{path}.queryParams.{name}", param)
    if match.port:
        v.err(f"{path}.port", _port_error(match.port))
    _labels(v, f"{path}.sourceLabels", match.source_labels)
    _gateway_names(v, f"{path}.gateways", match.gateways)
    if match.source_namespace and not is_dns1123_label(match.source_namespace):
        v.err(
            f"{path}.sourceNamespace", f"sourceNamespace match {match.source_namespace} is invalid"
        )


def _is_authority(name: str) -> bool:
    return name.lower() in (":authority", "host")


def _header_operations(v: _Validator, path: str, headers: Headers | None) -> None:
    if headers is None:
        return
    for side, ops in (("request", headers.request), ("response", headers.response)):
        if ops is None:
            continue
        where = f"{path}.{side}"
        for op in ("set", "add"):
            for name, value in (getattr(ops, op) or {}).items():
                at = f"{where}.{op}.{name}"
                if side == "request":
                    v.err(at, _authority_op_name_error(name))
                else:
                    v.err(at, _op_name_error(name))
                if _HEADER_VALUE_FORBIDDEN.search(value):
                    v.err(at, f"header value configuration {value} is invalid")
        for k, name in enumerate(ops.remove or ()):
            v.err(f"{where}.remove[{k}]", _op_name_error(name))


def _authority_op_name_error(name: str) -> str | None:
    if name == "":
        return "header name cannot be empty"
    if (name.startswith(":") or name.lower() == "host") and not _is_authority(name):
        return f'invalid header {_q(name)}: header cannot have ":" prefix'
    return None


def _op_name_error(name: str) -> str | None:
    if name == "":
        return "header name cannot be empty"
    if name.lower() == "host":
        return f"invalid header {_q(name)}: cannot set Host header"
    if name.startswith(":"):
        return f'invalid header {_q(name)}: header cannot have ":" prefix'
    return None


def _authority_rewrite(v: _Validator, path: str, route: HTTPRoute) -> None:
    current = route.rewrite.authority if route.rewrite and route.rewrite.authority else ""
    request = route.headers.request if route.headers else None
    if request is None:
        return
    for op in ("set", "add"):
        for name, value in (getattr(request, op) or {}).items():
            if not _is_authority(name):
                continue
            if current:
                v.err(
                    f"{path}.headers.request.{op}.{name}",
                    f"authority header cannot be set multiple times: have {_q(current)}, "
                    f"attempting to set {_q(value)}",
                )
                return
            current = value


def _cors(v: _Validator, path: str, route: HTTPRoute) -> None:
    policy = route.cors_policy
    if policy is None:
        return
    for i, origin in enumerate(policy.allow_origins or ()):
        where = f"{path}.allowOrigins[{i}]"
        value = origin.exact or origin.prefix or origin.regex or ""
        if value == "":
            v.err(where, "'' is not a valid match type for CORS allow origins")
        else:
            _string_match(v, where, origin)
    for i, method in enumerate(policy.allow_methods or ()):
        if method not in CORS_METHODS:
            v.err(f"{path}.allowMethods[{i}]", f"{_q(method)} is not a supported HTTP method")
    for field_name in ("allow_headers", "expose_headers"):
        for i, name in enumerate(getattr(policy, field_name) or ()):
            where = f"{path}.{camel(field_name)}[{i}]"
            if name == "":
                v.err(where, "header name cannot be empty")
            elif name != "*" and not _HEADER_NAME.fullmatch(name):
                v.err(where, f"header name {name} is not a valid header name")
    if policy.max_age is not None:
        nanos = _duration(v, f"{path}.maxAge", policy.max_age)
        if nanos is not None and nanos % 1_000_000_000:
            v.err(f"{path}.maxAge", "max_age duration is accurate only to seconds precision")
    if policy.allow_origin is not None:
        v.warn(
            f"{path}.allowOrigin",
            'using deprecated setting "allowOrigin", use "allowOrigins" instead',
            CODE_DEPRECATED,
        )


def _http_status_error(status: int) -> str | None:
    if status < 200 or status > 600:
        return f"HTTP status {status} is not in range 200-599"
    return None


def _fault(v: _Validator, path: str, route: HTTPRoute) -> None:
    fault = route.fault
    if fault is None:
        return
    if fault.abort is None and fault.delay is None:
        v.err(path, "HTTP fault injection must have an abort and/or a delay")
    if (abort := fault.abort) is not None:
        where = f"{path}.abort"
        if abort.percentage is not None:
            _percentage(v, f"{where}.percentage.value", abort.percentage.value)
        kinds = [
            k
            for k in ("http_status", "grpc_status", "http2_error")
            if getattr(abort, k) is not None
        ]
        if len(kinds) > 1:
            v.err(where, "only one of httpStatus, grpcStatus or http2Error may be set")
        elif abort.grpc_status is not None:
            if abort.grpc_status not in GRPC_STATUS_NAMES:
                v.err(
                    f"{where}.grpcStatus",
                    f"gRPC status {_q(abort.grpc_status)} is not supported. See "
                    "https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of "
                    "supported codes, for example 'NOT_FOUND'",
                )
        elif abort.http2_error is not None:
            v.err(f"{where}.http2Error", "HTTP/2 abort fault injection not supported yet")
        elif abort.http_status is not None:
            v.err(f"{where}.httpStatus", _http_status_error(abort.http_status))
        else:
            v.warn(where, "abort configured, but error type not set")
    if (delay := fault.delay) is not None:
        where = f"{path}.delay"
        if delay.percentage is not None:
            _percentage(v, f"{where}.percentage.value", delay.percentage.value)
        if delay.fixed_delay is not None and delay.exponential_delay is not None:
            v.err(where, "only one of fixedDelay or exponentialDelay may be set")
        elif delay.fixed_delay is not None:
            _duration(v, f"{where}.fixedDelay", delay.fixed_delay)
        elif delay.exponential_delay is not None:
            _duration(v, f"{where}.exponentialDelay", delay.exponential_delay)
            v.err(f"{where}.exponentialDelay", "exponentialDelay not supported yet")
        if delay.percent is not None:
            v.warn(
                f"{where}.percent",
                'using deprecated setting "percent", use "percentage" instead',
                CODE_DEPRECATED,
            )
            if delay.percentage is None:
                v.err(f"{where}.percent", int_percent_error(delay.percent))


def _destination(v: _Validator, path: str, destination: Destination | None) -> None:
    if destination is None:
        return
    host = destination.host or ""
    if host == "*":
        v.err(f"{path}.host", f"invalid destination host {host}")
    else:
        v.err(f"{path}.host", wildcard_domain_error(host))
    if destination.subset is not None and destination.subset != "":
        v.err(f"{path}.subset", _subset_name_error(destination.subset))
    if destination.port is not None:
        v.err(f"{path}.port.number", _port_error(destination.port.number or 0))


def _subset_name_error(name: str) -> str | None:
    if not name:
        return "subset name cannot be empty"
    if not is_dns1123_label(name):
        return f"subset name is invalid: {name}"
    return None


def _http_route_destinations(
    v: _Validator, path: str, routes: Sequence[HTTPRouteDestination]
) -> None:
    total = 0
    for i, dest in enumerate(routes):
        where = f"{path}[{i}]"
        if dest.destination is None:
            v.err(f"{where}.destination", "destination is required")
        _header_operations(v, f"{where}.headers", dest.headers)
        _destination(v, f"{where}.destination", dest.destination)
        weight = dest.weight or 0
        if weight < 0:
            v.err(f"{where}.weight", f"weight {weight} < 0")
        total += weight
    if len(routes) > 1 and total == 0:
        v.err(path, "total destination weight = 0")


def _route_destinations(v: _Validator, path: str, routes: Sequence[RouteDestination]) -> None:
    total = 0
    for i, dest in enumerate(routes):
        where = f"{path}[{i}]"
        if dest.destination is None:
            v.err(f"{where}.destination", "destination is required")
        _destination(v, f"{where}.destination", dest.destination)
        weight = dest.weight or 0
        if weight < 0:
            v.err(f"{where}.weight", f"weight {weight} < 0")
        total += weight
    if len(routes) > 1 and total == 0:
        v.err(path, "total destination weight = 0")


def _redirect(v: _Validator, path: str, route: HTTPRoute) -> None:
    redirect = route.redirect
    if redirect is None:
        return
    # istiod reports only the first redirect problem; so do we, in its order.
    if redirect.port is not None and redirect.derive_port is not None:
        v.err(path, "only one of port or derivePort may be set")
        return
    if redirect.uri and redirect.prefix_rewrite:
        v.err(path, "redirect may only specify one of uri or prefixRewrite")
        return
    if redirect.prefix_rewrite:
        for j, match in enumerate(route.match or ()):
            if match.uri is not None and match.uri.prefix is None:
                v.err(
                    f"{path}.prefixRewrite",
                    "redirect prefixRewrite requires all URI matches to use prefix match type",
                )
                return
            del j
    has_port = redirect.port is not None or redirect.derive_port is not None
    if not (
        redirect.uri or redirect.prefix_rewrite or redirect.authority or has_port or redirect.scheme
    ):
        v.err(path, "redirect must specify URI, authority, scheme, or port")
        return
    code = redirect.redirect_code or 0
    if code and not 300 <= code <= 399:
        v.err(f"{path}.redirectCode", f"{code} is not a valid redirect code, must be 3xx")
        return
    if redirect.scheme and redirect.scheme not in ("http", "https"):
        v.err(f"{path}.scheme", 'invalid redirect scheme, must be "http" or "https"')
        return
    if redirect.port:
        v.err(f"{path}.port", _port_error(redirect.port))


def _direct_response(v: _Validator, path: str, route: HTTPRoute) -> None:
    response = route.direct_response
    if response is None:
        return
    body = response.body
    if body is not None:
        size = 0
        if body.string is not None and body.bytes is not None:
            v.err(f"{path}.body", "only one of string or bytes may be set")
        elif body.string is not None:
            size = len(body.string.encode())
        elif body.bytes is not None:
            try:
                size = len(base64.b64decode(body.bytes, validate=True))
            except (binascii.Error, ValueError):
                v.err(f"{path}.body.bytes", "expected base64")
        if size > MAX_DIRECT_RESPONSE_BODY:
            v.err(
                f"{path}.body",
                "large direct_responses may impact control plane performance, must be less "
                "than 1MB",
            )
        elif size > WARN_DIRECT_RESPONSE_BODY:
            v.warn(f"{path}.body", "large direct_responses may impact control plane performance")
    v.err(f"{path}.status", _http_status_error(response.status or 0))


def _retries(v: _Validator, path: str, route: HTTPRoute) -> None:
    retries = route.retries
    if retries is None:
        return
    attempts = retries.attempts or 0
    if attempts < 0:
        v.err(f"{path}.attempts", "attempts cannot be negative")
    # proto3: an absent ``attempts`` is 0, so istiod refuses e.g. ``retries: {retryOn: 5xx}``.
    if attempts == 0 and (
        retries.per_try_timeout is not None
        or retries.retry_on
        or retries.retry_remote_localities is not None
    ):
        v.err(path, "http retry policy configured when attempts are set to 0 (disabled)")
    _duration(v, f"{path}.perTryTimeout", retries.per_try_timeout)
    if retries.retry_on:
        for item in retries.retry_on.split(","):
            if item in RETRY_ON_POLICIES:
                continue
            if re.fullmatch(r"[+-]?[0-9]+", item) and int(item) in GO_HTTP_STATUSES:
                continue
            v.err(f"{path}.retryOn", f"{_q(item)} is not a valid retryOn policy")
    _duration(v, f"{path}.backoff", retries.backoff)


def _rewrite(v: _Validator, path: str, route: HTTPRoute) -> None:
    rewrite = route.rewrite
    if rewrite is None:
        return
    regex = rewrite.uri_regex_rewrite
    if rewrite.uri and regex is not None:
        v.err(path, "rewrite may only contain one of uri or uriRegexRewrite")
        return
    if not rewrite.uri and regex is None and not rewrite.authority:
        v.err(path, "rewrite must specify at least one of uri, uriRegexRewrite, or authority")
        return
    if regex is not None:
        if not regex.match or not regex.rewrite:
            v.err(
                f"{path}.uriRegexRewrite",
                "uriRegexRewrite requires both rewrite and match fields to be specified",
            )
        else:
            v.err(f"{path}.uriRegexRewrite.match", regex_error(regex.match))


# ---------------------------------------- DestinationRule
def _destination_rule(v: _Validator, spec: DestinationRuleSpec) -> None:
    v.err("spec.host", wildcard_domain_error(spec.host or ""))
    _traffic_policy(v, "spec.trafficPolicy", spec.traffic_policy)
    names: set[str] = set()
    for i, subset in enumerate(spec.subsets or ()):
        where = f"spec.subsets[{i}]"
        name = subset.name or ""
        if name in names:
            v.err(f"{where}.name", f"duplicate subset names: {name}")
        names.add(name)
        v.err(f"{where}.name", _subset_name_error(name))
        _labels(v, f"{where}.labels", subset.labels)
        _traffic_policy(v, f"{where}.trafficPolicy", subset.traffic_policy)
    _export_to(
        v, "spec.exportTo", spec.export_to, dr_with_selector=spec.workload_selector is not None
    )
    _workload_selector(v, "spec.workloadSelector", spec.workload_selector)


def _traffic_policy(v: _Validator, path: str, policy: TrafficPolicy | None) -> None:
    if policy is None:
        return
    if all(getattr(policy, name) is None for name in type(policy).model_fields):
        v.err(path, "traffic policy must have at least one field")
        return
    if policy.tunnel is not None and policy.proxy_protocol is not None:
        v.err(path, "tunnel and proxyProtocol must not be set together")
        return
    _outlier_detection(v, f"{path}.outlierDetection", policy.outlier_detection)
    _connection_pool(v, f"{path}.connectionPool", policy.connection_pool)
    _load_balancer(v, f"{path}.loadBalancer", policy.load_balancer, policy.outlier_detection)
    _client_tls(v, f"{path}.tls", policy.tls)
    for i, port_policy in enumerate(policy.port_level_settings or ()):
        where = f"{path}.portLevelSettings[{i}]"
        if port_policy.port is None:
            v.err(f"{where}.port", "portTrafficPolicy must have valid port")
        if (
            port_policy.outlier_detection is None
            and port_policy.connection_pool is None
            and port_policy.load_balancer is None
            and port_policy.tls is None
        ):
            v.err(where, "port traffic policy must have at least one field")
            continue
        _outlier_detection(v, f"{where}.outlierDetection", port_policy.outlier_detection)
        _connection_pool(v, f"{where}.connectionPool", port_policy.connection_pool)
        _load_balancer(
            v, f"{where}.loadBalancer", port_policy.load_balancer, port_policy.outlier_detection
        )
        _client_tls(v, f"{where}.tls", port_policy.tls)
    if (tunnel := policy.tunnel) is not None:
        where = f"{path}.tunnel"
        if tunnel.protocol and tunnel.protocol not in ("CONNECT", "POST"):
            v.err(f"{where}.protocol", 'tunnel protocol must be "CONNECT" or "POST"')
        target = tunnel.target_host or ""
        fqdn_problem = fqdn_error(target)
        if fqdn_problem is not None and not _is_ip(target):
            v.err(
                f"{where}.targetHost",
                f"tunnel target host must be valid FQDN or IP address: {fqdn_problem}; "
                f"{target} is not a valid IP",
            )
        port_problem = _port_error(tunnel.target_port or 0)
        if port_problem:
            v.err(f"{where}.targetPort", f"tunnel target port is invalid: {port_problem}")
    if policy.retry_budget is not None:
        _syntax_only_duration(
            v, f"{path}.retryBudget.budgetInterval", policy.retry_budget.budget_interval
        )


def _outlier_detection(v: _Validator, path: str, od: OutlierDetection | None) -> None:
    if od is None:
        return
    _duration(v, f"{path}.baseEjectionTime", od.base_ejection_time)
    if od.consecutive_errors:
        v.warn(
            f"{path}.consecutiveErrors",
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or "
            "consecutive5xxErrors instead",
            CODE_DEPRECATED,
        )
    if (
        not od.split_external_local_origin_errors
        and (od.consecutive_local_origin_failures or 0) > 0
    ):
        v.err(
            f"{path}.consecutiveLocalOriginFailures",
            "outlier detection consecutive local origin failures is specified, but split external "
            "local origin errors is set to false",
        )
    _duration(v, f"{path}.interval", od.interval)
    for name in ("max_ejection_percent", "min_health_percent"):
        value = getattr(od, name)
        if value is not None:
            v.err(f"{path}.{camel(name)}", int_percent_error(value))


_NON_NEGATIVE_HTTP = (
    ("http1_max_pending_requests", "http1 max pending requests must be non-negative"),
    ("http2_max_requests", "http2 max requests must be non-negative"),
    ("max_requests_per_connection", "max requests per connection must be non-negative"),
    ("max_retries", "max retries must be non-negative"),
    ("max_concurrent_streams", "max concurrent streams must be non-negative"),
)


def _connection_pool(v: _Validator, path: str, pool: ConnectionPoolSettings | None) -> None:
    if pool is None:
        return
    if pool.http is None and pool.tcp is None:
        v.err(path, "connection pool must have at least one field")
        return
    if (http := pool.http) is not None:
        where = f"{path}.http"
        for name, message in _NON_NEGATIVE_HTTP:
            if (getattr(http, name) or 0) < 0:
                v.err(f"{where}.{camel(name)}", message)
        _duration(v, f"{where}.idleTimeout", http.idle_timeout)
        if http.h2_upgrade_policy == "UPGRADE" and http.use_client_protocol:
            v.err(
                f"{where}.useClientProtocol",
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            )
        if (keepalive := http.http2_keep_alive) is not None:
            for name in ("interval", "timeout"):
                value = getattr(keepalive, name)
                if value is None:
                    v.err(f"{where}.http2KeepAlive.{name}", f"http2 keepalive {name} is required")
                else:
                    _duration(v, f"{where}.http2KeepAlive.{name}", value)
    if (tcp := pool.tcp) is not None:
        where = f"{path}.tcp"
        if (tcp.max_connections or 0) < 0:
            v.err(f"{where}.maxConnections", "max connections must be non-negative")
        _duration(v, f"{where}.connectTimeout", tcp.connect_timeout)
        _duration(v, f"{where}.maxConnectionDuration", tcp.max_connection_duration)
        if tcp.idle_timeout is not None:
            nanos = _syntax_only_duration(v, f"{where}.idleTimeout", tcp.idle_timeout)
            # ``0s`` disables the idle timeout; anything else must pass ValidateDuration.
            if nanos is not None and nanos // 1_000_000 != 0:
                _duration(v, f"{where}.idleTimeout", tcp.idle_timeout)
        if (tcp_keepalive := tcp.tcp_keepalive) is not None:
            _duration(v, f"{where}.tcpKeepalive.time", tcp_keepalive.time)
            _duration(v, f"{where}.tcpKeepalive.interval", tcp_keepalive.interval)


def _is_prime(x: int) -> bool:
    # Envoy's own primality test, so that the same table sizes pass.
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    return all(x % factor for factor in range(3, math.isqrt(x) + 1, 2))


def _load_balancer(
    v: _Validator, path: str, lb: LoadBalancerSettings | None, outlier: OutlierDetection | None
) -> None:
    if lb is None:
        return
    if lb.simple is not None and lb.consistent_hash is not None:
        v.err(path, "only one of simple or consistentHash may be set")
    if (ch := lb.consistent_hash) is not None:
        where = f"{path}.consistentHash"
        keys = [
            k
            for k in (
                "http_header_name",
                "http_cookie",
                "use_source_ip",
                "http_query_parameter_name",
            )
            if getattr(ch, k) is not None
        ]
        if len(keys) > 1:
            v.err(
                where,
                "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName "
                "may be set",
            )
        if ch.ring_hash is not None and ch.maglev is not None:
            v.err(where, "only one of ringHash or maglev may be set")
        if (cookie := ch.http_cookie) is not None:
            if not cookie.name:
                v.err(f"{where}.httpCookie.name", "name required for HttpCookie")
            _syntax_only_duration(v, f"{where}.httpCookie.ttl", cookie.ttl)
            seen: set[str] = set()
            for i, attribute in enumerate(cookie.attributes or ()):
                at = f"{where}.httpCookie.attributes[{i}].name"
                if not attribute.name:
                    v.err(at, "cookie attribute name cannot be empty")
                elif attribute.name in seen:
                    v.err(at, f"duplicate cookie attribute name: {attribute.name}")
                else:
                    seen.add(attribute.name)
        if ch.minimum_ring_size:
            v.warn(
                f"{where}.minimumRingSize",
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash "
                "configuration instead",
                CODE_DEPRECATED,
            )
            if ch.ring_hash is not None or ch.maglev is not None:
                v.err(where, "only one of MinimumRingSize or Maglev/Ringhash can be specified")
        if (maglev := ch.maglev) is not None:
            size = maglev.table_size or 0
            at = f"{where}.maglev.tableSize"
            if size == 0:
                v.err(at, "tableSize must be set for maglev")
            if size >= MAX_MAGLEV_TABLE_SIZE:
                v.err(at, "tableSize must be less than 5000011 for maglev")
            if not _is_prime(size):
                v.err(at, "tableSize must be a prime number for maglev")
    if lb.locality_lb_setting is not None and lb.zone_aware_lb_setting is not None:
        v.err(path, "only one of localityLbSetting and zoneAwareLbSetting can be set")
    _locality(v, f"{path}.localityLbSetting", lb.locality_lb_setting, outlier)
    if (zone := lb.zone_aware_lb_setting) is not None:
        where = f"{path}.zoneAwareLbSetting"
        for i, label in enumerate(zone.failover_priority or ()):
            if label in TOPOLOGY_LABELS:
                v.err(
                    f"{where}.failoverPriority[{i}]",
                    f"'failover_priority' for zone aware lb must not use topology label '{label}'; "
                    "region- and zone-level routing are handled automatically",
                )
        if (zone.failover or zone.failover_priority) and outlier is None:
            v.warn(where, "outlier detection policy must be provided for failover")
        for i, failover in enumerate(zone.failover or ()):
            at = f"{where}.failover[{i}]"
            src, dst = failover.from_ or "", failover.to or ""
            if src == dst:
                v.err(at, "zone aware lb failover settings must specify different regions")
            if "/" in src or "/" in dst:
                v.err(
                    at,
                    "zone aware lb failover only specifies region; zone and subzone failover are "
                    "handled automatically",
                )
            if "*" in src or "*" in dst:
                v.err(at, "zone aware lb failover region should not contain '*' wildcard")
    if (warmup := lb.warmup) is not None:
        where = f"{path}.warmup"
        if warmup.duration is None:
            v.err(f"{where}.duration", "duration is required")
        else:
            _duration(v, f"{where}.duration", warmup.duration)
        if (warmup.minimum_percent or 0) > 100:
            v.err(
                f"{where}.minimumPercent",
                "minimumPercent value should be less than or equal to 100",
            )
        if warmup.aggression is not None and warmup.aggression <= 0:
            v.err(f"{where}.aggression", "aggression should be greater than 0")
    if lb.warmup_duration_secs is not None:
        _syntax_only_duration(v, f"{path}.warmupDurationSecs", lb.warmup_duration_secs)
        v.warn(
            f"{path}.warmupDurationSecs",
            'using deprecated setting "warmupDurationSecs", use "warmup" instead',
            CODE_DEPRECATED,
        )


def _locality(
    v: _Validator,
    path: str,
    setting: LocalityLoadBalancerSetting | None,
    outlier: OutlierDetection | None,
) -> None:
    if setting is None:
        return
    if setting.distribute and setting.failover:
        v.err(path, "can not simultaneously specify 'distribute' and 'failover'")
        return
    if setting.failover and setting.failover_priority:
        for i, label in enumerate(setting.failover_priority):
            if label in TOPOLOGY_LABELS:
                v.err(
                    f"{path}.failoverPriority[{i}]",
                    "can not simultaneously set 'failover' and topology label "
                    f"'{label}' in 'failover_priority'",
                )
                return
    sources: list[str] = []
    for i, distribute in enumerate(setting.distribute or ()):
        where = f"{path}.distribute[{i}]"
        sources.append(distribute.from_ or "")
        weights = distribute.to or {}
        if any(w <= 0 or w > 100 for w in weights.values()):
            v.err(f"{where}.to", "locality weight must be in range [1, 100]")
            return
        if sum(weights.values()) != 100:
            v.err(f"{where}.to", f"total locality weight {sum(weights.values())} != 100")
            return
        v.err(f"{where}.to", _localities_error(list(weights)))
    v.err(f"{path}.distribute", _localities_error(sources))
    if (setting.failover or setting.failover_priority) and outlier is None:
        v.warn(path, "outlier detection policy must be provided for failover")
    for i, failover in enumerate(setting.failover or ()):
        at = f"{path}.failover[{i}]"
        src, dst = failover.from_ or "", failover.to or ""
        if src == dst:
            v.err(at, "locality lb failover settings must specify different regions")
        if "/" in src or "/" in dst:
            v.err(at, "locality lb failover only specify region")
        if "*" in src or "*" in dst:
            v.err(at, "locality lb failover region should not contain '*' wildcard")


def _localities_error(localities: Iterable[str]) -> str | None:
    """istiod's ``validateLocalities``: wildcards only at the end, no overlaps."""
    tree: dict[str, dict[str, set[str]]] = {}
    for locality in localities:
        stars = locality.count("*")
        if stars and (stars > 1 or not locality.endswith("*")):
            return (
                f"locality {locality} wildcard '*' number can not exceed 1 and must be in the end"
            )
        overlap = f"locality {locality} overlap with previous specified ones"
        if "*" in tree:
            return overlap
        items = locality.split("/", 2)
        if any(item == "" for item in items):
            return f"locality {locality} must not contain empty region/zone/subzone info"
        region = items[0]
        if len(items) == 1:
            if region in tree:
                return overlap
            tree[region] = {"*": {"*"}}
            continue
        zone = items[1]
        zones = tree.setdefault(region, {})
        if "*" in zones:
            return overlap
        if len(items) == 2:
            if zone in zones:
                return overlap
            zones[zone] = {"*"}
            continue
        subzones = zones.setdefault(zone, set())
        if "*" in subzones or items[2] in subzones:
            return overlap
        subzones.add(items[2])
    return None


def _client_tls(v: _Validator, path: str, tls: ClientTLSSettings | None) -> None:
    if tls is None:
        return
    mode = tls.mode or "DISABLE"
    if tls.insecure_skip_verify:
        if mode == "SIMPLE" and (
            tls.ca_certificates or tls.credential_name or tls.subject_alt_names is not None
        ):
            v.err(
                path,
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when "
                "InsecureSkipVerify is set true",
            )
        if mode == "MUTUAL" and (tls.ca_certificates or tls.subject_alt_names is not None):
            v.err(
                path,
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set "
                "true",
            )
    if mode in ("SIMPLE", "MUTUAL") and tls.credential_name:
        if tls.client_certificate or tls.ca_certificates or tls.private_key or tls.ca_crl:
            v.err(
                path,
                "cannot specify client certificates or CA certificate or CA CRL If credentialName "
                "is set",
            )
        return
    if mode == "MUTUAL":
        if not tls.client_certificate:
            v.err(f"{path}.clientCertificate", "client certificate required for mutual tls")
        if not tls.private_key:
            v.err(f"{path}.privateKey", "private key required for mutual tls")


# ---------------------------------------- ServiceEntry
def _unix_address_error(address: str) -> str | None:
    if not address:
        return "unix address must not be empty"
    if address.startswith("@"):
        return None
    if not address.startswith("/") or address.endswith("/"):
        return f"{address} is not an absolute path to a file"
    return None


def _port_name_error(name: str) -> str | None:
    return None if is_dns1123_label(name) else f"invalid port name: {name}"


def _workload_entry(
    v: _Validator,
    path: str,
    we: WorkloadEntrySpec,
    *,
    service_ports: set[str] | None,
    allow_fqdn: bool,
) -> None:
    address = we.address or ""
    if not address:
        if not we.network:
            v.err(f"{path}.address", "address is required")
            return
        v.warn(f"{path}.address", f"address is unset with network {_q(we.network)}")
    unix = address.startswith("unix://")
    if unix:
        v.err(f"{path}.address", _unix_address_error(address.removeprefix("unix://")))
        if we.ports:
            v.err(f"{path}.ports", f"unix endpoint {address} must not include ports")
    elif address and not _is_ip(address):
        if not allow_fqdn:
            v.err(f"{path}.address", f"endpoint address {_q(address)} is not a valid IP address")
        elif fqdn_error(address):
            v.err(
                f"{path}.address",
                f"endpoint address {_q(address)} is not a valid FQDN or an IP address",
            )
    _endpoint_ports(v, path, we, service_ports)
    _labels(v, f"{path}.labels", we.labels)
    if unix and service_ports is not None and len(service_ports) != 1:
        v.err(path, "exactly 1 service port required for unix endpoints")


def _endpoint_ports(
    v: _Validator, path: str, we: WorkloadEntrySpec, service_ports: set[str] | None
) -> None:
    for name, port in (we.ports or {}).items():
        at = f"{path}.ports.{name}"
        if service_ports is not None and name not in service_ports:
            v.err(at, f"endpoint port {port} is not defined by the service entry")
        v.err(at, _port_name_error(name))
        v.err(at, _port_error(port))


def _service_entry(v: _Validator, spec: ServiceEntrySpec) -> None:
    resolution = spec.resolution or "NONE"
    hosts = spec.hosts or []
    if spec.workload_selector is not None:
        if not spec.workload_selector.labels:
            v.warn(
                "spec.workloadSelector",
                "service entry: workload selector specified without labels, will be applied to "
                "all services in namespace",
            )
        _labels(v, "spec.workloadSelector.labels", spec.workload_selector.labels)
        if spec.endpoints is not None:
            v.err("spec", "only one of WorkloadSelector or Endpoints is allowed in Service Entry")
    if not hosts:
        v.err("spec.hosts", "service entry must have at least one host")
    for i, host in enumerate(hosts):
        if host == "*":
            v.err(f"spec.hosts[{i}]", f"invalid host {host}")
            continue
        v.err(f"spec.hosts[{i}]", wildcard_domain_error(host))
        if (
            resolution != "DYNAMIC_DNS"
            and "*" in host
            and len(host) != 1
            and not host.startswith("*.")
        ):
            v.warn(f"spec.hosts[{i}]", f"partial wildcard {_q(host)} not allowed")
    cidr = False
    for i, address in enumerate(spec.addresses or ()):
        cidr = cidr or "/" in address
        v.err(f"spec.addresses[{i}]", _subnet_error(address))
    if cidr and resolution not in ("NONE", "STATIC"):
        v.err("spec.addresses", "CIDR addresses are allowed only for NONE/STATIC resolution types")
    names: set[str] = set()
    numbers: set[int] = set()
    for i, port in enumerate(spec.ports or ()):
        where = f"spec.ports[{i}]"
        name, number = port.name or "", port.number or 0
        if name in names:
            v.err(f"{where}.name", f"service entry port name {_q(name)} already defined")
        if number in numbers:
            v.err(f"{where}.number", f"service entry port {number} already defined")
        names.add(name)
        numbers.add(number)
        if port.target_port:
            v.err(f"{where}.targetPort", _port_error(port.target_port))
        v.err(f"{where}.name", _port_name_error(name))
        if port.protocol and port.protocol.lower() not in PROTOCOLS:
            v.err(f"{where}.protocol", f"unsupported protocol: {port.protocol}")
        v.err(f"{where}.number", _port_error(number))
    endpoints = spec.endpoints or []
    if resolution == "NONE":
        if endpoints:
            v.err("spec.endpoints", "no endpoints should be provided for resolution type none")
        if spec.workload_selector is not None:
            v.warn(
                "spec.workloadSelector",
                "workloadSelector should not be set when resolution mode is NONE",
            )
    elif resolution == "STATIC":
        for i, endpoint in enumerate(endpoints):
            _workload_entry(
                v, f"spec.endpoints[{i}]", endpoint, service_ports=names, allow_fqdn=False
            )
    elif resolution in ("DNS", "DNS_ROUND_ROBIN"):
        if not endpoints:
            for i, host in enumerate(hosts):
                if problem := fqdn_error(host):
                    v.err(
                        f"spec.hosts[{i}]",
                        "hosts must be FQDN or contain only prefix wildcards if no endpoints are "
                        f"provided for resolution mode {resolution}, {problem}",
                    )
                    break
        if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
            v.err(
                "spec.endpoints",
                f"there must only be 0 or 1 endpoint for resolution mode {resolution}",
            )
        for i, endpoint in enumerate(endpoints):
            where = f"spec.endpoints[{i}]"
            address = endpoint.address or ""
            if not _is_ip(address) and fqdn_error(address):
                v.err(
                    f"{where}.address",
                    f"endpoint address {_q(address)} is not a valid FQDN or an IP address",
                )
            _labels(v, f"{where}.labels", endpoint.labels)
            _endpoint_ports(v, where, endpoint, names)
    else:  # DYNAMIC_DNS
        for i, host in enumerate(hosts):
            if not host.startswith("*"):
                v.err(
                    f"spec.hosts[{i}]", f"host must be wildcarded for resolution mode {resolution}"
                )
        if spec.addresses:
            v.err("spec.addresses", f"addresses cannot be set for resolution type {resolution}")
        if endpoints:
            v.err("spec.endpoints", f"endpoints cannot be set for resolution type {resolution}")
        for i, port in enumerate(spec.ports or ()):
            if (port.protocol or "").lower() not in DYNAMIC_DNS_PROTOCOLS:
                v.err(
                    f"spec.ports[{i}].protocol",
                    "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type "
                    f"{resolution}",
                )
    if resolution != "NONE" and len(hosts) > 1:
        for i, port in enumerate(spec.ports or ()):
            protocol = (port.protocol or "").lower()
            if protocol not in HTTP_PROTOCOLS and protocol not in TLS_PROTOCOLS:
                v.err(f"spec.ports[{i}]", "multiple hosts provided with non-HTTP, non-TLS ports")
                break
    _export_to(v, "spec.exportTo", spec.export_to, service_entry=True)


def _annotations(v: _Validator) -> None:
    value = v.res.annotations.get(DRY_RUN_ANNOTATION)
    if value is None:
        return
    if isinstance(v.res.spec, _NETWORKING_SPECS):
        unsupported_dry_run(v)
        return
    from meshlib._config.validate_security import dry_run_annotation

    dry_run_annotation(v, value)


def unsupported_dry_run(v: _Validator) -> None:
    res = v.res
    v.err(
        DRY_RUN_FIELD,
        f"{res.namespace}/{res.name} has unsupported annotation istio.io/dry-run, please "
        "remove the annotation",
    )


# ---------------------------------------- not enforced
def _not_enforced(v: _Validator, kind: str, path: str, model: EdgeModel) -> None:
    _walk(v, f"{kind}:", path, path, model)


def _index_not_enforced(
    entries: Iterable[str],
) -> tuple[frozenset[str], dict[str, tuple[frozenset[str], tuple[str, ...]]]]:
    """The patterns worth descending into, and the ``=VALUE`` entries by pattern."""
    descend: set[str] = set()
    values: dict[str, tuple[set[str], list[str]]] = {}
    for entry in entries:
        base, has_value, value = entry.partition("=")
        descend.update(base[:i] for i, char in enumerate(base) if char in ".[")
        if has_value:
            exact, prefixes = values.setdefault(base, (set(), []))
            if value.endswith("*"):
                prefixes.append(value[:-1])
            else:
                exact.add(value)
    return frozenset(descend), {k: (frozenset(e), tuple(p)) for k, (e, p) in values.items()}


_DESCEND, _VALUE_ENTRIES = _index_not_enforced(NOT_ENFORCED)


@functools.cache
def _keys(model: type[EdgeModel]) -> tuple[tuple[str, str], ...]:
    return tuple((name, camel(name)) for name in model.model_fields)


def _walk(v: _Validator, kind: str, pattern: str, path: str, model: EdgeModel) -> None:
    # Only subtrees that can hold a listed entry are visited: this runs for every resource.
    for name, key in _keys(type(model)):
        value = getattr(model, name)
        if value is None:
            continue
        sub_pattern = f"{kind}{pattern}.{key}"
        if _listed(sub_pattern, value):
            v.warn(f"{path}.{key}", NOT_ENFORCED_MESSAGE, CODE_NOT_ENFORCED)
        elif isinstance(value, EdgeModel):
            if sub_pattern in _DESCEND:
                _walk(v, kind, f"{pattern}.{key}", f"{path}.{key}", value)
        elif isinstance(value, list) and f"{sub_pattern}[]" in _DESCEND:
            for i, item in enumerate(value):
                if isinstance(item, EdgeModel):
                    _walk(v, kind, f"{pattern}.{key}[]", f"{path}.{key}[{i}]", item)


def _listed(pattern: str, value: object) -> bool:
    if pattern in NOT_ENFORCED:
        return True
    entries = _VALUE_ENTRIES.get(pattern)
    if entries is None or not isinstance(value, str):
        return False
    exact, prefixes = entries
    return value in exact or value.startswith(prefixes)
