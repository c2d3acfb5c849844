"""A local certificate authority laid out like Istio's plug-in CA folder.

Files (Istio's names, so a folder made here can be mounted as ``cacerts`` and vice versa):

- ``root-cert.pem``  the trust bundle: the root, plus older or newer roots during a CA rotation;
- ``ca-cert.pem``    the signing certificate (the root itself, or an intermediate);
- ``ca-key.pem``     its key, mode 0600;
- ``cert-chain.pem`` the signing certificate followed by its issuers up to the root.

With ``intermediate=True`` the root key is also kept (``root-key.pem``, 0600) so that further
intermediates can be signed; Istio's operator docs keep it offline.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshlib._identity.certs import (
    DEFAULT_WORKLOAD_TTL_SECONDS,
    Svid,
    authority_key_id_of,
    issue_workload,
    key_matches,
    load_pem_certs,
    load_pem_key,
    new_key,
)
from meshlib._identity.spiffe_id import SpiffeId, SpiffeIdError
from meshlib.errors import IdentityError

if TYPE_CHECKING:
    from meshlib._identity.certs import PrivateKey
    from meshlib._identity.sources import CASource

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CERT_CHAIN_FILE",
    "DEFAULT_TRUST_DOMAIN",
    "ROOT_CERT_FILE",
    "ROOT_KEY_FILE",
    "LocalCA",
]

DEFAULT_TRUST_DOMAIN = "cluster.local"
ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
CA_CERT_FILE = "ca-cert.pem"
CA_KEY_FILE = "ca-key.pem"
CERT_CHAIN_FILE = "cert-chain.pem"
ROOT_TTL_SECONDS = 10 * 365 * 24 * 3600.0
"""Istio's self-signed root lives ten years."""
INTERMEDIATE_TTL_SECONDS = 2 * 365 * 24 * 3600.0
KEY_FILE_MODE = 0o600


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)


