"""AuthorizationPolicy semantics (ISTIO-SEMANTICS 5.1-5.3) as table tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from meshlib._model import Peer
from meshlib._policy.authz import (
    Action,
    AuthorizationPolicy,
    AuthorizationPolicySet,
    Authorizer,
    AuthzRequest,
    AuthzSpecError,
    Decision,
    Explanation,
    PolicyMatch,
    build_policy,
    build_rule,
    is_dry_run,
)
from meshlib._policy.paths import PathNormalization

SLEEP = Peer("spiffe://cluster.local/ns/default/sa/sleep", mtls=True)
OTHER = Peer("spiffe://cluster.local/ns/foo/sa/other", mtls=True)
FOREIGN = Peer("spiffe://example.org/ns/default/sa/sleep", mtls=True)
PLAINTEXT = Peer(None, address="10.0.0.9", mtls=False)


def policy(
    action: str = "ALLOW",
    rules: list[dict[str, Any]] | None = None,
    name: str = "p",
    namespace: str = "default",
    **kw: Any,
) -> AuthorizationPolicy:
    return build_policy(name, namespace, action=action, rules=rules, **kw)


def src(**fields: Any) -> dict[str, Any]:
    return {"from": [{"source": fields}]}


def op(**fields: Any) -> dict[str, Any]:
    return {"to": [{"operation": fields}]}


def when(
    key: str, values: list[str] | None = None, not_values: list[str] | None = None
) -> dict[str, Any]:
    condition: dict[str, Any] = {"key": key}
    if values is not None:
        condition["values"] = values
    if not_values is not None:
        condition["notValues"] = not_values
    return {"when": [condition]}


def req(**kw: Any) -> AuthzRequest:
    kw.setdefault("peer", SLEEP)
    kw.setdefault("method", "GET")
    kw.setdefault("host", "svc.default:8080")
    kw.setdefault("port", 8080)
    kw.setdefault("source_ip", "10.0.0.9")
    return AuthzRequest(**kw)


def decide(policies: list[AuthorizationPolicy], request: AuthzRequest, **kw: Any) -> Decision:
    return Authorizer(policies, **kw).check(request)


def allows(rule: dict[str, Any], request: AuthzRequest, **kw: Any) -> bool:
    """Whether one ALLOW rule admits the request (and the rule's policy is the only one)."""
    return decide([policy("ALLOW", [rule])], request, **kw).allowed


# ------------------------------------------------------------------------------ decision
def test_no_policy_allows() -> None:
    d = decide([], req())
    assert d == Decision(True, None, reason="no ALLOW policy applies")


def test_empty_spec_denies_all() -> None:
    # spec: {} is an ALLOW policy without rules (ISTIO-SEMANTICS 10, case 10)
    d = decide([policy("ALLOW", None)], req())
    assert (d.allowed, d.action, d.policy, d.rule) == (False, Action.ALLOW, "", None)
    assert d.reason == "no ALLOW policy matched"


def test_empty_rule_matches_all() -> None:
    d = decide([policy("ALLOW", [{}])], req(peer=PLAINTEXT))
    assert (d.allowed, d.action, d.policy, d.rule) == (True, Action.ALLOW, "default/p", 0)


def test_deny_wins_over_allow() -> None:
    policies = [policy("ALLOW", [{}], name="a"), policy("DENY", [op(methods=["POST"])], name="d")]
    post = decide(policies, req(method="POST"))
    assert (post.allowed, post.action, post.policy) == (False, Action.DENY, "default/d")
    get = decide(policies, req(method="GET"))
    assert (get.allowed, get.action, get.policy) == (True, Action.ALLOW, "default/a")


def test_deny_methods_post_case_10() -> None:
    policies = [policy("DENY", [op(methods=["POST"])])]
    assert not decide(policies, req(method="POST")).allowed
    assert decide(policies, req(method="GET")).allowed


def test_allow_must_match_one() -> None:
    policies = [
        policy("ALLOW", [src(principals=["cluster.local/ns/foo/sa/x"])], name="a"),
        policy("ALLOW", [op(paths=["/x"]), op(paths=["/public"])], name="b"),
    ]
    d = decide(policies, req(path="/public"))
    assert (d.allowed, d.policy, d.rule) == (True, "default/b", 1)
    assert not decide(policies, req(path="/private")).allowed


def test_audit_never_decides_but_is_reported() -> None:
    policies = [policy("AUDIT", [op(paths=["/audited*"])], name="au")]
    d = decide(policies, req(path="/audited/x"))
    assert d.allowed
    assert d.action is None
    assert d.audit == (PolicyMatch("default/au", Action.AUDIT, 0),)
    assert decide(policies, req(path="/other")).audit == ()


def test_audit_with_deny_decision() -> None:
    policies = [policy("AUDIT", [{}], name="au"), policy("DENY", [{}], name="d")]
    d = decide(policies, req())
    assert (d.allowed, d.policy) == (False, "default/d")
    assert d.audit == (PolicyMatch("default/au", Action.AUDIT, 0),)


def test_bad_path_is_rejected() -> None:
    d = decide([], req(path="/a%00b"))
    assert (d.allowed, d.action, d.bad_path) == (False, None, True)
    assert d.reason == "path rejected by normalization"


def test_first_matching_rule_is_reported() -> None:
    policies = [policy("DENY", [op(paths=["/a"]), op(paths=["/b"]), op(paths=["/b*"])])]
    d = decide(policies, req(path="/b"))
    assert (d.rule, d.reason) == (1, "matched DENY")


# ------------------------------------------------------------------------------ CUSTOM
def test_custom_requires_provider() -> None:
    custom = policy("CUSTOM", [{}], provider="ext")
    with pytest.raises(ValueError, match="CUSTOM provider 'ext'"):
        Authorizer([custom])


def test_custom_missing_provider_can_deny() -> None:
    custom = policy("CUSTOM", [op(paths=["/ext*"])], provider="ext")
    authorizer = Authorizer([custom], on_missing_provider="deny")
    d = authorizer.check(req(path="/ext/1"))
    assert (d.allowed, d.action, d.policy) == (False, Action.CUSTOM, "default/p")
    assert "ext" in d.reason
    assert authorizer.check(req(path="/other")).allowed


def test_custom_runs_first_and_can_deny() -> None:
    seen: list[str] = []

    def ext(request: AuthzRequest) -> bool:
        seen.append(request.path)
        return request.path != "/forbidden"

    policies = [
        policy("CUSTOM", [{}], name="c", provider="ext"),
        policy("DENY", [op(paths=["/deny"])], name="d"),
        policy("ALLOW", [{}], name="a"),
    ]
    authorizer = Authorizer(policies, custom_providers={"ext": ext})
    denied = authorizer.check(req(path="/forbidden"))
    assert (denied.allowed, denied.action, denied.policy) == (False, Action.CUSTOM, "default/c")
    deny = authorizer.check(req(path="/deny"))
    assert (deny.allowed, deny.action) == (False, Action.DENY)
    ok = authorizer.check(req(path="/fine"))
    assert (ok.allowed, ok.action) == (True, Action.ALLOW)
    assert seen == ["/forbidden", "/deny", "/fine"]


def test_custom_not_matching_skips_provider() -> None:
    calls: list[str] = []

    def ext(request: AuthzRequest) -> bool:
        calls.append(request.path)
        return False

    policies = [policy("CUSTOM", [op(paths=["/ext"])], provider="ext")]
    authorizer = Authorizer(policies, custom_providers={"ext": ext})
    assert authorizer.check(req(path="/other")).allowed
    assert calls == []
    assert not authorizer.check(req(path="/ext")).allowed
    assert calls == ["/ext"]


def test_custom_policies_in_order() -> None:
    asked: list[str] = []

    def provider(name: str, answer: bool) -> Any:
        def ask(request: AuthzRequest) -> bool:
            asked.append(name)
            return answer

        return ask

    policies = [
        policy("CUSTOM", [op(paths=["*.png"])], name="images", provider="img"),
        policy("CUSTOM", [op(notPaths=["/health"])], name="all", provider="ext"),
    ]
    providers = {"img": provider("img", True), "ext": provider("ext", False)}
    authorizer = Authorizer(policies, custom_providers=providers)
    d = authorizer.check(req(path="/a.png"))
    assert (d.allowed, d.policy) == (False, "default/all")
    assert asked == ["img", "ext"]
    assert authorizer.check(req(path="/health")).allowed
    assert asked == ["img", "ext"]


# ------------------------------------------------------------------------------ dry-run
def test_dry_run_deny_is_reported_not_enforced() -> None:
    policies = [policy("DENY", [op(methods=["POST"])], dry_run=True)]
    d = decide(policies, req(method="POST"))
    assert d.allowed
    assert d.action is None
    assert d.dry_run == (PolicyMatch("default/p", Action.DENY, 0),)
    assert d.dry_run_allowed is False
    get = decide(policies, req(method="GET"))
    assert (get.allowed, get.dry_run, get.dry_run_allowed) == (True, (), True)


def test_dry_run_allow_shadow() -> None:
    policies = [
        policy("ALLOW", [src(principals=["cluster.local/ns/default/sa/sleep"])], dry_run=True)
    ]
    yes = decide(policies, req())
    assert (yes.allowed, yes.dry_run_allowed) == (True, True)
    assert yes.dry_run == (PolicyMatch("default/p", Action.ALLOW, 0),)
    no = decide(policies, req(peer=OTHER))
    assert (no.allowed, no.dry_run, no.dry_run_allowed) == (True, (), False)


def test_dry_run_alongside_enforced() -> None:
    policies = [
        policy("ALLOW", [op(paths=["/a"])], name="enforced"),
        policy("ALLOW", [op(paths=["/b"])], name="shadow", dry_run=True),
        policy("DENY", [op(paths=["/c"])], name="deny"),
        policy("AUDIT", [op(paths=["/b"])], name="dry-audit", dry_run=True),
        policy("CUSTOM", [op(paths=["/b"])], name="dry-ext", provider="ext", dry_run=True),
    ]
    authorizer = Authorizer(policies, custom_providers={"ext": lambda r: False})
    a = authorizer.check(req(path="/a"))
    assert (a.allowed, a.dry_run_allowed, a.dry_run) == (True, True, ())
    b = authorizer.check(req(path="/b"))
    assert (b.allowed, b.dry_run_allowed) == (False, True)
    assert [m.policy for m in b.dry_run] == [
        "default/dry-ext",
        "default/shadow",
        "default/dry-audit",
    ]
    c = authorizer.check(req(path="/c"))
    assert (c.allowed, c.action, c.dry_run_allowed) == (False, Action.DENY, False)
    x = authorizer.check(req(path="/x"))
    assert (x.allowed, x.dry_run_allowed) == (False, False)


def test_audit_only_report() -> None:
    d = decide([policy("AUDIT", [{}], name="au"), policy("ALLOW", [{}])], req())
    assert (d.allowed, d.dry_run_allowed, len(d.audit)) == (True, None, 1)


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, False),
        ({"istio.io/dry-run": "true"}, True),
        ({"istio.io/dry-run": "True"}, True),
        ({"istio.io/dry-run": "false"}, False),
        ({"istio.io/dry-run": "yes"}, False),
    ],
)
def test_is_dry_run(annotations: Mapping[str, str], expected: bool) -> None:
    assert is_dry_run(annotations) is expected


