"""An upstream address that a destination can pick."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    locality: str = ""
    """``region/zone/subzone``, empty when unknown."""
    service_account: str | None = None
    """Expected peer SPIFFE ID or principal for mTLS, when the config names one."""
    network: str = ""
    key: tuple[str, int] = field(init=False, repr=False, compare=False)
    """``(address, port)``: what balancers, detectors and caches index by (read per request,
    so stored rather than built by a property)."""
    text: str = field(init=False, repr=False, compare=False)
    """``address:port`` (``[v6]:port``): what ``str`` gives; every response reports it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.address, self.port))
        host = f"[{self.address}]" if ":" in self.address else self.address
        object.__setattr__(self, "text", f"{host}:{self.port}")

    def __str__(self) -> str:
        return self.text
