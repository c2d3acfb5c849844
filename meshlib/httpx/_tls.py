"""TLS for httpcore pools: mesh mTLS (SPIFFE IDs checked) and DestinationRule origination."""

from __future__ import annotations

import ssl
from typing import Any, cast

from meshlib._engine.runtime import ClientIdentity
from meshlib._identity.backend import AsyncMeshNetworkBackend, MeshNetworkBackend
from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.tls import PeerPolicy
from meshlib._model.commands import TlsOrigination

__all__ = ["MUTUAL", "mesh_backend", "origination_context"]

MUTUAL = "MUTUAL"


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


def origination_context(settings: TlsOrigination) -> ssl.SSLContext:
    """The client context for DestinationRule ``tls`` SIMPLE/MUTUAL (TLS to a non-mesh server).

    Verifies the server against ``caCertificates`` (the system CAs when absent) and its name
    against the SNI, as Envoy does with auto SAN validation; ``insecureSkipVerify`` turns both
    off. MUTUAL presents ``clientCertificate``/``privateKey``. Files are read once per pool.
    """
    context = ssl.create_default_context(cafile=settings.ca_certificates)
    if settings.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.mode == MUTUAL:
        if settings.client_certificate is None or settings.private_key is None:
            raise ValueError("tls mode MUTUAL needs clientCertificate and privateKey")
        context.load_cert_chain(settings.client_certificate, settings.private_key)
    context.set_alpn_protocols(["http/1.1"])
    return context
