"""Fields that load but that meshlib does not act on are flagged, once, where they are set."""

# Tables of specs and field paths read best one case per line.
# ruff: noqa: E501

from __future__ import annotations

from typing import Any

import pytest

from meshlib._config.validate import NOT_ENFORCED, NOT_ENFORCED_MESSAGE, _index_not_enforced

from .conftest import Issues

DEST = {"destination": {"host": "reviews"}}

CASES = [
    ("VirtualService", {"hosts": ["a.com"], "tcp": [{"route": [DEST]}], "tls": [{"match": [{"sniHosts": ["a.com"]}], "route": [DEST]}]}, ["spec.tls", "spec.tcp"]),
    ("VirtualService", {"hosts": ["a"], "http": [{"route": [DEST], "corsPolicy": {}, "mirror": {"host": "b"}, "mirrorPercentage": {"value": 5}, "match": [{"statPrefix": "x"}]}]}, [
        "spec.http[0].match[0].statPrefix", "spec.http[0].corsPolicy",
    ]),
    ("VirtualService", {"hosts": ["a"], "http": [{"route": [DEST], "mirrors": [{"destination": {"host": "b"}}], "mirrorPercent": 5}]}, []),
    ("VirtualService", {"hosts": ["a"], "http": [{"delegate": {"name": "d"}}]}, ["spec.http[0].delegate"]),
    ("VirtualService", {"hosts": ["a"], "http": [{"route": [DEST], "retries": {"attempts": 2, "retryRemoteLocalities": True}}]}, ["spec.http[0].retries.retryRemoteLocalities"]),
    ("VirtualService", {"hosts": ["a"], "http": [{"route": [DEST], "retries": {"attempts": 2, "perTryTimeout": "1s"}}]}, []),
    ("DestinationRule", {"host": "a", "workloadSelector": {"matchLabels": {"a": "b"}}, "exportTo": ["."], "trafficPolicy": {"tunnel": {"targetHost": "a.com", "targetPort": 1}}}, [
        "spec.trafficPolicy.tunnel",
    ]),
    ("DestinationRule", {"host": "a", "subsets": [{"name": "v1", "trafficPolicy": {"proxyProtocol": {"version": "V2"}, "portLevelSettings": [{"port": {"number": 1}, "tls": {"mode": "SIMPLE", "credentialName": "c"}}]}}]}, [
        "spec.subsets[0].trafficPolicy.portLevelSettings[0].tls.credentialName", "spec.subsets[0].trafficPolicy.proxyProtocol",
    ]),
    ("DestinationRule", {"host": "a", "trafficPolicy": {"tls": {"mode": "MUTUAL", "clientCertificate": "c", "privateKey": "k", "caCertificates": "ca", "caCrl": "crl", "sni": "s", "insecureSkipVerify": True, "subjectAltNames": ["x"]}}}, []),
    ("DestinationRule", {"host": "a", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL", "subjectAltNames": ["x"]}}}, []),
    ("DestinationRule", {"host": "a", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}, []),
    ("DestinationRule", {"host": "a", "trafficPolicy": {"outlierDetection": {}, "loadBalancer": {"localityLbSetting": {"enabled": True, "distribute": [{"from": "a/*", "to": {"b/*": 100}}], "failover": [{"from": "a", "to": "b"}]}, "consistentHash": {"httpCookie": {"name": "c", "ttl": "10s"}}}, "connectionPool": {"tcp": {"idleTimeout": "1h", "maxConnections": 5, "connectTimeout": "1s"}, "http": {"idleTimeout": "1h", "useClientProtocol": True, "maxConcurrentStreams": 5, "http1MaxPendingRequests": 1}}}}, [
        "spec.trafficPolicy.connectionPool.http.useClientProtocol",
        "spec.trafficPolicy.connectionPool.http.maxConcurrentStreams",
    ]),
    ("DestinationRule", {"host": "a", "trafficPolicy": {"outlierDetection": {}, "loadBalancer": {"warmup": {"duration": "1s"}, "localityLbSetting": {"failoverPriority": ["x"]}}, "connectionPool": {"tcp": {"tcpKeepalive": {}, "maxConnectionDuration": "1h"}, "http": {"h2UpgradePolicy": "UPGRADE"}}}}, [
        "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive", "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration",
        "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
    ]),
    ("DestinationRule", {"host": "a", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 1}, "loadBalancer": {"zoneAwareLbSetting": {}, "warmupDurationSecs": "1s"}}]}}, [
        "spec.trafficPolicy.portLevelSettings[0].loadBalancer.zoneAwareLbSetting",
    ]),
    ("ServiceEntry", {"hosts": ["a.com"], "resolution": "DNS_ROUND_ROBIN"}, ["spec.resolution"]),
    ("ServiceEntry", {"hosts": ["a.com"], "resolution": "DNS"}, []),
    ("AuthorizationPolicy", {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]}, []),
    ("AuthorizationPolicy", {"targetRefs": [{"kind": "Service", "name": "s"}]}, ["spec.targetRefs"]),
    ("AuthorizationPolicy", {"targetRef": {"kind": "Service", "name": "s"}}, ["spec.targetRef"]),
    ("AuthorizationPolicy", {"rules": [{"from": [{"source": {"requestPrincipals": ["*"], "notRequestPrincipals": ["x"], "remoteIpBlocks": ["1.1.1.1"], "notRemoteIpBlocks": ["2.2.2.2"], "principals": ["p"]}}], "when": [
        {"key": "request.auth.claims[iss]", "values": ["x"]}, {"key": "remote.ip", "values": ["1.1.1.1"]}, {"key": "source.ip", "values": ["1.1.1.1"]},
    ]}]}, [
    ]),
    ("PeerAuthentication", {"mtls": {"mode": "STRICT"}}, []),
    ("WorkloadEntry", {"address": "1.1.1.1"}, []),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "spec", "fields"), CASES)
