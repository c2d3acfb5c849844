"""AuthorizationPolicy / PeerAuthentication resources -> compiled policies, with located issues."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from meshlib._config.compile import compile_snapshot
from meshlib._config.compile_security import (
    CODE_AUTHZ_INVALID,
    CODE_AUTHZ_NO_RULES,
    CODE_AUTHZ_PROVIDER,
    CODE_AUTHZ_TARGET_REF,
    CODE_PEERAUTH_CONFLICT,
    CODE_PEERAUTH_PORTS,
    compile_authorization,
    compile_peer_authentication,
    compile_security,
)
from meshlib._config.issues import ConfigIssue, Severity
from meshlib._config.loader import LoadResult, load_text
from meshlib._model import Peer
from meshlib._policy.authz import Action, Authorizer, AuthzRequest
from meshlib._policy.paths import PathNormalization
from meshlib._policy.peerauth import MtlsMode, WorkloadMtls

SLEEP = Peer("spiffe://cluster.local/ns/default/sa/sleep", mtls=True)
PLAIN = Peer(None)
LABELS = {"app": "httpbin", "version": "v1"}


def load(text: str, *, validate: bool = False) -> LoadResult:
    result = load_text(text, "mesh.yaml", "default", validate=validate)
    assert not result.errors, result.errors
    return result


def security(text: str, **kw: Any) -> tuple[Authorizer, WorkloadMtls, list[ConfigIssue]]:
    return compile_security(load(text), namespace="default", labels=LABELS, **kw)


def authz(spec: str, name: str = "p", annotations: str = "") -> str:
    meta = f"metadata:\n  name: {name}\n  namespace: default\n"
    if annotations:
        meta += f"  annotations: {annotations}\n"
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (
        f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n{meta}spec:\n{body}\n---\n"
    )


def request(**kw: Any) -> AuthzRequest:
    kw.setdefault("peer", SLEEP)
    kw.setdefault("method", "GET")
    kw.setdefault("path", "/")
    kw.setdefault("port", 8000)
    return AuthzRequest(**kw)


# ISTIO-SEMANTICS 10, case 10, as rows: (policy YAML, request, allowed)
CASE_10 = [
    ("{}", request(), False),
    ("{}", request(peer=PLAIN), False),
    (
        """
        rules:
        - from:
          - source:
              principals: ["cluster.local/ns/default/sa/sleep"]
        """,
        request(),
        True,
    ),
    (
        """
        rules:
        - from:
          - source:
              principals: ["cluster.local/ns/default/sa/sleep"]
        """,
        request(peer=PLAIN),
        False,
    ),
    (
        """
        action: DENY
        rules:
        - to:
          - operation:
              methods: ["POST"]
        """,
        request(method="POST"),
        False,
    ),
    (
        """
        action: DENY
        rules:
        - to:
          - operation:
              methods: ["POST"]
        """,
        request(method="GET"),
        True,
    ),
    (
        """
        action: DENY
        rules:
        - to:
          - operation:
              paths: ["/admin*"]
        """,
        request(path="/public/../admin"),
        False,
    ),
    (
        """
        action: DENY
        rules:
        - to:
          - operation:
              paths: ["/admin*"]
        """,
        request(path="/%61dmin"),
        False,
    ),
    (
        """
        action: DENY
        rules:
        - to:
          - operation:
              paths: ["/admin*"]
        """,
        request(path="//admin"),
        True,
    ),
]


@pytest.mark.parametrize(("spec", "req", "allowed"), CASE_10)
def test_case_10(spec: str, req: AuthzRequest, allowed: bool) -> None:
    authorizer, _, issues = security(authz(spec))
    assert [i for i in issues if i.severity is Severity.ERROR] == []
    assert authorizer.check(req).allowed is allowed


def test_case_10_merge_slashes() -> None:
    spec = authz("""
        action: DENY
        rules:
        - to:
          - operation:
              paths: ["/admin*"]
        """)
    authorizer, _, _ = security(spec, path_normalization=PathNormalization.MERGE_SLASHES)
    assert not authorizer.check(request(path="//admin")).allowed


PA = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: {name}
  namespace: {namespace}{extra}
spec:
{spec}
---
"""


def pa(spec: str, name: str = "pa", namespace: str = "default", extra: str = "") -> str:
    return PA.format(
        name=name,
        namespace=namespace,
        extra=extra,
        spec=textwrap.indent(textwrap.dedent(spec), "  "),
    )


