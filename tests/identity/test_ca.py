"""LocalCA: files, certificate shape (Istio's workload cert), issuance and rotation."""

from __future__ import annotations

import logging
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshlib._identity import ca as ca_module
from meshlib._identity import certs
from meshlib._identity.sources import EXPIRY_WARNING_FRACTION, StaticSource
from meshlib.errors import IdentityError
from meshlib.identity import IdentitySource, LocalCA, SpiffeId, Svid

WAIT_SECONDS = 10.0


def test_create_writes_istio_plugin_ca_files_with_private_keys(tmp_path: Path) -> None:
    LocalCA.create(tmp_path / "ca", "example.org", intermediate=True)
    names = {p.name for p in (tmp_path / "ca").iterdir()}
    assert names == {"root-cert.pem", "ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-key.pem"}
    for key in ("ca-key.pem", "root-key.pem"):
        assert stat.S_IMODE((tmp_path / "ca" / key).stat().st_mode) == 0o600
    loaded = LocalCA.load(tmp_path / "ca")
    assert loaded.trust_domain == "example.org"
    assert loaded.signing_cert != loaded.roots[0]
    assert loaded.issuer_chain == (loaded.signing_cert, loaded.roots[0])


def test_root_only_ca_signs_with_the_root(tmp_path: Path) -> None:
    created = LocalCA.create(tmp_path / "ca")
    assert not (tmp_path / "ca" / "root-key.pem").exists()
    assert stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    loaded = LocalCA.load(tmp_path / "ca")
    assert loaded.signing_cert == loaded.roots[0] == created.roots[0]
    assert loaded.trust_domain == "cluster.local"
    assert loaded.issuer_chain == (loaded.signing_cert,)


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    LocalCA.create(tmp_path)
    with pytest.raises(IdentityError, match="already exists"):
        LocalCA.create(tmp_path)


def test_invalid_trust_domain_is_refused() -> None:
    with pytest.raises(IdentityError, match="trust domain"):
        LocalCA.generate("Not Valid")


def test_workload_certificate_has_istio_shape(ca: LocalCA) -> None:
    before = time.time()
    svid = ca.issue("default", "reviews", ["reviews.default.svc.cluster.local"], ttl=3600)
    leaf = svid.leaf
    assert svid.spiffe_id == SpiffeId.parse("spiffe://cluster.local/ns/default/sa/reviews")
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(svid.spiffe_id)]
    assert san.value.get_values_for_type(x509.DNSName) == ["reviews.default.svc.cluster.local"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    assert not usage.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(svid.private_key, ec.EllipticCurvePrivateKey)
    assert svid.private_key.curve.name == "secp256r1"
    assert svid.not_before == pytest.approx(before - certs.CLOCK_SKEW_SECONDS, abs=5)
    assert svid.not_after == pytest.approx(before + 3600, abs=5)
    assert 3590 < svid.seconds_left() <= 3600
    assert svid.bundle == ca.roots
    assert certs.key_matches(svid.private_key, leaf)


def test_client_svid_has_only_the_uri_san(ca: LocalCA) -> None:
    svid = ca.issue("default", "client")
    san = svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(list(san)) == 1


def test_intermediate_is_sent_in_the_chain_but_not_the_root() -> None:
    ca = LocalCA.generate(intermediate=True)
    svid = ca.issue("default", "a")
    assert len(svid.cert_chain) == 2
    assert svid.cert_chain[1] == ca.signing_cert
    assert ca.roots[0] not in svid.cert_chain
    assert certs.check_chain(svid.cert_chain, svid.bundle, time.time()) is None


def test_short_ttl_backdates_at_most_half_the_ttl(ca: LocalCA) -> None:
    svid = ca.issue("default", "a", ttl=4)
    assert svid.lifetime == pytest.approx(6, abs=1)


def test_leaf_never_outlives_its_issuer(ca: LocalCA) -> None:
    svid = ca.issue("default", "a", ttl=100 * 365 * 24 * 3600)
    assert svid.not_after <= ca.signing_cert.not_valid_after_utc.timestamp()


@pytest.mark.parametrize(
    ("namespace", "ttl", "message"),
    [("bad/ns", 60.0, "segment"), ("ok", 0.0, "ttl must be positive")],
)
def test_issue_rejects_bad_input(ca: LocalCA, namespace: str, ttl: float, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        ca.issue(namespace, "sa", ttl=ttl)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    LocalCA.create(tmp_path)
    other = LocalCA.generate()
    (tmp_path / "ca-key.pem").write_bytes(
        certs.Svid.build([other.signing_cert], other.signing_key, other.roots).private_key_pem
    )
    with pytest.raises(IdentityError, match=r"ca-key\.pem: the key does not match"):
        LocalCA.load(tmp_path)
    (tmp_path / "ca-cert.pem").write_text("garbage")
    with pytest.raises(IdentityError, match=r"ca-cert\.pem: no PEM certificate"):
        LocalCA.load(tmp_path)
    (tmp_path / "ca-cert.pem").unlink()
    with pytest.raises(IdentityError, match=r"ca-cert\.pem: cannot read"):
        LocalCA.load(tmp_path)


def test_load_refuses_rsa_ca_key_and_empty_roots(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    LocalCA.create(tmp_path)
    (tmp_path / "root-cert.pem").write_text("")
    with pytest.raises(IdentityError, match=r"root-cert\.pem: no PEM certificate"):
        LocalCA.load(tmp_path)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "ca-key.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(IdentityError, match="must be EC"):
        LocalCA.load(tmp_path)


def test_istio_style_ca_without_spiffe_san_uses_organisation(tmp_path: Path) -> None:
    ca = LocalCA.generate("corp.example")
    assert ca_module._trust_domain_of(_strip_san(ca), []) == "corp.example"
    assert ca_module._trust_domain_of(_strip_san(ca, org="Not A Domain"), []) == "cluster.local"


def _strip_san(ca: LocalCA, org: str | None = None) -> x509.Certificate:
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org or ca.trust_domain)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca.signing_key.public_key())
        .serial_number(1)
        .not_valid_before(ca.signing_cert.not_valid_before_utc)
        .not_valid_after(ca.signing_cert.not_valid_after_utc)
        .sign(ca.signing_key, hashes.SHA256())
    )