# ------------------------------------------------------------------------------ source fields
P_SLEEP = "cluster.local/ns/default/sa/sleep"


@pytest.mark.parametrize(
    ("rule", "request_", "expected"),
    [
        # principals: exact, any authenticated, prefix/suffix; plaintext has no principal
        (src(principals=[P_SLEEP]), req(), True),
        (src(principals=[P_SLEEP]), req(peer=OTHER), False),
        (src(principals=[P_SLEEP]), req(peer=PLAINTEXT), False),
        (src(principals=[P_SLEEP]), req(peer=None), False),
        (src(principals=["*"]), req(peer=OTHER), True),
        (src(principals=["*"]), req(peer=PLAINTEXT), False),
        (src(principals=["cluster.local/ns/default/*"]), req(), True),
        (src(principals=["*/sa/other"]), req(peer=OTHER), True),
        (src(notPrincipals=["*"]), req(peer=PLAINTEXT), True),
        (src(notPrincipals=["*"]), req(), False),
        (src(notPrincipals=[P_SLEEP]), req(peer=OTHER), True),
        (src(principals=["*"], notPrincipals=[P_SLEEP]), req(peer=OTHER), True),
        (src(principals=["*"], notPrincipals=[P_SLEEP]), req(), False),
        # namespaces
        (src(namespaces=["default"]), req(), True),
        (src(namespaces=["default"]), req(peer=OTHER), False),
        (src(namespaces=["default"]), req(peer=PLAINTEXT), False),
        (src(namespaces=["f*"]), req(peer=OTHER), True),
        (src(notNamespaces=["foo"]), req(peer=PLAINTEXT), True),
        (src(notNamespaces=["foo"]), req(peer=OTHER), False),
        # serviceAccounts: ns/sa, or sa in the policy's namespace
        (src(serviceAccounts=["default/sleep"]), req(), True),
        (src(serviceAccounts=["sleep"]), req(), True),
        (src(serviceAccounts=["other"]), req(peer=OTHER), False),
        (src(serviceAccounts=["foo/other"]), req(peer=OTHER), True),
        (src(serviceAccounts=["default/sleep"]), req(peer=PLAINTEXT), False),
        (src(notServiceAccounts=["sleep"]), req(peer=OTHER), True),
        (src(notServiceAccounts=["sleep"]), req(), False),
        # trustDomains
        (src(trustDomains=["cluster.local"]), req(), True),
        (src(trustDomains=["cluster.local"]), req(peer=FOREIGN), False),
        (src(notTrustDomains=["cluster.local"]), req(peer=FOREIGN), True),
        (src(trustDomains=["*"]), req(peer=PLAINTEXT), False),
        # ipBlocks: connection peer address, CIDR or single address
        (src(ipBlocks=["10.0.0.0/8"]), req(source_ip="10.1.2.3"), True),
        (src(ipBlocks=["10.0.0.0/8"]), req(source_ip="192.168.0.1"), False),
        (src(ipBlocks=["192.168.0.1"]), req(source_ip="192.168.0.1"), True),
        (src(ipBlocks=["2001:db8::/32"]), req(source_ip="2001:db8::1"), True),
        (src(ipBlocks=["2001:db8::/32"]), req(source_ip="10.0.0.1"), False),
        (src(ipBlocks=["10.0.0.0/8"]), req(source_ip=None), False),
        (src(ipBlocks=["10.0.0.0/8"]), req(source_ip="not-an-ip"), False),
        (src(notIpBlocks=["10.0.0.0/8"]), req(source_ip="11.0.0.1"), True),
        (src(notIpBlocks=["10.0.0.0/8"]), req(source_ip="10.0.0.1"), False),
        # remoteIpBlocks: the original client, falling back to the connection peer
        (src(remoteIpBlocks=["1.2.3.0/24"]), req(remote_ip="1.2.3.4"), True),
        (src(remoteIpBlocks=["1.2.3.0/24"]), req(remote_ip="1.2.4.4", source_ip="1.2.3.4"), False),
        (src(remoteIpBlocks=["1.2.3.0/24"]), req(source_ip="1.2.3.4"), True),
        (src(notRemoteIpBlocks=["1.2.3.0/24"]), req(remote_ip="9.9.9.9"), True),
        # requestPrincipals: iss/sub of a verified JWT
        (
            src(requestPrincipals=["https://issuer/alice"]),
            req(request_principal="https://issuer/alice"),
            True,
        ),
        (
            src(requestPrincipals=["https://issuer/*"]),
            req(request_principal="https://issuer/bob"),
            True,
        ),
        (src(requestPrincipals=["*"]), req(request_principal=None), False),
        (src(requestPrincipals=["*"]), req(request_principal="i/s"), True),
        (src(notRequestPrincipals=["*"]), req(request_principal=None), True),
        # fields inside one source AND
        (src(namespaces=["default"], ipBlocks=["10.0.0.0/8"]), req(source_ip="10.0.0.1"), True),
        (src(namespaces=["default"], ipBlocks=["10.0.0.0/8"]), req(source_ip="11.0.0.1"), False),
    ],
)
def test_source_fields(rule: dict[str, Any], request_: AuthzRequest, expected: bool) -> None:
    assert allows(rule, request_) is expected