# ISTIO-SEMANTICS 10, case 11, as rows: (PeerAuthentications, port, mode)
CASE_11 = [
    ("", 8080, MtlsMode.PERMISSIVE),
    (pa("mtls: {mode: PERMISSIVE}"), 8080, MtlsMode.PERMISSIVE),
    (pa("mtls: {mode: STRICT}"), 8080, MtlsMode.STRICT),
    (pa("mtls: {mode: STRICT}", namespace="istio-system"), 8080, MtlsMode.STRICT),
    (
        pa("mtls: {mode: STRICT}")
        + pa(
            """
            selector:
              matchLabels: {app: httpbin}
            portLevelMtls:
              8080: {mode: DISABLE}
            """,
            name="reopen",
        ),
        8080,
        MtlsMode.DISABLE,
    ),
    (
        pa("mtls: {mode: STRICT}")
        + pa(
            """
            selector:
              matchLabels: {app: httpbin}
            portLevelMtls:
              "8080": {mode: DISABLE}
            """,
            name="reopen",
        ),
        9090,
        MtlsMode.STRICT,
    ),
]


@pytest.mark.parametrize(("docs", "port", "mode"), CASE_11)
def test_case_11(docs: str, port: int, mode: MtlsMode) -> None:
    text = docs or "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
    _, mtls, issues = security(text)
    assert issues == []
    assert mtls.mode_for(port) is mode


def test_invalid_rule_is_located_and_fails_closed() -> None:
    text = authz(
        """
        rules:
        - from:
          - source:
              ipBlocks: ["10.0.0.0/33"]
        - to:
          - operation:
              paths: ["/ok"]
        """,
        name="allow-ok",
    ) + authz(
        """
        action: DENY
        rules:
        - to:
          - operation:
              ports: ["http"]
        """,
        name="deny-bad",
    )
    authorizer, _, issues = security(text)
    assert [(i.severity, i.resource, i.field, i.code, i.document) for i in issues] == [
        (
            Severity.ERROR,
            "AuthorizationPolicy/default/allow-ok",
            "spec.rules[0].from[0].source.ipBlocks[0]",
            CODE_AUTHZ_INVALID,
            0,
        ),
        (
            Severity.ERROR,
            "AuthorizationPolicy/default/deny-bad",
            "spec.rules[0].to[0].operation.ports[0]",
            CODE_AUTHZ_INVALID,
            1,
        ),
    ]
    assert all(i.file == "mesh.yaml" for i in issues)
    assert "fails closed" in issues[0].message
    decision = authorizer.check(request(path="/ok"))
    assert (decision.allowed, decision.policy) == (False, "default/deny-bad")


def test_deny_without_rules_is_reported() -> None:
    authorizer, _, issues = security(authz("action: DENY"))
    assert [(i.code, i.field) for i in issues] == [(CODE_AUTHZ_NO_RULES, "spec.rules")]
    assert authorizer.check(request()).allowed


def test_target_refs_are_not_applied() -> None:
    text = authz("""
        targetRefs:
        - kind: Gateway
          group: gateway.networking.k8s.io
          name: gw
        """) + authz(
        """
        targetRef:
          kind: Gateway
          group: gateway.networking.k8s.io
          name: gw
        """,
        name="single",
    )
    authorizer, _, issues = security(text)
    assert [(i.code, i.field, i.severity) for i in issues] == [
        (CODE_AUTHZ_TARGET_REF, "spec.targetRefs", Severity.WARNING),
        (CODE_AUTHZ_TARGET_REF, "spec.targetRef", Severity.WARNING),
    ]
    assert authorizer.policies == ()
    assert authorizer.check(request()).allowed


CUSTOM = """
    action: CUSTOM
    provider:
      name: ext
    rules:
    - to:
      - operation:
          paths: ["/ext*"]
    """


def test_custom_without_provider_denies_and_reports() -> None:
    authorizer, _, issues = security(authz(CUSTOM))
    assert [(i.code, i.field) for i in issues] == [(CODE_AUTHZ_PROVIDER, "spec.provider.name")]
    denied = authorizer.check(request(path="/ext/1"))
    assert (denied.allowed, denied.action) == (False, Action.CUSTOM)
    assert authorizer.check(request(path="/other")).allowed


def test_custom_with_provider() -> None:
    authorizer, _, issues = security(
        authz(CUSTOM), custom_providers={"ext": lambda r: r.path.endswith("/ok")}
    )
    assert issues == []
    assert authorizer.check(request(path="/ext/ok")).allowed
    assert not authorizer.check(request(path="/ext/no")).allowed


def test_dry_run_annotation() -> None:
    text = authz(
        """
        action: DENY
        rules:
        - {}
        """,
        annotations='{"istio.io/dry-run": "true"}',
    )
    authorizer, _, _ = security(text)
    decision = authorizer.check(request())
    assert (decision.allowed, decision.dry_run_allowed) == (True, False)


