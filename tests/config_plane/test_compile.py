"""compile_snapshot: Istio YAML -> MeshSnapshot with every default applied."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._config import resources as r
from meshlib._config.compile import (
    GRPC_STATUS_CODES,
    compile_regex,
    compile_retry_policy,
    compile_string_match,
    normalize_weights,
)
from meshlib._config.issues import Severity
from meshlib._engine.snapshot import Location, Resolution
from meshlib._policy import limits, outliers
from meshlib._policy.balancing import Simple
from meshlib._policy.matching import MatchKind, match_string
from meshlib._policy.retries import DEFAULT_RETRY_ON, DEFAULT_RETRY_POLICY, NO_RETRIES
from meshlib._policy.routing import Route, RouteDestination

from .conftest import compiled, snap

REVIEWS = "reviews.default.svc.cluster.local"


def vs(
    http: str, hosts: str = "[reviews]", extra: str = "", name: str = "reviews", ns: str = "default"
) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: {hosts}
{extra}  http:
{http}
"""


def routes(text: str, host: str = "reviews", **kwargs: object) -> tuple[Route, ...]:
    config = snap(text, **kwargs).lookup_host(host)  # type: ignore[arg-type]
    assert config is not None
    assert config.routes is not None
    return config.routes.routes


ROUTE_V1 = """      route:
        - destination: {host: reviews, subset: v1}
"""


# ----------------------------------------------------------------------------- matches
def test_header_match_and_catch_all() -> None:
    table = routes(
        vs("""    - match:
        - headers:
            End-User: {exact: jason}
            uri: {exact: ignored}
      route:
        - destination: {host: reviews, subset: v2}
    - route:
        - destination: {host: reviews, subset: v1}
""")
    )
    first, second = table
    (match,) = first.matches
    assert match.headers == ((("end-user", compile_string_match(r.StringMatch(exact="jason")))),)
    assert first.destinations == (RouteDestination(REVIEWS, "v2", None, 100),)
    assert first.source == "VirtualService/default/reviews#http[0]"
    assert second.matches == ()


def test_every_match_field() -> None:
    (route,) = routes(
        vs(
            """    - match:
        - name: m
          uri: {prefix: /API}
          ignoreUriCase: true
          scheme: {exact: https}
          method: {regex: "GET|HEAD"}
          authority: {prefix: reviews}
          withoutHeaders:
            x-debug: {}
          queryParams:
            Page: {regex: "*"}
          port: 9080
"""
            + ROUTE_V1
        )
    )
    (match,) = route.matches
    assert match.name == "m"
    assert match.uri is not None
    assert match.uri.kind is MatchKind.PREFIX
    assert match.uri.value == "/api"
    assert match.uri.ignore_case
    assert match.method is not None
    assert match.method.pattern is not None
    assert match.method.pattern.fullmatch("GET")
    assert not match.method.pattern.fullmatch("GETX")
    assert match.without_headers[0][1].kind is MatchKind.PRESENT
    assert match.query_params[0][0] == "Page"  # query parameter names keep their case
    assert match.query_params[0][1].kind is MatchKind.PRESENT
    assert match.port == 9080
    assert match.source_labels == {}
    assert match.gateways == frozenset()


@given(
    st.sampled_from(["exact", "prefix", "regex"]),
    st.from_regex(r"[A-Za-z0-9/._-]{0,12}", fullmatch=True),
    st.booleans(),
)
def test_string_match_construction(kind: str, value: str, ignore_case: bool) -> None:
    match = compile_string_match(r.StringMatch(**{kind: value}), ignore_case=ignore_case)
    if kind == "regex":
        assert match.kind is MatchKind.REGEX
        assert match.pattern is not None
        assert match.pattern.pattern == value
    else:
        assert match.kind is MatchKind(kind)
        assert match.value == (value.lower() if ignore_case else value)
        assert match.ignore_case is ignore_case