def test_any_source_matches() -> None:
    rule = {"from": [{"source": {"namespaces": ["foo"]}}, {"source": {"principals": [P_SLEEP]}}]}
    assert allows(rule, req())
    assert allows(rule, req(peer=OTHER))
    assert not allows(rule, req(peer=FOREIGN))


def test_service_account_defaults_to_policy_namespace() -> None:
    p = build_policy("p", "foo", rules=[src(serviceAccounts=["other"])])
    assert Authorizer([p]).check(req(peer=OTHER)).allowed
    assert (
        not Authorizer([p]).check(req(peer=Peer("spiffe://cluster.local/ns/bar/sa/other"))).allowed
    )


def test_odd_spiffe_ids() -> None:
    odd = Peer("spiffe://cluster.local/workload/x", mtls=True)
    assert allows(src(principals=["cluster.local/workload/x"]), req(peer=odd))
    assert not allows(src(namespaces=["*"]), req(peer=odd))
    assert not allows(src(serviceAccounts=["default/x"]), req(peer=odd))


# ------------------------------------------------------------------------------ operation fields
@pytest.mark.parametrize(
    ("rule", "request_", "expected"),
    [
        # hosts: case-insensitive, the raw authority including the port
        (op(hosts=["svc.default:8080"]), req(), True),
        (op(hosts=["SVC.Default:8080"]), req(host="svc.DEFAULT:8080"), True),
        (op(hosts=["example.com"]), req(host="example.com:8080"), False),
        (op(hosts=["example.com:*"]), req(host="example.com:8080"), True),
        (op(hosts=["*.example.com"]), req(host="api.EXAMPLE.com"), True),
        (op(notHosts=["*.internal"]), req(host="db.internal"), False),
        # ports: the destination (workload) port
        (op(ports=["8080"]), req(port=8080), True),
        (op(ports=["8080"]), req(port=9090), False),
        (op(notPorts=["9090", "8080"]), req(port=8080), False),
        # methods: exact, case-sensitive
        (op(methods=["GET", "HEAD"]), req(method="HEAD"), True),
        (op(methods=["get"]), req(method="GET"), False),
        (op(methods=["P*"]), req(method="PATCH"), True),
        (op(notMethods=["DELETE"]), req(method="GET"), True),
        # paths: normalized, query removed, case-sensitive
        (op(paths=["/info"]), req(path="/info?x=1"), True),
        (op(paths=["/info*"]), req(path="/information"), True),
        (op(paths=["*.png"]), req(path="/img/a.png"), True),
        (op(paths=["*"]), req(path="/"), True),
        (op(paths=["/info"]), req(path="/INFO"), False),
        (op(paths=["/admin"]), req(path="/x/../admin"), True),
        (op(notPaths=["/admin*"]), req(path="/%61dmin/x"), False),
        # templates: {*} one segment, {**} the rest (last only)
        (op(paths=["/users/{*}/orders"]), req(path="/users/1/orders"), True),
        (op(paths=["/users/{*}/orders"]), req(path="/users/1/2/orders"), False),
        (op(paths=["/users/{*}/orders"]), req(path="/users//orders"), False),
        (op(paths=["/files/{**}"]), req(path="/files/a/b/c"), True),
        (op(paths=["/files/{**}"]), req(path="/files/"), False),
        (op(paths=["/{*}/x/{**}"]), req(path="/a/x/b"), True),
        (op(paths=["/a.b/{*}"]), req(path="/aXb/c"), False),
        # fields inside one operation AND
        (op(methods=["GET"], paths=["/a"]), req(method="GET", path="/a"), True),
        (op(methods=["GET"], paths=["/a"]), req(method="POST", path="/a"), False),
    ],
)
def test_operation_fields(rule: dict[str, Any], request_: AuthzRequest, expected: bool) -> None:
    assert allows(rule, request_) is expected


