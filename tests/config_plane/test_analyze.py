"""Cross-resource analysis: each rule with its exact message."""

from __future__ import annotations

from meshlib._config import analyze as a
from meshlib._config.issues import ConfigIssue, Severity

from .conftest import compiled, load


def run(text: str, namespace: str = "default") -> list[ConfigIssue]:
    snapshot, _ = compiled(text, namespace)
    return a.analyze(load(text, namespace), snapshot)


def only(issues: list[ConfigIssue], code: str) -> list[ConfigIssue]:
    return [issue for issue in issues if issue.code == code]


SERVICE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 5432, name: db, protocol: TCP}]
  endpoints:
    - {address: 127.0.0.1, ports: {http: 9081}, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
    - {name: v1, labels: {version: v1}}
---
"""


def virtual_service(http: str, name: str = "reviews", hosts: str = "[reviews]") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: {hosts}
  http:
{http}
---
"""


V1 = "      route: [{destination: {host: reviews, subset: v1}}]\n"


def test_clean_configuration_has_no_findings() -> None:
    assert run(SERVICE + virtual_service("    -" + V1[5:])) == []


MISSING = "Referenced host+subset in destinationrule not found:"


def test_missing_subset_is_an_error() -> None:
    text = SERVICE + virtual_service(
        "    - route: [{destination: {host: reviews, subset: v4}}]\n"
        "      mirror: {host: reviews, subset: v5}\n"
        "      mirrors: [{destination: {host: reviews, subset: v1}}]\n"
    )
    issues = only(run(text), a.CODE_NO_SUBSET)
    assert [(i.severity, i.field, i.message) for i in issues] == [
        (
            Severity.ERROR,
            "spec.http[0].route[0].destination.subset",
            f'{MISSING} "reviews.default.svc.cluster.local+v4"',
        ),
        (
            Severity.ERROR,
            "spec.http[0].mirror.destination.subset",
            f'{MISSING} "reviews.default.svc.cluster.local+v5"',
        ),
    ]
    assert issues[0].resource == "VirtualService/default/reviews"
    assert issues[0].file == "test.yaml"


def test_duplicate_virtual_service() -> None:
    text = (
        SERVICE
        + virtual_service("    -" + V1[5:])
        + virtual_service("    -" + V1[5:], name="again")
    )
    (issue,) = only(run(text), a.CODE_DUPLICATE_VS)
    assert issue.resource == "VirtualService/default/again"
    assert issue.field == "spec.hosts[0]"
    assert issue.message == (
        "host reviews.default.svc.cluster.local is also routed by VirtualService/default/reviews; "
        "sidecars use only one VirtualService per host (the oldest), so these routes are ignored"
    )


def test_duplicate_destination_rule() -> None:
    text = (
        SERVICE
        + """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews-2, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
"""
    )
    (issue,) = only(run(text), a.CODE_DUPLICATE_DR)
    assert issue.severity is Severity.WARNING
    assert issue.resource == "DestinationRule/default/reviews-2"
    assert issue.message == (
        "host reviews.default.svc.cluster.local already has DestinationRule/default/reviews in "
        "namespace default; their subsets are merged and only the first trafficPolicy applies"
    )


def test_subset_without_endpoint() -> None:
    text = SERVICE.replace(
        "    - {name: v1, labels: {version: v1}}",
        "    - {name: v1, labels: {version: v1}}\n    - {name: v9, labels: {version: v9, app: x}}",
    )
    (issue,) = only(run(text), a.CODE_SUBSET_NO_ENDPOINT)
    assert issue.field == "spec.subsets[1].labels"
    assert issue.message == (
        "subset v9 selects no known endpoint of reviews.default.svc.cluster.local (labels "
        "app=x,version=v9); traffic routed to it gets 503 no healthy upstream"
    )


def test_unknown_host() -> None:
    text = virtual_service(
        "    - route: [{destination: {host: ghost}}]\n", name="ghost", hosts="[ghost, '*.wild.org']"
    )
    (issue,) = only(run(text), a.CODE_NO_SERVICE)
    assert issue.field == "spec.hosts[0]"
    assert issue.message == (
        "host ghost.default.svc.cluster.local is not declared by any ServiceEntry; meshlib will "
        "resolve it by DNS"
    )


def test_unreachable_rule_after_catch_all() -> None:
    text = SERVICE + virtual_service(
        "    - match: [{name: everything}]\n"
        + V1
        + "    - match: [{uri: {prefix: /x}}]\n"
        + V1
        + "    -"
        + V1[5:]
    )
    issues = only(run(text), a.CODE_CATCH_ALL)
    assert [i.field for i in issues] == ["spec.http[1]", "spec.http[2]"]
    assert issues[0].message == (
        "VirtualService rule #1 not used (rule #0 matches every request; only the last rule can "
        "have no matches)."
    )


RETRY_MESSAGE = (
    "retrying on 5xx,reset can execute a POST or PATCH twice, because the upstream may have "
    "applied the first attempt before its response was lost; match only idempotent methods or "
    "require an idempotency-key header on this route."
)


def test_retry_on_5xx_for_any_method() -> None:
    text = SERVICE + virtual_service(
        "    - retries: {attempts: 2, retryOn: '5xx,reset,connect-failure'}\n" + V1
    )
    (issue,) = only(run(text), a.CODE_RETRY_NOT_IDEMPOTENT)
    assert issue.field == "spec.http[0].retries.retryOn"
    assert issue.message == RETRY_MESSAGE


def test_retry_risk_depends_on_the_method_and_idempotency_key() -> None:
    retry = "      retries: {attempts: 2, retryOn: 5xx}\n"
    safe = [
        "    - match: [{method: {exact: GET}}]\n" + retry,
        "    - match: [{method: {regex: 'GET|HEAD'}}]\n" + retry,
        "    - match: [{method: {prefix: G}}]\n" + retry,
        "    - match: [{headers: {Idempotency-Key: {}}}]\n" + retry,
        "    - retries: {attempts: 2, retryOn: connect-failure}\n",
        "    - retries: {attempts: 0}\n",
        "    - name: plain\n",
    ]
    for http in safe:
        assert only(run(SERVICE + virtual_service(http + V1)), a.CODE_RETRY_NOT_IDEMPOTENT) == [], (
            http
        )
    risky = [
        "    - match: [{method: {exact: POST}}]\n"
        "      retries: {attempts: 1, retryOn: gateway-error}\n",
        "    - match: [{method: {prefix: P}}]\n      retries: {attempts: 1, retryOn: 5xx}\n",
        "    - match: [{method: {regex: '('}}]\n      retries: {attempts: 1, retryOn: 5xx}\n",
        "    - match: [{method: {regex: '*'}}]\n      retries: {attempts: 1, retryOn: 5xx}\n",
    ]
    for http in risky:
        assert (
            len(only(run(SERVICE + virtual_service(http + V1)), a.CODE_RETRY_NOT_IDEMPOTENT)) == 1
        ), http


def test_retry_with_a_bad_duration_is_left_to_validation() -> None:
    text = SERVICE + virtual_service(
        "    - retries: {attempts: 2, retryOn: 5xx, perTryTimeout: later}\n" + V1
    )
    assert only(run(text), a.CODE_RETRY_NOT_IDEMPOTENT) == []


PEER_AUTH = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: {ns}}}
spec:
  mtls: {{mode: {mode}}}
