"""Models of the security.istio.io kinds: PeerAuthentication and AuthorizationPolicy.

Part of ``resources.py`` (same conventions), kept apart so that they are built only when a
document of one of these kinds is loaded or a caller names one of them: ``resources`` exposes
every name below and imports this module on first use.
"""

from __future__ import annotations

from typing import Literal

from meshlib._config.edge import field
from meshlib._config.resources import Resource, UInt32, WorkloadSelector, _Model

__all__ = [
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
]


class PolicyTargetReference(_Model):
    group: str | None = None
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None


MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class MutualTLS(_Model):
    """``PeerAuthentication.MutualTLS``."""

    mode: MtlsMode | None = None


class PeerAuthenticationSpec(_Model):
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    port_level_mtls: dict[UInt32, MutualTLS] | None = None
    """Keys are workload ports; YAML map keys may be ints or numeric strings."""


class Source(_Model):
    principals: list[str] | None = None
    not_principals: list[str] | None = None
    request_principals: list[str] | None = None
    not_request_principals: list[str] | None = None
    namespaces: list[str] | None = None
    not_namespaces: list[str] | None = None
    service_accounts: list[str] | None = None
    not_service_accounts: list[str] | None = None
    ip_blocks: list[str] | None = None
    not_ip_blocks: list[str] | None = None
    remote_ip_blocks: list[str] | None = None
    not_remote_ip_blocks: list[str] | None = None
    trust_domains: list[str] | None = None
    not_trust_domains: list[str] | None = None


class Operation(_Model):
    hosts: list[str] | None = None
    not_hosts: list[str] | None = None
    ports: list[str] | None = None
    not_ports: list[str] | None = None
    methods: list[str] | None = None
    not_methods: list[str] | None = None
    paths: list[str] | None = None
    not_paths: list[str] | None = None


class RuleFrom(_Model):
    """``Rule.From``."""

    source: Source | None = None


class RuleTo(_Model):
    """``Rule.To``."""

    operation: Operation | None = None


class Condition(_Model):
    key: str | None = None
    values: list[str] | None = None
    not_values: list[str] | None = None


class Rule(_Model):
    from_: list[RuleFrom] | None = None
    to: list[RuleTo] | None = None
    when: list[Condition] | None = None


class ExtensionProvider(_Model):
    name: str | None = None


class AuthorizationPolicySpec(_Model):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] | None = None
    rules: list[Rule] | None = None
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] | None = None
    provider: ExtensionProvider | None = None


class PeerAuthentication(Resource):
    spec: PeerAuthenticationSpec = field(default_factory=PeerAuthenticationSpec)


class AuthorizationPolicy(Resource):
    spec: AuthorizationPolicySpec = field(default_factory=AuthorizationPolicySpec)
