"""Compile AuthorizationPolicy and PeerAuthentication resources into the pure policy types.

Never raises on what the loader accepted: a field that cannot be compiled becomes a located
``ConfigIssue`` and the rule fails closed (``authz.build_policy``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from meshlib._config import resources as r
from meshlib._config.issues import ConfigIssue, Severity
from meshlib._config.loader import LoadedResource, LoadResult
from meshlib._policy.authz import (
    DEFAULT_ROOT_NAMESPACE,
    Action,
    AuthorizationPolicy,
    AuthorizationPolicySet,
    Authorizer,
    AuthzRequest,
    AuthzSpecError,
    build_policy,
    is_dry_run,
)
from meshlib._policy.paths import DEFAULT_PATH_NORMALIZATION, PathNormalization
from meshlib._policy.peerauth import (
    MtlsMode,
    PeerAuthenticationPolicy,
    WorkloadMtls,
    workload_mtls,
)

__all__ = [
    "CODE_AUTHZ_INVALID",
    "CODE_AUTHZ_NO_RULES",
    "CODE_AUTHZ_PROVIDER",
    "CODE_AUTHZ_TARGET_REF",
    "CODE_PEERAUTH_CONFLICT",
    "CODE_PEERAUTH_PORTS",
    "compile_authorization",
    "compile_peer_authentication",
    "compile_security",
]

CODE_AUTHZ_INVALID = "meshlib.authz-invalid"
CODE_AUTHZ_NO_RULES = "meshlib.authz-no-rules"
CODE_AUTHZ_PROVIDER = "meshlib.authz-custom-provider"
CODE_AUTHZ_TARGET_REF = "meshlib.authz-target-ref"
CODE_PEERAUTH_CONFLICT = "meshlib.peerauth-conflict"
CODE_PEERAUTH_PORTS = "meshlib.peerauth-port-level"


def _issue(
    res: LoadedResource, severity: Severity, message: str, field: str, code: str
) -> ConfigIssue:
    return ConfigIssue(
        severity=severity,
        message=message,
        file=res.file,
        document=res.document,
        resource=res.ref,
        field=field,
        code=code,
    )


def compile_authorization(
    resources: Sequence[LoadedResource], *, root_namespace: str = DEFAULT_ROOT_NAMESPACE
) -> tuple[AuthorizationPolicySet, list[ConfigIssue]]:
    """Every AuthorizationPolicy of ``resources``, compiled, in load order.

    A policy's ``order`` is its index in ``resources``.
    """
    issues: list[ConfigIssue] = []
    policies: list[AuthorizationPolicy] = []
    for order, res in enumerate(resources):
        spec = res.spec
        if res.kind != "AuthorizationPolicy" or not isinstance(spec, r.AuthorizationPolicySpec):
            continue
        policies.append(_authorization_policy(res, spec, order, issues))
    return AuthorizationPolicySet(tuple(policies), root_namespace), issues


def _authorization_policy(
    res: LoadedResource,
    spec: r.AuthorizationPolicySpec,
    order: int,
    issues: list[ConfigIssue],
) -> AuthorizationPolicy:
    def report(error: AuthzSpecError) -> None:
        issues.append(
            _issue(
                res,
                Severity.ERROR,
                f"{error.message}; the rule fails closed (ALLOW: never matches, "
                "otherwise: matches every request)",
                error.field,
                CODE_AUTHZ_INVALID,
            )
        )

    action = Action(spec.action or "ALLOW")
    dumped: dict[str, Any] = spec.model_dump(by_alias=True, exclude_none=True)
    rules: list[Mapping[str, Any]] | None = dumped.get("rules")
    targeted = spec.target_ref is not None or bool(spec.target_refs)
    if targeted:
        issues.append(
            _issue(
                res,
                Severity.WARNING,
                "targetRef(s) select gateways and waypoints; a sidecar never applies this "
                "policy, and neither does meshlib",
                "spec.targetRefs" if spec.target_refs else "spec.targetRef",
                CODE_AUTHZ_TARGET_REF,
            )
        )
    if rules is None and action is not Action.ALLOW:
        issues.append(
            _issue(
                res,
                Severity.ERROR,
                f"{action.value} policy without rules matches nothing; add 'rules: [{{}}]' "
                "to match every request",
                "spec.rules",
                CODE_AUTHZ_NO_RULES,
            )
        )
    selector = spec.selector.match_labels if spec.selector is not None else None
    return build_policy(
        res.name,
        res.namespace,
        action=action,
        rules=rules,
        selector=selector,
        provider=spec.provider.name if spec.provider is not None else None,
        dry_run=is_dry_run(res.annotations),
        target_refs=targeted,
        order=order,
        on_error=report,
    )


def compile_peer_authentication(
    resources: Sequence[LoadedResource], *, root_namespace: str = DEFAULT_ROOT_NAMESPACE
) -> tuple[tuple[PeerAuthenticationPolicy, ...], list[ConfigIssue]]:
    """Every PeerAuthentication of ``resources``, compiled, in load order."""
    issues: list[ConfigIssue] = []
    policies: list[PeerAuthenticationPolicy] = []
    for order, res in enumerate(resources):
        spec = res.spec
        if res.kind != "PeerAuthentication" or not isinstance(spec, r.PeerAuthenticationSpec):
            continue
        selector = spec.selector.match_labels if spec.selector is not None else None
        ports: dict[int, MtlsMode] = {}
        for port, tls in (spec.port_level_mtls or {}).items():
            ports[port] = MtlsMode(tls.mode or "UNSET")
        if ports and not selector:
            issues.append(
                _issue(
                    res,
                    Severity.ERROR,
                    "portLevelMtls requires a workload selector; ignored",
                    "spec.portLevelMtls",
                    CODE_PEERAUTH_PORTS,
                )
            )
            ports = {}
        if selector and res.namespace == root_namespace:
            issues.append(
                _issue(
                    res,
                    Severity.WARNING,
                    f"a selector policy in the root namespace {root_namespace!r} is ignored",
                    "spec.selector",
                    CODE_PEERAUTH_CONFLICT,
                )
            )
        policies.append(
            PeerAuthenticationPolicy(
                name=res.name,
                namespace=res.namespace,
                mode=MtlsMode(spec.mtls.mode or "UNSET")
                if spec.mtls is not None
                else MtlsMode.UNSET,
                selector=dict(selector) if selector else None,
                port_modes=ports,
                created=res.creation_timestamp,
                order=order,
            )
        )
    return tuple(policies), issues


def _peer_conflicts(
    policies: Iterable[PeerAuthenticationPolicy],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str,
) -> list[ConfigIssue]:
    levels: dict[str, list[PeerAuthenticationPolicy]] = {}
    for policy in policies:
        if policy.selector:
            if policy.namespace != namespace or policy.namespace == root_namespace:
                continue
            if any(labels.get(k) != v for k, v in policy.selector.items()):
                continue
            levels.setdefault("workload", []).append(policy)
        elif policy.namespace in (namespace, root_namespace):
            level = "mesh" if policy.namespace == root_namespace else "namespace"
            levels.setdefault(level, []).append(policy)
    issues: list[ConfigIssue] = []
    for level, found in levels.items():
        if len(found) < 2:
            continue
        found.sort(key=lambda p: p.age_key)
        basis = (
            "the oldest by creationTimestamp"
            if all(p.created for p in found)
            else "the first loaded (creation time unknown)"
        )
        others = ", ".join(p.ref for p in found[1:])
        issues.append(
            ConfigIssue(
                severity=Severity.WARNING,
                message=f"{len(found)} PeerAuthentications apply at the {level} level; "
                f"{found[0].ref} wins as {basis}; ignored: {others}",
                resource=f"PeerAuthentication/{found[0].namespace}/{found[0].name}",
                code=CODE_PEERAUTH_CONFLICT,
            )
        )
    return issues


def compile_security(
    result: LoadResult,
    *,
    namespace: str,
    labels: Mapping[str, str],
    trust_domain: str = "cluster.local",
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    path_normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION,
    custom_providers: Mapping[str, Callable[[AuthzRequest], bool]] | None = None,
    case_insensitive_paths: bool = False,
) -> tuple[Authorizer, WorkloadMtls, list[ConfigIssue]]:
    """The authorizer and mTLS modes of one workload, with the issues found.

    ``trust_domain`` is accepted for the snapshot compiler's call; trust-domain aliases are
    not expanded yet, so principals are compared as written.
    """
    del trust_domain
    resources = result.resources
    policy_set, issues = compile_authorization(resources, root_namespace=root_namespace)
    selected = policy_set.policies_for(namespace, labels)
    providers = dict(custom_providers or {})
    for policy in selected:
        if policy.action is Action.CUSTOM and policy.provider not in providers:
            issues.append(
                _issue(
                    resources[policy.order],
                    Severity.ERROR,
                    f"no callable for CUSTOM provider {policy.provider!r}; requests this "
                    "policy matches are denied",
                    "spec.provider.name",
                    CODE_AUTHZ_PROVIDER,
                )
            )
    authorizer = Authorizer(
        selected,
        path_normalization,
        custom_providers=providers,
        case_insensitive_paths=case_insensitive_paths,
        on_missing_provider="deny",
    )
    peer_policies, peer_issues = compile_peer_authentication(
        resources, root_namespace=root_namespace
    )
    issues += peer_issues
    issues += _peer_conflicts(peer_policies, namespace, labels, root_namespace)
    mtls = workload_mtls(peer_policies, namespace, labels, root_namespace=root_namespace)
    return authorizer, mtls, issues