---
"""


def test_mtls_conflict() -> None:
    text = (
        SERVICE
        + PEER_AUTH.format(ns="default", mode="STRICT")
        + """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: plain, namespace: other}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    tls: {mode: DISABLE}
    portLevelSettings: [{port: {number: 9080}, tls: {mode: DISABLE}}]
  subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {tls: {mode: DISABLE}}}]
"""
    )
    issues = only(run(text), a.CODE_MTLS_CONFLICT)
    assert [i.field for i in issues] == [
        "spec.trafficPolicy.tls.mode",
        "spec.trafficPolicy.portLevelSettings[0].tls.mode",
        "spec.subsets[0].trafficPolicy.tls.mode",
    ]
    assert issues[0].message == (
        "tls mode DISABLE sends plaintext to reviews.default.svc.cluster.local, but "
        "PeerAuthentication/default/default requires STRICT mTLS in namespace default: those "
        "requests will be refused"
    )


def test_mesh_wide_strict_applies_unless_the_namespace_overrides() -> None:
    rule = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: plain, namespace: default}
spec:
  host: reviews
  trafficPolicy: {tls: {mode: DISABLE}}
---
"""
    mesh = PEER_AUTH.format(ns="istio-system", mode="STRICT")
    assert len(only(run(rule + mesh), a.CODE_MTLS_CONFLICT)) == 1
    permissive = PEER_AUTH.format(ns="default", mode="PERMISSIVE")
    assert only(run(rule + mesh + permissive), a.CODE_MTLS_CONFLICT) == []
    external = rule.replace("host: reviews", "host: api.example.com")
    assert only(run(external + mesh), a.CODE_MTLS_CONFLICT) == []