def test_from_and_to_and_when() -> None:
    rule = {
        **src(principals=[P_SLEEP]),
        **op(methods=["GET"]),
        **when("request.headers[x-env]", ["prod"]),
    }
    headers = {"x-env": "prod"}
    assert allows(rule, req(headers=headers))
    assert not allows(rule, req(peer=OTHER, headers=headers))
    assert not allows(rule, req(method="POST", headers=headers))
    assert not allows(rule, req(headers={"x-env": "dev"}))


# ------------------------------------------------------------------------------ admin bypasses
ADMIN_DENY = [policy("DENY", [op(paths=["/admin*"])])]


@pytest.mark.parametrize(
    ("path", "mode", "denied"),
    [
        ("/admin", PathNormalization.BASE, True),
        ("/public/../admin", PathNormalization.BASE, True),
        ("/%61dmin", PathNormalization.BASE, True),
        ("/public/%2e%2e/admin", PathNormalization.BASE, True),
        ("/public\\..\\admin", PathNormalization.BASE, True),
        ("//admin", PathNormalization.BASE, False),
        ("//admin", PathNormalization.MERGE_SLASHES, True),
        ("/public%2F..%2Fadmin", PathNormalization.MERGE_SLASHES, False),
        ("/public%2F..%2Fadmin", PathNormalization.DECODE_AND_MERGE_SLASHES, True),
        ("/ADMIN", PathNormalization.BASE, False),
        ("/public?/admin", PathNormalization.BASE, False),
        ("/public#/admin", PathNormalization.BASE, False),
        ("/admin?debug", PathNormalization.BASE, True),
        ("/public/../admin", PathNormalization.NONE, False),
    ],
)
def test_admin_bypass_table(path: str, mode: PathNormalization, denied: bool) -> None:
    # ISTIO-SEMANTICS 10, case 10: BASE blocks /public/../admin and /%61dmin but not //admin.
    assert decide(ADMIN_DENY, req(path=path), path_normalization=mode).allowed is not denied


