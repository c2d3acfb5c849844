"""FileSource: a bad set is refused at construction naming the file, ignored at runtime."""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshlib._identity import certs
from meshlib._identity.sources import load_svid_files
from meshlib.errors import IdentityError
from meshlib.identity import FileSource, LocalCA, Svid

from .conftest import write_svid

POLL = 0.05
WAIT_SECONDS = 10.0


def _reissue(svid: Svid, ca: LocalCA, *, start: float, end: float) -> x509.Certificate:
    """The same key and SAN with another validity window (expired or not yet valid)."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.signing_cert.subject)
        .public_key(svid.private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(start, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(end, tz=dt.UTC))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(svid.spiffe_id))]),
            critical=True,
        )
        .sign(ca.signing_key, hashes.SHA256())
    )


def _pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def files(ca: LocalCA, tmp_path: Path) -> tuple[Path, Path, Path]:
    return write_svid(ca.issue("default", "files"), tmp_path / "svid")


def test_loads_a_good_set(files: tuple[Path, Path, Path]) -> None:
    with FileSource(*files, poll_interval=POLL) as source:
        assert source.current().spiffe_id.service_account == "files"
        assert source.last_error is None
        assert source.seconds_left() > 0
        assert "FileSource(" in repr(source)


def _break(kind: str, files: tuple[Path, Path, Path], ca: LocalCA, other: LocalCA) -> Path:
    chain, key, bundle = files
    svid = load_svid_files(*files)
    now = svid.not_before + 1000
    if kind == "wrong key":
        key.write_bytes(other.issue("default", "x").private_key_pem)
        return key
    if kind == "bad PEM":
        chain.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        return chain
    if kind == "half-written":
        chain.write_bytes(svid.cert_chain_pem[: len(svid.cert_chain_pem) // 2])
        return chain
    if kind == "empty key":
        key.write_bytes(b"")
        return key
    if kind == "expired":
        chain.write_bytes(_pem(_reissue(svid, ca, start=now - 7200, end=now - 3600)))
        return chain
    if kind == "not yet valid":
        chain.write_bytes(_pem(_reissue(svid, ca, start=now + 3600, end=now + 7200)))
        return chain
    if kind == "missing bundle":
        bundle.unlink()
        return bundle
    if kind == "unreadable":
        chain.unlink()
        chain.mkdir()  # a directory cannot be read as a file, even by root
        return chain
    if kind == "foreign bundle":
        bundle.write_bytes(other.issue("default", "x").bundle_pem)
        return chain
    raise AssertionError(kind)


KINDS = [
    ("wrong key", "does not match"),
    ("bad PEM", "bad PEM certificate"),
    ("half-written", "PEM certificate"),
    ("empty key", "private key"),
    ("expired", "expired"),
    ("not yet valid", "not valid before"),
    ("missing bundle", "cannot read"),
    ("unreadable", "cannot read"),
    ("foreign bundle", "does not lead to a root"),
]


@pytest.mark.parametrize(("kind", "message"), KINDS)
def test_bad_set_at_construction_names_the_file(
    kind: str, message: str, files: tuple[Path, Path, Path], ca: LocalCA, other_ca: LocalCA
) -> None:
    culprit = _break(kind, files, ca, other_ca)
    with pytest.raises(IdentityError, match=message) as info:
        FileSource(*files, poll_interval=POLL)
    assert str(culprit) in str(info.value)


@pytest.mark.parametrize(("kind", "message"), KINDS)
def test_bad_set_at_runtime_keeps_the_last_good_identity(
    kind: str, message: str, files: tuple[Path, Path, Path], ca: LocalCA, other_ca: LocalCA
) -> None:
    with FileSource(*files, poll_interval=POLL) as source:
        good = source.current()
        heard: list[Svid] = []
        source.subscribe(heard.append)
        culprit = _break(kind, files, ca, other_ca)
        source.reload_now()
        assert source.current() is good
        assert source.last_error is not None
        assert message in source.last_error
        assert str(culprit) in source.last_error
        assert heard == []


def test_a_new_whole_set_is_picked_up_by_the_watcher(
    files: tuple[Path, Path, Path], ca: LocalCA, tmp_path: Path
) -> None:
    chain, key, _ = files
    with FileSource(*files, poll_interval=POLL) as source:
        first = source.current()
        changed = threading.Event()
        heard: list[Svid] = []

        def on_change(svid: Svid) -> None:
            heard.append(svid)
            changed.set()

        source.subscribe(on_change)
        fresh = ca.issue("default", "files")
        # A writer that replaces the cert first: the pair does not fit until the key follows.
        chain.write_bytes(fresh.cert_chain_pem)
        source.reload_now()
        assert source.current() is first
        assert "does not match" in (source.last_error or "")
        key.write_bytes(fresh.private_key_pem)
        assert changed.wait(WAIT_SECONDS)
        assert source.current().serial == fresh.serial
        assert source.last_error is None
        assert [s.serial for s in heard] == [fresh.serial]


def test_touching_files_without_change_publishes_nothing(files: tuple[Path, Path, Path]) -> None:
    with FileSource(*files, poll_interval=POLL) as source:
        heard: list[Svid] = []
        source.subscribe(heard.append)
        for path in files:
            os.utime(path)
        source.reload_now()
        source._tick()  # same stat signature now: nothing to do
        assert heard == []


def test_rsa_key_and_cert_are_accepted(ca: LocalCA, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf, _ = certs.issue_workload(
        spiffe_id=ca.issue("default", "rsa").spiffe_id,
        issuer_cert=ca.signing_cert,
        issuer_key=ca.signing_key,
        key=key,  # type: ignore[arg-type]
    )
    folder = tmp_path / "rsa"
    svid = Svid.build([leaf], key, ca.roots)
    paths = write_svid(svid, folder)
    assert load_svid_files(*paths).serial == leaf.serial_number


def test_chain_checks(ca: LocalCA, other_ca: LocalCA) -> None:
    svid = ca.issue("default", "a")
    now = svid.not_before + 10
    assert certs.check_chain(svid.cert_chain, ca.roots, now) is None
    # A chain that includes the root itself is fine too.
    assert certs.check_chain((*svid.cert_chain, ca.roots[0]), ca.roots, now) is None
    assert certs.check_chain((ca.roots[0],), ca.roots, now) is None
    assert "does not lead" in (certs.check_chain(svid.cert_chain, other_ca.roots, now) or "")
