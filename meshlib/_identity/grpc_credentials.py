"""gRPC credentials from a :class:`RotatingIdentity` (grpcio imported lazily: extra ``grpc``).

Server credentials rotate by themselves: grpcio calls the fetcher before each new connection's
handshake and keeps the previous config when it returns ``None`` (PLUMBING-NOTES §4). Channel
credentials cannot change; whoever owns the channel subscribes to the identity and swaps channels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshlib._identity.rotation import RotatingIdentity

if TYPE_CHECKING:
    import grpc

__all__ = ["grpc_channel_credentials", "grpc_server_credentials"]


def _server_config(identity: RotatingIdentity, require_client_auth: bool) -> tuple[int, Any]:
    import grpc

    generation = identity.generation
    svid = generation.svid
    config = grpc.ssl_server_certificate_configuration(
        [(svid.private_key_pem, svid.cert_chain_pem)],
        root_certificates=svid.bundle_pem if require_client_auth else None,
    )
    return generation.number, config


def grpc_server_credentials(
    identity: RotatingIdentity, require_client_auth: bool = True
) -> grpc.ServerCredentials:
    """For ``server.add_secure_port``: follows every rotation of ``identity`` (cert and bundle)."""
    import grpc

    number, initial = _server_config(identity, require_client_auth)
    served = [number]

    def fetch() -> Any:
        # Called from a grpc thread before each new handshake: cheap unless a rotation happened.
        if identity.generation.number == served[0]:
            return None
        served[0], config = _server_config(identity, require_client_auth)
        return config

    return grpc.dynamic_ssl_server_credentials(
        initial, fetch, require_client_authentication=require_client_auth
    )


def grpc_channel_credentials(identity: RotatingIdentity) -> grpc.ChannelCredentials:
    """Credentials for one generation; build a new channel after ``identity.subscribe`` fires.

    grpc checks a DNS SAN (or ``grpc.ssl_target_name_override``), never the SPIFFE URI, so server
    SVIDs for gRPC carry a DNS name (``LocalCA.issue(..., dns_names=[...])``).
    """
    import grpc

    svid = identity.svid
    return grpc.ssl_channel_credentials(
        root_certificates=svid.bundle_pem,
        private_key=svid.private_key_pem,
        certificate_chain=svid.cert_chain_pem,
    )