@pytest.mark.parametrize(
    ("path", "denied"),
    [("/ADMIN", True), ("/Admin/x", True), ("/%41dmin", True), ("/public", False)],
)
def test_case_insensitive_paths_option(path: str, denied: bool) -> None:
    policies = [
        policy("DENY", [op(paths=["/Admin*"])], name="prefix"),
        policy("DENY", [op(paths=["/USERS/{*}"])], name="template"),
        policy("DENY", [op(paths=["/exact", "*.PNG"], methods=["GET"])], name="other"),
    ]
    authorizer = Authorizer(policies, case_insensitive_paths=True)
    assert authorizer.check(req(path=path)).allowed is not denied
    assert not authorizer.check(req(path="/users/7")).allowed
    assert not authorizer.check(req(path="/EXACT")).allowed
    assert not authorizer.check(req(path="/a.png")).allowed
    assert Authorizer(policies).check(req(path="/ADMIN")).allowed


# ------------------------------------------------------------------------------ when
CLAIMS = {
    "iss": "https://issuer",
    "aud": ["svc-a", "svc-b"],
    "azp": "web",
    "groups": ["dev", "ops"],
    "org": {"team": "core", "level": 3, "admin": True, "tags": ["x", 5]},
}


@pytest.mark.parametrize(
    ("condition", "request_", "expected"),
    [
        (when("request.headers[X-Env]", ["prod"]), req(headers={"x-env": "prod"}), True),
        (when("request.headers[x-env]", ["p*"]), req(headers={"x-env": "prod"}), True),
        (when("request.headers[x-env]", ["*"]), req(headers={}), False),
        (when("request.headers[x-env]", ["*"]), req(headers=None), False),
        (when("request.headers[x-env]", not_values=["prod"]), req(headers={}), True),
        (when("request.headers[x-env]", ["a"], ["a"]), req(headers={"x-env": "a"}), False),
        (when("source.ip", ["10.0.0.0/8"]), req(source_ip="10.9.9.9"), True),
        (when("source.ip", not_values=["10.0.0.0/8"]), req(source_ip="10.9.9.9"), False),
        (when("remote.ip", ["1.1.1.1"]), req(remote_ip="1.1.1.1"), True),
        (when("destination.ip", ["10.0.0.1/32"]), req(destination_ip="10.0.0.1"), True),
        (when("destination.ip", ["10.0.0.1"]), req(destination_ip="10.0.0.2"), False),
        (when("destination.ip", ["fe80::/10"]), req(destination_ip="fe80::1%eth0"), True),
        (when("destination.port", ["8080"]), req(port=8080), True),
        (when("destination.port", ["80"]), req(port=8080), False),
        (when("source.namespace", ["default"]), req(), True),
        (when("source.principal", [P_SLEEP]), req(), True),
        (when("source.principal", ["*"]), req(peer=PLAINTEXT), False),
        (when("source.serviceAccount", ["sleep"]), req(), True),
        (when("source.serviceAccount", ["default/sleep"]), req(peer=OTHER), False),
        (when("source.trustDomain", ["cluster.local"]), req(), True),
        (when("connection.sni", ["outbound_.8080_._.svc"]), req(sni="outbound_.8080_._.svc"), True),
        (when("connection.sni", ["*"]), req(sni=None), False),
        (
            when("request.auth.principal", ["https://issuer/alice"]),
            req(request_principal="https://issuer/alice"),
            True,
        ),
        (when("request.auth.audiences", ["svc-b"]), req(claims=CLAIMS), True),
        (when("request.auth.audiences", ["svc-c"]), req(claims=CLAIMS), False),
        (when("request.auth.audiences", ["svc-*"]), req(claims={"aud": "svc-z"}), True),
        (when("request.auth.presenter", ["web"]), req(claims=CLAIMS), True),
        (when("request.auth.presenter", ["web"]), req(claims=None), False),
        (when("request.auth.claims[iss]", ["https://issuer"]), req(claims=CLAIMS), True),
        (when("request.auth.claims[groups]", ["ops"]), req(claims=CLAIMS), True),
        (when("request.auth.claims[groups]", not_values=["ops"]), req(claims=CLAIMS), False),
        (when("request.auth.claims[groups]", ["qa"]), req(claims=CLAIMS), False),
        (when("request.auth.claims[org][team]", ["core"]), req(claims=CLAIMS), True),
        (when("request.auth.claims[org][level]", ["3"]), req(claims=CLAIMS), True),
        (when("request.auth.claims[org][admin]", ["true"]), req(claims=CLAIMS), True),
        (when("request.auth.claims[org][tags]", ["x"]), req(claims=CLAIMS), True),
        (when("request.auth.claims[org][tags]", ["5"]), req(claims=CLAIMS), False),
        (when("request.auth.claims[org][missing]", ["*"]), req(claims=CLAIMS), False),
        (when("request.auth.claims[iss][x]", ["*"]), req(claims=CLAIMS), False),
        (when("request.auth.claims[org]", ["*"]), req(claims=CLAIMS), False),
        (when("request.auth.claims[iss]", ["*"]), req(claims=None), False),
    ],
)
def test_when_keys(condition: dict[str, Any], request_: AuthzRequest, expected: bool) -> None:
    assert allows(condition, request_) is expected


