"""snapshot_to_dict: the compiled view of a host, every default explicit, JSON-ready."""

from __future__ import annotations

import json
import re

from meshlib._config.show import AUTO_TLS, NO_SUBSET, effective_policy, snapshot_to_dict, to_plain
from meshlib._engine.snapshot import Resolution
from meshlib._policy.limits import UNLIMITED
from meshlib._policy.retries import DEFAULT_RETRY_ON

from .conftest import snap

POLICY = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 10}}
    loadBalancer: {simple: ROUND_ROBIN}
    portLevelSettings:
      - port: {number: 9090}
        outlierDetection: {consecutive5xxErrors: 2}
  subsets:
    - name: v1
      labels: {version: v1}
      trafficPolicy:
        tls: {mode: ISTIO_MUTUAL}
        portLevelSettings:
          - port: {number: 9090}
            connectionPool: {http: {http2MaxRequests: 5}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  resolution: STATIC
  ports: [{number: 9080, name: http}, {number: 9090, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
    - directResponse: {status: 200, body: {bytes: AAE=}}
      match: [{uri: {regex: "/a.*"}}]
    - route:
        - {destination: {host: reviews, subset: v1}, weight: 3}
        - {destination: {host: reviews}, weight: 1}
"""


def test_host_view_with_every_default() -> None:
    view = snapshot_to_dict(snap(POLICY), "reviews:9080")
    json.dumps(view)  # JSON-ready all the way down
    assert view["host"] == "reviews.default.svc.cluster.local"
    assert view["known"] is True
    assert view["query"] == "reviews:9080"
    assert view["service"]["resolution"] == Resolution.STATIC.value
    first, second = view["routes"]["routes"]
    assert first["matches"][0]["uri"]["pattern"] == "/a.*"
    assert first["direct_response"]["body"] == "\x00\x01"
    assert [d["share"] for d in second["destinations"]] == [75.0, 25.0]
    assert second["retries"]["retry_on"] == sorted(DEFAULT_RETRY_ON)
    assert second["retries"]["backoff_max"] == 0.25
    whole = view["subsets"][NO_SUBSET]["policy_by_port"]
    assert whole["9080"]["connection_pool"]["max_connections"] == 10
    assert whole["9080"]["load_balancer"]["simple"] == "ROUND_ROBIN"
    assert whole["9080"]["outlier_detection"] is None
    assert whole["9080"]["tls"] == AUTO_TLS
    # Port-level settings replace the top-level policy for their port: defaults elsewhere.
    assert whole["9090"]["connection_pool"]["max_connections"] == UNLIMITED
    assert whole["9090"]["outlier_detection"]["consecutive_5xx_errors"] == 2
    assert whole["9090"]["from"]["outlier_detection"] == "trafficPolicy.portLevelSettings[9090]"
    v1 = view["subsets"]["v1"]
    assert v1["labels"] == {"version": "v1"}
    assert v1["policy_by_port"]["9080"]["tls"]["mode"] == "ISTIO_MUTUAL"
    assert v1["policy_by_port"]["9080"]["connection_pool"]["max_connections"] == 10
    assert v1["policy_by_port"]["9090"]["connection_pool"]["http2_max_requests"] == 5
    assert v1["policy_by_port"]["9090"]["from"]["connection_pool"] == (
        "subset.portLevelSettings[9090]"
    )
    assert [e["port"] for e in v1["endpoints"]["9080"]] == [9080]


def test_unknown_host_shows_the_implicit_route() -> None:
    view = snapshot_to_dict(snap(POLICY), "example.org:8443")
    assert view["known"] is False
    assert view["service"] is None
    assert view["routes"]["implicit"] is True
    (route,) = view["routes"]["routes"]
    assert route["destinations"][0]["host"] == "example.org"
    assert route["retries"]["attempts"] == 2
    assert list(view["subsets"]) == [NO_SUBSET]
    assert list(view["subsets"][NO_SUBSET]["policy_by_port"]) == ["8443"]
    assert view["subsets"][NO_SUBSET]["endpoints"] == {"0": []}
    assert view["destination_rule"] == {"source": "", "traffic_policy": None}


def test_plain_values() -> None:
    assert to_plain(re.compile("a+")) == "a+"
    assert to_plain(frozenset({3, 1})) == [1, 3]
    assert to_plain({1: (b"x",)}) == {"1": ["x"]}
    assert to_plain(Resolution.DNS) == "DNS"
    assert effective_policy(None, "v1", None)["from"]["connection_pool"] == "default"
