"""ServiceEntry and WorkloadEntry rules (ISTIO-SEMANTICS 3): exact messages and field paths."""

# Tables of exact istiod-style messages read best one case per line.
# ruff: noqa: E501

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Issues

HTTP_PORT = {"number": 80, "name": "http", "protocol": "HTTP"}


def se(**spec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"hosts": ["api.example.com"], "ports": [HTTP_PORT], "resolution": "DNS"}
    out.update(spec)
    return {k: v for k, v in out.items() if v is not None}


SERVICE_ENTRIES = [
    (se(), []),
    (se(hosts=None), [("spec.hosts", "service entry must have at least one host")]),
    (se(hosts=["*", "bad_host.com"], resolution="NONE"), [
        ("spec.hosts[0]", "invalid host *"),
        ("spec.hosts[1]", 'domain name "bad_host.com" invalid (label "bad_host" invalid)'),
    ]),
    (se(addresses=["10.0.0.0/8", "1.2.3.4", "nope", "10.0.0.0/99"], resolution="STATIC"), [
        ("spec.addresses[2]", "nope is not a valid IP"),
        ("spec.addresses[3]", "10.0.0.0/99 is not a valid CIDR block"),
    ]),
    (se(addresses=["10.0.0.0/8"]), [("spec.addresses", "CIDR addresses are allowed only for NONE/STATIC resolution types")]),
    (se(ports=[HTTP_PORT, {"number": 80, "name": "http", "protocol": "TCP", "targetPort": 0}]), [
        ("spec.ports[1].name", 'service entry port name "http" already defined'),
        ("spec.ports[1].number", "service entry port 80 already defined"),
    ]),
    (se(ports=[{"number": 0, "name": "Bad_Name", "protocol": "QUIC", "targetPort": 70000}]), [
        ("spec.ports[0].targetPort", "port number 70000 must be in the range 1..65535"),
        ("spec.ports[0].name", "invalid port name: Bad_Name"),
        ("spec.ports[0].protocol", "unsupported protocol: QUIC"),
        ("spec.ports[0].number", "port number 0 must be in the range 1..65535"),
    ]),
    (se(ports=[{"number": 27017, "name": "mongo", "protocol": "mongo"}, {"number": 1, "name": "g", "protocol": "gRPC-Web"}], hosts=["a.com"]), []),
    (se(resolution="NONE", endpoints=[{"address": "1.1.1.1"}]), [("spec.endpoints", "no endpoints should be provided for resolution type none")]),
    (se(resolution=None), []),
    (se(resolution="STATIC", endpoints=[{"address": "1.1.1.1", "ports": {"http": 8080}}, {"address": "host.example.com"}, {"address": "unix:///var/run/a.sock"}, {"address": "unix://relative"}, {}, {"address": "2.2.2.2", "ports": {"grpc": 9000}, "labels": {"v": "_"}}]), [
        ("spec.endpoints[1].address", 'endpoint address "host.example.com" is not a valid IP address'),
        ("spec.endpoints[3].address", "relative is not an absolute path to a file"),
        ("spec.endpoints[4].address", "address is required"),
        ("spec.endpoints[5].ports.grpc", "endpoint port 9000 is not defined by the service entry"),
        ("spec.endpoints[5].labels.v", 'invalid tag value: "_"'),
    ]),
    (se(resolution="STATIC", ports=[HTTP_PORT, {"number": 81, "name": "b"}], endpoints=[{"address": "unix:///a.sock", "ports": {"http": 1}}]), [
        ("spec.endpoints[0].ports", "unix endpoint unix:///a.sock must not include ports"),
        ("spec.endpoints[0]", "exactly 1 service port required for unix endpoints"),
    ]),
    (se(resolution="DNS", hosts=["*.example.com"]), [
        ("spec.hosts[0]", 'hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode DNS, domain name "*.example.com" invalid (label "*" invalid)'),
    ]),
    (se(resolution="DNS", hosts=["*.example.com"], endpoints=[{"address": "lb.example.com", "ports": {"http": 0, "Bad_": 5}}, {"address": "bad_address"}]), [
        ("spec.endpoints[0].ports.http", "port number 0 must be in the range 1..65535"),
        ("spec.endpoints[0].ports.Bad_", "endpoint port 5 is not defined by the service entry"),
        ("spec.endpoints[0].ports.Bad_", "invalid port name: Bad_"),
        ("spec.endpoints[1].address", 'endpoint address "bad_address" is not a valid FQDN or an IP address'),
    ]),
    (se(resolution="DNS_ROUND_ROBIN", endpoints=[{"address": "a.com"}, {"address": "b.com"}]), [
        ("spec.endpoints", "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN"),
    ]),
    (se(resolution="DYNAMIC_DNS", hosts=["*.example.com"]), []),
    (se(resolution="DYNAMIC_DNS", hosts=["a.example.com"], addresses=["1.2.3.4"], endpoints=[{"address": "1.1.1.1"}], ports=[{"number": 5432, "name": "pg", "protocol": "TCP"}]), [
        ("spec.hosts[0]", "host must be wildcarded for resolution mode DYNAMIC_DNS"),
        ("spec.addresses", "addresses cannot be set for resolution type DYNAMIC_DNS"),
        ("spec.endpoints", "endpoints cannot be set for resolution type DYNAMIC_DNS"),
        ("spec.ports[0].protocol", "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS"),
    ]),
    (se(hosts=["a.com", "b.com"], ports=[HTTP_PORT, {"number": 5432, "name": "pg", "protocol": "TCP"}, {"number": 1, "name": "x"}]), [
        ("spec.ports[1]", "multiple hosts provided with non-HTTP, non-TLS ports"),
    ]),
    (se(hosts=["a.com", "b.com"], ports=[HTTP_PORT, {"number": 443, "name": "tls", "protocol": "TLS"}]), []),
    (se(hosts=["a.com", "b.com"], resolution="NONE", ports=[{"number": 5432, "name": "pg", "protocol": "TCP"}]), []),
    (se(workloadSelector={"labels": {"app": "a"}}, endpoints=[]), [
        ("spec", "only one of WorkloadSelector or Endpoints is allowed in Service Entry"),
    ]),
    (se(exportTo=["~", "*"]), [
        ("spec.exportTo", "cannot have both public (*) and non-public exportTo values for a resource"),
        ("spec.exportTo", "cannot export service entry to no one (~) and someone"),
    ]),
    (se(exportTo=["~"]), []),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "expected"), SERVICE_ENTRIES)
