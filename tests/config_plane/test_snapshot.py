"""MeshSnapshot lookups: every spelling of a host is one dict probe away."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from meshlib._engine import HostConfig, Location, MeshIdentity, MeshSnapshot, ServiceInfo
from meshlib._engine import snapshot as snapshot_module
from meshlib._engine.snapshot import ServicePort
from meshlib._model.endpoint import Endpoint

IDENTITY = MeshIdentity(namespace="default", workload="productpage", service_account="productpage")


def host(name: str, **kwargs: object) -> HostConfig:
    return HostConfig(host=name, generation=1, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def snapshot() -> MeshSnapshot:
    v1 = Endpoint("127.0.0.1", 9081, labels={"version": "v1"})
    v2 = Endpoint("127.0.0.1", 9082, labels={"version": "v2"})
    other = Endpoint("127.0.0.1", 9181, labels={"version": "v1"})
    reviews = host(
        "reviews.default.svc.cluster.local",
        service=ServiceInfo(
            ports=(ServicePort(9080, "http"), ServicePort(9090, "grpc")),
            addresses=("240.0.0.1",),
            location=Location.MESH_INTERNAL,
        ),
        endpoints={9080: (v1, v2), 9090: (other,)},
        subsets={("v1", 9080): (v1,), ("v1", 9090): (other,)},
    )
    return MeshSnapshot.build(
        7,
        IDENTITY,
        [
            reviews,
            host("ratings.prod.svc.cluster.local"),
            host("*.example.com"),
            host("api.example.com"),
            host("*.default.svc.cluster.local"),
        ],
    )


@pytest.mark.parametrize(
    "authority",
    [
        "reviews",
        "reviews:9080",
        "REVIEWS:9080",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local:9080",
        "240.0.0.1",
        "240.0.0.1:9080",
    ],
)
def test_every_spelling_of_a_service(snapshot: MeshSnapshot, authority: str) -> None:
    found = snapshot.lookup_host(authority)
    assert found is not None
    assert found.host == "reviews.default.svc.cluster.local"


def test_short_names_are_local_to_the_client_namespace(snapshot: MeshSnapshot) -> None:
    # "ratings" from namespace default means ratings.default..., covered only by the wildcard.
    assert snapshot.lookup_host("ratings").host == "*.default.svc.cluster.local"  # type: ignore[union-attr]
    found = snapshot.lookup_host("ratings.prod:9080")
    assert found is not None
    assert found.host == "ratings.prod.svc.cluster.local"


def test_exact_wins_over_wildcard(snapshot: MeshSnapshot) -> None:
    assert snapshot.lookup_host("api.example.com").host == "api.example.com"  # type: ignore[union-attr]
    assert snapshot.lookup_host("web.example.com:443").host == "*.example.com"  # type: ignore[union-attr]
    assert snapshot.lookup_host("a.b.example.com").host == "*.example.com"  # type: ignore[union-attr]
    assert snapshot.lookup_host("example.org") is None


def test_short_name_falls_back_to_a_namespace_wildcard(snapshot: MeshSnapshot) -> None:
    found = snapshot.lookup_host("details:9080")
    assert found is not None
    assert found.host == "*.default.svc.cluster.local"


def test_ip_authorities_are_not_expanded(snapshot: MeshSnapshot) -> None:
    assert snapshot.lookup_host("[::1]:8080") is None
    assert snapshot.lookup_host("") is None


def test_parsed_authorities_are_remembered_per_snapshot(
    snapshot: MeshSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ``host:port`` and unknown names are parsed once; the second lookup answers from memory.
    assert snapshot.lookup_host("details:9080").host == "*.default.svc.cluster.local"  # type: ignore[union-attr]
    assert snapshot.lookup_host("example.org") is None
    monkeypatch.setattr(snapshot_module, "split_authority", _never)
    assert snapshot.lookup_host("details:9080").host == "*.default.svc.cluster.local"  # type: ignore[union-attr]
    assert snapshot.lookup_host("example.org") is None
    assert snapshot.lookup_host("reviews").host == "reviews.default.svc.cluster.local"  # type: ignore[union-attr]


def test_remembered_authorities_are_bounded(
    snapshot: MeshSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_module, "MAX_MEMO_AUTHORITIES", 3)
    for index in range(7):
        assert snapshot.lookup_host(f"host{index}.example.org") is None
        assert len(snapshot._authorities) <= 3
    assert snapshot.lookup_host("ratings.prod:9080").host == "ratings.prod.svc.cluster.local"  # type: ignore[union-attr]


def _never(authority: str) -> tuple[str, int | None]:
    raise AssertionError(f"{authority!r} parsed again")


def test_no_wildcards_means_unknown() -> None:
    empty = MeshSnapshot.build(1, IDENTITY, [])
    assert empty.lookup_host("reviews") is None
    assert empty.hosts == {}


def test_subset_endpoints_per_port(snapshot: MeshSnapshot) -> None:
    assert [str(e) for e in snapshot.subset_endpoints("reviews", "v1")] == ["127.0.0.1:9081"]
    assert [str(e) for e in snapshot.subset_endpoints("reviews", "v1", 9090)] == ["127.0.0.1:9181"]
    assert len(snapshot.subset_endpoints("reviews", None, 9080)) == 2
    assert snapshot.subset_endpoints("reviews", "v3") == ()
    # An undeclared port falls back to the first declared one.
    assert len(snapshot.subset_endpoints("reviews", None, 1234)) == 2
    assert snapshot.subset_endpoints("unknown.org", None) == ()


def test_service_port_lookup(snapshot: MeshSnapshot) -> None:
    service = snapshot.lookup_host("reviews").service  # type: ignore[union-attr]
    assert service is not None
    assert service.port(9090) == ServicePort(9090, "grpc")
    assert service.port(1) is None


def test_identity() -> None:
    assert IDENTITY.spiffe_id == "spiffe://cluster.local/ns/default/sa/productpage"
    assert IDENTITY.principal == "cluster.local/ns/default/sa/productpage"


def test_hosts_are_read_only(snapshot: MeshSnapshot) -> None:
    assert isinstance(snapshot.hosts, MappingProxyType)
    with pytest.raises(AttributeError):
        snapshot.generation = 8  # type: ignore[misc]


def test_security_is_built_once_by_the_factory_on_first_read() -> None:
    from meshlib._policy.authz import Authorizer
    from meshlib._policy.peerauth import MtlsMode, WorkloadMtls

    built: list[int] = []

    def security() -> tuple[Authorizer, WorkloadMtls]:
        built.append(1)
        return Authorizer(()), WorkloadMtls(MtlsMode.STRICT)

    for first in ("peer_authentication", "authorization"):
        deferred = MeshSnapshot.build(1, IDENTITY, [], security=security)
        assert not built
        getattr(deferred, first)
        assert len(built) == 1
        mtls = deferred.peer_authentication
        assert mtls is not None
        assert mtls.mode is MtlsMode.STRICT
        authorizer = deferred.authorization
        assert isinstance(authorizer, Authorizer)
        assert authorizer is deferred.authorization
        assert len(built) == 1
        built.clear()


def test_security_given_directly_or_absent() -> None:
    from meshlib._policy.peerauth import WorkloadMtls

    mtls = WorkloadMtls()
    given = MeshSnapshot.build(1, IDENTITY, [], peer_authentication=mtls)
    assert given.peer_authentication is mtls
    assert given.authorization is None
    none = MeshSnapshot.build(1, IDENTITY, [])
    assert none.authorization is None
    assert none.peer_authentication is None
