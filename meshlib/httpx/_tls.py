"""Mesh mTLS for httpcore pools: the identity's backend, told which SPIFFE IDs to accept."""

from __future__ import annotations

from typing import Any, cast

from meshlib._engine.runtime import ClientIdentity
from meshlib._identity.backend import AsyncMeshNetworkBackend, MeshNetworkBackend
from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.tls import PeerPolicy

__all__ = ["mesh_backend"]


def mesh_backend(identity: ClientIdentity, peers: frozenset[str], *, is_async: bool) -> Any:
    """A network backend for one endpoint's pools.

    The backend presents the current SVID on every new connection (rotation needs no new
    pool) and rejects, before any request byte, a server whose SPIFFE ID is not in ``peers``
    (any workload of our trust domain when ``peers`` is empty).
    """
    rotating = cast(RotatingIdentity, identity)
    policy: PeerPolicy | None = None
    if peers:
        default = rotating.peer_policy()
        policy = PeerPolicy(trust_domains=default.trust_domains, allowed_ids=peers)

    def policy_for(_sni: str | None) -> PeerPolicy | None:
        return policy

    if is_async:
        return AsyncMeshNetworkBackend(rotating, policy_for=policy_for)
    return MeshNetworkBackend(rotating, policy_for=policy_for)