def test_every_condition_must_hold() -> None:
    rule = {
        "when": [
            {"key": "source.namespace", "values": ["default"]},
            {"key": "request.headers[x-a]", "values": ["1"]},
        ]
    }
    assert allows(rule, req(headers={"x-a": "1"}))
    assert not allows(rule, req(headers={"x-a": "2"}))
    assert not allows(rule, req(peer=OTHER, headers={"x-a": "1"}))


# ------------------------------------------------------------------------------ TCP
def test_tcp_allow_with_http_fields_never_matches() -> None:
    policies = [policy("ALLOW", [{**src(principals=[P_SLEEP]), **op(paths=["/x"])}])]
    assert not decide(policies, req(http=False)).allowed
    assert decide(policies, req(path="/x")).allowed


def test_tcp_allow_without_http_fields() -> None:
    rule = {**src(principals=[P_SLEEP]), **op(ports=["8080"])}
    assert decide([policy("ALLOW", [rule])], req(http=False)).allowed
    assert not decide([policy("ALLOW", [rule])], req(http=False, port=9090)).allowed


def test_tcp_allow_other_entry_still_matches() -> None:
    rule = {"to": [{"operation": {"paths": ["/x"]}}, {"operation": {"ports": ["8080"]}}]}
    assert decide([policy("ALLOW", [rule])], req(http=False)).allowed


def test_tcp_allow_http_condition_never_matches() -> None:
    rule = when("request.headers[x]", ["1"])
    assert not decide([policy("ALLOW", [rule])], req(http=False, headers={"x": "1"})).allowed