@given(
    st.sampled_from(["exact", "prefix", "regex"]),
    st.from_regex(r"[a-z0-9/.]{0,6}", fullmatch=True),
    st.text(alphabet="ab/.0", max_size=8),
    st.booleans(),
)
def test_compiled_string_match_behaves_like_istio(
    kind: str, value: str, text: str, ignore_case: bool
) -> None:
    # Envoy: exact and prefix compare (optionally case-folded); regex must match the whole value.
    match = compile_string_match(r.StringMatch(**{kind: value}), ignore_case=ignore_case)
    for candidate in (text, value, value + text, text.upper()):
        folded = candidate.lower() if ignore_case else candidate
        expected = {
            "exact": folded == value,
            "prefix": folded.startswith(value),
            "regex": re.fullmatch(value, candidate) is not None,
        }[kind]
        assert match_string(match, candidate) is expected
    assert match_string(match, None) is False


def test_static_filters_use_the_workload_identity() -> None:
    text = vs(
        """    - match:
        - sourceLabels: {app: productpage}
        - sourceNamespace: other
        - gateways: [my-gateway]
      route:
        - destination: {host: reviews, subset: v2}
    - match:
        - sourceNamespace: other
      route:
        - destination: {host: reviews, subset: v3}
"""
        + "    -"
        + ROUTE_V1[5:]
    )
    table = routes(text, labels={"app": "productpage", "version": "v1"})
    assert len(table) == 2
    assert len(table[0].matches) == 1
    assert table[0].destinations[0].subset == "v2"
    assert [rt.destinations[0].subset for rt in routes(text)] == ["v1"]


def test_gateway_only_virtual_service_does_not_apply() -> None:
    snapshot = snap(
        vs(
            ROUTE_V1.replace("      route", "    - route", 1),
            extra="  gateways: [istio-system/ingress]\n",
        )
    )
    assert snapshot.lookup_host("reviews") is None
    table = routes(
        vs(ROUTE_V1.replace("      route", "    - route", 1), extra="  gateways: [ingress, mesh]\n")
    )
    assert len(table) == 1


def test_invalid_regex_is_reported_and_the_block_dropped() -> None:
    snapshot, issues = compiled(
        vs(
            """    - match:
        - uri: {regex: "("}
"""
            + ROUTE_V1
        )
    )
    (issue,) = issues
    assert issue.severity is Severity.ERROR
    assert issue.field == "spec.http[0].match[0]"
    assert issue.resource == "VirtualService/default/reviews"
    assert issue.file == "test.yaml"
    assert snapshot.lookup_host("reviews").routes.routes == ()  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- weights
def test_weights() -> None:
    (route,) = routes(
        vs("""    - route:
        - destination: {host: reviews, subset: v1}
          weight: 9
        - destination: {host: reviews, subset: v2}
          weight: 0
        - destination: {host: reviews, subset: v3}
          weight: 1
""")
    )
    assert [(d.subset, d.weight) for d in route.destinations] == [("v1", 9), ("v3", 1)]


def dest(weight: int) -> RouteDestination:
    return RouteDestination("h", str(weight), None, weight)


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=8))
def test_weight_normalization(weights: list[int]) -> None:
    result = normalize_weights([dest(w) for w in weights])
    assert all(d.weight > 0 for d in result)
    if len(weights) == 1 or sum(1 for w in weights if w) == 1:
        assert len(result) == 1
        assert result[0].weight == 100
    elif sum(weights) == 0:
        assert len(result) == len(weights)
    else:
        kept = [w for w in weights if w]
        assert [d.weight for d in result] == kept
        shares = [d.weight / sum(kept) for d in result]
        assert math.isclose(sum(shares), 1.0)


@given(st.integers(1, 100), st.integers(1, 100), st.integers(1, 10))
def test_scaled_weights_give_equal_shares(a: int, b: int, k: int) -> None:
    one = normalize_weights([dest(a), dest(b)])
    scaled = normalize_weights([dest(a * k), dest(b * k)])
    assert [d.weight * k for d in one] == [d.weight for d in scaled]


