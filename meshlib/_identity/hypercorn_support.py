"""Rotating mesh mTLS for applications that run hypercorn themselves.

hypercorn builds its SSLContext from files in ``Config.create_ssl_context``; a Config subclass
returns the identity's current server context instead, whose ``sni_callback`` moves every new
handshake to the newest certificate and trust bundle (PLUMBING-NOTES §2, §5). hypercorn has no
public hook to hand the peer certificate to the app, so the peer identity is not exposed there:
use ``Mesh.serve`` (uvicorn) when authorization needs the peer.
"""

from __future__ import annotations

import ssl
from typing import Any

from meshlib._identity.rotation import RotatingIdentity

__all__ = ["hypercorn_config"]


def hypercorn_config(identity: RotatingIdentity, *, require_client_cert: bool = True) -> Any:
    """A ``hypercorn.config.Config`` serving TLS from ``identity`` (rotating without restarts).

    Set ``bind`` and other options on the returned object as usual, then
    ``asyncio.run(hypercorn.asyncio.serve(app, config))``.
    """
    from hypercorn.config import Config

    class MeshHypercornConfig(Config):
        @property
        def ssl_enabled(self) -> bool:
            return True

        def create_ssl_context(self) -> ssl.SSLContext:
            return identity.current_server_context(require_client_cert)

    return MeshHypercornConfig()
