"""Compile loaded Istio resources into one immutable MeshSnapshot, seen from this workload.

Every Istio default is applied here, once, from the named constants of ``meshlib._policy``;
the hot path never sees pydantic or an absent-vs-zero question. Compilation never raises on
anything the loader accepted: what cannot be compiled is reported as a ConfigIssue.
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

from meshlib._config import resources as r
from meshlib._config.hosts import (
    DEFAULT_TRUST_DOMAIN,
    ROOT_NAMESPACE,
    expand_host,
    is_visible,
    spiffe_id,
)
from meshlib._config.issues import ConfigIssue, Severity
from meshlib._engine.snapshot import (
    HostConfig,
    Location,
    MeshIdentity,
    MeshSnapshot,
    Resolution,
    ServiceInfo,
    ServicePort,
    wildcard_keys,
)
from meshlib._model.endpoint import Endpoint
from meshlib._policy import balancing, limits, outliers, retries
from meshlib._policy.faults import FaultPolicy
from meshlib._policy.locality import client_priority_values
from meshlib._policy.matching import HttpMatch, MatchKind, StringMatch
from meshlib._policy.paths import DEFAULT_PATH_NORMALIZATION, PathNormalization
from meshlib._policy.routing import (
    DirectResponse,
    HeaderOps,
    HeaderRules,
    Mirror,
    Redirect,
    Rewrite,
    Route,
    RouteDestination,
    RouteTable,
)
from meshlib._policy.traffic import ClientTls, DestinationPolicy, Subset, TrafficPolicy

if TYPE_CHECKING:
    from meshlib._config.loader import LoadedResource, LoadResult
    from meshlib._policy.authz import Authorizer, AuthzRequest
    from meshlib._policy.peerauth import WorkloadMtls

__all__ = [
    "GRPC_STATUS_CODES",
    "MESH_GATEWAY",
    "by_age",
    "compile_regex",
    "compile_retry_policy",
    "compile_snapshot",
    "compile_string_match",
    "normalize_weights",
]

MESH_GATEWAY = "mesh"
"""The reserved gateway name meaning "every sidecar" (here: this process)."""
DEFAULT_REDIRECT_CODE = 301
FULL_WEIGHT = 100
PERCENT = 100.0
DEFAULT_TLS_MODE = "DISABLE"
"""Proto default of ``ClientTLSSettings.mode`` when a ``tls`` block omits it."""
PSEUDO_HEADER_KEYS = frozenset({"uri", "scheme", "method", "authority"})
"""Header-match keys Istio ignores (they have dedicated fields)."""
RETRIABLE_STATUS_CODES = "retriable-status-codes"
_NO_NAMES: frozenset[str] = frozenset()
"""Shared by every empty set of names (each ``frozenset()`` call makes a new 216-byte object)."""
_NO_CODES: frozenset[int] = frozenset()


def _names(values: Iterable[str] | None) -> frozenset[str]:
    return frozenset(values) if values else _NO_NAMES


GRPC_STATUS_CODES: Mapping[str, int] = MappingProxyType(
    {
        name: number
        for number, name in enumerate(
            [
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
            ]
        )
    }
)

_T = TypeVar("_T")


def _ref(res: LoadedResource) -> str:
    return f"{res.kind}/{res.namespace}/{res.name}"


@dataclass(slots=True)
class _Context:
    identity: MeshIdentity
    issues: list[ConfigIssue] = field(default_factory=list)
    root_namespace: str = ROOT_NAMESPACE
    _labels: dict[frozenset[tuple[str, str]], Mapping[str, str]] = field(default_factory=dict)

    def labels(self, labels: Mapping[str, str] | None) -> Mapping[str, str]:
        """A read-only copy of ``labels``, one per distinct label set in the snapshot: replicas
        and ports of a workload, and the subsets of many rules (``version: v1``), share it."""
        key = frozenset((labels or {}).items())
        found = self._labels.get(key)
        if found is None:
            found = self._labels[key] = MappingProxyType(dict(labels or {}))
        return found

    def report(
        self, res: LoadedResource, path: str, message: str, code: str, *, error: bool = False
    ) -> None:
        self.issues.append(
            ConfigIssue(
                Severity.ERROR if error else Severity.WARNING,
                message,
                file=str(res.file or ""),
                document=res.document,
                resource=_ref(res),
                field=path,
                code=code,
            )
        )

    def seconds(self, res: LoadedResource, path: str, text: str | None, default: _T) -> float | _T:
        if text is None:
            return default
        try:
            return parse_seconds(text)
        except ValueError as error:
            self.report(
                res, path, f"invalid duration {text!r}: {error}", "meshlib.duration", error=True
            )
            return default


def parse_seconds(text: str) -> float:
    from meshlib._config.durations import parse_duration

    return parse_duration(text)


# ----------------------------------------------------------------------------- entry point
def compile_snapshot(
    result: LoadResult,
    *,
    namespace: str,
    workload: str = "",
    labels: Mapping[str, str] | None = None,
    service_account: str = "default",
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    generation: int = 1,
    root_namespace: str = ROOT_NAMESPACE,
    path_normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION,
    custom_providers: Mapping[str, Callable[[AuthzRequest], bool]] | None = None,
    case_insensitive_paths: bool = False,
) -> tuple[MeshSnapshot, list[ConfigIssue]]:
    """Build the snapshot this workload uses, with the issues found while compiling.

    ``root_namespace``, ``path_normalization``, ``custom_providers`` and
    ``case_insensitive_paths`` are the mesh-wide settings of Istio's MeshConfig
    (``rootNamespace``, ``pathNormalization``, ``extensionProviders``) and default to Istio's.
    """
    identity = MeshIdentity(
        namespace=namespace,
        workload=workload,
        labels=MappingProxyType(dict(labels or {})),
        service_account=service_account,
        trust_domain=trust_domain,
    )
    ctx = _Context(identity, root_namespace=root_namespace)
    by_kind = _group(result.resources)
    services = _compile_services(
        ctx, by_kind.get("ServiceEntry", []), by_kind.get("WorkloadEntry", [])
    )
    tables = _compile_virtual_services(ctx, by_kind.get("VirtualService", []))
    rules = _visible_destination_rules(ctx, by_kind.get("DestinationRule", []))
    rule_index = _index_rules(rules)

    keys: dict[str, None] = {}
    for host in (*tables, *services, *(rule.host for rule in rules)):
        keys.setdefault(host, None)
    for table in tables.values():
        for route in table.routes:
            for destination in route.destinations:
                keys.setdefault(destination.host, None)

    configs: list[HostConfig] = []
    for host in keys:
        routes = _most_specific(tables, host)
        service = _most_specific(services, host)
        policy = _resolve_destination_rule(ctx, rule_index, host, service)
        if routes is None and service is None and policy is None:
            continue  # only a route target with nothing configured: plain DNS
        configs.append(_host_config(host, generation, routes, service, policy))

    security = _SecuritySettings(
        namespace=identity.namespace,
        labels=identity.labels,
        trust_domain=identity.trust_domain,
        root_namespace=root_namespace,
        path_normalization=path_normalization,
        custom_providers=custom_providers,
        case_insensitive_paths=case_insensitive_paths,
    )
    if not any(res.kind in SECURITY_KINDS for res in result.resources):
        # No policy: the authorizer allows everything and the mTLS mode is the mesh default.
        # They are built when first read (inbound), so a client never loads the security code.
        deferred = MeshSnapshot.build(
            generation, identity, configs, security=security.without_policies
        )
        return deferred, ctx.issues
    authorizer, mtls, security_issues = security.compile(result)
    ctx.issues.extend(security_issues)
    snapshot = MeshSnapshot.build(
        generation,
        identity,
        configs,
        authorization=authorizer,
        peer_authentication=mtls,
    )
    return snapshot, ctx.issues


SECURITY_KINDS = frozenset({"AuthorizationPolicy", "PeerAuthentication"})
"""The kinds ``compile_security`` reads; without them it has nothing to compile."""


@dataclass(frozen=True, slots=True)
class _SecuritySettings:
    """What ``compile_security`` needs besides the resources."""

    namespace: str
    labels: Mapping[str, str]
    trust_domain: str
    root_namespace: str
    path_normalization: PathNormalization
    custom_providers: Mapping[str, Callable[[AuthzRequest], bool]] | None
    case_insensitive_paths: bool

    def compile(self, result: LoadResult) -> tuple[Authorizer, WorkloadMtls, list[ConfigIssue]]:
        from meshlib._config.compile_security import compile_security

        return compile_security(
            result,
            namespace=self.namespace,
            labels=self.labels,
            trust_domain=self.trust_domain,
            root_namespace=self.root_namespace,
            path_normalization=self.path_normalization,
            custom_providers=self.custom_providers,
            case_insensitive_paths=self.case_insensitive_paths,
        )

    def without_policies(self) -> tuple[Authorizer, WorkloadMtls]:
        """What ``compile`` makes of a configuration without security resources: an
        authorizer without policies (it allows every request) and the mesh default mode."""
        from meshlib._config.loader import LoadResult

        authorizer, mtls, _no_issues = self.compile(LoadResult())
        return authorizer, mtls


def by_age(resources: Iterable[LoadedResource]) -> list[LoadedResource]:
    """Oldest first, as Istio breaks ties between conflicting resources.

    Resources with ``metadata.creationTimestamp`` come first, by age; the others keep their
    load order (files sorted by path, documents in order) after them.
    """
    return sorted(
        resources, key=lambda res: (res.creation_timestamp is None, res.creation_timestamp or "")
    )


def _group(resources: Iterable[LoadedResource]) -> dict[str, list[LoadedResource]]:
    grouped: dict[str, list[LoadedResource]] = {}
    for res in by_age(resources):
        grouped.setdefault(res.kind, []).append(res)
    return grouped


def _most_specific(items: Mapping[str, _T], host: str) -> _T | None:
    found = items.get(host)
    if found is not None:
        return found
    for key in wildcard_keys(host):  # never yields ``host`` itself unless it is ``*``
        found = items.get(key)
        if found is not None:
            return found
    return None


def _host_config(
    host: str,
    generation: int,
    routes: RouteTable | None,
    service: _Service | None,
    policy: DestinationPolicy | None,
) -> HostConfig:
    endpoints = service.endpoints if service is not None else {}
    subsets: dict[tuple[str, int], tuple[Endpoint, ...]] = {}
    if policy is not None:
        for subset in policy.subsets.values():
            wanted = subset.labels.items()
            for port, members in endpoints.items():
                subsets[(subset.name, port)] = tuple(
                    ep for ep in members if wanted <= ep.labels.items()
                )
    return HostConfig(
        host=host,
        generation=generation,
        routes=routes,
        destination=policy,
        service=service.info if service is not None else None,
        endpoints=MappingProxyType(dict(endpoints)),
        subsets=MappingProxyType(subsets),
    )


# ----------------------------------------------------------------------------- ServiceEntry
@dataclass(frozen=True, slots=True)
class _Service:
    info: ServiceInfo
    endpoints: Mapping[int, tuple[Endpoint, ...]]


def _compile_services(
    ctx: _Context, entries: Sequence[LoadedResource], workload_entries: Sequence[LoadedResource]
) -> dict[str, _Service]:
    services: dict[str, _Service] = {}
    mesh_ns = ctx.identity.namespace
    for res in entries:
        spec = res.spec
        assert isinstance(spec, r.ServiceEntrySpec)
        if not is_visible(spec.export_to, res.namespace, mesh_ns):
            continue
        ports = tuple(
            ServicePort(
                number=port.number or 0,
                name=port.name or "",
                protocol=(port.protocol or "").upper(),
                target_port=port.target_port or None,
            )
            for port in spec.ports or ()
        )
        resolution = Resolution(spec.resolution or Resolution.NONE.value)
        info = ServiceInfo(
            ports=ports,
            addresses=tuple(spec.addresses or ()),
            location=Location(spec.location or Location.MESH_EXTERNAL.value),
            resolution=resolution,
            subject_alt_names=_names(spec.subject_alt_names),
            namespace=res.namespace,
            source=_ref(res),
        )
        members: list[tuple[r.WorkloadEntrySpec, str]] = [
            (entry, res.namespace) for entry in spec.endpoints or ()
        ]
        if spec.workload_selector is not None:
            selector = (spec.workload_selector.labels or {}).items()
            for entry in workload_entries:
                we = entry.spec
                assert isinstance(we, r.WorkloadEntrySpec)
                # workloadSelector picks WorkloadEntries of the ServiceEntry's own namespace.
                if entry.namespace == res.namespace and selector <= (we.labels or {}).items():
                    members.append((we, entry.namespace))
        for raw_host in spec.hosts or ():
            host = expand_host(raw_host, res.namespace)
            if host in services:
                continue  # first loaded wins; analyze reports the duplicate
            endpoints = _service_endpoints(ctx, host, info, members)
            services[host] = _Service(info, MappingProxyType(endpoints))
    return services


def _service_endpoints(
    ctx: _Context,
    host: str,
    info: ServiceInfo,
    members: Sequence[tuple[r.WorkloadEntrySpec, str]],
) -> dict[int, tuple[Endpoint, ...]]:
    ports = info.ports or (ServicePort(number=0),)
    result: dict[int, tuple[Endpoint, ...]] = {}
    for port in ports:
        default_port = port.target_port or port.number
        endpoints: list[Endpoint] = []
        for entry, namespace in members:
            if not entry.address:
                continue  # network-gateway entries carry no address reachable from here
            mapped = (entry.ports or {}).get(port.name) if port.name else None
            sa = entry.service_account
            endpoints.append(
                Endpoint(
                    address=entry.address,
                    port=mapped or default_port,
                    labels=ctx.labels(entry.labels),
                    weight=entry.weight or 1,
                    locality=entry.locality or "",
                    service_account=spiffe_id(ctx.identity.trust_domain, namespace, sa)
                    if sa
                    else None,
                    network=entry.network or "",
                )
            )
        dns = info.resolution in {Resolution.DNS, Resolution.DNS_ROUND_ROBIN}
        if not members and dns and not host.startswith("*"):
            # DNS resolution without endpoints: the host name itself is the endpoint.
            endpoints.append(Endpoint(address=host, port=default_port))
        result[port.number] = tuple(endpoints)
    return result


# ----------------------------------------------------------------------------- VirtualService
def _applies_to_mesh(gateways: Sequence[str] | None) -> bool:
    return not gateways or MESH_GATEWAY in gateways


def _compile_virtual_services(
    ctx: _Context, services: Sequence[LoadedResource]
) -> dict[str, RouteTable]:
    tables: dict[str, RouteTable] = {}
    for res in services:
        spec = res.spec
        assert isinstance(spec, r.VirtualServiceSpec)
        if not spec.hosts:
            continue  # delegate VirtualService: only reachable through a root's delegate
        if not is_visible(spec.export_to, res.namespace, ctx.identity.namespace):
            continue
        if not _applies_to_mesh(spec.gateways):
            continue
        routes = tuple(
            route
            for index, http in enumerate(spec.http or ())
            if (route := _compile_route(ctx, res, spec, index, http)) is not None
        )
        for raw_host in spec.hosts:
            host = expand_host(raw_host, res.namespace)
            if host in tables:
                continue  # the first loaded wins (Istio: the oldest); analyze reports it
            tables[host] = RouteTable(host=host, routes=routes, source=_ref(res))
    return tables


def _compile_route(
    ctx: _Context,
    res: LoadedResource,
    spec: r.VirtualServiceSpec,
    index: int,
    http: r.HTTPRoute,
) -> Route | None:
    path = f"spec.http[{index}]"
    matches: list[HttpMatch] = []
    for position, match in enumerate(http.match or ()):
        compiled = _compile_match(ctx, res, spec, f"{path}.match[{position}]", match)
        if compiled is not None:
            matches.append(compiled)
    if http.match and not matches:
        return None  # every match block is statically false for this workload
    if http.delegate is not None:
        ctx.report(
            res, f"{path}.delegate", "delegate is not supported; route ignored", "meshlib.delegate"
        )
        return None
    return Route(
        name=http.name or "",
        matches=tuple(matches),
        destinations=_destinations(ctx, res, path, http.route or ()),
        timeout=ctx.seconds(res, f"{path}.timeout", http.timeout, None),
        retries=_retry_policy(ctx, res, f"{path}.retries", http.retries),
        fault=_fault(ctx, res, f"{path}.fault", http.fault),
        rewrite=_rewrite(ctx, res, f"{path}.rewrite", http.rewrite),
        redirect=_redirect(http.redirect),
        direct_response=_direct_response(ctx, res, f"{path}.directResponse", http.direct_response),
        headers=_header_rules(http.headers),
        mirrors=_mirrors(res, http),
        source=f"{_ref(res)}#http[{index}]",
    )


def _compile_match(
    ctx: _Context,
    res: LoadedResource,
    spec: r.VirtualServiceSpec,
    path: str,
    match: r.HTTPMatchRequest,
) -> HttpMatch | None:
    identity = ctx.identity
    # Static filters (ISTIO-SEMANTICS 1.2 step 2): decided once, for this workload.
    gateways = match.gateways if match.gateways else spec.gateways
    if not _applies_to_mesh(gateways):
        return None
    if match.source_labels and not match.source_labels.items() <= identity.labels.items():
        return None
    if match.source_namespace is not None and match.source_namespace != identity.namespace:
        return None
    try:
        uri = _string_match(match.uri, ignore_case=bool(match.ignore_uri_case))
        return HttpMatch(
            name=match.name or "",
            uri=uri,
            scheme=_string_match(match.scheme),
            method=_string_match(match.method),
            authority=_string_match(match.authority),
            headers=_named_matches(match.headers, lower=True),
            without_headers=_named_matches(match.without_headers, lower=True),
            query_params=_named_matches(match.query_params, lower=False),
            port=match.port or None,
        )
    except re.error as error:
        ctx.report(
            res, path, f"invalid regex: {error}; match block ignored", "meshlib.regex", error=True
        )
        return None


_RE2_END_OF_TEXT = re.compile(r"(?<!\\)((?:\\\\)*)\\z")


def compile_regex(pattern: str) -> re.Pattern[str]:
    """An RE2 pattern as a Python one; raises ``re.error`` when it cannot compile."""
    try:
        with warnings.catch_warnings():
            # Python warns about ``[[`` (a future set syntax); RE2 reads a plain ``[``.
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(_RE2_END_OF_TEXT.sub(r"\1\\Z", pattern))  # RE2 \z is Python \Z
    except (RecursionError, OverflowError) as error:
        raise re.error(str(error)) from None


def compile_string_match(match: r.StringMatch, *, ignore_case: bool = False) -> StringMatch:
    """One Istio StringMatch; ``{}`` and ``regex: "*"`` mean "present"."""
    if match.exact is not None:
        value = match.exact.lower() if ignore_case else match.exact
        return StringMatch(MatchKind.EXACT, value, ignore_case=ignore_case)
    if match.prefix is not None:
        value = match.prefix.lower() if ignore_case else match.prefix
        return StringMatch(MatchKind.PREFIX, value, ignore_case=ignore_case)
    if match.regex is not None and match.regex != "*":
        return StringMatch(MatchKind.REGEX, match.regex, pattern=compile_regex(match.regex))
    return StringMatch(MatchKind.PRESENT)


def _string_match(match: r.StringMatch | None, *, ignore_case: bool = False) -> StringMatch | None:
    return None if match is None else compile_string_match(match, ignore_case=ignore_case)


def _named_matches(
    matches: Mapping[str, r.StringMatch] | None, *, lower: bool
) -> tuple[tuple[str, StringMatch], ...]:
    result: list[tuple[str, StringMatch]] = []
    for name, match in (matches or {}).items():
        key = name.lower() if lower else name
        if lower and key in PSEUDO_HEADER_KEYS:
            continue
        result.append((key, compile_string_match(match)))
    return tuple(result)


def _destinations(
    ctx: _Context, res: LoadedResource, path: str, routes: Sequence[r.HTTPRouteDestination]
) -> tuple[RouteDestination, ...]:
    compiled: list[RouteDestination] = []
    for position, item in enumerate(routes):
        dest = item.destination
        if dest is None or not dest.host:
            ctx.report(
                res,
                f"{path}.route[{position}]",
                "destination without host ignored",
                "meshlib.destination",
                error=True,
            )
            continue
        compiled.append(
            RouteDestination(
                host=expand_host(dest.host, res.namespace),
                subset=dest.subset or None,
                port=dest.port.number if dest.port is not None and dest.port.number else None,
                weight=item.weight or 0,
                headers=_header_rules(item.headers),
            )
        )
    return normalize_weights(compiled)


def normalize_weights(destinations: Sequence[RouteDestination]) -> tuple[RouteDestination, ...]:
    """Istio's relative weights: one destination gets 100; weight 0 is dropped among several."""
    if len(destinations) == 1:
        return (_with_weight(destinations[0], FULL_WEIGHT),)
    kept = tuple(dest for dest in destinations if dest.weight > 0)
    if kept:
        return kept if len(kept) > 1 else (_with_weight(kept[0], FULL_WEIGHT),)
    # All zero is rejected by validation; compile to an even split rather than raise.
    return tuple(_with_weight(dest, 1) for dest in destinations)


