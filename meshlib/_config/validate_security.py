"""Istio's validation rules for PeerAuthentication and AuthorizationPolicy (``validate.py``
for the security kinds, located by field the same way).

Imported with the first resource of these kinds, like their models (``resources_security``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from meshlib._config.resources import camel
from meshlib._config.resources_security import (
    AuthorizationPolicySpec,
    PeerAuthenticationSpec,
    PolicyTargetReference,
)
from meshlib._config.validate import (
    DRY_RUN_FIELD,
    MAX_PORT,
    _is_ip,
    _q,
    _Validator,
    _workload_selector,
    unsupported_dry_run,
)

__all__ = [
    "MAX_SERVICE_ACCOUNTS",
    "MAX_SERVICE_ACCOUNT_LENGTH",
    "TARGET_REF_KINDS",
    "dry_run_annotation",
    "validate_security",
]

MAX_SERVICE_ACCOUNTS = 16
MAX_SERVICE_ACCOUNT_LENGTH = 320
TARGET_REF_KINDS = frozenset(
    {
        ("core", "Service"),
        ("networking.istio.io", "ServiceEntry"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
    }
)
_PATH_LITERAL = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")
_DRY_RUN_VALUES = frozenset(
    {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}
)
"""Go's ``strconv.ParseBool``, which istiod applies to the annotation."""


def validate_security(
    v: _Validator, spec: PeerAuthenticationSpec | AuthorizationPolicySpec
) -> None:
    """The rules of a PeerAuthentication or AuthorizationPolicy spec."""
    if isinstance(spec, PeerAuthenticationSpec):
        _peer_authentication(v, spec)
    else:
        _authorization_policy(v, spec)


def dry_run_annotation(v: _Validator, value: str) -> None:
    """``istio.io/dry-run`` on a security resource: only AuthorizationPolicy ALLOW/DENY."""
    res = v.res
    spec = res.spec
    if not isinstance(spec, AuthorizationPolicySpec):
        unsupported_dry_run(v)
        return
    action = spec.action or "ALLOW"
    if action not in ("ALLOW", "DENY"):
        v.err(
            DRY_RUN_FIELD,
            "the annotation istio.io/dry-run currently only supports action ALLOW/DENY, found "
            f"action {action} in {res.namespace}/{res.name}",
        )
    elif value not in _DRY_RUN_VALUES:
        v.err(
            DRY_RUN_FIELD,
            f"{res.namespace}/{res.name} has annotation istio.io/dry-run with invalid value "
            f"({value})",
        )


def _peer_authentication(v: _Validator, spec: PeerAuthenticationSpec) -> None:
    empty_selector = spec.selector is None or not spec.selector.match_labels
    if empty_selector and spec.port_level_mtls:
        v.err(
            "spec.portLevelMtls", "mesh/namespace peer authentication cannot have port level mTLS"
        )
    if spec.port_level_mtls is not None and not spec.port_level_mtls:
        v.err("spec.portLevelMtls", "port level mTLS, if defined, must have at least one element")
    for port in spec.port_level_mtls or {}:
        if not 1 <= port <= MAX_PORT:
            v.err(f"spec.portLevelMtls.{port}", "port must be in range 1..65535")
    _workload_selector(v, "spec.selector", spec.selector)


def _target_ref(v: _Validator, path: str, ref: PolicyTargetReference) -> None:
    if not ref.name:
        v.err(f"{path}.name", "targetRef name must be set")
    if ref.namespace:
        v.err(
            f"{path}.namespace",
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        )
    group = ref.group or "core"
    if (group, ref.kind or "") not in TARGET_REF_KINDS:
        v.err(
            f"{path}.kind",
            f"targetRef must be to one of Service, ServiceEntry, Gateway or GatewayClass but was "
            f"{ref.group or ''}/{ref.kind or ''}",
        )


