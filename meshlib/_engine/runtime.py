"""What an outbound driver needs besides the call: config, shared cluster state, time, hooks.

One ``OutboundRuntime`` per Mesh (or per test). It knows no I/O library: drivers read the
identity and the sleep functions from it and do the I/O themselves.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meshlib._engine.clusters import ClusterRegistry, ClusterSpec, ClusterState
from meshlib._engine.snapshot import HostConfig, Location, MeshSnapshot, Resolution
from meshlib._model.call import Call
from meshlib._model.commands import (
    DEFAULT_CONNECTION,
    Attempt,
    ConnectionSettings,
    TlsOrigination,
)
from meshlib._model.endpoint import Endpoint
from meshlib._model.outcome import Classification, Outcome
from meshlib._model.runtime import Clock, MonotonicClock, Random, SystemRandom
from meshlib._policy.limits import DEFAULT_CONNECT_TIMEOUT, ConnectionPool
from meshlib._policy.traffic import ResolvedPolicy, resolve_policy

__all__ = [
    "PASSTHROUGH_CLUSTER",
    "TLS_MODE_LABEL",
    "ClientIdentity",
    "ClusterTarget",
    "OutboundRuntime",
    "RequestRecord",
    "Resolver",
    "SnapshotSource",
    "TelemetryHooks",
    "build_runtime",
    "cluster_name",
]

PASSTHROUGH_CLUSTER = "PassthroughCluster"
"""Envoy's name for traffic to hosts the configuration does not know."""
TLS_MODE_LABEL = "security.istio.io/tlsMode"
"""Endpoint label Istio's auto-mTLS reads: ``istio`` means the endpoint speaks mesh mTLS."""
TLS_MODE_ISTIO = "istio"
ISTIO_MUTUAL = "ISTIO_MUTUAL"
ORIGINATING_MODES = frozenset({"SIMPLE", "MUTUAL"})
"""DestinationRule ``tls`` modes in which the client originates TLS to a non-mesh server."""
_NO_PEERS: frozenset[str] = frozenset()
"""Shared by every target and endpoint with no SPIFFE IDs to check (each ``frozenset()`` is a new
216-byte object)."""


class SnapshotSource(Protocol):
    """Anything holding the current snapshot (``meshlib._config.source.ConfigSource``)."""

    @property
    def snapshot(self) -> MeshSnapshot: ...


class ClientIdentity(Protocol):
    """The workload identity as outbound drivers see it (``meshlib._identity``)."""

    def current_client_context(self) -> object:
        """The SSLContext new mesh connections use now (rotation swaps it)."""
        ...


class Resolver(Protocol):
    """Name -> addresses, resolved off the request path (``meshlib.httpx.DnsResolver``).

    ``addresses`` must not block: it answers from a cache (``None`` until the first answer,
    asking for the name to be resolved). ``version`` changes whenever an answer changes.
    """

    @property
    def version(self) -> int: ...

    def addresses(self, name: str) -> tuple[str, ...] | None: ...


# Built once per request: a frozen dataclass pays object.__setattr__ per field (µs here).
@dataclass(slots=True)
class RequestRecord:
    """One finished outbound request, for metrics and access logs (read-only by convention)."""

    call: Call
    service: str
    """Destination FQDN (``destination_service``), or the called host outside the mesh."""
    cluster: str
    status: int
    """Final HTTP status; 0 when the caller went away or got an exception."""
    flags: tuple[str, ...]
    attempts: int
    endpoint: Endpoint | None
    start: float
    end: float
    grpc_status: int | None = None
    response_bytes: int = 0
    """Response body bytes the caller received (a local reply's body counts too)."""


