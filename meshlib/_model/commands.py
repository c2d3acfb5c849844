"""The vocabulary between a flow and a driver.

A flow is a generator that yields commands; the driver performs each one and sends back what
happened (an Outcome for ``Send``, ``None`` for the others).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from meshlib._model.endpoint import Endpoint
from meshlib._model.outcome import Outcome


@dataclass(frozen=True, slots=True)
class TlsOrigination:
    """DestinationRule ``tls`` SIMPLE or MUTUAL: the client side of TLS to a non-mesh server."""

    mode: str
    """``SIMPLE`` (verify the server) or ``MUTUAL`` (and present a client certificate)."""
    sni: str | None = None
    """``None``: the called host."""
    subject_alt_names: frozenset[str] = frozenset()
    """The server certificate must carry one of these (DNS, URI, IP or email SAN) instead of
    the SNI name; empty: the SNI name is checked."""
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    """PEM file of trusted CAs; ``None``: the system's."""
    insecure_skip_verify: bool = False
    ca_crl: str | None = None
    """PEM file of certificate revocation lists; a revoked server certificate is refused."""


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """How a cluster's connections are made and kept (DestinationRule ``connectionPool``)."""

    connect_timeout: float | None = None
    """Seconds for TCP connect and TLS handshake; ``None``: the caller's own."""
    max_requests_per_connection: int = 0
    """Close a connection after this many requests; 0: no limit."""
    idle_timeout: float | None = None
    """Close a connection idle this long; ``None``: the driver's own keep-alive."""


DEFAULT_CONNECTION = ConnectionSettings()


# Attempt, Send and Deliver are built on every request: plain slotted classes, because a frozen
# dataclass's __init__ pays object.__setattr__ per field (~3 µs for an Attempt). Treat them as
# immutable all the same.
@dataclass(slots=True, eq=False)
class Attempt:
    """One try of a request against one endpoint (read-only by convention)."""

    endpoint: Endpoint
    number: int
    """1-based; sent upstream as ``x-envoy-attempt-count``."""
    timeout: float | None
    """Seconds this try may take before response headers (per-try and overall, the earlier)."""
    set_headers: Sequence[tuple[str, str]] = ()
    """Headers to set (overwrite) on the upstream request."""
    add_headers: Sequence[tuple[str, str]] = ()
    remove_headers: Sequence[str] = ()
    path: str | None = None
    """Rewritten request target, or ``None`` to keep the caller's."""
    authority: str | None = None
    """Rewritten ``:authority``/Host, or ``None`` to keep the caller's."""
    cluster: str = ""
    """Envoy-style cluster name: ``outbound|<port>|<subset>|<fqdn>``."""
    tls: bool = False
    """Whether to use mesh mTLS towards this endpoint."""
    expected_peers: frozenset[str] = frozenset()
    """SPIFFE IDs the server may present; empty means any ID of the trust domain."""
    origination: TlsOrigination | None = None
    """TLS to originate towards a server outside the mesh (``tls`` is then False)."""
    connection: ConnectionSettings = DEFAULT_CONNECTION


@dataclass(slots=True, eq=False)
class Send:
    attempt: Attempt
    shadows: tuple[Attempt, ...] = ()
    """Mirror copies to send without waiting (first attempt only); their answers are dropped."""


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Reply:
    """A local answer that never reached an upstream (or replaced its answer)."""

    status: int
    body: str = ""
    flags: tuple[str, ...] = ()
    """Envoy response flags, e.g. ``("UO",)``, ``("UF", "URX")``."""
    headers: Sequence[tuple[str, str]] = ()
    grpc_status: int | None = None
    """For gRPC calls: the status to end the call with (HTTP status is then 200)."""


@dataclass(slots=True, eq=False)
class Deliver:
    """Hand the upstream response to the caller.

    ``complete`` must be called exactly once, when the response stream ends or is closed,
    with the final outcome (for gRPC, the status from trailers).
    """

    outcome: Outcome
    complete: Callable[[Outcome], None]
    flags: tuple[str, ...] = ()
    response_headers_set: Sequence[tuple[str, str]] = field(default=())
    response_headers_add: Sequence[tuple[str, str]] = field(default=())
    response_headers_remove: Sequence[str] = field(default=())


Command = Send | Sleep | Reply | Deliver