def test_tcp_deny_ignores_http_fields() -> None:
    # A DENY on methods without ports denies every TCP connection (ISTIO-SEMANTICS 5.2).
    deny = [policy("DENY", [op(methods=["POST"])])]
    assert not decide(deny, req(http=False)).allowed
    scoped = [policy("DENY", [op(methods=["POST"], ports=["8080"])])]
    assert not decide(scoped, req(http=False, port=8080)).allowed
    assert decide(scoped, req(http=False, port=9090)).allowed
    assert decide(scoped, req(method="GET", port=8080)).allowed


def test_tcp_deny_on_header_condition() -> None:
    deny = [policy("DENY", [{**src(namespaces=["foo"]), **when("request.headers[x]", ["1"])}])]
    assert not decide(deny, req(http=False, peer=OTHER)).allowed
    assert decide(deny, req(http=False)).allowed


# ------------------------------------------------------------------------------ broken rules
def test_broken_rules_fail_closed() -> None:
    errors: list[AuthzSpecError] = []
    bad = [{"from": [{"source": {"ipBlocks": ["nope"]}}]}]
    allow = build_policy("a", "default", action="ALLOW", rules=bad, on_error=errors.append)
    deny = build_policy("d", "default", action="DENY", rules=bad, on_error=errors.append)
    assert [e.field for e in errors] == ["spec.rules[0].from[0].source.ipBlocks[0]"] * 2
    assert allow.rules[0].broken
    assert not Authorizer([allow]).check(req()).allowed
    d = Authorizer([deny]).check(req())
    assert (d.allowed, d.policy, d.rule) == (False, "default/d", 0)
    with pytest.raises(AuthzSpecError):
        build_policy("x", "default", rules=bad)


def test_broken_rule_then_good_rule() -> None:
    errors: list[AuthzSpecError] = []
    rules = [{"to": [{"operation": {"ports": ["x"]}}]}, op(paths=["/ok"])]
    allow = build_policy("a", "default", rules=rules, on_error=errors.append)
    d = Authorizer([allow]).check(req(path="/ok"))
    assert (d.allowed, d.rule) == (True, 1)
    assert len(errors) == 1


@pytest.mark.parametrize(
    ("rule", "field", "message"),
    [
        ([], "r", "must be a mapping"),
        ({"bogus": 1}, "r.bogus", "unknown field"),
        ({"from": []}, "r.from", "must not be empty"),
        ({"from": [{}]}, "r.from[0]", "exactly 'source'"),
        ({"from": [{"source": {}}]}, "r.from[0].source", "must not be empty"),
        ({"from": [{"source": None}]}, "r.from[0].source", "must not be empty"),
        ({"from": [{"source": {"users": ["x"]}}]}, "r.from[0].source.users", "unknown field"),
        (
            {"from": [{"source": {"principals": []}}]},
            "r.from[0].source.principals",
            "must not be empty",
        ),
        (
            {"from": [{"source": {"principals": "x"}}]},
            "r.from[0].source.principals",
            "list of strings",
        ),
        (
            {"from": [{"source": {"principals": [""]}}]},
            "r.from[0].source.principals[0]",
            "empty value",
        ),
        (
            {"from": [{"source": {"ipBlocks": ["1.2.3.4/40"]}}]},
            "r.from[0].source.ipBlocks[0]",
            "CIDR",
        ),
        (
            {"from": [{"source": {"serviceAccounts": ["a/b/c"]}}]},
            "r.from[0].source.serviceAccounts[0]",
            "namespace/name",
        ),
        (
            {"from": [{"source": {"serviceAccounts": ["ns/*"]}}]},
            "r.from[0].source.serviceAccounts[0]",
            "namespace/name",
        ),
        (
            {"from": [{"source": {"serviceAccounts": ["/sa"]}}]},
            "r.from[0].source.serviceAccounts[0]",
            "namespace/name",
        ),
        ({"to": [{"operation": {"ports": ["0"]}}]}, "r.to[0].operation.ports[0]", "invalid port"),
        (
            {"to": [{"operation": {"ports": ["65536"]}}]},
            "r.to[0].operation.ports[0]",
            "invalid port",
        ),
        (
            {"to": [{"operation": {"paths": ["/{**}/x/{*}"]}}]},
            "r.to[0].operation.paths[0]",
            "last operator",
        ),
        (
            {"to": [{"operation": {"paths": ["/{*}/x*"]}}]},
            "r.to[0].operation.paths[0]",
            "invalid path template",
        ),
        (
            {"to": [{"operation": {"paths": ["/{name}/{*}"]}}]},
            "r.to[0].operation.paths[0]",
            "invalid path template",
        ),
        ({"when": []}, "r.when", "must not be empty"),
        ({"when": ["x"]}, "r.when[0]", "must be a mapping"),
        ({"when": [{"values": ["x"]}]}, "r.when[0].key", "key must not be empty"),
        ({"when": [{"key": "source.ip"}]}, "r.when[0]", "values or notValues"),
        ({"when": [{"key": "source.ip", "values": []}]}, "r.when[0]", "values or notValues"),
        (
            {"when": [{"key": "destination.labels[app]", "values": ["x"]}]},
            "r.when[0].key",
            "unsupported attribute",
        ),
        (
            {"when": [{"key": "experimental.envoy.filters.a[b]", "values": ["x"]}]},
            "r.when[0].key",
            "unsupported",
        ),
        (
            {"when": [{"key": "request.headers", "values": ["x"]}]},
            "r.when[0].key",
            r"format a\[b\]",
        ),
        (
            {"when": [{"key": "request.headers[]", "values": ["x"]}]},
            "r.when[0].key",
            r"format a\[b\]",
        ),
        (
            {"when": [{"key": "request.headers[a]x", "values": ["x"]}]},
            "r.when[0].key",
            r"format a\[b\]",
        ),
        (
            {"when": [{"key": "request.headers[a][b]", "values": ["x"]}]},
            "r.when[0].key",
            "one header name",
        ),
        (
            {"when": [{"key": "destination.port", "values": ["http"]}]},
            "r.when[0].values[0]",
            "invalid port",
        ),
    ],
)
def test_rule_errors(rule: Any, field: str, message: str) -> None:
    with pytest.raises(AuthzSpecError, match=message) as info:
        build_rule(rule, "r", "default")
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_error_without_field() -> None:
    assert str(AuthzSpecError("boom")) == "boom"


