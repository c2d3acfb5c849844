"""meshlib: a service mesh as a Python library.

Istio routing, mTLS with rotating SPIFFE certificates, retries, timeouts, connection-pool limits,
outlier detection, fault injection, authorization and telemetry for httpx and grpcio clients and
ASGI/WSGI/gRPC servers, configured with Istio YAML, with no sidecar.
"""

from __future__ import annotations

# Subpackages users reach as attributes: meshlib.identity.LocalCA.load("ca/").
from meshlib import identity as identity
from meshlib._breaker import CircuitBreaker, CircuitOpenError, breakers, circuit_breaker
from meshlib._mesh import Mesh
from meshlib._telemetry.instrument import instrument, uninstrument
from meshlib.errors import ConfigError, IdentityError, MeshError

__version__ = "0.1.0"

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