def _ca_cert(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    trust_domain: str,
    ttl: float,
    now: float,
) -> x509.Certificate:
    signer_key = issuer_key or key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - 3600))
        .not_valid_after(_utc(now + ttl))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            # Istio's CA certs name the trust domain the same way.
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
    )
    return builder.sign(signer_key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    # Create with the final mode so a key is never readable by others, even for an instant.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise IdentityError(f"{path}: cannot read ({error.strerror or error})") from None


@dataclass(frozen=True, slots=True)
class LocalCA:
    """A CA that signs workload SVIDs in process: for development, tests and small deployments."""

    trust_domain: str
    signing_cert: x509.Certificate
    signing_key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]
    """Intermediates above the signing cert, up to and excluding the root (empty for a root CA)."""
    roots: tuple[x509.Certificate, ...]
    """The trust bundle handed to workloads; several roots while a CA rotation overlaps."""
    directory: Path | None = None
    _sent: tuple[x509.Certificate, ...] = dataclasses.field(init=False, repr=False, compare=False)
    _aki: x509.AuthorityKeyIdentifier = dataclasses.field(init=False, repr=False, compare=False)
    _sent_pem: bytes = dataclasses.field(init=False, repr=False, compare=False)
    _roots_pem: bytes = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once: issuing is on the rotation path and must stay well under a millisecond.
        sent = tuple(c for c in self.issuer_chain if c not in self.roots)
        object.__setattr__(self, "_sent", sent)
        object.__setattr__(self, "_aki", authority_key_id_of(self.signing_cert))
        object.__setattr__(self, "_sent_pem", _pem(*sent))
        object.__setattr__(self, "_roots_pem", _pem(*self.roots))

    @classmethod
    def generate(
        cls,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        *,
        intermediate: bool = False,
        now: float | None = None,
    ) -> LocalCA:
        """A fresh CA in memory (nothing written)."""
        return cls._generate(trust_domain, intermediate=intermediate, now=now)[0]

    @classmethod
    def _generate(
        cls, trust_domain: str, *, intermediate: bool, now: float | None
    ) -> tuple[LocalCA, ec.EllipticCurvePrivateKey]:
        try:
            SpiffeId(trust_domain)
        except SpiffeIdError as error:
            raise IdentityError(str(error)) from None
        current = time.time() if now is None else now
        root_key = new_key()
        org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)
        root = _ca_cert(
            subject=x509.Name([org, x509.NameAttribute(NameOID.COMMON_NAME, "meshlib root CA")]),
            key=root_key,
            issuer=None,
            issuer_key=None,
            trust_domain=trust_domain,
            ttl=ROOT_TTL_SECONDS,
            now=current,
        )
        if not intermediate:
            return cls(trust_domain, root, root_key, (), (root,)), root_key
        inter_key = new_key()
        inter = _ca_cert(
            subject=x509.Name(
                [org, x509.NameAttribute(NameOID.COMMON_NAME, "meshlib intermediate CA")]
            ),
            key=inter_key,
            issuer=root,
            issuer_key=root_key,
            trust_domain=trust_domain,
            ttl=INTERMEDIATE_TTL_SECONDS,
            now=current,
        )
        return cls(trust_domain, inter, inter_key, (), (root,)), root_key

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        *,
        intermediate: bool = False,
    ) -> LocalCA:
        """Generate a CA and write it to ``directory`` (created if needed; refuses to overwrite)."""
        folder = Path(directory)
        if (folder / CA_KEY_FILE).exists():
            raise IdentityError(f"{folder / CA_KEY_FILE}: a CA already exists here")
        folder.mkdir(parents=True, exist_ok=True)
        ca, root_key = cls._generate(trust_domain, intermediate=intermediate, now=None)
        root = ca.roots[0]
        if intermediate:
            _write(folder / ROOT_KEY_FILE, _key_pem(root_key), KEY_FILE_MODE)
        _write(folder / CA_KEY_FILE, _key_pem(ca.signing_key), KEY_FILE_MODE)
        _write(folder / CA_CERT_FILE, _pem(ca.signing_cert))
        _write(folder / CERT_CHAIN_FILE, _pem(*ca.issuer_chain))
        _write(folder / ROOT_CERT_FILE, _pem(root))
        return dataclasses.replace(ca, directory=folder)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LocalCA:
        """Read a CA folder (this layout, or an Istio ``cacerts`` folder)."""
        folder = Path(directory)
        cert_path, key_path = folder / CA_CERT_FILE, folder / CA_KEY_FILE
        root_path, chain_path = folder / ROOT_CERT_FILE, folder / CERT_CHAIN_FILE
        certs = load_pem_certs(_read(cert_path), str(cert_path))
        key = load_pem_key(_read(key_path), str(key_path))
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{key_path}: the CA key must be EC (P-256)")
        if not key_matches(key, certs[0]):
            raise IdentityError(f"{key_path}: the key does not match {cert_path}")
        roots = load_pem_certs(_read(root_path), str(root_path))
        chain: list[x509.Certificate] = []
        if chain_path.exists():
            chain = load_pem_certs(_read(chain_path), str(chain_path))
        # cert-chain.pem starts with the signing cert; keep only what sits between it and a root.
        middle = tuple(c for c in chain if c != certs[0] and c not in roots)
        return cls(_trust_domain_of(certs[0], roots), certs[0], key, middle, tuple(roots), folder)

    @property
    def issuer_chain(self) -> tuple[x509.Certificate, ...]:
        """Signing cert, intermediates and the root that issued them (``cert-chain.pem``)."""
        top = self.chain[-1] if self.chain else self.signing_cert
        root = next((r for r in self.roots if r.subject == top.issuer), None)
        tail = (root,) if root is not None and root != self.signing_cert else ()
        return (self.signing_cert, *self.chain, *tail)

    def with_roots(self, roots: Sequence[x509.Certificate]) -> LocalCA:
        """The same signer handing out another trust bundle (CA rotation: old and new roots)."""
        return dataclasses.replace(self, roots=tuple(roots))

    def issue(
        self,
        namespace: str,
        service_account: str,
        dns_names: Sequence[str] = (),
        ttl: float = DEFAULT_WORKLOAD_TTL_SECONDS,
    ) -> Svid:
        """An SVID for ``spiffe://<td>/ns/<namespace>/sa/<service_account>``."""
        try:
            spiffe_id = SpiffeId.for_workload(self.trust_domain, namespace, service_account)
        except SpiffeIdError as error:
            raise IdentityError(str(error)) from None
        return self.issue_for(spiffe_id, dns_names=dns_names, ttl=ttl)

    def issue_for(
        self,
        spiffe_id: SpiffeId,
        *,
        dns_names: Sequence[str] = (),
        ttl: float = DEFAULT_WORKLOAD_TTL_SECONDS,
    ) -> Svid:
        """An SVID for any SPIFFE ID (not only Istio's ``ns/sa`` form)."""
        if ttl <= 0:
            raise IdentityError(f"ttl must be positive, not {ttl}")
        leaf, key = issue_workload(
            spiffe_id=spiffe_id,
            issuer_cert=self.signing_cert,
            issuer_key=self.signing_key,
            dns_names=dns_names,
            ttl=ttl,
            authority_key_id=self._aki,
        )
        # The root is in the bundle already; sending it again only costs handshake bytes.
        return Svid.issued(
            spiffe_id,
            leaf,
            key,
            intermediates=self._sent,
            intermediates_pem=self._sent_pem,
            bundle=self.roots,
            bundle_pem=self._roots_pem,
        )

    def source(
        self,
        namespace: str,
        service_account: str,
        dns_names: Sequence[str] = (),
        ttl: float = DEFAULT_WORKLOAD_TTL_SECONDS,
    ) -> CASource:
        """A rotating identity source issuing from this CA (re-issues at half-life, with jitter)."""
        from meshlib._identity.sources import CASource

        return CASource(self, namespace, service_account, dns_names=dns_names, ttl=ttl)


def _trust_domain_of(cert: x509.Certificate, roots: Sequence[x509.Certificate]) -> str:
    for candidate in (cert, *roots):
        try:
            san = candidate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            continue
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            try:
                return SpiffeId.parse(uri).trust_domain
            except SpiffeIdError:
                continue
    # Istio's own self-signed CA names the trust domain as the organisation.
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if orgs and isinstance(orgs[0].value, str):
        try:
            return SpiffeId(orgs[0].value).trust_domain
        except SpiffeIdError:
            pass
    return DEFAULT_TRUST_DOMAIN