def _with_weight(dest: RouteDestination, weight: int) -> RouteDestination:
    return RouteDestination(dest.host, dest.subset, dest.port, weight, dest.headers)


def compile_retry_policy(
    retry: r.HTTPRetry | None,
    seconds: Callable[[str, str | None], float | None] | None = None,
) -> retries.RetryPolicy:
    """Istio's retry translation (ISTIO-SEMANTICS 1.6)."""
    if retry is None:
        return retries.DEFAULT_RETRY_POLICY
    if not retry.attempts or retry.attempts <= 0:
        return retries.NO_RETRIES  # explicit attempts 0 (or absent) disables retries
    parse = seconds or (lambda _path, text: None if text is None else parse_seconds(text))
    retry_on: set[str] = set()
    codes: set[int] = set()
    if retry.retry_on is None:
        retry_on = set(retries.DEFAULT_RETRY_ON)
    else:
        for raw in retry.retry_on.split(","):
            word = raw.strip()
            if not word:
                continue
            if word.isdigit():
                codes.add(int(word))
            else:
                retry_on.add(word)
        if codes:
            retry_on.add(RETRIABLE_STATUS_CODES)
    backoff = parse("backoff", retry.backoff)
    return retries.RetryPolicy(
        attempts=retry.attempts,
        per_try_timeout=parse("perTryTimeout", retry.per_try_timeout),
        retry_on=_names(retry_on),
        retriable_status_codes=frozenset(codes) if codes else _NO_CODES,
        backoff_base=retries.DEFAULT_BACKOFF_BASE if backoff is None else backoff,
        retry_remote_localities=bool(retry.retry_remote_localities),
        retry_ignore_previous_hosts=retry.retry_ignore_previous_hosts is not False,
    )