def _wait_for(condition: threading.Event) -> None:
    assert condition.wait(WAIT_SECONDS), "timed out waiting for the identity source"


def test_ca_source_rotates_at_half_life(ca: LocalCA) -> None:
    seen: list[Svid] = []
    rotated = threading.Event()

    def listener(svid: Svid) -> None:
        seen.append(svid)
        if len(seen) >= 2:
            rotated.set()

    with ca.source("default", "rot", ttl=0.6) as source:
        assert isinstance(source, IdentitySource)
        first = source.current()
        source.subscribe(listener)
        _wait_for(rotated)
    serials = {first.serial, *(s.serial for s in seen)}
    assert len(serials) >= 3
    assert all(s.spiffe_id == first.spiffe_id for s in seen)


def test_ca_source_rotate_ca_switches_issuer_and_bundle(ca: LocalCA) -> None:
    new = LocalCA.generate()
    overlap = new.with_roots((*ca.roots, *new.roots))
    with ca.source("default", "x") as source:
        before = source.current()
        after = source.rotate_ca(overlap)
        assert source.ca is overlap
        assert source.current() is after
    assert after.leaf.issuer == new.signing_cert.subject
    assert after.bundle == (*ca.roots, *new.roots)
    assert before.serial != after.serial
    assert repr(source) == "CASource(cluster.local/ns/default/sa/x)"


def test_unsubscribed_listener_hears_nothing_and_broken_listener_is_isolated(
    ca: LocalCA, caplog: pytest.LogCaptureFixture
) -> None:
    source = StaticSource(ca.issue("default", "a"))
    heard: list[int] = []
    unsubscribe = source.subscribe(lambda svid: heard.append(svid.serial))

    def broken(svid: Svid) -> None:
        raise RuntimeError("boom")

    source.subscribe(broken)
    source.set(ca.issue("default", "a"))
    unsubscribe()
    unsubscribe()
    source.set(ca.issue("default", "a"))
    assert len(heard) == 1
    assert "identity listener" in caplog.text
    source.close()


def test_expiry_warning_past_80_percent_once_per_serial(
    ca: LocalCA, caplog: pytest.LogCaptureFixture
) -> None:
    svid = ca.issue("default", "old", ttl=1000)
    source = StaticSource(svid)
    early = svid.not_before + svid.lifetime * (EXPIRY_WARNING_FRACTION - 0.1)
    late = svid.not_before + svid.lifetime * (EXPIRY_WARNING_FRACTION + 0.1)
    with caplog.at_level(logging.WARNING, logger="meshlib.identity"):
        source._check_expiry(early)
        assert not caplog.records
        source._check_expiry(late)
        source._check_expiry(late)
    assert len(caplog.records) == 1
    assert "without renewal" in caplog.records[0].getMessage()
    assert source.seconds_left() == pytest.approx(svid.seconds_left(), abs=1)


def test_zero_lifetime_counts_as_used(ca: LocalCA) -> None:
    svid = ca.issue("default", "a")
    assert svid.lifetime_used(svid.not_after) == pytest.approx(1.0)
    assert svid.lifetime_used(svid.not_before) == pytest.approx(0.0)


def test_svid_build_rejects_leaf_without_one_spiffe_id(ca: LocalCA) -> None:
    with pytest.raises(IdentityError, match="at least one"):
        Svid.build([], ca.signing_key, ca.roots)
    with pytest.raises(IdentityError, match="0 SPIFFE URI SANs"):
        Svid.build([_strip_san(ca)], ca.signing_key, ca.roots)


def test_der_spiffe_id(ca: LocalCA) -> None:
    from cryptography.hazmat.primitives import serialization

    svid = ca.issue("default", "a")
    assert certs.der_spiffe_id(svid.leaf.public_bytes(serialization.Encoding.DER)) == svid.spiffe_id
    assert certs.der_spiffe_id(b"not a cert") is None
    assert certs.der_spiffe_id(_strip_san(ca).public_bytes(serialization.Encoding.DER)) is None


def test_rotating_identity_keeps_the_old_generation_when_contexts_fail(
    ca: LocalCA, other_ca: LocalCA, caplog: pytest.LogCaptureFixture
) -> None:
    from meshlib._identity.rotation import RotatingIdentity

    good = ca.issue("default", "a")
    source = StaticSource(good)
    with RotatingIdentity(source) as identity:
        assert identity.source is source
        assert identity.seconds_left() == pytest.approx(good.seconds_left(), abs=1)

        def broken(generation: object) -> None:
            raise RuntimeError("listener")

        identity.subscribe(broken)
        mismatched = Svid.build(
            good.cert_chain, other_ca.issue("default", "a").private_key, ca.roots
        )
        source.set(mismatched)
        assert identity.svid is good
        assert "could not build TLS contexts" in caplog.text
        source.set(ca.issue("default", "a"))
        assert identity.generation.number == 2
        assert "rotation listener" in caplog.text
