"""Certificates: SVIDs, PEM encoding, issuance and the checks a loaded set must pass.

Workload certificates follow Istio's CA: empty subject, one critical URI SAN (the SPIFFE ID),
DNS SANs only for servers (grpc clients check a DNS name, never the URI), KeyUsage
digitalSignature and keyEncipherment, EKU serverAuth and clientAuth, NotBefore two minutes
back for clock skew. Keys are EC P-256: grpcio refuses Ed25519; RSA-2048 keygen is ~250x slower.

cryptography (~7 MB resident) is imported inside the functions that parse, encode or sign, never
at module level: ``tls``, ``rotation`` and ``sources`` import this module, and a plaintext mesh
imports them without ever touching a certificate.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from meshlib._identity.spiffe_id import SpiffeId, SpiffeIdError
from meshlib.errors import IdentityError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

    PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "DEFAULT_WORKLOAD_TTL_SECONDS",
    "PrivateKey",
    "Svid",
    "authority_key_id_of",
    "cert_spiffe_ids",
    "check_chain",
    "der_spiffe_id",
    "issue_workload",
    "key_matches",
    "load_pem_certs",
    "load_pem_key",
    "new_key",
]

DEFAULT_WORKLOAD_TTL_SECONDS = 24 * 3600.0
CLOCK_SKEW_SECONDS = 120.0
"""Istio backdates NotBefore by two minutes so peers with a slow clock accept a fresh cert."""

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        # ``PrivateKey`` exists at run time too, built on first use (PEP 562).
        if name == "PrivateKey":
            from cryptography.hazmat.primitives.asymmetric import ec, rsa

            return ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)


def _pem_certs(certs: Sequence[x509.Certificate]) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _pem_key(key: PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True, slots=True)
class Svid:
    """An X.509-SVID (leaf first, then intermediates), its key and the trust bundle it came with.

    The bundle travels with the SVID, as Istio's SDS pushes ``ROOTCA`` next to the cert: a CA
    rotation changes both at once, and a listener must see them together.
    """

    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey = field(repr=False)
    bundle: tuple[x509.Certificate, ...]
    cert_chain_pem: bytes = field(repr=False, compare=False, default=b"")
    private_key_pem: bytes = field(repr=False, compare=False, default=b"")
    bundle_pem: bytes = field(repr=False, compare=False, default=b"")

    @classmethod
    def build(
        cls,
        cert_chain: Sequence[x509.Certificate],
        private_key: PrivateKey,
        bundle: Sequence[x509.Certificate],
    ) -> Svid:
        """Build from parsed objects; the SPIFFE ID is read from the leaf's URI SAN."""
        if not cert_chain:
            raise IdentityError("an SVID needs at least one certificate")
        ids = cert_spiffe_ids(cert_chain[0])
        if len(ids) != 1:
            raise IdentityError(f"the leaf certificate has {len(ids)} SPIFFE URI SANs, not one")
        return cls(
            spiffe_id=ids[0],
            cert_chain=tuple(cert_chain),
            private_key=private_key,
            bundle=tuple(bundle),
            cert_chain_pem=_pem_certs(cert_chain),
            private_key_pem=_pem_key(private_key),
            bundle_pem=_pem_certs(bundle),
        )

    @classmethod
    def issued(
        cls,
        spiffe_id: SpiffeId,
        leaf: x509.Certificate,
        private_key: PrivateKey,
        *,
        intermediates: tuple[x509.Certificate, ...],
        intermediates_pem: bytes,
        bundle: tuple[x509.Certificate, ...],
        bundle_pem: bytes,
    ) -> Svid:
        """Fast path for a leaf just signed by a known CA: nothing is parsed or encoded twice."""
        from cryptography.hazmat.primitives import serialization

        return cls(
            spiffe_id=spiffe_id,
            cert_chain=(leaf, *intermediates),
            private_key=private_key,
            bundle=bundle,
            cert_chain_pem=leaf.public_bytes(serialization.Encoding.PEM) + intermediates_pem,
            private_key_pem=_pem_key(private_key),
            bundle_pem=bundle_pem,
        )

    @property
    def leaf(self) -> x509.Certificate:
        return self.cert_chain[0]

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    @property
    def not_before(self) -> float:
        return self.leaf.not_valid_before_utc.timestamp()

    @property
    def not_after(self) -> float:
        return self.leaf.not_valid_after_utc.timestamp()

    @property
    def lifetime(self) -> float:
        return self.not_after - self.not_before

    def seconds_left(self, now: float | None = None) -> float:
        """Seconds until the leaf expires (negative once expired); ``now`` is Unix time."""
        return self.not_after - (time.time() if now is None else now)

    def lifetime_used(self, now: float | None = None) -> float:
        """Fraction of the validity period already spent, 0 at NotBefore, 1 at expiry."""
        current = time.time() if now is None else now
        if self.lifetime <= 0:
            return 1.0
        return (current - self.not_before) / self.lifetime