def _retry_policy(
    ctx: _Context, res: LoadedResource, path: str, retry: r.HTTPRetry | None
) -> retries.RetryPolicy:
    return compile_retry_policy(
        retry, lambda name, text: ctx.seconds(res, f"{path}.{name}", text, None)
    )


def _fraction(percentage: r.Percent | None, deprecated_percent: int | None = None) -> float:
    # Absent percentage means 0 in current Istio; the int percent only when percentage is absent.
    if percentage is not None:
        return min(max((percentage.value or 0.0) / PERCENT, 0.0), 1.0)
    if deprecated_percent is not None:
        return min(max(deprecated_percent / PERCENT, 0.0), 1.0)
    return 0.0


def _fault(
    ctx: _Context, res: LoadedResource, path: str, fault: r.HTTPFaultInjection | None
) -> FaultPolicy | None:
    if fault is None or (fault.delay is None and fault.abort is None):
        return None
    delay: float | None = None
    delay_fraction = 0.0
    if fault.delay is not None:
        delay = ctx.seconds(res, f"{path}.delay.fixedDelay", fault.delay.fixed_delay, None)
        delay_fraction = _fraction(fault.delay.percentage, fault.delay.percent) if delay else 0.0
    http_status: int | None = None
    grpc_status: int | None = None
    abort_fraction = 0.0
    if fault.abort is not None:
        abort = fault.abort
        http_status = abort.http_status
        if abort.grpc_status is not None:
            grpc_status = GRPC_STATUS_CODES.get(abort.grpc_status.upper())
            if grpc_status is None:
                ctx.report(
                    res,
                    f"{path}.abort.grpcStatus",
                    f"unknown gRPC status {abort.grpc_status!r}",
                    "meshlib.grpc-status",
                    error=True,
                )
        if http_status is not None or grpc_status is not None:
            abort_fraction = _fraction(abort.percentage)
    return FaultPolicy(
        delay=delay,
        delay_fraction=delay_fraction,
        abort_http_status=http_status,
        abort_grpc_status=grpc_status,
        abort_fraction=abort_fraction,
    )


