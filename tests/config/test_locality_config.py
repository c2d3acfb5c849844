"""localityLbSetting from YAML to picks: compile resolves the client's view, show and explain
tell it, the runtime's clusters follow it."""

from __future__ import annotations

from collections import Counter

import pytest

from meshlib._config.show import snapshot_to_dict
from meshlib._config.source import ConfigSource
from meshlib._engine.runtime import build_runtime
from meshlib._model import SystemRandom
from meshlib._policy.locality import LOCALITY_LABEL, REGION_LABEL
from meshlib.httpx import explain_request

HOST = "reviews.default.svc.cluster.local"


def mesh(locality: str, outlier: bool = True) -> str:
    detection = "outlierDetection: {consecutive5xxErrors: 1, interval: 1s}" if outlier else ""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 10.0.0.1, locality: us-west/zone1/a, labels: {{tier: gold}}}}
  - {{address: 10.0.0.2, locality: us-west/zone2/a, labels: {{tier: gold}}}}
  - {{address: 10.0.0.3, locality: us-east/zone1/a, labels: {{tier: silver}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy:
    {detection}
    loadBalancer:
      localityLbSetting: {locality}
"""


def source(text: str, **labels: str) -> ConfigSource:
    client = {"app": "productpage", LOCALITY_LABEL: "us-west/zone1/a", **labels}
    return ConfigSource.from_text(text, namespace="default", labels=client)


DISTRIBUTE = (
    '{distribute: [{from: "us-west/zone1/*", to: {"us-west/zone1/*": 75, "us-west/zone2/*": 25}}]}'
)


def test_compile_resolves_failover_priority_for_this_client() -> None:
    text = mesh(f"{{failoverPriority: [tier, {REGION_LABEL}, 'tier=silver']}}")
    policy = source(text, tier="gold").snapshot.hosts[HOST].destination
    assert policy is not None
    assert policy.traffic_policy is not None
    balancer = policy.traffic_policy.load_balancer
    assert balancer is not None
    assert balancer.locality is not None
    assert balancer.locality.failover_priority_values == (
        ("tier", "gold"),
        (REGION_LABEL, "us-west"),
        ("tier", "silver"),
    )


def test_show_tells_priorities_weights_and_dropped_endpoints() -> None:
    view = snapshot_to_dict(source(mesh(DISTRIBUTE)).snapshot, HOST)["subsets"][""]["locality"]
    assert view["9080"] == {
        "priorities": [["10.0.0.1:9080", "10.0.0.2:9080"]],
        "locality_weights": [{"us-west/zone1/a": 75.0, "us-west/zone2/a": 25.0}],
        "dropped": ["10.0.0.3:9080"],
    }
    failover = mesh("{failoverPriority: [tier]}")
    view = snapshot_to_dict(source(failover, tier="silver").snapshot, HOST)["subsets"][""]
    assert view["locality"]["9080"]["priorities"] == [
        ["10.0.0.3:9080"],
        ["10.0.0.1:9080", "10.0.0.2:9080"],
    ]
    plain = snapshot_to_dict(
        source(mesh("{failoverPriority: [tier]}", outlier=False)).snapshot, HOST
    )
    assert plain["subsets"][""]["locality"]["9080"]["locality_weights"] is None


def test_runtime_clusters_follow_distribute_and_explain_says_why() -> None:
    runtime = build_runtime(source(mesh(DISTRIBUTE)), rng=SystemRandom(3))
    snapshot = runtime.snapshot()
    target = runtime.cluster_for(snapshot, HOST, None, 9080, HOST)
    assert target is not None
    rng = SystemRandom(5)
    tally = Counter(str(target.state.pick(rng, now=0.0)) for _ in range(4000))
    assert "10.0.0.3:9080" not in tally
    assert tally["10.0.0.1:9080"] / 4000 == pytest.approx(0.75, abs=0.03)
    explained = explain_request(runtime, "GET", f"http://{HOST}:9080/")
    endpoints = {e["address"]: e for e in explained["destinations"][0]["endpoints"]}
    assert endpoints["10.0.0.1"]["priority"] == 0
    assert endpoints["10.0.0.1"]["locality_weight"] == pytest.approx(75.0)
    assert endpoints["10.0.0.3"]["priority"] is None  # distribute leaves it out
    assert endpoints["10.0.0.2"]["warmup_factor"] is None
    assert explained["destinations"][0]["tls_origination"] is None


def test_failover_priority_from_yaml_prefers_the_same_tier() -> None:
    runtime = build_runtime(source(mesh("{failoverPriority: [tier]}"), tier="silver"))
    target = runtime.cluster_for(runtime.snapshot(), HOST, None, 9080, HOST)
    assert target is not None
    rng = SystemRandom(2)
    assert {str(target.state.pick(rng, now=0.0)) for _ in range(30)} == {"10.0.0.3:9080"}
