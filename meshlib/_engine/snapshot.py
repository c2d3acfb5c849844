"""The immutable, compiled view of the mesh that every flow reads.

Built once per configuration generation by ``meshlib._config.compile``; a reload builds a
whole new snapshot and swaps one reference, so a flow keeps the snapshot it started with.
Every hot-path lookup is a dict probe: aliases and wildcard keys are precomputed here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from meshlib._model.endpoint import Endpoint
from meshlib._policy.routing import RouteTable
from meshlib._policy.traffic import DestinationPolicy

if TYPE_CHECKING:
    # Types only: a configuration without AuthorizationPolicy or PeerAuthentication never
    # loads the authorization engine (about 0.4 MB) unless something reads its security.
    from meshlib._policy.authz import Authorizer
    from meshlib._policy.peerauth import WorkloadMtls

SecurityFactory = Callable[[], "tuple[Authorizer | None, WorkloadMtls | None]"]
"""Builds a snapshot's ``authorization`` and ``peer_authentication`` on first read."""

DEFAULT_DOMAIN_SUFFIX = "svc.cluster.local"
DEFAULT_TRUST_DOMAIN = "cluster.local"
MAX_MEMO_AUTHORITIES = 1024


class Resolution(enum.Enum):
    NONE = "NONE"
    STATIC = "STATIC"
    DNS = "DNS"
    DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"
    DYNAMIC_DNS = "DYNAMIC_DNS"


class Location(enum.Enum):
    MESH_EXTERNAL = "MESH_EXTERNAL"
    MESH_INTERNAL = "MESH_INTERNAL"


@dataclass(frozen=True, slots=True)
class MeshIdentity:
    """Who this process is in the mesh (the client side of every outbound call)."""

    namespace: str
    workload: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    service_account: str = "default"
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        return self.spiffe_id.removeprefix("spiffe://")


@dataclass(frozen=True, slots=True)
class ServicePort:
    number: int
    name: str = ""
    protocol: str = ""
    """Upper case (``HTTP``, ``GRPC``...); empty when the ServiceEntry leaves it to sniffing."""
    target_port: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What a ServiceEntry says about a host."""

    ports: tuple[ServicePort, ...] = ()
    addresses: tuple[str, ...] = ()
    location: Location = Location.MESH_EXTERNAL
    resolution: Resolution = Resolution.NONE
    subject_alt_names: frozenset[str] = frozenset()
    namespace: str = ""
    source: str = ""
    """``ServiceEntry/<namespace>/<name>``."""

    def port(self, number: int) -> ServicePort | None:
        for port in self.ports:  # a handful of ports at most
            if port.number == number:
                return port
        return None


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Everything the outbound flow needs about one destination host."""

    host: str
    """FQDN, or the wildcard pattern (``*.example.com``) the configuration names."""
    generation: int
    routes: RouteTable | None = None
    """``None``: no VirtualService, the engine uses the implicit default route."""
    destination: DestinationPolicy | None = None
    service: ServiceInfo | None = None
    """``None``: no ServiceEntry; the host itself is resolved by DNS."""
    endpoints: Mapping[int, tuple[Endpoint, ...]] = field(default_factory=dict)
    """Per service port number; key 0 when the service declares no port."""
    subsets: Mapping[tuple[str, int], tuple[Endpoint, ...]] = field(default_factory=dict)
    """Precomputed subset membership per (subset name, service port)."""

    @property
    def default_port(self) -> int:
        return next(iter(self.endpoints), 0)

    def endpoints_for(
        self, subset: str | None = None, port: int | None = None
    ) -> tuple[Endpoint, ...]:
        """Endpoints of one service port (the first declared one when unknown), maybe one subset."""
        if port is None or port not in self.endpoints:
            port = self.default_port
        if subset is None:
            return self.endpoints.get(port, ())
        return self.subsets.get((subset, port), ())