def _rewrite(
    ctx: _Context, res: LoadedResource, path: str, rewrite: r.HTTPRewrite | None
) -> Rewrite | None:
    if rewrite is None:
        return None
    uri_regex: tuple[re.Pattern[str], str] | None = None
    regex = rewrite.uri_regex_rewrite
    if regex is not None and regex.match is not None:
        try:
            uri_regex = (compile_regex(regex.match), regex.rewrite or "")
        except re.error as error:
            ctx.report(
                res,
                f"{path}.uriRegexRewrite.match",
                f"invalid regex: {error}",
                "meshlib.regex",
                error=True,
            )
    return Rewrite(uri=rewrite.uri, uri_regex=uri_regex, authority=rewrite.authority)


def _redirect(redirect: r.HTTPRedirect | None) -> Redirect | None:
    if redirect is None:
        return None
    return Redirect(
        uri=redirect.uri,
        prefix_rewrite=redirect.prefix_rewrite,
        authority=redirect.authority,
        port=redirect.port or None,
        derive_port=redirect.derive_port,
        scheme=redirect.scheme,
        code=redirect.redirect_code or DEFAULT_REDIRECT_CODE,
    )


def _direct_response(
    ctx: _Context, res: LoadedResource, path: str, direct: r.HTTPDirectResponse | None
) -> DirectResponse | None:
    if direct is None:
        return None
    body = b""
    if direct.body is not None:
        if direct.body.string is not None:
            body = direct.body.string.encode()
        elif direct.body.bytes is not None:
            try:
                body = base64.b64decode(direct.body.bytes, validate=True)
            except (binascii.Error, ValueError):
                ctx.report(
                    res,
                    f"{path}.body.bytes",
                    "body.bytes is not valid base64",
                    "meshlib.base64",
                    error=True,
                )
    return DirectResponse(status=direct.status or 0, body=body)


