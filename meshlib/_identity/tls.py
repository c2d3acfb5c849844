"""SSLContext factories and the SPIFFE peer check.

A context is built once per SVID generation and never mutated afterwards (mutating one in
use crashed the interpreter, PLUMBING-NOTES section 2): rotation builds a new one and swaps
the reference.
Python's ``ssl`` has no verify callback, so the chain is verified by OpenSSL against the bundle and
the SPIFFE ID is checked right after the handshake, before any request byte is sent
(client: :mod:`meshlib._identity.backend`; server: :mod:`meshlib._identity.uvicorn`).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from meshlib._identity.certs import Svid, der_spiffe_id
from meshlib._identity.spiffe_id import SpiffeId
from meshlib.errors import IdentityError

__all__ = [
    "ALPN_H1",
    "ALPN_H2",
    "MIN_TLS_VERSION",
    "PeerPolicy",
    "PeerRejected",
    "client_context",
    "server_context",
]

MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2
ALPN_H2 = ("h2", "http/1.1")
ALPN_H1 = ("http/1.1",)


class PeerRejected(IdentityError):
    """The peer's certificate chained to the bundle but its SPIFFE ID is not acceptable."""

    def __init__(self, message: str, *, expected: str, presented: str | None) -> None:
        super().__init__(message)
        self.expected = expected
        self.presented = presented


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """Which SPIFFE IDs a peer may present: any in ``trust_domains``, or exactly ``allowed_ids``."""

    trust_domains: frozenset[str]
    allowed_ids: frozenset[str] | None = None
    """Full ``spiffe://`` URIs (Istio's ``subjectAltNames``, or endpoint service accounts)."""

    def describe(self) -> str:
        if self.allowed_ids is not None:
            return " or ".join(sorted(self.allowed_ids)) or "(no identity allowed)"
        return " or ".join(f"spiffe://{td}/*" for td in sorted(self.trust_domains))

    def check(self, peer_der: bytes | None, *, peer: str = "peer") -> SpiffeId:
        """The peer's SPIFFE ID if acceptable; else :class:`PeerRejected` naming both sides."""
        expected = self.describe()
        if peer_der is None:
            raise PeerRejected(
                f"{peer} presented no certificate; expected {expected}",
                expected=expected,
                presented=None,
            )
        spiffe_id = der_spiffe_id(peer_der)
        if spiffe_id is None:
            raise PeerRejected(
                f"{peer} presented a certificate without exactly one SPIFFE URI SAN; "
                f"expected {expected}",
                expected=expected,
                presented=None,
            )
        presented = str(spiffe_id)
        if self.allowed_ids is not None:
            ok = presented in self.allowed_ids
        else:
            ok = spiffe_id.trust_domain in self.trust_domains
        if not ok:
            raise PeerRejected(
                f"{peer} presented SPIFFE ID {presented}; expected {expected}",
                expected=expected,
                presented=presented,
            )
        return spiffe_id


@contextlib.contextmanager
def _pem_file(data: bytes) -> Iterator[str]:
    # load_cert_chain only takes paths; a memfd keeps the key off the disk where Linux offers it.
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("meshlib-svid", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="meshlib-") as folder:  # pragma: no cover - non-Linux
        path = os.path.join(folder, "svid.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        yield path


def _load_identity(context: ssl.SSLContext, svid: Svid, cadata: bytes) -> None:
    with _pem_file(svid.cert_chain_pem + svid.private_key_pem) as path:
        context.load_cert_chain(path)
    if not cadata.strip():
        raise IdentityError("the trust bundle is empty")
    context.load_verify_locations(cadata=cadata.decode("ascii"))


def _common(context: ssl.SSLContext, alpn: Sequence[str]) -> None:
    context.minimum_version = MIN_TLS_VERSION
    context.set_alpn_protocols(list(alpn))


def client_context(
    svid: Svid, bundle: bytes | None = None, *, alpn: Sequence[str] = ALPN_H2
) -> ssl.SSLContext:
    """A client context presenting ``svid`` and trusting ``bundle`` (PEM; default the SVID's).

    Hostname checking is off on purpose: mesh certificates carry a SPIFFE URI, not the host name,
    and the backend checks the URI after the handshake instead.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    _common(context, alpn)
    _load_identity(context, svid, svid.bundle_pem if bundle is None else bundle)
    return context


def server_context(
    svid: Svid,
    bundle: bytes | None = None,
    require_client_cert: bool = True,
    *,
    alpn: Sequence[str] = ALPN_H2,
    sni_callback: Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None] | None = None,
) -> ssl.SSLContext:
    """A server context presenting ``svid``; client certs verified against ``bundle``.

    ``require_client_cert=False`` still verifies a certificate the client does send.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    _common(context, alpn)
    _load_identity(context, svid, svid.bundle_pem if bundle is None else bundle)
    if sni_callback is not None:
        context.sni_callback = sni_callback
    return context