def cert_spiffe_ids(cert: x509.Certificate) -> list[SpiffeId]:
    """The valid SPIFFE IDs among a certificate's URI SANs."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found = []
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        try:
            found.append(SpiffeId.parse(uri))
        except SpiffeIdError:
            continue
    return found


def der_spiffe_id(der: bytes) -> SpiffeId | None:
    """The single SPIFFE ID of a DER certificate, or ``None`` (none, several, or unparsable)."""
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    ids = cert_spiffe_ids(cert)
    return ids[0] if len(ids) == 1 else None


def load_pem_certs(data: bytes, what: str) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        # An empty or half-written file is the common case; say so plainly.
        reason = (
            "no PEM certificate" if b"-----BEGIN" not in data else f"bad PEM certificate ({error})"
        )
        raise IdentityError(f"{what}: {reason}") from None
    return certs


def load_pem_key(data: bytes, what: str) -> PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise IdentityError(f"{what}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise IdentityError(f"{what}: only EC and RSA keys are supported")
    return key


def key_matches(key: PrivateKey, cert: x509.Certificate) -> bool:
    return key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


def check_chain(
    chain: Sequence[x509.Certificate], bundle: Sequence[x509.Certificate], now: float
) -> str | None:
    """Why ``chain`` is not valid at ``now`` or does not reach a root of ``bundle``; else ``None``.

    Signatures and validity only: the TLS stack does the full path validation per handshake; this
    catches a mismatched set before it replaces a good one.
    """
    current = _utc(now)
    for cert in chain:
        if cert.not_valid_before_utc > current:
            start = cert.not_valid_before_utc
            return f"certificate {cert.serial_number:x} is not valid before {start}"
        if cert.not_valid_after_utc < current:
            return f"certificate {cert.serial_number:x} expired at {cert.not_valid_after_utc}"
    candidates = list(chain[1:]) + list(bundle)
    cert = chain[0]
    for _ in range(len(candidates) + 1):
        if cert in bundle:
            return None
        issuer = next((c for c in candidates if _issued_by(cert, c)), None)
        if issuer is None:
            return "the certificate chain does not lead to a root in the trust bundle"
        if issuer in bundle:
            return None
        cert = issuer
    return "the certificate chain is circular"


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def authority_key_id_of(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    from cryptography import x509

    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


def issue_workload(
    *,
    spiffe_id: SpiffeId,
    issuer_cert: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    dns_names: Sequence[str] = (),
    ttl: float = DEFAULT_WORKLOAD_TTL_SECONDS,
    now: float | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    authority_key_id: x509.AuthorityKeyIdentifier | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A workload leaf for ``spiffe_id`` signed by the issuer, and its fresh P-256 key.

    ``authority_key_id`` may be precomputed by a caller that issues many leaves (it hashes the key).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    current = time.time() if now is None else now
    leaf_key = key or new_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    names.extend(x509.DNSName(name) for name in dns_names)
    not_after = min(current + ttl, issuer_cert.not_valid_after_utc.timestamp())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        # Short test TTLs would otherwise be mostly backdate; cap it at half the TTL.
        .not_valid_before(_utc(current - min(CLOCK_SKEW_SECONDS, ttl / 2)))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            authority_key_id or authority_key_id_of(issuer_cert),
            critical=False,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256()), leaf_key