def _header_ops(ops: r.HeaderOperations | None) -> HeaderOps:
    if ops is None:
        return HeaderOps()
    return HeaderOps(
        set=tuple((k.lower(), v) for k, v in (ops.set or {}).items()),
        add=tuple((k.lower(), v) for k, v in (ops.add or {}).items()),
        remove=tuple(k.lower() for k in ops.remove or ()),
    )


def _header_rules(headers: r.Headers | None) -> HeaderRules | None:
    if headers is None:
        return None
    return HeaderRules(request=_header_ops(headers.request), response=_header_ops(headers.response))


def _mirrors(res: LoadedResource, http: r.HTTPRoute) -> tuple[Mirror, ...]:
    mirrors: list[Mirror] = []

    def target(dest: r.Destination) -> RouteDestination:
        port = dest.port.number if dest.port is not None and dest.port.number else None
        return RouteDestination(
            expand_host(dest.host or "", res.namespace), dest.subset or None, port
        )

    if http.mirror is not None and http.mirror.host:
        # Absent percentage mirrors everything (unlike faults); the int form is deprecated.
        fraction = 1.0
        if http.mirror_percentage is not None:
            fraction = _fraction(http.mirror_percentage)
        elif http.mirror_percent is not None:
            fraction = _fraction(None, http.mirror_percent)
        mirrors.append(Mirror(target(http.mirror), fraction))
    for item in http.mirrors or ():
        if item.destination is not None and item.destination.host:
            fraction = 1.0 if item.percentage is None else _fraction(item.percentage)
            mirrors.append(Mirror(target(item.destination), fraction))
    return tuple(mirrors)


