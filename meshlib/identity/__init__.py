"""Workload identity: SPIFFE IDs, X.509-SVIDs and where they come from.

- :class:`LocalCA`: a CA in a folder (Istio's plug-in CA file names) that issues SVIDs itself;
  ``LocalCA.load(dir).source(ns, sa)`` rotates at half-life.
- :class:`FileSource`: cert chain, key and bundle files written by cert-manager, a SPIRE helper or
  Istio, reloaded when they change and fit together.
- :class:`SpiffeWorkloadAPI`: the SPIFFE Workload API (extra ``spiffe``).

Each source satisfies :class:`IdentitySource`. See ``docs/security.md``.
"""

from __future__ import annotations

from meshlib._identity.ca import LocalCA
from meshlib._identity.certs import Svid
from meshlib._identity.sources import CASource, FileSource, IdentitySource, StaticSource
from meshlib._identity.spiffe_id import SpiffeId, SpiffeIdError
from meshlib._identity.workload_api import SpiffeWorkloadAPI

__all__ = [
    "CASource",
    "FileSource",
    "IdentitySource",
    "LocalCA",
    "SpiffeId",
    "SpiffeIdError",
    "SpiffeWorkloadAPI",
    "StaticSource",
    "Svid",
]