_SOURCE_FIELDS = (
    "principals",
    "not_principals",
    "request_principals",
    "not_request_principals",
    "namespaces",
    "not_namespaces",
    "service_accounts",
    "not_service_accounts",
    "ip_blocks",
    "not_ip_blocks",
    "remote_ip_blocks",
    "not_remote_ip_blocks",
    "trust_domains",
    "not_trust_domains",
)
_OPERATION_FIELDS = (  # istiod's order, so that messages come out in the same order
    "ports",
    "methods",
    "paths",
    "hosts",
    "not_ports",
    "not_methods",
    "not_paths",
    "not_hosts",
)
_CUSTOM_FORBIDDEN_SOURCE = (
    "namespaces",
    "not_namespaces",
    "service_accounts",
    "not_service_accounts",
    "trust_domains",
    "not_trust_domains",
    "principals",
    "not_principals",
    "request_principals",
    "not_request_principals",
)
# Source fields that apply to TCP traffic too (an HTTP-only DENY rule denies all TCP).
_TCP_SOURCE_FIELDS = frozenset(
    {
        "principals",
        "not_principals",
        "ip_blocks",
        "not_ip_blocks",
        "namespaces",
        "not_namespaces",
        "remote_ip_blocks",
        "not_remote_ip_blocks",
        "service_accounts",
        "not_service_accounts",
    }
)


def _ips_errors(values: Sequence[str]) -> list[str]:
    problems = []
    for value in values:
        if "/" in value:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                problems.append(f"bad CIDR range ({value})")
        elif not _is_ip(value):
            problems.append(f"bad IP address ({value})")
    return problems


def _ports_errors(values: Sequence[str]) -> list[str]:
    return [p for p in values if not (p.isascii() and p.isdigit() and int(p) <= MAX_PORT)]


def _service_account_error(label: str, values: Sequence[str]) -> str | None:
    if len(values) > MAX_SERVICE_ACCOUNTS:
        return "may not have more than 16 values"
    for value in values:
        if value == "":
            return f"empty value not allowed, found in {label}"
        if "*" in value:
            return f"wildcard not allowed, found in {label}"
        if value.count("/") > 1:
            return (
                "expected format 'serviceAccount' or 'namespace/serviceAccount', found "
                f"{_q(value)} in {label}"
            )
        if len(value) > MAX_SERVICE_ACCOUNT_LENGTH:
            return f"value cannot exceed 320 characters, found {_q(value)} in {label}"
        namespace, slash, account = value.partition("/")
        if slash and not namespace:
            return (
                "expected format 'serviceAccount' or 'namespace/serviceAccount', found empty "
                f"namespace {_q(value)} in {label}"
            )
        if slash and not account:
            return (
                "expected format 'serviceAccount' or 'namespace/serviceAccount', found empty "
                f"serviceAccount {_q(value)} in {label}"
            )
    return None


def _wildcard_values_error(label: str, values: Sequence[str]) -> str | None:
    for value in values:
        if value == "":
            return f"empty value not allowed, found in {label}"
        stars = value.count("*")
        if stars > 1:
            return f"at most one wildcard is allowed, found in {label}: {_q(value)}"
        if stars == 1 and value != "*" and not value.startswith("*") and not value.endswith("*"):
            return f"wildcard is only allowed at the start or end, found in {label}: {_q(value)}"
    return None


def _trust_domain_error(label: str, values: Sequence[str]) -> str | None:
    if problem := _wildcard_values_error(label, values):
        return problem
    for value in values:
        if "/" in value:
            return f"trust domain must not contain '/', found in {label}: {_q(value)}"
    return None


def _path_template_error(label: str, paths: Sequence[str]) -> str | None:
    for raw in paths:
        templated = "{*}" in raw or "{**}" in raw
        found_any = False
        path = raw.strip("/")
        for glob in path.split("/"):
            if glob in ("{*}", "{**}") and not found_any:
                found_any = glob == "{**}"
                continue
            if glob in ("{*}", "{**}"):
                return (
                    f"invalid or unsupported path {path}, found in {label}. "
                    "{**} is not the last operator"
                )
            if "{" in glob or "}" in glob:
                return (
                    f"invalid or unsupported path {path}, found in {label}. Contains '{{' or '}}' "
                    "beyond a supported path template"
                )
            if templated and not _PATH_LITERAL.fullmatch(glob):
                return (
                    f"invalid or unsupported path {path}, found in {label}. Contains segment "
                    f"{glob} with invalid string literal"
                )
    return None


