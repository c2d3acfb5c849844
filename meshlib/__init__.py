"""meshlib: a service mesh as a Python library.

Istio routing, mTLS with rotating SPIFFE certificates, retries, timeouts, connection-pool limits,
outlier detection, fault injection, authorization and telemetry for httpx and grpcio clients and
ASGI/WSGI/gRPC servers, configured with Istio YAML, with no sidecar.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from meshlib._breaker import CircuitBreaker, CircuitOpenError, breakers, circuit_breaker
from meshlib._mesh import Mesh
from meshlib._telemetry.instrument import instrument, uninstrument
from meshlib.errors import ConfigError, IdentityError, MeshError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from meshlib import identity as identity

# Subpackages users reach as attributes (meshlib.identity.LocalCA.load("ca/")), imported on first
# use (PEP 562): meshlib.identity loads cryptography (~7 MB), which a plaintext mesh never needs.
_LAZY_SUBMODULES = frozenset({"identity"})

__all__ = [
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigError",
    "IdentityError",
    "Mesh",
    "MeshError",
    "__version__",
    "breakers",
    "circuit_breaker",
    "instrument",
    "uninstrument",
]


if not TYPE_CHECKING:  # hidden from type checkers, which would then accept any meshlib.<name>

    def __getattr__(name: str) -> object:
        if name in _LAZY_SUBMODULES:
            # import_module binds the submodule in this namespace, so this runs once per name.
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBMODULES})
