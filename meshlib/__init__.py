"""meshlib: a service mesh as a Python library.

Istio routing, mTLS with rotating SPIFFE certificates, retries, timeouts, connection-pool limits,
outlier detection, fault injection, authorization and telemetry for httpx and grpcio clients and
ASGI/WSGI/gRPC servers, configured with Istio YAML, with no sidecar.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from meshlib._mesh import Mesh
from meshlib._telemetry.instrument import instrument, uninstrument
from meshlib.errors import ConfigError, IdentityError, MeshError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from meshlib import identity as identity
    from meshlib._breaker import CircuitBreaker as CircuitBreaker
    from meshlib._breaker import CircuitOpenError as CircuitOpenError
    from meshlib._breaker import breakers as breakers
    from meshlib._breaker import circuit_breaker as circuit_breaker

# Subpackages users reach as attributes (meshlib.identity.LocalCA.load("ca/")), imported on first
# use (PEP 562): meshlib.identity loads cryptography (~7 MB), which a plaintext mesh never needs.
_LAZY_SUBMODULES = frozenset({"identity"})

# Names imported from a private module on first use (PEP 562), for the same reason: the circuit
# breakers load pybreaker, which a mesh that only routes requests never needs.
_LAZY_NAMES = {
    "CircuitBreaker": "meshlib._breaker",
    "CircuitOpenError": "meshlib._breaker",
    "breakers": "meshlib._breaker",
    "circuit_breaker": "meshlib._breaker",
}

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
        if name in _LAZY_NAMES:
            value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
            globals()[name] = value  # bound here: later lookups never reach __getattr__
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBMODULES, *_LAZY_NAMES})