# ----------------------------------------------------------------------------- actions
def test_timeout_and_retries() -> None:
    table = routes(
        vs(
            """    - timeout: 0.5s
      retries:
        attempts: 3
        perTryTimeout: 200ms
        retryOn: 5xx,503,reset,409
        backoff: 50ms
        retryRemoteLocalities: true
        retryIgnorePreviousHosts: false
"""
            + ROUTE_V1
            + """    - retries: {attempts: 0}
"""
            + ROUTE_V1
            + """    - retries: {attempts: 4}
"""
            + ROUTE_V1
            + "    -"
            + ROUTE_V1[5:]
        )
    )
    first = table[0]
    assert first.timeout == 0.5
    assert first.retries.attempts == 3
    assert first.retries.per_try_timeout == 0.2
    assert first.retries.retry_on == {"5xx", "reset", "retriable-status-codes"}
    assert first.retries.retriable_status_codes == {503, 409}
    assert first.retries.backoff_base == 0.05
    assert first.retries.retry_remote_localities
    assert not first.retries.retry_ignore_previous_hosts
    assert table[1].retries == NO_RETRIES
    assert table[2].retries.attempts == 4
    assert table[2].retries.retry_on == DEFAULT_RETRY_ON
    assert table[3].retries == DEFAULT_RETRY_POLICY
    assert table[3].timeout is None


def test_retry_policy_edge_cases() -> None:
    assert compile_retry_policy(r.HTTPRetry()) == NO_RETRIES  # attempts absent: Istio disables
    policy = compile_retry_policy(r.HTTPRetry(attempts=1, retry_on="gateway-error,,"))
    assert policy.retry_on == {"gateway-error"}
    assert policy.retriable_status_codes == frozenset()
    assert policy.per_try_timeout is None
    assert policy.backoff_base == DEFAULT_RETRY_POLICY.backoff_base


def test_invalid_duration_is_reported() -> None:
    snapshot, issues = compiled(vs("    - timeout: soon\n" + ROUTE_V1))
    (issue,) = issues
    assert issue.field == "spec.http[0].timeout"
    assert "soon" in issue.message
    assert snapshot.lookup_host("reviews").routes.routes[0].timeout is None  # type: ignore[union-attr]


def test_faults() -> None:
    table = routes(
        vs(
            """    - fault:
        delay: {fixedDelay: 7s, percentage: {value: 100.0}}
        abort: {httpStatus: 500, percentage: {value: 12.5}}
"""
            + ROUTE_V1
            + """    - fault:
        delay: {fixedDelay: 1s, percent: 30}
        abort: {grpcStatus: UNAVAILABLE}
"""
            + ROUTE_V1
            + """    - fault:
        delay: {fixedDelay: 1s}
"""
            + ROUTE_V1
            + """    - fault: {}
"""
            + ROUTE_V1
        )
    )
    first, second, third, fourth = (rt.fault for rt in table)
    assert first is not None
    assert first.delay == 7.0
    assert first.delay_fraction == 1.0
    assert first.abort_http_status == 500
    assert first.abort_fraction == 0.125
    assert second is not None
    assert second.delay_fraction == 0.3
    assert second.abort_grpc_status == GRPC_STATUS_CODES["UNAVAILABLE"] == 14
    assert second.abort_fraction == 0.0  # absent percentage never fires
    assert third is not None
    assert third.delay_fraction == 0.0
    assert third.abort_http_status is None
    assert fourth is None


def test_unknown_grpc_status_is_reported() -> None:
    _, issues = compiled(
        vs(
            """    - fault:
        abort: {grpcStatus: NOPE, percentage: {value: 1}}
"""
            + ROUTE_V1
        )
    )
    assert [i.field for i in issues] == ["spec.http[0].fault.abort.grpcStatus"]


