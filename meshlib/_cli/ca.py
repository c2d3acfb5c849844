"""``meshlib ca``: a local CA for development and tests (Istio plug-in CA file names)."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from meshlib._config.durations import DurationError, parse_duration
from meshlib._identity.ca import DEFAULT_TRUST_DOMAIN, LocalCA
from meshlib._identity.certs import cert_spiffe_ids
from meshlib.errors import IdentityError

__all__ = ["EXIT_ERROR", "Output", "ca_app", "describe_certificate", "register"]

EXIT_ERROR = 1
CERT_CHAIN_OUT = "cert-chain.pem"
KEY_OUT = "key.pem"
ROOT_OUT = "root-cert.pem"
KEY_MODE = 0o600

ca_app = typer.Typer(
    name="ca",
    help="A local certificate authority: create it, issue workload SVIDs, inspect certificates.",
    no_args_is_help=True,
)


class Output(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def register(app: typer.Typer) -> None:
    app.add_typer(ca_app, name="ca")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_ERROR)


@ca_app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the CA files (created).")],
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", help="SPIFFE trust domain.")
    ] = DEFAULT_TRUST_DOMAIN,
    intermediate: Annotated[
        bool, typer.Option("--intermediate", help="Sign workloads with an intermediate CA.")
    ] = False,
) -> None:
    """Create a CA: root-cert.pem, ca-cert.pem, ca-key.pem (0600), cert-chain.pem."""
    try:
        ca = LocalCA.create(directory, trust_domain, intermediate=intermediate)
    except IdentityError as error:
        raise _fail(str(error)) from None
    kind = "intermediate" if intermediate else "root"
    typer.echo(f"created {kind} CA for trust domain {ca.trust_domain} in {directory}")


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.touch(mode)
    path.chmod(mode)
    path.write_bytes(data)


@ca_app.command("issue")
def issue(
    directory: Annotated[Path, typer.Argument(help="The CA folder.")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Workload namespace.")],
    service_account: Annotated[str, typer.Option("--service-account", help="Service account.")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for cert-chain.pem, key.pem, root-cert.pem.")
    ],
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="DNS SAN (repeat); servers called by grpc.")
    ] = None,
    ttl: Annotated[str, typer.Option("--ttl", help="Lifetime, e.g. 24h, 90m.")] = "24h",
) -> None:
    """Issue an SVID for spiffe://<td>/ns/<namespace>/sa/<service-account>."""
    try:
        seconds = parse_duration(ttl)
    except (DurationError, ValueError) as error:
        raise _fail(f"--ttl {ttl!r}: {error}") from None
    try:
        ca = LocalCA.load(directory)
        svid = ca.issue(namespace, service_account, tuple(dns or ()), seconds)
    except IdentityError as error:
        raise _fail(str(error)) from None
    out.mkdir(parents=True, exist_ok=True)
    _write(out / KEY_OUT, svid.private_key_pem, KEY_MODE)
    _write(out / CERT_CHAIN_OUT, svid.cert_chain_pem)
    _write(out / ROOT_OUT, svid.bundle_pem)
    typer.echo(f"issued {svid.spiffe_id} (serial {svid.serial:x}) into {out}")


def _key_type(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__


def describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    """What ``meshlib ca inspect`` prints about one certificate."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns_names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        uris, dns_names = [], []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    ids = cert_spiffe_ids(cert)
    return {
        "spiffe_id": str(ids[0]) if len(ids) == 1 else None,
        "uri_sans": uris,
        "dns_sans": dns_names,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key_type": _key_type(cert),
        "is_ca": is_ca,
    }


@ca_app.command("inspect")
def inspect(
    file: Annotated[Path, typer.Argument(help="A PEM file (every certificate in it is shown).")],
    output: Annotated[Output, typer.Option("--output", "-o", help="text or json.")] = Output.TEXT,
) -> None:
    """Show SPIFFE ID, SANs, issuer, validity and key type of each certificate in FILE."""
    try:
        data = file.read_bytes()
    except OSError as error:
        raise _fail(f"{file}: cannot read ({error.strerror or error})") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise _fail(f"{file}: no PEM certificate")
    described = [describe_certificate(cert) for cert in certs]
    if output is Output.JSON:
        typer.echo(json.dumps(described, indent=2))
        return
    for index, item in enumerate(described):
        if index:
            typer.echo("")
        typer.echo(f"certificate {index + 1} of {len(described)}")
        for key, label in (
            ("spiffe_id", "SPIFFE ID"),
            ("uri_sans", "URI SANs"),
            ("dns_sans", "DNS SANs"),
            ("subject", "subject"),
            ("issuer", "issuer"),
            ("serial", "serial"),
            ("not_before", "not before"),
            ("not_after", "not after"),
            ("key_type", "key type"),
            ("is_ca", "CA"),
        ):
            value = item[key]
            if isinstance(value, list):
                value = ", ".join(value) or "-"
            typer.echo(f"  {label + ':':<12} {value if value not in (None, '') else '-'}")
