"""Endpoints from DNS answers: ServiceEntry ``resolution: DNS`` and hosts with no entry."""

from __future__ import annotations

from meshlib._config.source import ConfigSource
from meshlib._engine.runtime import OutboundRuntime, build_runtime


class FakeResolver:
    """Answers from a dict; records what was asked; ``version`` bumps on ``set``."""

    def __init__(self, answers: dict[str, tuple[str, ...]] | None = None) -> None:
        self.answers = dict(answers or {})
        self.asked: list[str] = []
        self.version = 0

    def addresses(self, name: str) -> tuple[str, ...] | None:
        self.asked.append(name)
        return self.answers.get(name)

    def set(self, name: str, addresses: tuple[str, ...]) -> None:
        self.answers[name] = addresses
        self.version += 1


DNS_ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: https, protocol: HTTPS}]
  endpoints:
  - {address: east.example.com, labels: {zone: east}}
  - {address: 192.0.2.9, labels: {zone: west}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bare, namespace: default}
spec:
  hosts: [bare.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: rr, namespace: default}
spec:
  hosts: [rr.example.com]
  location: MESH_EXTERNAL
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: plain, namespace: default}
spec:
  hosts: [plain.example.org]
  http: [{route: [{destination: {host: plain.example.org}}], timeout: 3s}]
"""


def runtime(resolver: FakeResolver | None) -> OutboundRuntime:
    return build_runtime(ConfigSource.from_text(DNS_ENTRY, namespace="default"), resolver=resolver)


def endpoints(rt: OutboundRuntime, host: str, port: int, dns_name: str) -> list[tuple[str, str]]:
    target = rt.cluster_for(rt.snapshot(), host, None, port, dns_name)
    assert target is not None
    return [(e.address, e.labels.get("zone", "")) for e in target.state.endpoints]


def test_every_address_of_a_named_endpoint_is_an_endpoint_with_its_labels() -> None:
    resolver = FakeResolver({"east.example.com": ("10.1.0.1", "10.1.0.2")})
    rt = runtime(resolver)
    assert endpoints(rt, "api.example.com", 443, "api.example.com") == [
        ("10.1.0.1", "east"),
        ("10.1.0.2", "east"),
        ("192.0.2.9", "west"),
    ]
    assert resolver.asked == ["east.example.com"]  # IP literals are never looked up


def test_not_yet_resolved_names_stay_names() -> None:
    rt = runtime(FakeResolver())
    assert endpoints(rt, "api.example.com", 443, "api.example.com") == [
        ("east.example.com", "east"),
        ("192.0.2.9", "west"),
    ]


def test_dns_entry_without_endpoints_resolves_its_host() -> None:
    rt = runtime(FakeResolver({"bare.example.com": ("198.51.100.1", "198.51.100.2")}))
    assert endpoints(rt, "bare.example.com", 80, "bare.example.com") == [
        ("198.51.100.1", ""),
        ("198.51.100.2", ""),
    ]


def test_host_without_service_entry_resolves_the_called_name() -> None:
    rt = runtime(FakeResolver({"plain.example.org": ("203.0.113.5",)}))
    assert endpoints(rt, "plain.example.org", 80, "plain.example.org") == [("203.0.113.5", "")]


def test_dns_round_robin_keeps_the_name() -> None:
    resolver = FakeResolver({"rr.example.com": ("198.51.100.7",)})
    assert endpoints(runtime(resolver), "rr.example.com", 80, "rr.example.com") == [
        ("rr.example.com", "")
    ]
    assert resolver.asked == []


def test_without_a_resolver_names_are_left_to_the_connection() -> None:
    assert endpoints(runtime(None), "bare.example.com", 80, "bare.example.com") == [
        ("bare.example.com", "")
    ]


def test_a_new_answer_rebuilds_the_cluster_and_an_equal_one_keeps_its_state() -> None:
    resolver = FakeResolver({"bare.example.com": ("198.51.100.1",)})
    rt = runtime(resolver)
    snapshot = rt.snapshot()
    first = rt.cluster_for(snapshot, "bare.example.com", None, 80, "bare.example.com")
    assert first is not None
    resolver.set("bare.example.com", ("198.51.100.1",))  # same answer, new version
    same = rt.cluster_for(snapshot, "bare.example.com", None, 80, "bare.example.com")
    assert same is not None
    assert same.state is first.state
    resolver.set("bare.example.com", ("198.51.100.1", "198.51.100.3"))
    moved = rt.cluster_for(snapshot, "bare.example.com", None, 80, "bare.example.com")
    assert moved is not None
    assert moved.state is not first.state
    assert [e.address for e in moved.state.endpoints] == ["198.51.100.1", "198.51.100.3"]