def test_selection_by_namespace_and_labels() -> None:
    text = authz(
        """
        selector:
          matchLabels: {app: other}
        """,
        name="other-app",
    ) + textwrap.dedent("""
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: other-ns, namespace: foo}
    spec: {}
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: mesh, namespace: istio-system}
    spec:
      action: DENY
      rules:
      - to:
        - operation:
            methods: ["DELETE"]
    """)
    result = load(text)
    policy_set, issues = compile_authorization(result.resources)
    assert issues == []
    assert [p.ref for p in policy_set.policies] == [
        "default/other-app",
        "foo/other-ns",
        "istio-system/mesh",
    ]
    authorizer, _, _ = compile_security(result, namespace="default", labels=LABELS)
    assert [p.ref for p in authorizer.policies] == ["istio-system/mesh"]
    assert authorizer.check(request()).allowed
    assert not authorizer.check(request(method="DELETE")).allowed
    case_folded, _, _ = compile_security(
        result, namespace="default", labels=LABELS, case_insensitive_paths=True
    )
    assert not case_folded.check(request(method="DELETE")).allowed


def test_validated_load_keeps_good_policies() -> None:
    text = authz("""
        rules:
        - from:
          - source:
              namespaces: ["default"]
        """)
    authorizer, _, issues = security(text)
    result = load(text, validate=True)
    assert len(result.resources) == 1
    assert issues == []
    assert authorizer.check(request()).allowed
    assert not authorizer.check(request(peer=PLAIN)).allowed


def test_port_level_without_selector_is_ignored() -> None:
    text = pa("""
        mtls: {mode: STRICT}
        portLevelMtls:
          8080: {mode: DISABLE}
        """)
    _, mtls, issues = security(text)
    assert [(i.code, i.field, i.severity) for i in issues] == [
        (CODE_PEERAUTH_PORTS, "spec.portLevelMtls", Severity.ERROR)
    ]
    assert mtls.mode_for(8080) is MtlsMode.STRICT


def test_root_namespace_selector_is_reported() -> None:
    text = pa(
        """
        selector:
          matchLabels: {app: httpbin}
        mtls: {mode: STRICT}
        """,
        namespace="istio-system",
    )
    _, mtls, issues = security(text)
    assert [(i.code, i.field) for i in issues] == [(CODE_PEERAUTH_CONFLICT, "spec.selector")]
    assert mtls.mode is MtlsMode.PERMISSIVE


def test_competing_policies_first_loaded_wins() -> None:
    text = (
        pa("mtls: {mode: STRICT}", name="first")
        + pa("mtls: {mode: DISABLE}", name="second")
        + pa("mtls: {mode: DISABLE}", name="elsewhere", namespace="foo")
    )
    _, mtls, issues = security(text)
    assert mtls.mode is MtlsMode.STRICT
    assert mtls.decided_by == "default/first"
    assert len(issues) == 1
    assert issues[0].code == CODE_PEERAUTH_CONFLICT
    assert "first loaded" in issues[0].message
    assert "ignored: default/second" in issues[0].message


def test_competing_policies_oldest_wins() -> None:
    text = pa(
        "mtls: {mode: STRICT}",
        name="young",
        extra='\n  creationTimestamp: "2024-05-01T00:00:00Z"',
    ) + pa(
        "mtls: {mode: DISABLE}",
        name="old",
        extra='\n  creationTimestamp: "2023-05-01T00:00:00Z"',
    )
    _, mtls, issues = security(text)
    assert mtls.mode is MtlsMode.DISABLE
    assert "oldest by creationTimestamp" in issues[0].message


def test_competing_workload_policies() -> None:
    text = (
        pa(
            """
        selector:
          matchLabels: {app: httpbin}
        mtls: {mode: STRICT}
        """,
            name="by-app",
        )
        + pa(
            """
        selector:
          matchLabels: {version: v1}
        mtls: {mode: DISABLE}
        """,
            name="by-version",
        )
        + pa(
            """
        selector:
          matchLabels: {app: other}
        mtls: {mode: DISABLE}
        """,
            name="not-me",
        )
    )
    _, mtls, issues = security(text)
    assert mtls.mode is MtlsMode.STRICT
    assert [i.code for i in issues] == [CODE_PEERAUTH_CONFLICT]
    assert "workload level" in issues[0].message


def test_peer_authentication_list() -> None:
    text = pa("{}") + pa("mtls: {}", name="empty-mtls", namespace="foo")
    policies, issues = compile_peer_authentication(load(text).resources)
    assert issues == []
    assert [(p.ref, p.mode) for p in policies] == [
        ("default/pa", MtlsMode.UNSET),
        ("foo/empty-mtls", MtlsMode.UNSET),
    ]


def test_snapshot_hook_uses_compile_security() -> None:
    result = load(authz("{}") + pa("mtls: {mode: STRICT}"))
    snapshot, _ = compile_snapshot(result, namespace="default", labels=LABELS)
    assert isinstance(snapshot.authorization, Authorizer)
    assert isinstance(snapshot.peer_authentication, WorkloadMtls)
    assert not snapshot.authorization.check(request()).allowed
    assert snapshot.peer_authentication.mode is MtlsMode.STRICT
