"""``meshlib ca init | issue | inspect`` as a user runs them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from meshlib.identity import FileSource, LocalCA

typer_testing = pytest.importorskip("typer.testing")
pytestmark = pytest.mark.extras


def _run(*args: str) -> tuple[int, str, str]:
    from meshlib._cli import build_app

    result = typer_testing.CliRunner().invoke(build_app(), list(args))
    return result.exit_code, result.stdout, result.stderr


def test_init_issue_inspect(tmp_path: Path) -> None:
    code, out, _ = _run(
        "ca", "init", str(tmp_path / "ca"), "--trust-domain", "corp.example", "--intermediate"
    )
    assert code == 0, out
    assert "intermediate CA for trust domain corp.example" in out
    assert LocalCA.load(tmp_path / "ca").trust_domain == "corp.example"

    code, out, _ = _run(
        "ca",
        "issue",
        str(tmp_path / "ca"),
        "--namespace",
        "shop",
        "--service-account",
        "cart",
        "--out",
        str(tmp_path / "cart"),
        "--dns",
        "cart.shop.svc",
        "--dns",
        "cart",
        "--ttl",
        "90m",
    )
    assert code == 0, out
    assert "spiffe://corp.example/ns/shop/sa/cart" in out
    assert stat.S_IMODE((tmp_path / "cart" / "key.pem").stat().st_mode) == 0o600
    with FileSource(
        tmp_path / "cart" / "cert-chain.pem",
        tmp_path / "cart" / "key.pem",
        tmp_path / "cart" / "root-cert.pem",
    ) as source:
        svid = source.current()
        assert svid.lifetime == pytest.approx(90 * 60 + 120, abs=5)

    code, out, _ = _run("ca", "inspect", str(tmp_path / "cart" / "cert-chain.pem"))
    assert code == 0
    assert "SPIFFE ID:   spiffe://corp.example/ns/shop/sa/cart" in out
    assert "DNS SANs:    cart.shop.svc, cart" in out
    assert "key type:    EC secp256r1" in out
    assert "certificate 2 of 2" in out

    code, out, _ = _run(
        "ca", "inspect", str(tmp_path / "cart" / "cert-chain.pem"), "--output", "json"
    )
    assert code == 0
    described = json.loads(out)
    assert described[0]["spiffe_id"] == "spiffe://corp.example/ns/shop/sa/cart"
    assert described[0]["issuer"] == "CN=meshlib intermediate CA,O=corp.example"
    assert described[1]["is_ca"] is True
    assert {"not_before", "not_after", "uri_sans", "dns_sans", "key_type"} <= set(described[0])


def test_inspect_other_key_types_and_bare_certs(tmp_path: Path) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.x509.oid import NameOID

    from meshlib._cli.ca import describe_certificate

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare")])
    now = dt.datetime.now(dt.UTC)
    for key in (
        rsa.generate_private_key(public_exponent=65537, key_size=1024),
        ed25519.Ed25519PrivateKey.generate(),
    ):
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
        )
        described = describe_certificate(cert)
        assert described["spiffe_id"] is None
        assert described["uri_sans"] == []
        assert described["is_ca"] is False
        assert described["key_type"] in {"RSA 1024", "Ed25519"}
        (tmp_path / "bare.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        code, out, _ = _run("ca", "inspect", str(tmp_path / "bare.pem"))
        assert code == 0
        assert "SPIFFE ID:   -" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ca", "inspect", "{tmp}/missing.pem"), "cannot read"),
        (("ca", "inspect", "{tmp}/garbage.pem"), "no PEM certificate"),
        (
            (
                "ca",
                "issue",
                "{tmp}/nothing",
                "-n",
                "a",
                "--service-account",
                "b",
                "--out",
                "{tmp}/o",
            ),
            "cannot read",
        ),
        (
            (
                "ca",
                "issue",
                "{tmp}/ca",
                "-n",
                "a",
                "--service-account",
                "b",
                "--out",
                "{tmp}/o",
                "--ttl",
                "soon",
            ),
            "--ttl",
        ),
        (
            ("ca", "issue", "{tmp}/ca", "-n", "a/b", "--service-account", "b", "--out", "{tmp}/o"),
            "segment",
        ),
        (("ca", "init", "{tmp}/ca"), "already exists"),
    ],
)
def test_errors_exit_1_with_a_message(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    LocalCA.create(tmp_path / "ca")
    (tmp_path / "garbage.pem").write_text("nope")
    code, _, err = _run(*(a.format(tmp=tmp_path) for a in args))
    assert code == 1
    assert message in err
