"""Cross-resource analysis: what ``istioctl analyze`` and Kiali catch, and a few more.

Single-resource rules live in ``validate.py``; these need several resources together (a
VirtualService and the DestinationRules of its hosts, a PeerAuthentication and the rules of
its namespace). Every finding is a ConfigIssue with a stable code and an exact message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from meshlib._config import resources as r
from meshlib._config.compile import by_age, compile_retry_policy
from meshlib._config.durations import DurationError
from meshlib._config.hosts import ROOT_NAMESPACE, expand_host, is_visible, wildcard_covers
from meshlib._config.issues import ConfigIssue, Severity
from meshlib._engine.snapshot import MeshSnapshot

if TYPE_CHECKING:
    from meshlib._config.loader import LoadedResource, LoadResult

__all__ = [
    "CODE_CATCH_ALL",
    "CODE_DUPLICATE_DR",
    "CODE_DUPLICATE_VS",
    "CODE_MTLS_CONFLICT",
    "CODE_NEVER_MATCHES",
    "CODE_NO_SERVICE",
    "CODE_NO_SUBSET",
    "CODE_RETRY_NOT_IDEMPOTENT",
    "CODE_SUBSET_NO_ENDPOINT",
    "IDEMPOTENCY_HEADER",
    "analyze",
]

CODE_NO_SUBSET = "IST0101"
"""Istio's ReferencedResourceNotFound."""
CODE_CATCH_ALL = "IST0130"
"""Istio's VirtualServiceUnreachableRule."""
CODE_MTLS_CONFLICT = "IST0113"
"""Istio's MTLSPolicyConflict."""
CODE_DUPLICATE_DR = "meshlib.duplicate-destination-rule"
CODE_DUPLICATE_VS = "meshlib.duplicate-virtual-service"
CODE_SUBSET_NO_ENDPOINT = "meshlib.subset-no-endpoint"
CODE_NO_SERVICE = "meshlib.unknown-host"
CODE_NEVER_MATCHES = "meshlib.authz-never-matches"
CODE_RETRY_NOT_IDEMPOTENT = "meshlib.retry-not-idempotent"

IDEMPOTENCY_HEADER = "idempotency-key"
UNSAFE_METHODS = ("POST", "PATCH")
"""Methods whose double execution changes state (PUT and DELETE are idempotent by RFC 9110)."""
DOUBLE_EXECUTION_CONDITIONS = frozenset({"5xx", "reset", "gateway-error"})
"""Retry conditions that fire after the upstream may already have processed the request."""
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", ""})
"""Port protocols that carry HTTP (an unset protocol is sniffed, so may be HTTP)."""
HTTP_ONLY_WHEN_PREFIXES = ("request.",)
_MTLS_DISABLE = "DISABLE"
_MTLS_STRICT = "STRICT"


def analyze(result: LoadResult, snapshot: MeshSnapshot) -> list[ConfigIssue]:
    """All cross-resource findings for a loaded configuration and its compiled snapshot."""
    by_kind: dict[str, list[LoadedResource]] = {}
    for res in by_age(result.resources):
        by_kind.setdefault(res.kind, []).append(res)
    services = by_kind.get("VirtualService", [])
    rules = by_kind.get("DestinationRule", [])
    entries = by_kind.get("ServiceEntry", [])
    peer_auths = by_kind.get("PeerAuthentication", [])
    authz = by_kind.get("AuthorizationPolicy", [])
    issues: list[ConfigIssue] = []
    issues += _missing_subsets(services, rules)
    issues += _duplicate_virtual_services(services)
    issues += _duplicate_destination_rules(rules)
    issues += _subsets_without_endpoints(rules, snapshot)
    issues += _unknown_hosts(services, entries)
    issues += _unreachable_routes(services)
    issues += _retries_not_idempotent(services)
    issues += _mtls_conflicts(rules, entries, peer_auths)
    issues += _authz_never_matches(authz, entries, peer_auths)
    return issues


def _issue(
    res: LoadedResource, path: str, message: str, code: str, severity: Severity = Severity.WARNING
) -> ConfigIssue:
    return ConfigIssue(
        severity,
        message,
        file=res.file,
        document=res.document,
        resource=res.ref,
        field=path,
        code=code,
    )


def _vs(res: LoadedResource) -> r.VirtualServiceSpec:
    assert isinstance(res.spec, r.VirtualServiceSpec)
    return res.spec