# ------------------------------------------------------------------------------ selection
def test_policies_for() -> None:
    policies = AuthorizationPolicySet(
        (
            policy(name="mesh", namespace="istio-system"),
            policy(name="mesh-app", namespace="istio-system", selector={"app": "a"}),
            policy(name="ns", namespace="default"),
            policy(name="ns-app", namespace="default", selector={"app": "a"}),
            policy(name="ns-app-v2", namespace="default", selector={"app": "a", "version": "v2"}),
            policy(name="other-ns", namespace="foo"),
            policy(name="gateway", namespace="default", target_refs=True),
        )
    )
    names = [p.name for p in policies.policies_for("default", {"app": "a", "version": "v1"})]
    assert names == ["mesh", "mesh-app", "ns", "ns-app"]
    assert [p.name for p in policies.policies_for("foo", {})] == ["mesh", "other-ns"]
    custom_root = AuthorizationPolicySet(policies.policies, root_namespace="mesh-root")
    assert [p.name for p in custom_root.policies_for("bar", {})] == []


def test_policy_ref_and_defaults() -> None:
    p = build_policy("n", "ns")
    assert (p.ref, p.action, p.rules, p.selector, p.dry_run) == (
        "ns/n",
        Action.ALLOW,
        (),
        None,
        False,
    )
    assert build_policy("n", "ns", action=Action.DENY, selector={}).selector is None


# ------------------------------------------------------------------------------ helpers
def test_bad_path_flag() -> None:
    assert decide([], req(path="/%00")).bad_path
    assert not decide([], req(path="/")).bad_path


def test_from_call() -> None:
    from meshlib._model import Call

    call = Call(
        protocol="http",
        method="POST",
        scheme="https",
        authority="svc:8080",
        host="svc",
        port=8080,
        path="/a?b",
        headers={"x": "1"},
        peer=Peer("spiffe://cluster.local/ns/default/sa/sleep", address="10.1.1.1", mtls=True),
    )
    r = AuthzRequest.from_call(call, sni="s", claims={"aud": "x"}, request_principal="i/s")
    assert (r.source_ip, r.host, r.port, r.method, r.path, r.sni) == (
        "10.1.1.1",
        "svc:8080",
        8080,
        "POST",
        "/a?b",
        "s",
    )
    assert (r.peer, r.headers, r.claims, r.request_principal) == (
        call.peer,
        call.headers,
        {"aud": "x"},
        "i/s",
    )
    explicit = AuthzRequest.from_call(
        call, source_ip="1.1.1.1", remote_ip="2.2.2.2", destination_ip="3.3.3.3"
    )
    assert (explicit.source_ip, explicit.remote_ip, explicit.destination_ip) == (
        "1.1.1.1",
        "2.2.2.2",
        "3.3.3.3",
    )
    anonymous = Call("http", "GET", "http", "svc", "svc", 80, "/", {})
    assert AuthzRequest.from_call(anonymous).source_ip is None


def test_explain_lists_every_policy() -> None:
    policies = [
        policy("DENY", [op(paths=["/x"]), op(methods=["POST"])], name="d"),
        policy("ALLOW", [{}], name="a"),
        policy("AUDIT", [op(paths=["/nope"])], name="au", dry_run=True),
    ]
    decision, explanation = Authorizer(policies).explain(req(method="POST"))
    assert (decision.allowed, decision.policy, decision.rule) == (False, "default/d", 1)
    assert explanation == (
        Explanation("default/d", Action.DENY, 1),
        Explanation("default/a", Action.ALLOW, 0),
        Explanation("default/au", Action.AUDIT, -1, True),
    )
    bad, none = Authorizer(policies).explain(req(path="/%00"))
    assert (bad.bad_path, none) == (True, ())