# ----------------------------------------------------------------------------- DestinationRule
@dataclass(frozen=True, slots=True)
class _Rule:
    host: str
    namespace: str
    res: LoadedResource
    spec: r.DestinationRuleSpec


def _visible_destination_rules(ctx: _Context, rules: Sequence[LoadedResource]) -> list[_Rule]:
    identity = ctx.identity
    visible: list[_Rule] = []
    for res in rules:
        spec = res.spec
        assert isinstance(spec, r.DestinationRuleSpec)
        if not spec.host:
            continue
        selector = spec.workload_selector
        if selector is not None:
            # A DR with a workloadSelector applies only to the selected clients of its namespace.
            wanted = (selector.match_labels or {}).items()
            if res.namespace != identity.namespace or not wanted <= identity.labels.items():
                continue
        elif not is_visible(spec.export_to, res.namespace, identity.namespace):
            continue
        visible.append(_Rule(expand_host(spec.host, res.namespace), res.namespace, res, spec))
    return visible


def service_namespace(host: str, service: _Service | None) -> str | None:
    if service is not None:
        return service.info.namespace
    parts = host.split(".")
    if len(parts) == 5 and ".".join(parts[2:]) == "svc.cluster.local":
        return parts[1]
    return None


_RuleIndex = dict[str, dict[str, list[_Rule]]]
"""namespace -> host (exact or wildcard pattern) -> rules, in load order."""


def _index_rules(rules: Sequence[_Rule]) -> _RuleIndex:
    index: _RuleIndex = {}
    for rule in rules:
        index.setdefault(rule.namespace, {}).setdefault(rule.host, []).append(rule)
    return index


def _resolve_destination_rule(
    ctx: _Context, index: _RuleIndex, host: str, service: _Service | None
) -> DestinationPolicy | None:
    """ISTIO-SEMANTICS 2.1: client ns, then service ns, then root ns; exact over wildcard."""
    scopes = [ctx.identity.namespace, service_namespace(host, service), ctx.root_namespace]
    seen: set[str] = set()
    for scope in scopes:
        if scope is None or scope in seen:
            continue
        seen.add(scope)
        by_host = index.get(scope)
        if not by_host:
            continue
        # Most specific first: the host itself, then ever shorter wildcard patterns.
        for key in (host, *(k for k in wildcard_keys(host) if k != host)):
            chosen = by_host.get(key)
            if chosen:
                return _merge_rules(ctx, host, chosen)
    return None