def _dr(res: LoadedResource) -> r.DestinationRuleSpec:
    assert isinstance(res.spec, r.DestinationRuleSpec)
    return res.spec


def _se(res: LoadedResource) -> r.ServiceEntrySpec:
    assert isinstance(res.spec, r.ServiceEntrySpec)
    return res.spec


def _pa(res: LoadedResource) -> r.PeerAuthenticationSpec:
    assert isinstance(res.spec, r.PeerAuthenticationSpec)
    return res.spec


# ----------------------------------------------------------------------------- routes
def _missing_subsets(
    services: Sequence[LoadedResource], rules: Sequence[LoadedResource]
) -> list[ConfigIssue]:
    defined: list[tuple[str, str, r.DestinationRuleSpec, frozenset[str]]] = []
    for rule in rules:
        spec = _dr(rule)
        if spec.host:
            names = frozenset(s.name for s in spec.subsets or () if s.name)
            defined.append((expand_host(spec.host, rule.namespace), rule.namespace, spec, names))
    issues: list[ConfigIssue] = []
    for res in services:
        for index, http in enumerate(_vs(res).http or ()):
            targets = [(f"route[{j}]", d.destination) for j, d in enumerate(http.route or ())]
            if http.mirror is not None:
                targets.append(("mirror", http.mirror))
            targets += [(f"mirrors[{j}]", m.destination) for j, m in enumerate(http.mirrors or ())]
            for where, dest in targets:
                if dest is None or not dest.host or not dest.subset:
                    continue
                host = expand_host(dest.host, res.namespace)
                if any(
                    dest.subset in names
                    and wildcard_covers(dr_host, host)
                    and is_visible(spec.export_to, dr_ns, res.namespace)
                    for dr_host, dr_ns, spec, names in defined
                ):
                    continue
                issues.append(
                    _issue(
                        res,
                        f"spec.http[{index}].{where}.destination.subset",
                        "Referenced host+subset in destinationrule not found: "
                        f'"{host}+{dest.subset}"',
                        CODE_NO_SUBSET,
                        Severity.ERROR,
                    )
                )
    return issues


def _duplicate_virtual_services(services: Sequence[LoadedResource]) -> list[ConfigIssue]:
    owner: dict[tuple[str, str], LoadedResource] = {}
    issues: list[ConfigIssue] = []
    for res in services:
        spec = _vs(res)
        gateways = spec.gateways or ["mesh"]
        if "mesh" not in gateways:
            continue
        for index, raw in enumerate(spec.hosts or ()):
            host = expand_host(raw, res.namespace)
            key = (host, res.namespace)
            first = owner.setdefault(key, res)
            if first is not res:
                issues.append(
                    _issue(
                        res,
                        f"spec.hosts[{index}]",
                        f"host {host} is also routed by {first.ref}; sidecars use only one "
                        f"VirtualService per host (the oldest), so these routes are ignored",
                        CODE_DUPLICATE_VS,
                    )
                )
    return issues


def _is_catch_all(match: r.HTTPMatchRequest) -> bool:
    conditions = match.model_dump(
        exclude_none=True, exclude={"name", "stat_prefix", "ignore_uri_case"}
    )
    return not conditions


