"""PeerAuthentication and AuthorizationPolicy rules (ISTIO-SEMANTICS 4, 5.1)."""

# Tables of exact istiod-style messages read best one case per line.
# ruff: noqa: E501

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Issues

SELECTOR = {"matchLabels": {"app": "ratings"}}

PEER = [
    ({"mtls": {"mode": "STRICT"}}, []),
    ({"selector": SELECTOR, "portLevelMtls": {8080: {"mode": "DISABLE"}}}, []),
    ({"portLevelMtls": {8080: {"mode": "DISABLE"}}}, [("spec.portLevelMtls", "mesh/namespace peer authentication cannot have port level mTLS")]),
    ({"selector": {"matchLabels": {}}, "portLevelMtls": {80: {}}}, [("spec.portLevelMtls", "mesh/namespace peer authentication cannot have port level mTLS")]),
    ({"selector": SELECTOR, "portLevelMtls": {}}, [("spec.portLevelMtls", "port level mTLS, if defined, must have at least one element")]),
    ({"selector": SELECTOR, "portLevelMtls": {0: {}, 70000: {}}}, [
        ("spec.portLevelMtls.0", "port must be in range 1..65535"),
        ("spec.portLevelMtls.70000", "port must be in range 1..65535"),
    ]),
    ({"selector": {"matchLabels": {"app": "*"}}}, [("spec.selector.matchLabels.app", 'wildcard is not supported in selector: "app=*"')]),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "expected"), PEER)
