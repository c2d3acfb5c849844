"""DestinationRule rules (ISTIO-SEMANTICS 2.x): exact messages and field paths."""

# Tables of exact istiod-style messages read best one case per line.
# ruff: noqa: E501

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Issues


def dr(policy: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"host": "reviews"}
    if policy is not None:
        out["trafficPolicy"] = policy
    out.update(spec)
    return out


P = "spec.trafficPolicy"

TOP = [
    (dr(), []),
    (dr(host="*"), []),
    (dr(host=""), [("spec.host", "empty domain name not allowed")]),
    (dr(host="*.Bad_Domain.com"), [("spec.host", 'domain name "Bad_Domain.com" invalid (label "Bad_Domain" invalid)')]),
    (dr(host="a*b.com"), [("spec.host", 'domain name "a*b.com" invalid (label "a*b" invalid)')]),
    (dr(subsets=[{"name": "v1", "labels": {"version": "v1"}}, {"name": "v1"}, {"name": ""}, {"name": "V_2"}]), [
        ("spec.subsets[1].name", "duplicate subset names: v1"),
        ("spec.subsets[2].name", "subset name cannot be empty"),
        ("spec.subsets[3].name", "subset name is invalid: V_2"),
    ]),
    (dr(subsets=[{"name": "v1", "labels": {"version": "v 1"}, "trafficPolicy": {}}]), [
        ("spec.subsets[0].labels.version", 'invalid tag value: "v 1"'),
        ("spec.subsets[0].trafficPolicy", "traffic policy must have at least one field"),
    ]),
    (dr(exportTo=["other"], workloadSelector={"matchLabels": {"app": "a"}}), [
        ("spec.exportTo", "destination rule with workload selector cannot have exportTo beyond current namespace"),
    ]),
    (dr(exportTo=[".", "other"], workloadSelector={"matchLabels": {"app": "a"}}), [
        ("spec.exportTo", "destination rule with workload selector cannot have multiple entries in exportTo"),
    ]),
    (dr(exportTo=["."], workloadSelector={"matchLabels": {"app": "a*"}}), [
        ("spec.workloadSelector.matchLabels.app", 'wildcard is not supported in selector: "app=a*"'),
    ]),
    (dr(workloadSelector={"matchLabels": {"": "a"}}), [
        ("spec.workloadSelector.matchLabels", 'empty key is not supported in selector: "=a"'),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "expected"), TOP)
def test_top_level(errors: Issues, spec: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errors("DestinationRule", spec) == expected


def test_selector_without_labels_warns(warnings: Issues) -> None:
    assert warnings("DestinationRule", dr(workloadSelector={})) == [
        ("spec.workloadSelector", "workload selector specified without labels")
    ]


POLICIES = [
    ({}, [(P, "traffic policy must have at least one field")]),
    ({"tunnel": {"targetHost": "a.com", "targetPort": 80}, "proxyProtocol": {}}, [(P, "tunnel and proxyProtocol must not be set together")]),
    ({"tunnel": {"protocol": "GET", "targetHost": "bad_host", "targetPort": 0}}, [
        (f"{P}.tunnel.protocol", 'tunnel protocol must be "CONNECT" or "POST"'),
        (f"{P}.tunnel.targetHost", 'tunnel target host must be valid FQDN or IP address: domain name "bad_host" invalid (label "bad_host" invalid); bad_host is not a valid IP'),
        (f"{P}.tunnel.targetPort", "tunnel target port is invalid: port number 0 must be in the range 1..65535"),
    ]),
    ({"tunnel": {"protocol": "POST", "targetHost": "10.0.0.1", "targetPort": 8443}}, []),
    ({"retryBudget": {"percent": 20, "budgetInterval": "later"}}, [(f"{P}.retryBudget.budgetInterval", 'invalid duration "later"')]),
    ({"retryBudget": {"budgetInterval": "0s"}}, []),
    ({"portLevelSettings": [{"port": {"number": 80}}]}, [(f"{P}.portLevelSettings[0]", "port traffic policy must have at least one field")]),
    ({"portLevelSettings": [{"connectionPool": {"tcp": {"maxConnections": -1}}}]}, [
        (f"{P}.portLevelSettings[0].port", "portTrafficPolicy must have valid port"),
        (f"{P}.portLevelSettings[0].connectionPool.tcp.maxConnections", "max connections must be non-negative"),
    ]),
    ({"portLevelSettings": [{"port": {"number": 80}, "outlierDetection": {"interval": "0s"}, "loadBalancer": {"consistentHash": {"httpCookie": {}}}, "tls": {"mode": "MUTUAL"}}]}, [
        (f"{P}.portLevelSettings[0].outlierDetection.interval", "duration must be greater than 1ms"),
        (f"{P}.portLevelSettings[0].loadBalancer.consistentHash.httpCookie.name", "name required for HttpCookie"),
        (f"{P}.portLevelSettings[0].tls.clientCertificate", "client certificate required for mutual tls"),
        (f"{P}.portLevelSettings[0].tls.privateKey", "private key required for mutual tls"),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("policy", "expected"), POLICIES)
def test_traffic_policy(
    errors: Issues, policy: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("DestinationRule", dr(policy)) == expected


OUTLIER = [
    ({"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "3m", "maxEjectionPercent": 100}, []),
    ({"baseEjectionTime": "0.5ms", "interval": "1.0001s"}, [
        (f"{P}.outlierDetection.baseEjectionTime", "duration must be greater than 1ms"),
        (f"{P}.outlierDetection.interval", "only durations to ms precision are supported"),
    ]),
    ({"consecutiveLocalOriginFailures": 3}, [
        (f"{P}.outlierDetection.consecutiveLocalOriginFailures", "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false"),
    ]),
    ({"consecutiveLocalOriginFailures": 3, "splitExternalLocalOriginErrors": True}, []),
    ({"consecutiveLocalOriginFailures": 0}, []),
    ({"maxEjectionPercent": 101, "minHealthPercent": -1}, [
        (f"{P}.outlierDetection.maxEjectionPercent", "percentage 101 is not in range 0..100"),
        (f"{P}.outlierDetection.minHealthPercent", "percentage -1 is not in range 0..100"),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("outlier", "expected"), OUTLIER)
def test_outlier_detection(
    errors: Issues, outlier: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("DestinationRule", dr({"outlierDetection": outlier})) == expected


def test_consecutive_errors_is_deprecated(warnings: Issues, errors: Issues) -> None:
    spec = dr({"outlierDetection": {"consecutiveErrors": 5}})
    assert errors("DestinationRule", spec) == []
    assert warnings("DestinationRule", spec) == [
        (f"{P}.outlierDetection.consecutiveErrors", "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead")
    ]  # fmt: skip


CP = f"{P}.connectionPool"
POOLS = [
    ({}, [(CP, "connection pool must have at least one field")]),
    ({"tcp": {"maxConnections": 0, "connectTimeout": "10s", "idleTimeout": "0s"}}, []),
    ({"tcp": {"maxConnections": -1, "connectTimeout": "0s", "maxConnectionDuration": "1us", "idleTimeout": "1.5ms", "tcpKeepalive": {"time": "0s", "interval": "2.5ms"}}}, [
        (f"{CP}.tcp.maxConnections", "max connections must be non-negative"),
        (f"{CP}.tcp.connectTimeout", "duration must be greater than 1ms"),
        (f"{CP}.tcp.maxConnectionDuration", "duration must be greater than 1ms"),
        (f"{CP}.tcp.idleTimeout", "only durations to ms precision are supported"),
        (f"{CP}.tcp.tcpKeepalive.time", "duration must be greater than 1ms"),
        (f"{CP}.tcp.tcpKeepalive.interval", "only durations to ms precision are supported"),
    ]),
    ({"tcp": {"idleTimeout": "nope"}}, [(f"{CP}.tcp.idleTimeout", 'invalid duration "nope"')]),
    ({"tcp": {"idleTimeout": "0.5ms"}}, []),
    ({"http": {"http1MaxPendingRequests": -1, "http2MaxRequests": -1, "maxRequestsPerConnection": -1, "maxRetries": -1, "maxConcurrentStreams": -1, "idleTimeout": "0s"}}, [
        (f"{CP}.http.http1MaxPendingRequests", "http1 max pending requests must be non-negative"),
        (f"{CP}.http.http2MaxRequests", "http2 max requests must be non-negative"),
        (f"{CP}.http.maxRequestsPerConnection", "max requests per connection must be non-negative"),
        (f"{CP}.http.maxRetries", "max retries must be non-negative"),
        (f"{CP}.http.maxConcurrentStreams", "max concurrent streams must be non-negative"),
        (f"{CP}.http.idleTimeout", "duration must be greater than 1ms"),
    ]),
    ({"http": {"h2UpgradePolicy": "UPGRADE", "useClientProtocol": True}}, [
        (f"{CP}.http.useClientProtocol", "use client protocol must not be true when H2UpgradePolicy is UPGRADE"),
    ]),
    ({"http": {"http2KeepAlive": {}}}, [
        (f"{CP}.http.http2KeepAlive.interval", "http2 keepalive interval is required"),
        (f"{CP}.http.http2KeepAlive.timeout", "http2 keepalive timeout is required"),
    ]),
    ({"http": {"http2KeepAlive": {"interval": "0s", "timeout": "5s"}}}, [
        (f"{CP}.http.http2KeepAlive.interval", "duration must be greater than 1ms"),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("pool", "expected"), POOLS)
def test_connection_pool(
    errors: Issues, pool: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("DestinationRule", dr({"connectionPool": pool})) == expected


LB = f"{P}.loadBalancer"
CH = f"{LB}.consistentHash"
BALANCERS = [
    ({"simple": "LEAST_REQUEST"}, []),
    ({"simple": "RANDOM", "consistentHash": {"useSourceIp": True}}, [(LB, "only one of simple or consistentHash may be set")]),
    ({"consistentHash": {"httpHeaderName": "x", "useSourceIp": True, "ringHash": {}, "maglev": {"tableSize": 65537}}}, [
        (CH, "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set"),
        (CH, "only one of ringHash or maglev may be set"),
    ]),
    ({"consistentHash": {"httpCookie": {"name": "c", "ttl": "0s", "attributes": [{"name": "a"}, {"name": "a"}, {"value": "v"}]}}}, [
        (f"{CH}.httpCookie.attributes[1].name", "duplicate cookie attribute name: a"),
        (f"{CH}.httpCookie.attributes[2].name", "cookie attribute name cannot be empty"),
    ]),
    ({"consistentHash": {"httpCookie": {"name": "c", "ttl": "forever"}}}, [(f"{CH}.httpCookie.ttl", 'invalid duration "forever"')]),
    ({"consistentHash": {"useSourceIp": True, "minimumRingSize": 1024, "ringHash": {"minimumRingSize": 1024}}}, [
        (CH, "only one of MinimumRingSize or Maglev/Ringhash can be specified"),
    ]),
    ({"consistentHash": {"useSourceIp": True, "maglev": {}}}, [
        (f"{CH}.maglev.tableSize", "tableSize must be set for maglev"),
        (f"{CH}.maglev.tableSize", "tableSize must be a prime number for maglev"),
    ]),
    ({"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 5000011}}}, [
        (f"{CH}.maglev.tableSize", "tableSize must be less than 5000011 for maglev"),
    ]),
    ({"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 65536}}}, [
        (f"{CH}.maglev.tableSize", "tableSize must be a prime number for maglev"),
    ]),
    ({"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 4999999}}}, []),
    ({"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 3}}}, []),
    ({"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 65535}}}, [
        (f"{CH}.maglev.tableSize", "tableSize must be a prime number for maglev"),
    ]),
    ({"localityLbSetting": {}, "zoneAwareLbSetting": {}}, [(LB, "only one of localityLbSetting and zoneAwareLbSetting can be set")]),
    ({"warmup": {"minimumPercent": 101, "aggression": 0}}, [
        (f"{LB}.warmup.duration", "duration is required"),
        (f"{LB}.warmup.minimumPercent", "minimumPercent value should be less than or equal to 100"),
        (f"{LB}.warmup.aggression", "aggression should be greater than 0"),
    ]),
    ({"warmup": {"duration": "0s"}}, [(f"{LB}.warmup.duration", "duration must be greater than 1ms")]),
    ({"warmupDurationSecs": "x"}, [(f"{LB}.warmupDurationSecs", 'invalid duration "x"')]),
]  # fmt: skip


@pytest.mark.parametrize(("lb", "expected"), BALANCERS)
def test_load_balancer(errors: Issues, lb: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errors("DestinationRule", dr({"loadBalancer": lb})) == expected


def test_load_balancer_deprecations(warnings: Issues) -> None:
    lb = {
        "consistentHash": {"useSourceIp": True, "minimumRingSize": 1024},
        "warmupDurationSecs": "60s",
    }
    assert warnings("DestinationRule", dr({"loadBalancer": lb})) == [
        (f"{CH}.minimumRingSize", "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead"),
        (f"{LB}.warmupDurationSecs", 'using deprecated setting "warmupDurationSecs", use "warmup" instead'),
    ]  # fmt: skip


LOC = f"{LB}.localityLbSetting"
OD = {"consecutive5xxErrors": 1}
LOCALITY = [
    ({"distribute": [{"from": "us-west/*", "to": {"us-west/zone1/*": 80, "us-east/*": 20}}]}, OD, []),
    ({"distribute": [{"from": "a", "to": {"b": 100}}], "failover": [{"from": "a", "to": "b"}]}, OD, [
        (LOC, "can not simultaneously specify 'distribute' and 'failover'"),
    ]),
    ({"failover": [{"from": "a", "to": "b"}], "failoverPriority": ["x", "topology.kubernetes.io/zone"]}, OD, [
        (f"{LOC}.failoverPriority[1]", "can not simultaneously set 'failover' and topology label 'topology.kubernetes.io/zone' in 'failover_priority'"),
    ]),
    ({"failover": [{"from": "a", "to": "b"}], "failoverPriority": ["network"]}, OD, []),
    ({"distribute": [{"from": "a", "to": {"b": 0, "c": 100}}]}, OD, [(f"{LOC}.distribute[0].to", "locality weight must be in range [1, 100]")]),
    ({"distribute": [{"from": "a", "to": {"b": 50, "c": 40}}]}, OD, [(f"{LOC}.distribute[0].to", "total locality weight 90 != 100")]),
    ({"distribute": [{"from": "a", "to": {"r/*/x": 100}}]}, OD, [(f"{LOC}.distribute[0].to", "locality r/*/x wildcard '*' number can not exceed 1 and must be in the end")]),
    ({"distribute": [{"from": "a", "to": {"r//x": 100}}]}, OD, [(f"{LOC}.distribute[0].to", "locality r//x must not contain empty region/zone/subzone info")]),
    ({"distribute": [{"from": "*", "to": {"b": 100}}, {"from": "a", "to": {"b": 100}}]}, OD, [(f"{LOC}.distribute", "locality a overlap with previous specified ones")]),
    ({"distribute": [{"from": "r", "to": {"b": 100}}, {"from": "r", "to": {"b": 100}}]}, OD, [(f"{LOC}.distribute", "locality r overlap with previous specified ones")]),
    ({"distribute": [{"from": "r/*", "to": {"b": 100}}, {"from": "r/z", "to": {"b": 100}}]}, OD, [(f"{LOC}.distribute", "locality r/z overlap with previous specified ones")]),
    ({"distribute": [{"from": "r/z", "to": {"b": 100}}, {"from": "r/z", "to": {"b": 100}}]}, OD, [(f"{LOC}.distribute", "locality r/z overlap with previous specified ones")]),
    ({"distribute": [{"from": "r/z/s", "to": {"b": 100}}, {"from": "r/z/s", "to": {"b": 100}}]}, OD, [(f"{LOC}.distribute", "locality r/z/s overlap with previous specified ones")]),
    ({"distribute": [{"from": "r/z/*", "to": {"b": 100}}, {"from": "r/z/s", "to": {"b": 100}}]}, OD, [(f"{LOC}.distribute", "locality r/z/s overlap with previous specified ones")]),
    ({"distribute": [{"from": "r/z", "to": {"b": 100}}, {"from": "r/z/s", "to": {"b": 100}}]}, OD, [(f"{LOC}.distribute", "locality r/z/s overlap with previous specified ones")]),
    ({"distribute": [{"from": "r/z1/s", "to": {"b": 100}}, {"from": "r/z2", "to": {"b": 100}}, {"from": "r/z1/t", "to": {"b": 100}}, {"from": "q", "to": {"b": 100}}]}, OD, []),
    ({"failover": [{"from": "a", "to": "a"}, {"from": "a/b", "to": "c*"}]}, OD, [
        (f"{LOC}.failover[0]", "locality lb failover settings must specify different regions"),
        (f"{LOC}.failover[1]", "locality lb failover only specify region"),
        (f"{LOC}.failover[1]", "locality lb failover region should not contain '*' wildcard"),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("locality", "outlier", "expected"), LOCALITY)
def test_locality(
    errors: Issues,
    locality: dict[str, Any],
    outlier: dict[str, Any],
    expected: list[tuple[str, str]],
) -> None:
    spec = dr({"loadBalancer": {"localityLbSetting": locality}, "outlierDetection": outlier})
    assert errors("DestinationRule", spec) == expected


def test_failover_without_outlier_detection_warns(warnings: Issues) -> None:
    spec = dr({"loadBalancer": {"localityLbSetting": {"failover": [{"from": "a", "to": "b"}]}}})
    assert warnings("DestinationRule", spec) == [
        (LOC, "outlier detection policy must be provided for failover")
    ]
    zone = dr({"loadBalancer": {"zoneAwareLbSetting": {"failoverPriority": ["x"]}}})
    assert warnings("DestinationRule", zone) == [
        (f"{LB}.zoneAwareLbSetting", "outlier detection policy must be provided for failover")
    ]


def test_zone_aware(errors: Issues) -> None:
    zone = {
        "failoverPriority": ["topology.istio.io/subzone", "x"],
        "failover": [{"from": "a", "to": "a"}, {"from": "a/b", "to": "*"}],
    }
    spec = dr({"loadBalancer": {"zoneAwareLbSetting": zone}, "outlierDetection": OD})
    Z = f"{LB}.zoneAwareLbSetting"
    assert errors("DestinationRule", spec) == [
        (f"{Z}.failoverPriority[0]", "'failover_priority' for zone aware lb must not use topology label 'topology.istio.io/subzone'; region- and zone-level routing are handled automatically"),
        (f"{Z}.failover[0]", "zone aware lb failover settings must specify different regions"),
        (f"{Z}.failover[1]", "zone aware lb failover only specifies region; zone and subzone failover are handled automatically"),
        (f"{Z}.failover[1]", "zone aware lb failover region should not contain '*' wildcard"),
    ]  # fmt: skip


T = f"{P}.tls"
TLS = [
    ({"mode": "ISTIO_MUTUAL"}, []),
    ({"mode": "SIMPLE", "insecureSkipVerify": True, "caCertificates": "/ca.pem"}, [
        (T, "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true"),
    ]),
    ({"mode": "SIMPLE", "insecureSkipVerify": True}, []),
    ({"mode": "MUTUAL", "insecureSkipVerify": True, "subjectAltNames": [], "credentialName": "c"}, [
        (T, "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true"),
    ]),
    ({"mode": "MUTUAL", "credentialName": "c", "privateKey": "/k.pem"}, [
        (T, "cannot specify client certificates or CA certificate or CA CRL If credentialName is set"),
    ]),
    ({"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem"}, []),
    ({"insecureSkipVerify": True, "caCertificates": "/ca.pem"}, []),
]  # fmt: skip


@pytest.mark.parametrize(("tls", "expected"), TLS)
def test_client_tls(errors: Issues, tls: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errors("DestinationRule", dr({"tls": tls})) == expected


def test_subset_policy_is_validated_too(errors: Issues) -> None:
    spec = dr(
        subsets=[{"name": "v1", "trafficPolicy": {"connectionPool": {"http": {"maxRetries": -2}}}}]
    )
    assert errors("DestinationRule", spec) == [
        ("spec.subsets[0].trafficPolicy.connectionPool.http.maxRetries", "max retries must be non-negative")
    ]  # fmt: skip