def _unreachable_routes(services: Sequence[LoadedResource]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for res in services:
        http = _vs(res).http or []
        for index, route in enumerate(http[:-1]):
            if route.match and not any(_is_catch_all(m) for m in route.match):
                continue
            for later in range(index + 1, len(http)):
                issues.append(
                    _issue(
                        res,
                        f"spec.http[{later}]",
                        f"VirtualService rule #{later} not used (rule #{index} matches every "
                        "request; only the last rule can have no matches).",
                        CODE_CATCH_ALL,
                    )
                )
            break
    return issues


def _method_can_be_unsafe(match: r.HTTPMatchRequest) -> bool:
    method = match.method
    if method is None:
        return True
    if method.exact is not None:
        return method.exact in UNSAFE_METHODS
    if method.prefix is not None:
        return any(m.startswith(method.prefix) for m in UNSAFE_METHODS)
    if method.regex is not None and method.regex != "*":
        try:
            pattern = re.compile(method.regex)
        except re.error:
            return True
        return any(pattern.fullmatch(m) for m in UNSAFE_METHODS)
    return True


def _requires_idempotency_key(match: r.HTTPMatchRequest) -> bool:
    return any(name.lower() == IDEMPOTENCY_HEADER for name in match.headers or {})


def _retries_not_idempotent(services: Sequence[LoadedResource]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for res in services:
        for index, http in enumerate(_vs(res).http or ()):
            if http.retries is None:
                continue  # Istio's default retryOn only retries what never reached the app
            try:
                policy = compile_retry_policy(http.retries)
            except (DurationError, ValueError):
                continue  # the duration itself is reported by validation
            risky = sorted(policy.retry_on & DOUBLE_EXECUTION_CONDITIONS)
            if policy.attempts <= 0 or not risky:
                continue
            blocks = http.match or [r.HTTPMatchRequest()]
            if not any(
                _method_can_be_unsafe(m) and not _requires_idempotency_key(m) for m in blocks
            ):
                continue
            issues.append(
                _issue(
                    res,
                    f"spec.http[{index}].retries.retryOn",
                    f"retrying on {','.join(risky)} can execute a POST or PATCH twice, because "
                    "the upstream may have applied the first attempt before its response was "
                    "lost; match only idempotent methods or require an "
                    f"{IDEMPOTENCY_HEADER} header on this route.",
                    CODE_RETRY_NOT_IDEMPOTENT,
                )
            )
    return issues


# ----------------------------------------------------------------------------- destinations
def _duplicate_destination_rules(rules: Sequence[LoadedResource]) -> list[ConfigIssue]:
    owner: dict[tuple[str, str], LoadedResource] = {}
    issues: list[ConfigIssue] = []
    for res in rules:
        spec = _dr(res)
        if not spec.host or spec.workload_selector is not None:
            continue
        host = expand_host(spec.host, res.namespace)
        first = owner.setdefault((host, res.namespace), res)
        if first is not res:
            issues.append(
                _issue(
                    res,
                    "spec.host",
                    f"host {host} already has {first.ref} in namespace {res.namespace}; their "
                    "subsets are merged and only the first trafficPolicy applies",
                    CODE_DUPLICATE_DR,
                )
            )
    return issues


def _subsets_without_endpoints(
    rules: Sequence[LoadedResource], snapshot: MeshSnapshot
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for res in rules:
        spec = _dr(res)
        if not spec.host:
            continue
        host = expand_host(spec.host, res.namespace)
        config = snapshot.hosts.get(host)
        if config is None or config.service is None:
            continue  # endpoints unknown (DNS): nothing to check against
        endpoints = [ep for eps in config.endpoints.values() for ep in eps]
        if not endpoints:
            continue
        for index, subset in enumerate(spec.subsets or ()):
            wanted = (subset.labels or {}).items()
            if any(wanted <= ep.labels.items() for ep in endpoints):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted((subset.labels or {}).items()))
            issues.append(
                _issue(
                    res,
                    f"spec.subsets[{index}].labels",
                    f"subset {subset.name} selects no known endpoint of {host} "
                    f"(labels {labels}); traffic routed to it gets 503 no healthy upstream",
                    CODE_SUBSET_NO_ENDPOINT,
                )
            )
    return issues


def _known_hosts(entries: Iterable[LoadedResource]) -> list[str]:
    return [expand_host(h, res.namespace) for res in entries for h in _se(res).hosts or ()]


def _unknown_hosts(
    services: Sequence[LoadedResource], entries: Sequence[LoadedResource]
) -> list[ConfigIssue]:
    known = _known_hosts(entries)
    issues: list[ConfigIssue] = []
    for res in services:
        for index, raw in enumerate(_vs(res).hosts or ()):
            host = expand_host(raw, res.namespace)
            if host.startswith("*") or any(wildcard_covers(k, host) for k in known):
                continue
            issues.append(
                _issue(
                    res,
                    f"spec.hosts[{index}]",
                    f"host {host} is not declared by any ServiceEntry; meshlib will resolve "
                    "it by DNS",
                    CODE_NO_SERVICE,
                )
            )
    return issues


# ----------------------------------------------------------------------------- security
def _namespace_mtls(
    peer_auths: Sequence[LoadedResource], namespace: str
) -> tuple[str, LoadedResource] | None:
    """The namespace-wide mTLS mode (namespace policy over mesh policy), first loaded wins."""
    for scope in (namespace, ROOT_NAMESPACE):
        for res in peer_auths:
            spec = _pa(res)
            if res.namespace != scope or spec.selector is not None:
                continue
            mode = spec.mtls.mode if spec.mtls is not None else None
            if mode and mode != "UNSET":
                return mode, res
    return None


def _disabled_tls_paths(spec: r.DestinationRuleSpec) -> list[str]:
    def disabled(policy: r.TrafficPolicy | r.PortTrafficPolicy | None) -> bool:
        return policy is not None and policy.tls is not None and policy.tls.mode == _MTLS_DISABLE

    paths: list[str] = []
    policy = spec.traffic_policy
    if disabled(policy):
        paths.append("spec.trafficPolicy.tls.mode")
    for index, port in enumerate(policy.port_level_settings or () if policy else ()):
        if disabled(port):
            paths.append(f"spec.trafficPolicy.portLevelSettings[{index}].tls.mode")
    for index, subset in enumerate(spec.subsets or ()):
        if disabled(subset.traffic_policy):
            paths.append(f"spec.subsets[{index}].trafficPolicy.tls.mode")
    return paths


def _host_namespace(host: str, entries: Sequence[LoadedResource]) -> str | None:
    parts = host.split(".")
    if len(parts) == 5 and host.endswith(".svc.cluster.local"):
        return parts[1]
    for res in entries:
        if host in (expand_host(h, res.namespace) for h in _se(res).hosts or ()):
            return res.namespace
    return None


def _mtls_conflicts(
    rules: Sequence[LoadedResource],
    entries: Sequence[LoadedResource],
    peer_auths: Sequence[LoadedResource],
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for res in rules:
        spec = _dr(res)
        if not spec.host:
            continue
        host = expand_host(spec.host, res.namespace)
        namespace = _host_namespace(host, entries)
        found = _namespace_mtls(peer_auths, namespace) if namespace else None
        if found is None or found[0] != _MTLS_STRICT:
            continue
        for path in _disabled_tls_paths(spec):
            issues.append(
                _issue(
                    res,
                    path,
                    f"tls mode DISABLE sends plaintext to {host}, but {found[1].ref} requires "
                    f"STRICT mTLS in namespace {namespace}: those requests will be refused",
                    CODE_MTLS_CONFLICT,
                )
            )
    return issues


def _tcp_ports(entries: Sequence[LoadedResource], namespace: str) -> dict[str, str]:
    """Workload port (as the string AuthorizationPolicy uses) -> protocol, in ``namespace``."""
    ports: dict[str, str] = {}
    for res in entries:
        if res.namespace != namespace:
            continue
        for port in _se(res).ports or ():
            number = port.target_port or port.number
            if number:
                ports.setdefault(str(number), (port.protocol or "").upper())
    return ports


def _http_only_fields(operation: r.Operation) -> list[str]:
    names = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")
    return [r.camel(n) for n in names if getattr(operation, n)]


def _authz_never_matches(
    policies: Sequence[LoadedResource],
    entries: Sequence[LoadedResource],
    peer_auths: Sequence[LoadedResource],
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for res in policies:
        spec = res.spec
        assert isinstance(spec, r.AuthorizationPolicySpec)
        if (spec.action or "ALLOW") != "ALLOW":
            continue
        protocols = _tcp_ports(entries, res.namespace)
        mtls = _namespace_mtls(peer_auths, res.namespace)
        for i, rule in enumerate(spec.rules or ()):
            for j, to in enumerate(rule.to or ()):
                op = to.operation
                if op is None or not op.ports:
                    continue
                fields = _http_only_fields(op)
                tcp_only = all(protocols.get(p, "") not in HTTP_PROTOCOLS for p in op.ports)
                if fields and tcp_only:
                    issues.append(
                        _issue(
                            res,
                            f"spec.rules[{i}].to[{j}].operation",
                            f"{', '.join(fields)} can never match: ports {', '.join(op.ports)} "
                            "are TCP, which has no HTTP attributes, so this ALLOW rule never "
                            "applies",
                            CODE_NEVER_MATCHES,
                        )
                    )
            if mtls is None or mtls[0] != _MTLS_DISABLE:
                continue
            for j, source_from in enumerate(rule.from_ or ()):
                source = source_from.source
                if source is None:
                    continue
                names = ("principals", "namespaces", "service_accounts", "trust_domains")
                used = [r.camel(n) for n in names if getattr(source, n)]
                if used:
                    issues.append(
                        _issue(
                            res,
                            f"spec.rules[{i}].from[{j}].source",
                            f"{', '.join(used)} can never match: {mtls[1].ref} disables mTLS in "
                            f"namespace {res.namespace}, so callers have no principal",
                            CODE_NEVER_MATCHES,
                        )
                    )
    return issues