def test_peer_authentication(
    errors: Issues, spec: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("PeerAuthentication", spec) == expected


def test_peer_authentication_empty_selector_warns(warnings: Issues) -> None:
    assert warnings("PeerAuthentication", {"selector": {}}) == [
        ("spec.selector", "workload selector specified without labels")
    ]


MEANINGLESS = (
    "{} action without `rules` is meaningless as it will never be triggered, add an empty rule "
    "`{{}}` if you want it be triggered for every request"
)


def rule(**parts: Any) -> dict[str, Any]:
    return {"rules": [parts]}


AUTHZ = [
    ({}, []),
    ({"rules": [{}]}, []),
    ({"action": "DENY"}, [("spec.rules", MEANINGLESS.format("DENY"))]),
    ({"action": "DENY", "rules": [{}]}, []),
    ({"action": "AUDIT"}, []),
    ({"action": "CUSTOM"}, [("spec.rules", MEANINGLESS.format("CUSTOM"))]),
    ({"action": "CUSTOM", "rules": [{}]}, [("spec.provider.name", "`provider.name` must not be empty")]),
    ({"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{
        "from": [{"source": {"principals": ["a"], "notNamespaces": ["b"], "ipBlocks": ["1.2.3.4"]}}],
        "when": [{"key": "request.auth.claims[iss]", "values": ["x"]}, {"key": "source.namespace", "values": ["y"]}, {"key": "source.ip", "values": ["1.1.1.1"]}],
    }]}, [
        ("spec.rules[0].from[0].source.notNamespaces", "From.NotNamespaces is currently not supported with CUSTOM action"),
        ("spec.rules[0].from[0].source.principals", "From.Principals is currently not supported with CUSTOM action"),
        ("spec.rules[0].when[0].key", "request.auth.claims[iss] is currently not supported with CUSTOM action"),
        ("spec.rules[0].when[1].key", "source.namespace is currently not supported with CUSTOM action"),
    ]),
    ({"action": "DENY", "provider": {"name": "ext"}, "rules": [{}]}, [("spec.provider", "`provider` must not be with non CUSTOM action, found DENY")]),
    ({"provider": {"name": "ext"}}, [("spec.provider", "`provider` must not be with non CUSTOM action, found ALLOW")]),
    ({"selector": SELECTOR, "targetRefs": [{"kind": "Service", "name": "a"}]}, [("spec", "only one of targetRefs or workloadSelector can be set")]),
    ({"targetRef": {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}}, []),
    ({"targetRefs": [{"kind": "Deployment", "group": "apps", "namespace": "other"}]}, [
        ("spec.targetRefs[0].name", "targetRef name must be set"),
        ("spec.targetRefs[0].namespace", "targetRef namespace must not be set; cross namespace referencing is not supported"),
        ("spec.targetRefs[0].kind", "targetRef must be to one of Service, ServiceEntry, Gateway or GatewayClass but was apps/Deployment"),
    ]),
    (rule(**{"from": []}, to=[]), [
        ("spec.rules[0].from", "`from` must not be empty, found at rule 0"),
        ("spec.rules[0].to", "`to` must not be empty, found at rule 0"),
    ]),
    (rule(**{"from": [{}, {"source": {}}]}, to=[{}, {"operation": {}}]), [
        ("spec.rules[0].from[0].source", "`from.source` must not be nil, found at rule 0"),
        ("spec.rules[0].from[1].source", "`from.source` must not be empty, found at rule 0"),
        ("spec.rules[0].to[0].operation", "`to.operation` must not be nil, found at rule 0"),
        ("spec.rules[0].to[1].operation", "`to.operation` must not be empty, found at rule 0"),
    ]),
    (rule(**{"from": [{"source": {"serviceAccounts": ["default/sleep"], "namespaces": ["x"]}}]}), [
        ("spec.rules[0].from[0].source", "cannot set serviceAccounts with namespaces or principals, found at rule 0"),
    ]),
    (rule(**{"from": [{"source": {"ipBlocks": ["10.0.0.0/8", "1.2.3.4", "300.1.1.1", "10.0.0.0/40"], "notRemoteIpBlocks": ["::1", "x"]}}]}), [
        ("spec.rules[0].from[0].source.ipBlocks", "bad IP address (300.1.1.1)"),
        ("spec.rules[0].from[0].source.ipBlocks", "bad CIDR range (10.0.0.0/40)"),
        ("spec.rules[0].from[0].source.notRemoteIpBlocks", "bad IP address (x)"),
    ]),
    (rule(**{"from": [{"source": {"principals": [""], "notPrincipals": ["a"], "requestPrincipals": [""], "namespaces": [""], "ipBlocks": [""]}}]}), [
        ("spec.rules[0].from[0].source.principals", "empty value not allowed, found in Principals"),
        ("spec.rules[0].from[0].source.requestPrincipals", "empty value not allowed, found in RequestPrincipals"),
        ("spec.rules[0].from[0].source.namespaces", "empty value not allowed, found in Namespaces"),
        ("spec.rules[0].from[0].source.ipBlocks", "empty value not allowed, found in IpBlocks"),
    ]),
    (rule(**{"from": [{"source": {"serviceAccounts": ["a/b/c"]}}, {"source": {"serviceAccounts": ["*"]}}, {"source": {"notServiceAccounts": ["/sa"]}}, {"source": {"serviceAccounts": ["ns/"]}}, {"source": {"serviceAccounts": [""]}}, {"source": {"serviceAccounts": ["x" * 321]}}, {"source": {"serviceAccounts": [str(i) for i in range(17)]}}]}), [
        ("spec.rules[0].from[0].source.serviceAccounts", "expected format 'serviceAccount' or 'namespace/serviceAccount', found \"a/b/c\" in ServiceAccounts"),
        ("spec.rules[0].from[1].source.serviceAccounts", "wildcard not allowed, found in ServiceAccounts"),
        ("spec.rules[0].from[2].source.notServiceAccounts", "expected format 'serviceAccount' or 'namespace/serviceAccount', found empty namespace \"/sa\" in NotServiceAccounts"),
        ("spec.rules[0].from[3].source.serviceAccounts", "expected format 'serviceAccount' or 'namespace/serviceAccount', found empty serviceAccount \"ns/\" in ServiceAccounts"),
        ("spec.rules[0].from[4].source.serviceAccounts", "empty value not allowed, found in ServiceAccounts"),
        ("spec.rules[0].from[5].source.serviceAccounts", f"value cannot exceed 320 characters, found \"{'x' * 321}\" in ServiceAccounts"),
        ("spec.rules[0].from[6].source.serviceAccounts", "may not have more than 16 values"),
    ]),
    (rule(**{"from": [{"source": {"trustDomains": ["a*b"]}}, {"source": {"trustDomains": ["*a*"]}}, {"source": {"notTrustDomains": ["cluster.local", "td/x"]}}, {"source": {"trustDomains": ["*.td", "cluster.local", ""]}}]}), [
        ("spec.rules[0].from[0].source.trustDomains", 'wildcard is only allowed at the start or end, found in TrustDomains: "a*b"'),
        ("spec.rules[0].from[1].source.trustDomains", 'at most one wildcard is allowed, found in TrustDomains: "*a*"'),
        ("spec.rules[0].from[2].source.notTrustDomains", "trust domain must not contain '/', found in NotTrustDomains: \"td/x\""),
        ("spec.rules[0].from[3].source.trustDomains", "empty value not allowed, found in TrustDomains"),
    ]),
    (rule(to=[{"operation": {"ports": ["80", "http", "70000", ""], "notPorts": ["-1"], "methods": [""], "hosts": [""], "notHosts": ["a"], "notMethods": [""], "paths": [""], "notPaths": [""]}}]), [
        ("spec.rules[0].to[0].operation.ports", "bad port (http)"),
        ("spec.rules[0].to[0].operation.ports", "bad port (70000)"),
        ("spec.rules[0].to[0].operation.notPorts", "bad port (-1)"),
        ("spec.rules[0].to[0].operation.ports", "empty value not allowed, found in Ports"),
        ("spec.rules[0].to[0].operation.methods", "empty value not allowed, found in Methods"),
        ("spec.rules[0].to[0].operation.paths", "empty value not allowed, found in Paths"),
        ("spec.rules[0].to[0].operation.hosts", "empty value not allowed, found in Hosts"),
        ("spec.rules[0].to[0].operation.notMethods", "empty value not allowed, found in NotMethods"),
        ("spec.rules[0].to[0].operation.notPaths", "empty value not allowed, found in NotPaths"),
    ]),
    (rule(to=[{"operation": {"paths": ["/a/{*}/b/{**}", "/x/{**}/{*}", "/y/{a}", "/z/{*}/a b", "/plain/a b"]}}]), [
        ("spec.rules[0].to[0].operation.paths", "invalid or unsupported path x/{**}/{*}, found in Paths. {**} is not the last operator"),
    ]),
    (rule(to=[{"operation": {"notPaths": ["/y/{a}"]}}]), [
        ("spec.rules[0].to[0].operation.notPaths", "invalid or unsupported path y/{a}, found in NotPaths. Contains '{' or '}' beyond a supported path template"),
    ]),
    (rule(to=[{"operation": {"paths": ["/z/{*}/a b"]}}]), [
        ("spec.rules[0].to[0].operation.paths", "invalid or unsupported path z/{*}/a b, found in Paths. Contains segment a b with invalid string literal"),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "expected"), AUTHZ)
