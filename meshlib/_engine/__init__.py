"""The flows: pure generators that order the policies, reading one immutable MeshSnapshot."""

from meshlib._engine.snapshot import (
    HostConfig,
    Location,
    MeshIdentity,
    MeshSnapshot,
    Resolution,
    ServiceInfo,
    ServicePort,
)

__all__ = [
    "HostConfig",
    "Location",
    "MeshIdentity",
    "MeshSnapshot",
    "Resolution",
    "ServiceInfo",
    "ServicePort",
]