def split_authority(authority: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` -> (lower-case host, port or None)."""
    authority = authority.strip()
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return authority.lower(), None
        host, rest = authority[1:end], authority[end + 1 :]
        return host.lower(), _port(rest[1:]) if rest.startswith(":") else None
    if authority.count(":") == 1:
        host, _, port = authority.partition(":")
        return host.lower(), _port(port)
    return authority.lower(), None


def _port(text: str) -> int | None:
    if text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    return None


def wildcard_keys(host: str) -> Iterator[str]:
    """The wildcard patterns that could cover ``host``, most specific first.

    ``a.b.example.com`` yields ``*.b.example.com``, ``*.example.com``, ``*.com``, ``*``: a
    bounded number of dict probes instead of a scan over every wildcard rule.
    """
    rest = host[2:] if host.startswith("*.") else host
    while True:
        dot = rest.find(".")
        if dot < 0:
            break
        rest = rest[dot + 1 :]
        yield f"*.{rest}"
    yield "*"


def service_aliases(
    fqdn: str, namespace: str, domain_suffix: str = DEFAULT_DOMAIN_SUFFIX
) -> list[str]:
    """Names a client in ``namespace`` may use for ``fqdn`` (Kubernetes DNS search paths).

    ``reviews.prod.svc.cluster.local`` is reachable as ``reviews.prod`` and
    ``reviews.prod.svc`` from anywhere, and as ``reviews`` from inside ``prod``.
    """
    tail = f".{domain_suffix}"
    if not fqdn.endswith(tail) or fqdn.startswith("*"):
        return []
    parts = fqdn[: -len(tail)].split(".")
    if len(parts) != 2:
        return []
    name, service_namespace = parts
    aliases = [f"{name}.{service_namespace}", f"{name}.{service_namespace}.svc"]
    if service_namespace == namespace:
        aliases.append(name)
    return aliases


@dataclass(frozen=True, slots=True, eq=False)
class MeshSnapshot:
    """One generation of compiled configuration, seen from this workload."""

    generation: int
    identity: MeshIdentity
    hosts: Mapping[str, HostConfig] = field(default_factory=dict)
    """Canonical host (FQDN or wildcard pattern) -> config."""
    _authorization: Authorizer | None = field(default=None, repr=False)
    _peer_authentication: WorkloadMtls | None = field(default=None, repr=False)
    _security: SecurityFactory | None = field(default=None, repr=False)
    """Set: ``authorization`` and ``peer_authentication`` are built by it on first read."""
    domain_suffix: str = DEFAULT_DOMAIN_SUFFIX
    _index: Mapping[str, HostConfig] = field(init=False, repr=False)
    _wildcards: Mapping[str, HostConfig] = field(init=False, repr=False)
    _authorities: dict[str, HostConfig | None] = field(init=False, repr=False)
    """``lookup_host`` answers for authorities not in the index (``host:port``, unknown
    hosts): they are parsed once per snapshot."""

    def __post_init__(self) -> None:
        index: dict[str, HostConfig] = {}
        wildcards: dict[str, HostConfig] = {}
        namespace = self.identity.namespace
        for key, config in self.hosts.items():
            if key.startswith("*"):
                wildcards[key] = config
                continue
            index[key] = config
            for alias in service_aliases(key, namespace, self.domain_suffix):
                index.setdefault(alias, config)
        for key, config in self.hosts.items():
            service = config.service
            if service is not None and not key.startswith("*"):
                for address in service.addresses:
                    index.setdefault(address.lower(), config)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_wildcards", wildcards)
        object.__setattr__(self, "_authorities", {})

    @classmethod
    def build(
        cls,
        generation: int,
        identity: MeshIdentity,
        configs: Iterable[HostConfig],
        *,
        authorization: Authorizer | None = None,
        peer_authentication: WorkloadMtls | None = None,
        security: SecurityFactory | None = None,
    ) -> MeshSnapshot:
        """``security``, given instead of ``authorization`` and ``peer_authentication``, builds
        them when first read: the inbound side reads them, a client that only sends never does."""
        return cls(
            generation=generation,
            identity=identity,
            hosts=MappingProxyType({config.host: config for config in configs}),
            _authorization=authorization,
            _peer_authentication=peer_authentication,
            _security=security,
        )

    @property
    def authorization(self) -> Authorizer | None:
        """The AuthorizationPolicies that select this workload; ``None``: none configured."""
        security = self._security
        if security is not None:
            self._build_security(security)
        return self._authorization

    @property
    def peer_authentication(self) -> WorkloadMtls | None:
        """This workload's PeerAuthentication modes; ``None``: Istio's default (PERMISSIVE)."""
        security = self._security
        if security is not None:
            self._build_security(security)
        return self._peer_authentication

    def _build_security(self, security: SecurityFactory) -> None:
        # Two threads may both build: the results are equal and either may stay. The factory
        # is dropped last, so a reader that finds it gone finds both values set.
        authorization, peer_authentication = security()
        object.__setattr__(self, "_authorization", authorization)
        object.__setattr__(self, "_peer_authentication", peer_authentication)
        object.__setattr__(self, "_security", None)

    def lookup_host(self, authority: str, port: int | None = None) -> HostConfig | None:
        """The config for a request's ``:authority`` (``host``, ``host:port``, short name, FQDN).

        Exact names (and their Kubernetes short forms) win over wildcard patterns; ``None``
        means the host is unknown to the configuration (plain DNS, implicit default route).
        """
        config = self._index.get(authority)
        if config is not None:
            return config
        memo = self._authorities
        if authority in memo:
            return memo[authority]
        config = self._lookup(authority)
        if len(memo) >= MAX_MEMO_AUTHORITIES:
            memo.clear()  # callers name a few hosts; a bound in case they name many
        memo[authority] = config
        return config

    def _lookup(self, authority: str) -> HostConfig | None:
        host, _ = split_authority(authority)
        config = self._index.get(host)
        if config is not None:
            return config
        if not self._wildcards:
            return None
        if host and ":" not in host:
            # Kubernetes DNS search paths: ``name`` and ``name.namespace`` are services.
            dots = host.count(".")
            if dots == 0:
                host = f"{host}.{self.identity.namespace}.{self.domain_suffix}"
            elif dots == 1:
                host = f"{host}.{self.domain_suffix}"
        for key in wildcard_keys(host):
            config = self._wildcards.get(key)
            if config is not None:
                return config
        return None

    def subset_endpoints(
        self, host: str, subset: str | None, port: int | None = None
    ) -> tuple[Endpoint, ...]:
        config = self.lookup_host(host)
        if config is None:
            return ()
        return config.endpoints_for(subset, port)