AttemptHook = Callable[[Call, Attempt, Outcome, Classification], None]
RequestHook = Callable[[RequestRecord], None]
HeadersHook = Callable[[float, float | None], Sequence[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class TelemetryHooks:
    """Telemetry callbacks; ``None`` costs one test per request, a no-op call would cost more."""

    on_attempt: AttemptHook | None = None
    """After each attempt is classified (also the attempts that are retried)."""
    on_request: RequestHook | None = None
    """Once per request: local reply, completed response, failure or cancellation."""
    outbound_headers: HeadersHook | None = None
    """Once per routed request, with (start, deadline): headers every attempt carries (trace
    context, ``x-request-id``). The flow adds the deadline header itself. A tuple is taken as a
    constant: returned again (the same object), the flow reuses the attempt headers it built
    with it; a list is taken as built for this request alone."""


NO_HOOKS = TelemetryHooks()


@dataclass(frozen=True, slots=True, eq=False)
class ClusterTarget:
    """One destination (host, subset, port) resolved against one snapshot: cached per snapshot."""

    name: str
    """``outbound|<port>|<subset>|<fqdn>``."""
    service: str
    state: ClusterState
    policy: ResolvedPolicy
    tls_mode: str | None
    """The DestinationRule's ``tls.mode``; ``None`` is auto-mTLS."""
    peers: frozenset[str]
    """SPIFFE IDs every endpoint may present (ServiceEntry and DestinationRule SANs)."""
    in_mesh: bool
    connection: ConnectionSettings = DEFAULT_CONNECTION
    """Connect timeout, requests per connection and idle timeout, for the driver's pools."""
    origination: TlsOrigination | None = None
    """DestinationRule ``tls`` SIMPLE or MUTUAL: TLS the driver originates."""
    close_connections: bool = field(init=False)
    """``maxRequestsPerConnection: 1``: no keep-alive (read per request, so stored)."""
    _tls_cache: dict[tuple[str, int], tuple[bool, frozenset[str]]] = field(
        default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "close_connections", self.connection.max_requests_per_connection == 1
        )

    def endpoint_tls(self, endpoint: Endpoint, mtls_available: bool) -> tuple[bool, frozenset[str]]:
        """Whether to speak mesh mTLS to ``endpoint``, and the peer IDs it may present."""
        cached = self._tls_cache.get(endpoint.key)
        if cached is not None:
            return cached
        mode = self.tls_mode
        if mode is None:
            # Auto-mTLS: only endpoints known to run the mesh (labelled, or with an identity).
            use = mtls_available and (
                endpoint.labels.get(TLS_MODE_LABEL) == TLS_MODE_ISTIO
                or (endpoint.service_account is not None and self.in_mesh)
            )
        else:
            use = mtls_available and mode == ISTIO_MUTUAL
        peers = self.peers
        if use and endpoint.service_account:
            peers = peers | {endpoint.service_account}  # compiled as a full spiffe:// URI
        result = (use, peers if use else _NO_PEERS)
        self._tls_cache[endpoint.key] = result
        return result


def cluster_name(port: int, subset: str | None, host: str) -> str:
    return f"outbound|{port}|{subset or ''}|{host}"


def _sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


class OutboundRuntime:
    """Config provider, cluster registry, clock, randomness, identity and telemetry hooks.

    ``snapshot`` is called once per request (a flow keeps the snapshot it started with).
    ``sleep`` serves sync drivers; ``async_sleep`` (``None``: the driver's event loop sleep)
    async ones — tests with a fake clock pass functions that advance it instead.
    """

    __slots__ = (
        "_cache",
        "_cache_snapshot",
        "_cache_version",
        "_routings",
        "async_sleep",
        "clock",
        "clusters",
        "hooks",
        "identity",
        "inherited_deadline",
        "resolver",
        "rng",
        "sleep",
        "snapshot",
    )

    def __init__(
        self,
        snapshot: Callable[[], MeshSnapshot],
        *,
        clusters: ClusterRegistry | None = None,
        clock: Clock | None = None,
        rng: Random | None = None,
        identity: ClientIdentity | None = None,
        hooks: TelemetryHooks = NO_HOOKS,
        sleep: Callable[[float], None] = _sleep,
        async_sleep: Callable[[float], object] | None = None,
        inherited_deadline: Callable[[], float | None] | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.clusters = clusters if clusters is not None else ClusterRegistry()
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self.rng: Random = rng if rng is not None else SystemRandom()
        self.identity = identity
        self.hooks = hooks
        self.sleep = sleep
        self.async_sleep = async_sleep
        self.inherited_deadline = inherited_deadline
        """The inbound request's deadline (contextvar), once the inbound side provides it."""
        self.resolver = resolver
        """DNS answers for hosts without ServiceEntry and ``resolution: DNS`` entries; without
        one, such names are resolved by the connection (its first address only)."""
        self._cache_snapshot: MeshSnapshot | None = None
        self._cache_version = 0
        self._cache: dict[tuple[str, str | None, int], ClusterTarget | None] = {}
        self._routings: dict[Hashable, object] = {}

    @property
    def mtls_available(self) -> bool:
        return self.identity is not None

    def cluster_for(
        self,
        snapshot: MeshSnapshot,
        host: str,
        subset: str | None,
        port: int,
        dns_name: str,
    ) -> ClusterTarget | None:
        """The cluster for a route destination; ``None`` when its subset is not defined (NC).

        ``dns_name`` is what to resolve when the configuration lists no endpoints.
        """
        self.routings(snapshot)  # drops a past generation's targets too
        key = (host, subset, port)
        try:
            return self._cache[key]
        except KeyError:
            pass
        target = self._build_target(snapshot, host, subset, port, dns_name)
        self._cache[key] = target
        return target

    def routings(self, snapshot: MeshSnapshot) -> dict[Hashable, object]:
        """The outbound flow's routing decisions for this snapshot and these DNS answers, by
        what each was derived from (a fresh dict when either changed)."""
        resolver = self.resolver
        version = 0 if resolver is None else resolver.version
        if snapshot is not self._cache_snapshot or version != self._cache_version:
            # A new generation or new DNS answers: targets are rebuilt lazily; equal specs
            # keep their state.
            self._cache = {}
            self._routings = {}
            self._cache_snapshot = snapshot
            self._cache_version = version
        return self._routings

    def _build_target(
        self,
        snapshot: MeshSnapshot,
        host: str,
        subset: str | None,
        port: int,
        dns_name: str,
    ) -> ClusterTarget | None:
        config = snapshot.lookup_host(host)
        destination = config.destination if config is not None else None
        if subset is not None and (destination is None or subset not in destination.subsets):
            return None
        policy = resolve_policy(destination, subset, port)
        endpoints = _endpoints(config, subset, port, dns_name, self.resolver)
        fqdn = config.host if config is not None and not config.host.startswith("*") else host
        spec = ClusterSpec(policy, endpoints, local_locality=_local_locality(snapshot))
        state = self.clusters.get_or_create((fqdn, subset, port), spec)
        peers: frozenset[str] = _NO_PEERS
        service = config.service if config is not None else None
        if service is not None and service.subject_alt_names:
            peers = peers | service.subject_alt_names
        if policy.tls is not None and policy.tls.subject_alt_names:
            peers = peers | policy.tls.subject_alt_names
        pool = policy.connection_pool
        tls = policy.tls
        origination = None
        if tls is not None and tls.mode in ORIGINATING_MODES:
            sans = tls.subject_alt_names
            if not sans and tls.sni is not None and service is not None:
                # Istio: the ServiceEntry's SANs when the rule names none. Envoy applies them
                # only with an explicit sni (otherwise auto SAN validation checks the host).
                sans = service.subject_alt_names
            origination = TlsOrigination(
                mode=tls.mode,
                sni=tls.sni,
                subject_alt_names=sans,
                client_certificate=tls.client_certificate,
                private_key=tls.private_key,
                ca_certificates=tls.ca_certificates,
                insecure_skip_verify=tls.insecure_skip_verify,
                ca_crl=tls.ca_crl,
            )
        return ClusterTarget(
            name=cluster_name(port, subset, fqdn),
            service=fqdn,
            state=state,
            policy=policy,
            tls_mode=policy.tls.mode if policy.tls is not None else None,
            peers=frozenset(p if p.startswith("spiffe://") else f"spiffe://{p}" for p in peers)
            if peers
            else _NO_PEERS,
            connection=_connection_settings(pool),
            in_mesh=config is not None
            and (service is None or service.location is Location.MESH_INTERNAL),
            origination=origination,
        )


def _connection_settings(pool: ConnectionPool) -> ConnectionSettings:
    idle = [t for t in (pool.http_idle_timeout, pool.tcp_idle_timeout) if t is not None]
    return ConnectionSettings(
        connect_timeout=pool.connect_timeout or DEFAULT_CONNECT_TIMEOUT,
        max_requests_per_connection=pool.max_requests_per_connection,
        idle_timeout=min(idle) if idle else None,
    )


def _local_locality(snapshot: MeshSnapshot) -> str:
    labels: Mapping[str, str] = snapshot.identity.labels
    return labels.get("topology.istio.io/locality", "")


def _endpoints(
    config: HostConfig | None,
    subset: str | None,
    port: int,
    dns_name: str,
    resolver: Resolver | None = None,
) -> tuple[Endpoint, ...]:
    if config is None or config.service is None:
        # No ServiceEntry: the name itself, every address it resolves to an endpoint.
        return _resolved((Endpoint(address=dns_name, port=port),), resolver)
    resolution = config.service.resolution
    if not config.endpoints or all(not members for members in config.endpoints.values()):
        # resolution NONE (original destination) or DNS without endpoints.
        if subset is not None:
            return ()
        named = (Endpoint(address=dns_name, port=port),)
        return _resolved(named, resolver) if resolution is Resolution.DNS else named
    members = config.endpoints_for(subset, port)
    return _resolved(members, resolver) if resolution is Resolution.DNS else members


def _resolved(endpoints: Sequence[Endpoint], resolver: Resolver | None) -> tuple[Endpoint, ...]:
    """Envoy's STRICT_DNS: every address of a named endpoint is an endpoint, same labels."""
    if resolver is None:
        return tuple(endpoints)
    result: list[Endpoint] = []
    for endpoint in endpoints:
        addresses = None if _is_ip(endpoint.address) else resolver.addresses(endpoint.address)
        if not addresses:
            result.append(endpoint)  # not resolved yet: the connection resolves the name
            continue
        result.extend(dataclasses.replace(endpoint, address=address) for address in addresses)
    return tuple(result)


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def build_runtime(
    source: SnapshotSource | MeshSnapshot,
    identity: ClientIdentity | None = None,
    *,
    clock: Clock | None = None,
    rng: Random | None = None,
    hooks: TelemetryHooks = NO_HOOKS,
    clusters: ClusterRegistry | None = None,
    sleep: Callable[[float], None] = _sleep,
    async_sleep: Callable[[float], object] | None = None,
    inherited_deadline: Callable[[], float | None] | None = None,
    resolver: Resolver | None = None,
) -> OutboundRuntime:
    """A runtime reading ``source.snapshot`` per request (or one fixed snapshot)."""
    if isinstance(source, MeshSnapshot):
        fixed = source

        def provider() -> MeshSnapshot:
            return fixed

    else:
        holder = source

        def provider() -> MeshSnapshot:
            return holder.snapshot

    return OutboundRuntime(
        provider,
        clusters=clusters,
        clock=clock,
        rng=rng,
        identity=identity,
        hooks=hooks,
        sleep=sleep,
        async_sleep=async_sleep,
        inherited_deadline=inherited_deadline,
        resolver=resolver,
    )
