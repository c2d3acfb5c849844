"""httpx transports that route every request through the mesh.

``httpx.Client(transport=MeshTransport(runtime))`` and
``httpx.AsyncClient(transport=AsyncMeshTransport(runtime))``; ``Mesh.http_client()`` builds
them for you. Response flags (Envoy's ``%RESPONSE_FLAGS%``) are in
``response.extensions["meshlib"]["flags"]``.
"""

from __future__ import annotations

from meshlib.httpx._dns import DnsResolver
from meshlib.httpx._explain import explain_request
from meshlib.httpx._transport import AsyncMeshTransport, MeshTransport

__all__ = ["AsyncMeshTransport", "DnsResolver", "MeshTransport", "explain_request"]