def _map_key_error(key: str) -> str | None:
    bracket = key.find("[")
    if key.endswith("]") and 0 < bracket < len(key) - 2:
        return None
    return f"bad key ({key}): should have format a[b]"


_PLAIN_ATTRIBUTES = frozenset(
    {
        "source.ip",
        "remote.ip",
        "destination.ip",
        "destination.port",
        "source.namespace",
        "source.serviceAccount",
        "source.principal",
        "source.trustDomain",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "connection.sni",
    }
)


def _attribute_key_error(key: str) -> str | None:
    """The key half of istio ``security.ValidateAttribute`` (reported once, on ``key``)."""
    if key.startswith(("request.headers", "request.auth.claims", "experimental.envoy.filters.")):
        return _map_key_error(key)
    if key in _PLAIN_ATTRIBUTES:
        return None
    if key == "destination.namespace":
        return f"attribute {key} is replaced by the metadata.namespace"
    if key.startswith("destination.labels"):
        return f"attribute {key} is replaced by the workload selector"
    if key in ("destination.name", "destination.user"):
        return f"deprecated attribute {key}: only supported in v1alpha1"
    return f"unknown attribute: {key}"


def _attribute_values_error(key: str, values: Sequence[str]) -> str | None:
    """The value half of istio ``security.ValidateAttribute`` for a valid key."""
    for value in values:
        if value == "":
            return f"empty value not allowed, found in {key}"
    if key in ("source.ip", "remote.ip", "destination.ip"):
        problems = _ips_errors(values)
        return problems[0] if problems else None
    if key == "source.serviceAccount":
        return _service_account_error(key, values)
    if key == "source.trustDomain":
        return _wildcard_values_error(key, values)
    if key == "destination.port":
        bad = _ports_errors(values)
        return f"bad port ({bad[0]})" if bad else None
    return None


def _label_of(name: str) -> str:
    """``not_ip_blocks`` -> ``NotIpBlocks``, the spelling istiod uses in its messages."""
    return "".join(part.capitalize() for part in name.split("_"))