def _merge_rules(ctx: _Context, host: str, rules: Sequence[_Rule]) -> DestinationPolicy:
    # Same-host rules in one scope merge: subsets concatenated (first name wins), first
    # top-level trafficPolicy kept.
    traffic: TrafficPolicy | None = None
    subsets: dict[str, Subset] = {}
    for rule in rules:
        if traffic is None and rule.spec.traffic_policy is not None:
            traffic = compile_traffic_policy(
                ctx, rule.res, "spec.trafficPolicy", rule.spec.traffic_policy
            )
        for index, subset in enumerate(rule.spec.subsets or ()):
            if not subset.name or subset.name in subsets:
                continue
            policy = None
            if subset.traffic_policy is not None:
                path = f"spec.subsets[{index}].trafficPolicy"
                policy = compile_traffic_policy(ctx, rule.res, path, subset.traffic_policy)
            subsets[subset.name] = Subset(
                name=subset.name,
                labels=ctx.labels(subset.labels),
                traffic_policy=policy,
            )
    return DestinationPolicy(
        host=host,
        traffic_policy=traffic,
        subsets=MappingProxyType(subsets),
        source=", ".join(_ref(rule.res) for rule in rules),
    )


def compile_traffic_policy(
    ctx: _Context, res: LoadedResource, path: str, policy: r.TrafficPolicy | r.PortTrafficPolicy
) -> TrafficPolicy:
    port_level: dict[int, TrafficPolicy] = {}
    budget: limits.RetryBudget | None = None
    if isinstance(policy, r.TrafficPolicy):
        for index, item in enumerate(policy.port_level_settings or ()):
            if item.port is None or not item.port.number:
                continue
            port_level[item.port.number] = compile_traffic_policy(
                ctx, res, f"{path}.portLevelSettings[{index}]", item
            )
        if policy.retry_budget is not None:
            given = policy.retry_budget
            default = limits.RetryBudget()
            budget = limits.RetryBudget(
                percent=default.percent if given.percent is None else given.percent,
                min_retry_concurrency=given.min_retry_concurrency or default.min_retry_concurrency,
            )
    return TrafficPolicy(
        connection_pool=_connection_pool(
            ctx, res, f"{path}.connectionPool", policy.connection_pool
        ),
        outlier_detection=_outlier(ctx, res, f"{path}.outlierDetection", policy.outlier_detection),
        load_balancer=_load_balancer(ctx, res, f"{path}.loadBalancer", policy.load_balancer),
        tls=_client_tls(policy.tls),
        retry_budget=budget,
        port_level=MappingProxyType(port_level),
    )


def _positive(value: int | None, default: int) -> int:
    """Istio treats int 0 as unset in connectionPool."""
    return value if value is not None and value > 0 else default


def _connection_pool(
    ctx: _Context, res: LoadedResource, path: str, pool: r.ConnectionPoolSettings | None
) -> limits.ConnectionPool | None:
    if pool is None:
        return None
    tcp = pool.tcp or r.TCPSettings()
    http = pool.http or r.HTTPSettings()
    tcp_idle = ctx.seconds(
        res, f"{path}.tcp.idleTimeout", tcp.idle_timeout, limits.DEFAULT_IDLE_TIMEOUT
    )
    http_idle = ctx.seconds(
        res, f"{path}.http.idleTimeout", http.idle_timeout, limits.DEFAULT_IDLE_TIMEOUT
    )
    duration = ctx.seconds(
        res, f"{path}.tcp.maxConnectionDuration", tcp.max_connection_duration, None
    )
    return limits.ConnectionPool(
        max_connections=_positive(tcp.max_connections, limits.UNLIMITED),
        connect_timeout=ctx.seconds(
            res, f"{path}.tcp.connectTimeout", tcp.connect_timeout, limits.DEFAULT_CONNECT_TIMEOUT
        ),
        tcp_idle_timeout=tcp_idle or None,  # 0s disables the idle timeout
        max_connection_duration=duration or None,
        http1_max_pending_requests=_positive(http.http1_max_pending_requests, limits.UNLIMITED),
        http2_max_requests=_positive(http.http2_max_requests, limits.UNLIMITED),
        max_requests_per_connection=_positive(http.max_requests_per_connection, 0),
        max_retries=_positive(http.max_retries, limits.UNLIMITED),
        http_idle_timeout=http_idle or None,
        h2_upgrade_policy=http.h2_upgrade_policy or "DEFAULT",
        use_client_protocol=bool(http.use_client_protocol),
        max_concurrent_streams=_positive(
            http.max_concurrent_streams, limits.DEFAULT_MAX_CONCURRENT_STREAMS
        ),
    )


def _outlier(
    ctx: _Context, res: LoadedResource, path: str, outlier: r.OutlierDetection | None
) -> outliers.OutlierDetection | None:
    if outlier is None:
        return None
    consecutive_5xx = outlier.consecutive_5xx_errors
    if consecutive_5xx is None:
        deprecated = outlier.consecutive_errors
        consecutive_5xx = deprecated if deprecated else outliers.DEFAULT_CONSECUTIVE_5XX
    codes = outlier.outlier_detection_http_error_codes
    return outliers.OutlierDetection(
        consecutive_5xx_errors=consecutive_5xx,
        consecutive_gateway_errors=outlier.consecutive_gateway_errors or 0,
        split_external_local_origin_errors=bool(outlier.split_external_local_origin_errors),
        consecutive_local_origin_failures=_positive(
            outlier.consecutive_local_origin_failures,
            outliers.DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURES,
        ),
        interval=ctx.seconds(res, f"{path}.interval", outlier.interval, outliers.DEFAULT_INTERVAL),
        base_ejection_time=ctx.seconds(
            res,
            f"{path}.baseEjectionTime",
            outlier.base_ejection_time,
            outliers.DEFAULT_BASE_EJECTION_TIME,
        ),
        max_ejection_percent=_positive(
            outlier.max_ejection_percent, outliers.DEFAULT_MAX_EJECTION_PERCENT
        ),
        min_health_percent=max(outlier.min_health_percent or 0, 0),
        http_error_codes=frozenset(codes) if codes else None,
    )