def test_authorization_policy(
    errors: Issues, spec: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("AuthorizationPolicy", spec) == expected


WHEN = [
    ({"key": "request.headers[x-user]", "values": ["a"]}, []),
    ({"key": "", "values": ["a"]}, [("spec.rules[0].when[0].key", "`key` must not be empty")]),
    ({"key": "source.ip"}, [("spec.rules[0].when[0]", "at least one of `values` or `notValues` must be set for key source.ip")]),
    ({"key": "source.ip", "values": ["1.2.3.4", "10.0.0.0/8"], "notValues": ["x"]}, [("spec.rules[0].when[0].notValues", "invalid `notValue` for `key` source.ip: bad IP address (x)")]),
    ({"key": "remote.ip", "values": ["1.1.1.1/33"]}, [("spec.rules[0].when[0].values", "invalid `value` for `key` remote.ip: bad CIDR range (1.1.1.1/33)")]),
    ({"key": "destination.ip", "values": [""]}, [("spec.rules[0].when[0].values", "invalid `value` for `key` destination.ip: empty value not allowed, found in destination.ip")]),
    ({"key": "request.headers", "values": ["a"]}, [("spec.rules[0].when[0].key", "bad key (request.headers): should have format a[b]")]),
    ({"key": "request.auth.claims[]", "values": ["a"]}, [("spec.rules[0].when[0].key", "bad key (request.auth.claims[]): should have format a[b]")]),
    ({"key": "request.auth.claims[groups][admin]", "values": ["a"]}, []),
    ({"key": "experimental.envoy.filters.a[b]", "values": ["a"]}, []),
    ({"key": "source.serviceAccount", "notValues": ["a/b/c"]}, [("spec.rules[0].when[0].notValues", "invalid `notValue` for `key` source.serviceAccount: expected format 'serviceAccount' or 'namespace/serviceAccount', found \"a/b/c\" in source.serviceAccount")]),
    ({"key": "source.trustDomain", "values": ["a*b"]}, [("spec.rules[0].when[0].values", "invalid `value` for `key` source.trustDomain: wildcard is only allowed at the start or end, found in source.trustDomain: \"a*b\"")]),
    ({"key": "destination.port", "values": ["80", "x"]}, [("spec.rules[0].when[0].values", "invalid `value` for `key` destination.port: bad port (x)")]),
    ({"key": "source.namespace", "values": ["a"]}, []),
    ({"key": "source.principal", "values": ["a"]}, []),
    ({"key": "request.auth.principal", "values": ["a"]}, []),
    ({"key": "request.auth.audiences", "values": ["a"]}, []),
    ({"key": "request.auth.presenter", "values": ["a"]}, []),
    ({"key": "connection.sni", "values": ["a"]}, []),
    ({"key": "destination.namespace", "values": ["a"]}, [("spec.rules[0].when[0].key", "attribute destination.namespace is replaced by the metadata.namespace")]),
    ({"key": "destination.labels[app]", "values": ["a"]}, [("spec.rules[0].when[0].key", "attribute destination.labels[app] is replaced by the workload selector")]),
    ({"key": "destination.user", "values": ["a"]}, [("spec.rules[0].when[0].key", "deprecated attribute destination.user: only supported in v1alpha1")]),
    ({"key": "request.method", "values": ["GET"]}, [("spec.rules[0].when[0].key", "unknown attribute: request.method")]),
]  # fmt: skip


@pytest.mark.parametrize(("condition", "expected"), WHEN)
def test_when_conditions(
    errors: Issues, condition: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("AuthorizationPolicy", rule(when=[condition])) == expected


DENY_TCP = (
    "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to the "
    "use of only HTTP attributes in a DENY rule; it is recommended to explicitly specify the port"
)


@pytest.mark.parametrize(
    ("parts", "warned"),
    [
        ({"to": [{"operation": {"methods": ["POST"]}}]}, True),
        ({"to": [{"operation": {"methods": ["POST"], "ports": ["80"]}}]}, False),
        ({"from": [{"source": {"requestPrincipals": ["*"]}}]}, True),
        ({"from": [{"source": {"namespaces": ["a"]}}]}, False),
        ({"when": [{"key": "source.ip", "values": ["1.1.1.1"]}]}, False),
    ],
)
def test_deny_with_only_http_fields_warns(
    warnings: Issues, parts: dict[str, Any], warned: bool
) -> None:
    expected = [("spec.rules[0]", DENY_TCP)] if warned else []
    assert warnings("AuthorizationPolicy", {"action": "DENY", **rule(**parts)}) == expected
    assert warnings("AuthorizationPolicy", {"action": "ALLOW", **rule(**parts)}) == []


def test_principal_with_spiffe_prefix_warns(warnings: Issues) -> None:
    spec = rule(
        **{"from": [{"source": {"principals": ["a"], "notPrincipals": ["spiffe://td/ns/a/sa/b"]}}]}
    )
    assert warnings("AuthorizationPolicy", spec) == [
        ("spec.rules[0].from[0].source.notPrincipals", "principals are matched without the 'spiffe://' prefix")
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "spec", "value", "expected"),
    [
        ("AuthorizationPolicy", {"action": "DENY", "rules": [{}]}, "true", []),
        ("AuthorizationPolicy", {}, "False", []),
        ("AuthorizationPolicy", {}, "yes", [("metadata.annotations.istio.io/dry-run", "default/x has annotation istio.io/dry-run with invalid value (yes)")]),
        ("AuthorizationPolicy", {"action": "AUDIT"}, "true", [("metadata.annotations.istio.io/dry-run", "the annotation istio.io/dry-run currently only supports action ALLOW/DENY, found action AUDIT in default/x")]),
        ("PeerAuthentication", {}, "true", [("metadata.annotations.istio.io/dry-run", "default/x has unsupported annotation istio.io/dry-run, please remove the annotation")]),
        ("DestinationRule", {"host": "reviews"}, "true", [("metadata.annotations.istio.io/dry-run", "default/x has unsupported annotation istio.io/dry-run, please remove the annotation")]),
    ],
)  # fmt: skip
def test_dry_run_annotation(
    errors: Issues, kind: str, spec: dict[str, Any], value: str, expected: list[tuple[str, str]]
) -> None:
    assert errors(kind, spec, annotations={"istio.io/dry-run": value}) == expected