def test_rewrite_redirect_direct_response_headers_mirrors() -> None:
    table = routes(
        vs(
            """    - rewrite:
        uri: /v2
        authority: new
        uriRegexRewrite: {match: "^/a/(.*)", rewrite: "/b/\\\\1"}
      headers:
        request:
          set: {X-A: "1"}
          add: {X-B: "2"}
          remove: [X-C]
        response:
          set: {x-d: "4"}
      mirror: {host: shadow, port: {number: 9000}}
      mirrorPercentage: {value: 50}
      route:
        - destination: {host: reviews, subset: v1}
          headers:
            request: {set: {x-e: "5"}}
    - redirect: {uri: /new, authority: other}
    - directResponse: {status: 503, body: {string: down}}
    - directResponse: {status: 200, body: {bytes: aGVsbG8=}}
    - mirror: {host: shadow}
      mirrorPercent: 25
      mirrors:
        - destination: {host: copy}
        - destination: {host: copy2}
          percentage: {value: 10}
"""
            + ROUTE_V1[:0]
            + "      route:\n        - destination: {host: reviews}\n"
        )
    )
    first, redirect, direct, binary, mirrored = table
    assert first.rewrite is not None
    assert first.rewrite.uri == "/v2"
    assert first.rewrite.authority == "new"
    assert first.rewrite.uri_regex is not None
    pattern, replacement = first.rewrite.uri_regex
    assert pattern.sub(replacement, "/a/x") == "/b/x"
    assert first.headers is not None
    assert first.headers.request.set == (("x-a", "1"),)
    assert first.headers.request.remove == ("x-c",)
    assert first.headers.response.set == (("x-d", "4"),)
    assert first.destinations[0].headers.request.set == (("x-e", "5"),)  # type: ignore[union-attr]
    (mirror,) = first.mirrors
    assert mirror.destination == RouteDestination("shadow.default.svc.cluster.local", None, 9000)
    assert mirror.fraction == 0.5
    assert redirect.redirect is not None
    assert redirect.redirect.code == 301
    assert redirect.redirect.uri == "/new"
    assert redirect.destinations == ()
    assert direct.direct_response is not None
    assert direct.direct_response.body == b"down"
    assert binary.direct_response is not None
    assert binary.direct_response.body == b"hello"
    assert [m.fraction for m in mirrored.mirrors] == [0.25, 1.0, 0.1]


def test_bad_base64_and_bad_rewrite_regex_are_reported() -> None:
    _, issues = compiled(
        vs(
            """    - directResponse: {status: 200, body: {bytes: "!!"}}
    - rewrite: {uriRegexRewrite: {match: "(", rewrite: x}}
"""
            + ROUTE_V1
        )
    )
    assert [i.field for i in issues] == [
        "spec.http[0].directResponse.body.bytes",
        "spec.http[1].rewrite.uriRegexRewrite.match",
    ]


def test_destination_without_host_is_reported() -> None:
    _, issues = compiled(
        vs("""    - route:
        - destination: {subset: v1}
        - destination: {host: reviews}
""")
    )
    assert [i.field for i in issues] == ["spec.http[0].route[0]"]


def test_delegate_is_not_supported() -> None:
    _, issues = compiled(
        vs("    - delegate: {name: other}\n")
        + "---"
        + vs("    -" + ROUTE_V1[5:], hosts="[]", name="other")
    )
    (issue,) = issues
    assert issue.severity is Severity.WARNING
    assert issue.field == "spec.http[0].delegate"


def test_first_virtual_service_wins_and_export_to() -> None:
    text = (
        vs("    -" + ROUTE_V1[5:])
        + "---"
        + vs("    - route:\n        - destination: {host: reviews, subset: v9}\n", name="second")
        + "---"
        + vs(
            "    - route:\n        - destination: {host: x}\n",
            hosts="[x.hidden.svc.cluster.local]",
            name="h",
            ns="hidden",
            extra='  exportTo: ["."]\n',
        )
    )
    snapshot = snap(text)
    table = snapshot.lookup_host("reviews").routes  # type: ignore[union-attr]
    assert table is not None
    assert table.source == "VirtualService/default/reviews"
    assert snapshot.lookup_host("x.hidden") is None


