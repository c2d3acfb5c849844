"""What a request looks like to the policies, inbound or outbound, HTTP or gRPC."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

NO_LABELS: Mapping[str, str] = MappingProxyType({})
"""The shared empty label mapping (a call without source labels allocates nothing)."""


class HeaderView(Protocol):
    """A read-only view of request or response headers (never a copy).

    Keys are compared case-insensitively; a header sent several times reads as its values
    joined with ``,`` (Envoy's rule for header matching). ``httpx.Headers`` satisfies this
    protocol as it is; the gRPC drivers wrap their metadata tuples.
    """

    def get(self, key: str, /) -> str | None: ...

    def __contains__(self, key: object, /) -> bool: ...


@dataclass(frozen=True, slots=True)
class Peer:
    """The authenticated (or not) other side of an inbound connection."""

    spiffe_id: str | None = None
    """Full URI, ``spiffe://cluster.local/ns/default/sa/sleep``; ``None`` for plaintext."""
    address: str | None = None
    port: int | None = None
    mtls: bool = False

    @property
    def principal(self) -> str | None:
        """Istio's principal: the SPIFFE ID without the scheme."""
        if self.spiffe_id is None:
            return None
        return self.spiffe_id.removeprefix("spiffe://")

    @property
    def trust_domain(self) -> str | None:
        principal = self.principal
        return principal.split("/", 1)[0] if principal else None

    @property
    def namespace(self) -> str | None:
        return _segment_after(self.principal, "ns")

    @property
    def service_account(self) -> str | None:
        return _segment_after(self.principal, "sa")


def _segment_after(principal: str | None, key: str) -> str | None:
    if not principal:
        return None
    parts = principal.split("/")
    for index in range(1, len(parts) - 1):
        if parts[index] == key:
            return parts[index + 1]
    return None


class Memo:
    """Where the engine keeps what it derived from a Call that a driver sends again and again
    (a gRPC method without metadata). The engine alone reads and writes it: ``value`` holds
    while ``basis`` is still the engine's current one (a config generation...)."""

    __slots__ = ("basis", "value")

    def __init__(self) -> None:
        self.basis: object = None
        self.value: object = None


@dataclass(slots=True)
class Call:
    """One request as every policy sees it.

    ``path`` is the raw request target (path and query, as sent). Policies that need the
    query or the normalized path derive it lazily: most requests never need either.
    """

    protocol: str
    """``"http"`` or ``"grpc"``."""
    method: str
    scheme: str
    authority: str
    """``:authority`` exactly as sent (``host`` or ``host:port``)."""
    host: str
    """Host without the port, lower case."""
    port: int
    path: str
    headers: HeaderView
    body_replayable: bool = True
    peer: Peer | None = None
    source_labels: Mapping[str, str] = field(default_factory=lambda: NO_LABELS)
    source_namespace: str | None = None
    request_bytes: int | None = None
    """The request body size when the driver knows it (telemetry); ``None``: read
    ``content-length``."""
    memo: Memo | None = field(default=None, repr=False, compare=False)
    """Set by a driver that reuses this Call unchanged for many requests; ``None``: one use."""
    _split: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def path_only(self) -> str:
        """``:path`` without the query string (what Istio's uri matchers see)."""
        return self._parts()[0]

    @property
    def query(self) -> str:
        return self._parts()[1]

    def _parts(self) -> tuple[str, str]:
        if self._split is None:
            self._split = split_path(self.path)
        return self._split


def split_path(target: str) -> tuple[str, str]:
    """Split a request target into path and query; a fragment is dropped."""
    target = target.split("#", 1)[0]
    path, _, query = target.partition("?")
    return path, query