def test_service_entry(
    errors: Issues, spec: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("ServiceEntry", spec) == expected


def test_service_entry_warnings(warnings: Issues) -> None:
    spec = se(resolution="NONE", hosts=["a*.example.com"], workloadSelector={})
    assert warnings("ServiceEntry", spec) == [
        ("spec.workloadSelector", "service entry: workload selector specified without labels, will be applied to all services in namespace"),
        ("spec.hosts[0]", 'partial wildcard "a*.example.com" not allowed'),
        ("spec.workloadSelector", "workloadSelector should not be set when resolution mode is NONE"),
    ]  # fmt: skip


def test_service_entry_workload_selector_labels(errors: Issues) -> None:
    spec = se(resolution="STATIC", workloadSelector={"labels": {"app": "a b"}})
    assert errors("ServiceEntry", spec) == [
        ("spec.workloadSelector.labels.app", 'invalid tag value: "a b"')
    ]


WORKLOAD_ENTRIES = [
    ({"address": "10.0.0.1", "ports": {"http": 8080}, "labels": {"app": "a"}}, []),
    ({"address": "vm.example.com"}, []),
    ({"address": "bad_fqdn"}, [("spec.address", 'endpoint address "bad_fqdn" is not a valid FQDN or an IP address')]),
    ({}, [("spec.address", "address is required")]),
    ({"network": "net1"}, []),
    ({"address": "unix://@abstract"}, []),
    ({"address": "unix:///dir/"}, [("spec.address", "/dir/ is not an absolute path to a file")]),
    ({"address": "unix://"}, [("spec.address", "unix address must not be empty")]),
    ({"address": "10.0.0.1", "ports": {"Bad_Port": 70000}}, [
        ("spec.ports.Bad_Port", "invalid port name: Bad_Port"),
        ("spec.ports.Bad_Port", "port number 70000 must be in the range 1..65535"),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "expected"), WORKLOAD_ENTRIES)
def test_workload_entry(
    errors: Issues, spec: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("WorkloadEntry", spec) == expected


def test_workload_entry_network_only_warns(warnings: Issues) -> None:
    assert warnings("WorkloadEntry", {"network": "net1"}) == [
        ("spec.address", 'address is unset with network "net1"')
    ]