def _authorization_policy(v: _Validator, spec: AuthorizationPolicySpec) -> None:
    action = spec.action or "ALLOW"
    chosen = sum((spec.selector is not None, spec.target_ref is not None, bool(spec.target_refs)))
    if chosen > 1:
        v.err("spec", "only one of targetRefs or workloadSelector can be set")
    _workload_selector(v, "spec.selector", spec.selector)
    if spec.target_ref is not None:
        _target_ref(v, "spec.targetRef", spec.target_ref)
    for i, ref in enumerate(spec.target_refs or ()):
        _target_ref(v, f"spec.targetRefs[{i}]", ref)
    meaningless = (
        "{} action without `rules` is meaningless as it will never be triggered, add an empty "
        "rule `{{}}` if you want it be triggered for every request"
    )
    if action == "CUSTOM":
        if spec.rules is None:
            v.err("spec.rules", meaningless.format("CUSTOM"))
        elif spec.provider is None or not spec.provider.name:
            v.err("spec.provider.name", "`provider.name` must not be empty")
        for i, rule in enumerate(spec.rules or ()):
            for j, source_from in enumerate(rule.from_ or ()):
                source = source_from.source
                for name in _CUSTOM_FORBIDDEN_SOURCE if source is not None else ():
                    if getattr(source, name):
                        v.err(
                            f"spec.rules[{i}].from[{j}].source.{camel(name)}",
                            f"From.{_label_of(name)} is currently not supported with CUSTOM action",
                        )
            for j, condition in enumerate(rule.when or ()):
                key = condition.key or ""
                if key in (
                    "source.namespace",
                    "source.serviceAccount",
                    "source.trustDomain",
                    "source.principal",
                ) or key.startswith("request.auth."):
                    v.err(
                        f"spec.rules[{i}].when[{j}].key",
                        f"{key} is currently not supported with CUSTOM action",
                    )
    elif spec.provider is not None:
        v.err("spec.provider", f"`provider` must not be with non CUSTOM action, found {action}")
    if action == "DENY" and spec.rules is None:
        v.err("spec.rules", meaningless.format("DENY"))
    for i, rule in enumerate(spec.rules or ()):
        path = f"spec.rules[{i}]"
        if rule.from_ is not None and not rule.from_:
            v.err(f"{path}.from", f"`from` must not be empty, found at rule {i}")
        tcp_in_from = tcp_in_to = has_from = has_to = False
        for j, source_from in enumerate(rule.from_ or ()):
            where = f"{path}.from[{j}].source"
            source = source_from.source
            if source is None:
                v.err(where, f"`from.source` must not be nil, found at rule {i}")
                continue
            has_from = True
            values = {name: getattr(source, name) or [] for name in _SOURCE_FIELDS}
            if any(
                values[n] for n in ("principals", "not_principals", "namespaces", "not_namespaces")
            ) and (values["service_accounts"] or values["not_service_accounts"]):
                v.err(
                    where,
                    f"cannot set serviceAccounts with namespaces or principals, found at rule {i}",
                )
            if not any(values.values()):
                v.err(where, f"`from.source` must not be empty, found at rule {i}")
            for name in ("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks"):
                for bad_ip in _ips_errors([x for x in values[name] if x]):
                    v.err(f"{where}.{camel(name)}", bad_ip)
            for name in _SOURCE_FIELDS:
                label = _label_of(name)
                problem: str | None
                if name.endswith("service_accounts"):
                    problem = _service_account_error(label, values[name])
                elif name.endswith("trust_domains"):
                    problem = _trust_domain_error(label, values[name])
                elif "" in values[name]:
                    problem = f"empty value not allowed, found in {label}"
                else:
                    problem = None
                v.err(f"{where}.{camel(name)}", problem)
            for k, principal in enumerate(values["principals"] + values["not_principals"]):
                if principal.startswith("spiffe://"):
                    name = "principals" if k < len(values["principals"]) else "notPrincipals"
                    v.warn(
                        f"{where}.{name}",
                        "principals are matched without the 'spiffe://' prefix",
                    )
            if any(getattr(source, name) is not None for name in _TCP_SOURCE_FIELDS):
                tcp_in_from = True
        if rule.to is not None and not rule.to:
            v.err(f"{path}.to", f"`to` must not be empty, found at rule {i}")
        for j, target in enumerate(rule.to or ()):
            where = f"{path}.to[{j}].operation"
            op = target.operation
            if op is None:
                v.err(where, f"`to.operation` must not be nil, found at rule {i}")
                continue
            has_to = True
            values = {name: getattr(op, name) or [] for name in _OPERATION_FIELDS}
            if not any(values.values()):
                v.err(where, f"`to.operation` must not be empty, found at rule {i}")
            for name in ("ports", "not_ports"):
                for bad in _ports_errors([x for x in values[name] if x]):
                    v.err(f"{where}.{camel(name)}", f"bad port ({bad})")
            for name in _OPERATION_FIELDS:
                if "" in values[name]:
                    v.err(
                        f"{where}.{camel(name)}",
                        f"empty value not allowed, found in {_label_of(name)}",
                    )
            for name in ("paths", "not_paths"):
                v.err(f"{where}.{camel(name)}", _path_template_error(_label_of(name), values[name]))
            if op.ports is not None or op.not_ports is not None:
                tcp_in_to = True
        for j, condition in enumerate(rule.when or ()):
            where = f"{path}.when[{j}]"
            key = condition.key or ""
            if not key:
                v.err(f"{where}.key", "`key` must not be empty")
            elif not condition.values and not condition.not_values:
                v.err(where, f"at least one of `values` or `notValues` must be set for key {key}")
            elif key_problem := _attribute_key_error(key):
                v.err(f"{where}.key", key_problem)
            else:
                if problem := _attribute_values_error(key, condition.values or []):
                    v.err(f"{where}.values", f"invalid `value` for `key` {key}: {problem}")
                if problem := _attribute_values_error(key, condition.not_values or []):
                    v.err(f"{where}.notValues", f"invalid `notValue` for `key` {key}: {problem}")
        if action == "DENY" and (
            (has_from and not has_to and not tcp_in_from) or (has_to and not tcp_in_to)
        ):
            v.warn(
                path,
                "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope "
                "due to the use of only HTTP attributes in a DENY rule; it is recommended to "
                "explicitly specify the port",
            )