def test_not_enforced_fields_warn(
    not_enforced: Issues, kind: str, spec: dict[str, Any], fields: list[str]
) -> None:
    assert not_enforced(kind, spec) == [(field, NOT_ENFORCED_MESSAGE) for field in fields]


def test_message_is_exact() -> None:
    assert NOT_ENFORCED_MESSAGE == "accepted, not enforced by meshlib"


def test_list_covers_every_traffic_policy_location() -> None:
    for where in (
        "spec.trafficPolicy",
        "spec.trafficPolicy.portLevelSettings[]",
        "spec.subsets[].trafficPolicy",
        "spec.subsets[].trafficPolicy.portLevelSettings[]",
    ):
        assert f"DestinationRule:{where}.connectionPool.tcp.tcpKeepalive" in NOT_ENFORCED
    assert all(":spec." in entry for entry in NOT_ENFORCED)


def test_enforced_fields_are_not_listed() -> None:
    # Compile or the policies act on these: listing them would mislead users.
    for entry in (
        "DestinationRule:spec.workloadSelector",
        "AuthorizationPolicy:spec.action=CUSTOM",
        "AuthorizationPolicy:spec.provider",
        "AuthorizationPolicy:spec.rules[].from[].source.requestPrincipals",
        "AuthorizationPolicy:spec.rules[].from[].source.remoteIpBlocks",
        "AuthorizationPolicy:spec.rules[].when[].key=remote.ip",
        "DestinationRule:spec.trafficPolicy.tls.subjectAltNames",
        "DestinationRule:spec.trafficPolicy.loadBalancer.localityLbSetting.enabled",
        *(
            f"DestinationRule:spec.subsets[].trafficPolicy.portLevelSettings[].{field}"
            for field in (
                "loadBalancer.localityLbSetting.distribute",
                "loadBalancer.localityLbSetting.failover",
                "loadBalancer.localityLbSetting.failoverPriority",
                "tls.mode=SIMPLE",
                "tls.mode=MUTUAL",
                "tls.sni",
                "tls.subjectAltNames",
                "tls.clientCertificate",
                "tls.privateKey",
                "tls.caCertificates",
                "tls.insecureSkipVerify",
            )
        ),
    ):
        assert entry not in NOT_ENFORCED


def test_index_of_value_entries_and_prefixes() -> None:
    descend, values = _index_not_enforced(["K:spec.a[].b=X", "K:spec.a[].b=pre*", "K:spec.c"])
    assert descend == {"K:spec", "K:spec.a", "K:spec.a[]"}
    assert values == {"K:spec.a[].b": (frozenset({"X"}), ("pre",))}