_SIMPLE_LB: Mapping[str, balancing.Simple] = MappingProxyType(
    {
        "UNSPECIFIED": balancing.Simple.LEAST_REQUEST,
        "LEAST_CONN": balancing.Simple.LEAST_REQUEST,
        "LEAST_REQUEST": balancing.Simple.LEAST_REQUEST,
        "ROUND_ROBIN": balancing.Simple.ROUND_ROBIN,
        "RANDOM": balancing.Simple.RANDOM,
        "PASSTHROUGH": balancing.Simple.PASSTHROUGH,
    }
)


def _load_balancer(
    ctx: _Context, res: LoadedResource, path: str, lb: r.LoadBalancerSettings | None
) -> balancing.LoadBalancer | None:
    if lb is None:
        return None
    default = balancing.DEFAULT_LOAD_BALANCER
    return balancing.LoadBalancer(
        simple=_SIMPLE_LB.get(lb.simple or "UNSPECIFIED", default.simple),
        consistent_hash=_consistent_hash(ctx, res, f"{path}.consistentHash", lb.consistent_hash),
        locality=_locality(ctx, lb.locality_lb_setting),
        warmup=_warmup(ctx, res, path, lb),
    )


def _consistent_hash(
    ctx: _Context, res: LoadedResource, path: str, hashing: r.ConsistentHashLB | None
) -> balancing.ConsistentHash | None:
    if hashing is None:
        return None
    default = balancing.ConsistentHash()
    cookie = hashing.http_cookie
    ring = hashing.ring_hash.minimum_ring_size if hashing.ring_hash is not None else None
    return balancing.ConsistentHash(
        http_header_name=hashing.http_header_name,
        http_cookie_name=cookie.name if cookie is not None else None,
        http_cookie_path=cookie.path if cookie is not None else None,
        http_cookie_ttl=ctx.seconds(res, f"{path}.httpCookie.ttl", cookie.ttl, None)
        if cookie is not None
        else None,
        http_cookie_attributes=tuple(
            (a.name or "", a.value or "") for a in (cookie.attributes or ()) if a.name
        )
        if cookie is not None
        else (),
        use_source_ip=bool(hashing.use_source_ip),
        http_query_parameter_name=hashing.http_query_parameter_name,
        maglev=hashing.maglev is not None,
        minimum_ring_size=ring or hashing.minimum_ring_size or default.minimum_ring_size,
        maglev_table_size=(hashing.maglev.table_size if hashing.maglev is not None else None)
        or default.maglev_table_size,
    )


def _locality(
    ctx: _Context, setting: r.LocalityLoadBalancerSetting | None
) -> balancing.LocalitySetting | None:
    if setting is None:
        return None
    priority = tuple(setting.failover_priority or ())
    return balancing.LocalitySetting(
        enabled=setting.enabled is not False,
        distribute=tuple(
            (item.from_ or "", MappingProxyType(dict(item.to or {})))
            for item in setting.distribute or ()
        ),
        failover=tuple((item.from_ or "", item.to or "") for item in setting.failover or ()),
        failover_priority=priority,
        # The snapshot is this workload's view: its labels decide what "same" means here.
        failover_priority_values=client_priority_values(priority, ctx.identity.labels)
        if priority
        else None,
    )


def _warmup(
    ctx: _Context, res: LoadedResource, path: str, lb: r.LoadBalancerSettings
) -> balancing.Warmup | None:
    default = balancing.Warmup(duration=0.0)
    if lb.warmup is not None:
        duration = ctx.seconds(res, f"{path}.warmup.duration", lb.warmup.duration, 0.0)
        return balancing.Warmup(
            duration=duration,
            minimum_percent=default.minimum_percent
            if lb.warmup.minimum_percent is None
            else lb.warmup.minimum_percent,
            aggression=lb.warmup.aggression or default.aggression,
        )
    if lb.warmup_duration_secs is not None:
        duration = ctx.seconds(res, f"{path}.warmupDurationSecs", lb.warmup_duration_secs, 0.0)
        return balancing.Warmup(duration=duration)
    return None


def _client_tls(tls: r.ClientTLSSettings | None) -> ClientTls | None:
    if tls is None:
        return None
    return ClientTls(
        mode=tls.mode or DEFAULT_TLS_MODE,
        subject_alt_names=_names(tls.subject_alt_names),
        sni=tls.sni,
        client_certificate=tls.client_certificate,
        private_key=tls.private_key,
        ca_certificates=tls.ca_certificates,
        insecure_skip_verify=bool(tls.insecure_skip_verify),
        ca_crl=tls.ca_crl,
    )