AUTHZ = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db, namespace: default}
spec:
  action: ALLOW
  rules:
    - from: [{source: {principals: [cluster.local/ns/default/sa/app], namespaces: [default]}}, {}]
      to:
        - operation: {ports: ["5432"], methods: [GET], paths: [/x]}
        - operation: {ports: ["9081"], methods: [GET]}
        - operation: {methods: [GET]}
---
"""


def test_authorization_fields_that_can_never_match() -> None:
    issues = only(
        run(SERVICE + AUTHZ + PEER_AUTH.format(ns="default", mode="DISABLE")), a.CODE_NEVER_MATCHES
    )
    assert [(i.field, i.message) for i in issues] == [
        (
            "spec.rules[0].to[0].operation",
            "methods, paths can never match: ports 5432 are TCP, which has no HTTP attributes, "
            "so this ALLOW rule never applies",
        ),
        (
            "spec.rules[0].from[0].source",
            "principals, namespaces can never match: PeerAuthentication/default/default disables "
            "mTLS in namespace default, so callers have no principal",
        ),
    ]


def test_deny_policies_and_mtls_namespaces_are_not_flagged() -> None:
    deny = AUTHZ.replace("action: ALLOW", "action: DENY")
    assert only(run(SERVICE + deny), a.CODE_NEVER_MATCHES) == []
    assert only(run(SERVICE + AUTHZ.replace('ports: ["5432"], ', "")), a.CODE_NEVER_MATCHES) == []


EDGES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hostless, namespace: default}
spec: {subsets: [{name: v1}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: selected-1, namespace: default}
spec: {host: api.example.com, workloadSelector: {matchLabels: {app: a}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: selected-2, namespace: default}
spec:
  host: api.example.com
  workloadSelector: {matchLabels: {app: a}}
  trafficPolicy:
    portLevelSettings: [{port: {number: 443}, tls: {mode: SIMPLE}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext, namespace: default}
spec: {host: ext.example.com, trafficPolicy: {tls: {mode: DISABLE}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: external}
spec:
  hosts: [ext.example.com]
  ports: [{number: 0, name: weird}, {number: 80, name: http}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ingress-only, namespace: default}
spec:
  hosts: [ext.example.com]
  gateways: [ingress]
  http: [{route: [{destination: {host: ext.example.com}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: workload, namespace: external}
spec: {selector: {matchLabels: {app: x}}, mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: unset, namespace: external}
spec: {mtls: {mode: UNSET}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: external}
spec: {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: plaintext, namespace: external}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: open, namespace: external}
spec:
  rules:
    - from: [{source: {ipBlocks: [10.0.0.0/8]}}, {}]
      to: [{operation: {ports: ["80"], methods: [GET]}}, {}]
"""


def test_edge_cases_raise_nothing_spurious() -> None:
    issues = run(EDGES)
    # The SE has no endpoints, the DR with DISABLE points at a namespace that is not STRICT,
    # the ALLOW rule's port is HTTP and its sources carry no identity field.
    assert [(i.code, i.resource) for i in issues] == []
