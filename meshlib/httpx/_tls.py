"""TLS for httpcore pools: mesh mTLS (SPIFFE IDs checked) and DestinationRule origination."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from meshlib._engine.runtime import ClientIdentity
    from meshlib._identity.rotation import RotatingIdentity
    from meshlib._model.commands import TlsOrigination

__all__ = ["MUTUAL", "SanMatcher", "mesh_backend", "origination_context"]

MUTUAL = "MUTUAL"


def mesh_backend(
    identity: ClientIdentity, peers: frozenset[str], *, is_async: bool, inner: Any = None
) -> Any:
    """A network backend for one endpoint's pools.

    The backend presents the current SVID on every new connection (rotation needs no new
    pool) and rejects, before any request byte, a server whose SPIFFE ID is not in ``peers``
    (any workload of our trust domain when ``peers`` is empty). ``inner`` opens the sockets
    (httpcore's default backend when ``None``).
    """
    # Imported here: a plaintext mesh has no identity and never loads the mTLS machinery.
    from meshlib._identity.backend import AsyncMeshNetworkBackend, MeshNetworkBackend
    from meshlib._identity.tls import PeerPolicy

    rotating = cast("RotatingIdentity", identity)
    policy: PeerPolicy | None = None
    if peers:
        default = rotating.peer_policy()
        policy = PeerPolicy(trust_domains=default.trust_domains, allowed_ids=peers)

    def policy_for(_sni: str | None) -> PeerPolicy | None:
        return policy

    if is_async:
        return AsyncMeshNetworkBackend(rotating, policy_for=policy_for, inner=inner)
    return MeshNetworkBackend(rotating, policy_for=policy_for, inner=inner)


def origination_context(settings: TlsOrigination) -> ssl.SSLContext:
    """The client context for DestinationRule ``tls`` SIMPLE/MUTUAL (TLS to a non-mesh server).

    Verifies the server against ``caCertificates`` (the system CAs when absent) and, with
    ``caCrl``, refuses revoked certificates. Its name is checked against ``subjectAltNames``
    (Envoy's SAN matcher) or, without them, against the SNI (auto SAN validation);
    ``insecureSkipVerify`` turns all of it off. MUTUAL presents ``clientCertificate`` and
    ``privateKey``. Files are read once per pool.
    """
    context = ssl.create_default_context(cafile=settings.ca_certificates)
    if settings.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        if settings.ca_crl is not None:
            # Envoy checks the whole chain: each CA in it needs a CRL in the file.
            context.load_verify_locations(cafile=settings.ca_crl)
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
        if settings.subject_alt_names:
            context.check_hostname = False
            context.sslsocket_class, context.sslobject_class = _san_checked(
                SanMatcher(settings.subject_alt_names)
            )
    if settings.mode == MUTUAL:
        if settings.client_certificate is None or settings.private_key is None:
            raise ValueError("tls mode MUTUAL needs clientCertificate and privateKey")
        context.load_cert_chain(settings.client_certificate, settings.private_key)
    context.set_alpn_protocols(["http/1.1"])
    return context


class SanMatcher:
    """Envoy's ``match_subject_alt_names`` with exact matchers: any SAN type may match.

    DNS names compare case-insensitively and a certificate's ``*.example.com`` covers one
    label (Envoy's ``dnsNameMatch``); IP addresses compare as addresses; URIs and emails exactly.
    """

    __slots__ = ("_dns", "_exact", "_ips", "names")

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self._dns = frozenset(name.lower() for name in names)
        self._exact = names
        self._ips = frozenset(ip for name in names if (ip := _ip(name)) is not None)

    def matches(self, sans: Iterable[tuple[str, str]]) -> bool:
        """``sans`` as ``getpeercert()`` lists them: ``("DNS", "a.com")``, ``("URI", ...)``..."""
        for kind, value in sans:
            if kind == "DNS":
                if self._dns_match(value.lower()):
                    return True
            elif kind == "IP Address":
                if _ip(value.strip()) in self._ips:
                    return True
            elif value in self._exact:
                return True
        return False

    def _dns_match(self, pattern: str) -> bool:
        if pattern in self._dns:
            return True
        if not pattern.startswith("*.") or len(pattern) < 3:
            return False
        suffix = pattern[1:]  # ".example.com": the wildcard stands for exactly one label
        return any(
            len(name) > len(suffix) and name.endswith(suffix) and "." not in name[: -len(suffix)]
            for name in self._dns
        )

    def check(self, peer: Mapping[str, Any] | None) -> None:
        sans = peer.get("subjectAltName", ()) if peer else ()
        if not self.matches(sans):
            raise ssl.SSLCertVerificationError(
                "server certificate matches none of subjectAltNames "
                f"{sorted(self.names)}: it carries {[value for _, value in sans]}"
            )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _san_checked(matcher: SanMatcher) -> tuple[type[ssl.SSLSocket], type[ssl.SSLObject]]:
    # The check runs at the end of the handshake, before httpcore writes a request byte; a
    # mismatch is an SSL error, which httpcore turns into a connect failure (503 UF).
    class SanCheckedSocket(ssl.SSLSocket):  # sync pools: wrap_socket
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            matcher.check(self.getpeercert())

    class SanCheckedObject(ssl.SSLObject):  # async pools (anyio): wrap_bio
        def do_handshake(self) -> None:
            super().do_handshake()
            matcher.check(self.getpeercert())

    return SanCheckedSocket, SanCheckedObject