# ----------------------------------------------------------------------------- DestinationRule
def dr(name: str, ns: str, host: str, body: str = "") -> str:
    return f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: "{host}"
{body}"""


SUBSETS = "  subsets:\n    - {name: v1, labels: {version: v1}}\n"


def test_destination_rule_scopes() -> None:
    text = (
        dr("root", "istio-system", "reviews.prod.svc.cluster.local", SUBSETS)
        + dr("service", "prod", "reviews", SUBSETS)
        + dr("client", "default", "reviews.prod.svc.cluster.local", SUBSETS)
        + dr("only-root", "istio-system", "ratings.rootonly.svc.cluster.local")
        + dr("wild", "prod", "*.prod.svc.cluster.local")
        + dr("exact", "prod", "details")
        + dr("root-ratings", "istio-system", "ratings.prod.svc.cluster.local")
    )
    snapshot = snap(text)

    def source(host: str) -> str:
        config = snapshot.lookup_host(host)
        assert config is not None
        assert config.destination is not None
        return config.destination.source

    assert source("reviews.prod") == "DestinationRule/default/client"
    assert source("ratings.rootonly") == "DestinationRule/istio-system/only-root"
    # The service namespace's wildcard beats the root namespace's exact host: scope first.
    assert source("ratings.prod") == "DestinationRule/prod/wild"
    assert source("details.prod") == "DestinationRule/prod/exact"
    assert source("other.prod") == "DestinationRule/prod/wild"
    from_prod = snap(text, namespace="prod")
    assert from_prod.lookup_host("reviews").destination.source == "DestinationRule/prod/service"  # type: ignore[union-attr]


def test_same_host_rules_merge() -> None:
    text = dr(
        "a", "default", "reviews", "  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n" + SUBSETS
    ) + dr(
        "b",
        "default",
        "reviews",
        "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n"
        "  subsets:\n    - {name: v1, labels: {version: other}}\n"
        "    - {name: v2, labels: {version: v2}}\n",
    )
    policy = snap(text).lookup_host("reviews").destination  # type: ignore[union-attr]
    assert policy is not None
    assert policy.source == "DestinationRule/default/a, DestinationRule/default/b"
    assert policy.traffic_policy is not None
    assert policy.traffic_policy.load_balancer is not None
    assert policy.traffic_policy.load_balancer.simple is Simple.RANDOM
    assert {k: dict(v.labels) for k, v in policy.subsets.items()} == {
        "v1": {"version": "v1"},
        "v2": {"version": "v2"},
    }


def test_workload_selector_and_export_to() -> None:
    text = dr(
        "selected", "default", "a", "  workloadSelector: {matchLabels: {app: productpage}}\n"
    ) + dr("hidden", "other", "b.other.svc.cluster.local", '  exportTo: ["."]\n')
    assert snap(text, labels={"app": "productpage"}).lookup_host("a") is not None
    assert snap(text, labels={"app": "reviews"}).lookup_host("a") is None
    assert snap(text).lookup_host("b.other") is None


def test_traffic_policy_defaults_and_blocks() -> None:
    text = dr(
        "r",
        "default",
        "reviews",
        """  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 0, idleTimeout: 0s, connectTimeout: 2s, maxConnectionDuration: 1m}
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
        maxRetries: 0
        h2UpgradePolicy: UPGRADE
    outlierDetection: {}
    loadBalancer: {simple: LEAST_CONN}
    tls: {sni: reviews}
    retryBudget: {percent: 5}
    portLevelSettings:
      - port: {number: 9080}
        outlierDetection:
          consecutiveErrors: 3
          maxEjectionPercent: 0
          outlierDetectionHttpErrorCodes: [500]
      - loadBalancer: {simple: RANDOM}
  subsets:
    - name: v1
      labels: {version: v1}
      trafficPolicy:
        loadBalancer:
          consistentHash: {httpCookie: {name: c, ttl: 10s}, maglev: {tableSize: 7}}
          localityLbSetting:
            failover: [{from: a, to: b}]
            distribute: [{from: a/*, to: {b/*: 100}}]
          warmup: {duration: 30s}
    - name: v2
      trafficPolicy:
        loadBalancer:
          consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 64}}
          warmupDurationSecs: 10s
""",
    )
    policy = snap(text).lookup_host("reviews").destination  # type: ignore[union-attr]
    assert policy is not None
    assert policy.traffic_policy is not None
    top = policy.traffic_policy
    pool = top.connection_pool
    assert pool is not None
    assert pool.max_connections == limits.UNLIMITED
    assert pool.tcp_idle_timeout is None
    assert pool.connect_timeout == 2.0
    assert pool.max_connection_duration == 60.0
    assert pool.http1_max_pending_requests == 1
    assert pool.max_requests_per_connection == 1
    assert pool.max_retries == limits.UNLIMITED
    assert pool.http2_max_requests == limits.UNLIMITED
    assert pool.http_idle_timeout == limits.DEFAULT_IDLE_TIMEOUT
    assert pool.h2_upgrade_policy == "UPGRADE"
    assert top.outlier_detection == outliers.OutlierDetection()
    assert top.load_balancer is not None
    assert top.load_balancer.simple is Simple.LEAST_REQUEST
    assert top.tls is not None
    assert top.tls.mode == "DISABLE"
    assert top.tls.sni == "reviews"
    assert top.retry_budget == limits.RetryBudget(percent=5.0)
    assert list(top.port_level) == [9080]
    port = top.port_level[9080]
    assert port.connection_pool is None
    assert port.outlier_detection is not None
    assert port.outlier_detection.consecutive_5xx_errors == 3
    assert port.outlier_detection.max_ejection_percent == outliers.DEFAULT_MAX_EJECTION_PERCENT
    assert port.outlier_detection.http_error_codes == {500}
    v1 = policy.subsets["v1"].traffic_policy
    assert v1 is not None
    assert v1.connection_pool is None
    assert v1.load_balancer is not None
    hashing = v1.load_balancer.consistent_hash
    assert hashing is not None
    assert hashing.http_cookie_name == "c"
    assert hashing.http_cookie_ttl == 10.0
    assert hashing.maglev
    assert hashing.maglev_table_size == 7
    assert v1.load_balancer.locality is not None
    assert v1.load_balancer.locality.failover == (("a", "b"),)
    assert v1.load_balancer.locality.distribute[0][1] == {"b/*": 100}
    assert v1.load_balancer.warmup is not None
    assert v1.load_balancer.warmup.duration == 30.0
    assert v1.load_balancer.warmup.minimum_percent == 10.0
    v2 = policy.subsets["v2"].traffic_policy
    assert v2 is not None
    assert v2.load_balancer is not None
    assert v2.load_balancer.consistent_hash is not None
    assert v2.load_balancer.consistent_hash.minimum_ring_size == 64
    assert v2.load_balancer.warmup is not None
    assert v2.load_balancer.warmup.duration == 10.0


def test_absent_blocks_stay_none() -> None:
    policy = snap(dr("r", "default", "reviews", SUBSETS)).lookup_host("reviews").destination  # type: ignore[union-attr]
    assert policy is not None
    assert policy.traffic_policy is None
    assert policy.subsets["v1"].traffic_policy is None


# ----------------------------------------------------------------------------- ServiceEntry
SERVICES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  addresses: [240.0.0.9]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
    - {number: 9080, name: http, protocol: http, targetPort: 8080}
    - {number: 9090, name: grpc, protocol: GRPC}
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec:
  address: 10.0.0.1
  ports: {grpc: 7000}
  labels: {app: reviews, version: v1}
  serviceAccount: bookinfo-reviews
  weight: 3
  locality: eu/west/a
  network: n1
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: elsewhere, namespace: other}
spec: {address: 10.0.0.2, labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: no-address, namespace: default}
spec: {network: remote, labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com, "*.wild.example.com"]
  resolution: DNS
  ports: [{number: 443, name: https, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dup, namespace: default}
spec:
  hosts: [api.example.com]
  endpoints: [{address: 1.1.1.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: portless, namespace: default}
spec:
  hosts: [portless.example.com]
  resolution: STATIC
  endpoints: [{address: 1.1.1.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: default}
spec:
  hosts: [private.example.com]
  exportTo: ["~"]
"""


def test_service_entries_and_workload_entries() -> None:
    snapshot = snap(SERVICES + dr("r", "default", "reviews", SUBSETS))
    config = snapshot.lookup_host("240.0.0.9:9080")
    assert config is not None
    assert config.host == REVIEWS
    assert config.generation == 1
    assert config.service is not None
    assert config.service.location is Location.MESH_INTERNAL
    assert config.service.resolution is Resolution.STATIC
    assert [p.protocol for p in config.service.ports] == ["HTTP", "GRPC"]
    (http,) = config.endpoints[9080]
    assert (http.address, http.port, http.weight, http.locality, http.network) == (
        "10.0.0.1",
        8080,
        3,
        "eu/west/a",
        "n1",
    )
    assert http.service_account == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    assert [e.port for e in config.endpoints[9090]] == [7000]
    assert snapshot.subset_endpoints("reviews", "v1", 9090) == config.endpoints[9090]
    api = snapshot.lookup_host("api.example.com")
    assert api is not None
    assert api.service is not None
    assert api.service.resolution is Resolution.DNS
    assert [str(e) for e in api.endpoints[443]] == ["api.example.com:443"]
    wild = snapshot.lookup_host("x.wild.example.com")
    assert wild is not None
    assert wild.endpoints[443] == ()
    portless = snapshot.lookup_host("portless.example.com")
    assert portless is not None
    assert [str(e) for e in portless.endpoints[0]] == ["1.1.1.1:0"]
    assert snapshot.lookup_host("private.example.com") is None


def test_route_targets_without_configuration_get_no_entry() -> None:
    snapshot = snap(
        vs("    - route:\n        - destination: {host: nowhere.example.org}\n")
        + dr("r", "default", "elsewhere.example.org")
    )
    assert snapshot.lookup_host("nowhere.example.org") is None
    assert snapshot.lookup_host("elsewhere.example.org") is not None
    assert {c.generation for c in snapshot.hosts.values()} == {1}


def test_wildcard_virtual_service_covers_concrete_hosts() -> None:
    text = vs(
        "    - route:\n        - destination: {host: api.example.com}\n", hosts='["*.example.com"]'
    ) + dr("api", "default", "api.example.com")
    config = snap(text).lookup_host("api.example.com")
    assert config is not None
    assert config.routes is not None
    assert config.routes.host == "*.example.com"
    assert config.destination is not None


@pytest.mark.parametrize("generation", [1, 42])
def test_generation_is_stamped(generation: int) -> None:
    snapshot, _ = compiled(SERVICES, generation=generation)
    assert snapshot.generation == generation
    assert all(c.generation == generation for c in snapshot.hosts.values())


def test_compile_edge_cases() -> None:
    text = (
        vs("""    - rewrite: {uriRegexRewrite: {rewrite: x}}
      route: [{destination: {host: reviews}}]
    - directResponse: {status: 204}
    - directResponse: {status: 204, body: {}}
""")
        + dr("hostless", "default", "")
        + dr("all", "istio-system", "*")
    )
    snapshot = snap(text.replace('host: ""', "subsets: []"))
    table = snapshot.lookup_host("reviews").routes  # type: ignore[union-attr]
    assert table is not None
    assert table.routes[0].rewrite is not None
    assert table.routes[0].rewrite.uri_regex is None
    assert [rt.direct_response.body for rt in table.routes[1:]] == [b"", b""]  # type: ignore[union-attr]
    anything = snapshot.lookup_host("anything.example.org")
    assert anything is not None
    assert anything.destination is not None
    assert anything.destination.source == "DestinationRule/istio-system/all"


def test_regexes_are_read_as_re2() -> None:
    assert compile_regex(r"/a\z").fullmatch("/a")
    assert compile_regex(r"/a\\z").fullmatch("/a\\z")
    assert compile_regex("[[]x").fullmatch("[x")  # no FutureWarning escapes (warnings are errors)
    with pytest.raises(re.error):
        compile_regex("(" * 5000 + ")" * 5000)
    with pytest.raises(re.error):
        compile_regex("(")


def test_the_oldest_virtual_service_wins() -> None:
    newer = vs("    -" + ROUTE_V1[5:]).replace(
        "metadata: {name: reviews, namespace: default}",
        "metadata: {name: reviews, namespace: default, creationTimestamp: '2024-05-01T00:00:00Z'}",
    )
    older = vs("    - route:\n        - destination: {host: reviews, subset: v2}\n", name="old")
    older = older.replace(
        "metadata: {name: old, namespace: default}",
        "metadata: {name: old, namespace: default, creationTimestamp: '2023-01-01T00:00:00Z'}",
    )
    untimed = vs(
        "    - route:\n        - destination: {host: reviews, subset: v3}\n", name="untimed"
    )
    table = snap(untimed + "---" + newer + "---" + older).lookup_host("reviews").routes  # type: ignore[union-attr]
    assert table is not None
    assert table.source == "VirtualService/default/old"
