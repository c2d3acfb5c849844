"""TLS origination: which server names and certificates a SIMPLE/MUTUAL DestinationRule accepts.

Real TLS servers on 127.0.0.1 with certificates made by ``cryptography``: ``sni`` changes the
name sent and checked, ``subjectAltNames`` replace that check (Envoy's SAN matcher, any SAN
type), the ServiceEntry's ``subjectAltNames`` apply when the rule names none and sets ``sni``,
and a certificate revocation list refuses a revoked server.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given
from hypothesis import strategies as st
from test_tls_origination import HOST, TlsServer, config, send

from meshlib._model.commands import TlsOrigination
from meshlib.httpx._tls import SanMatcher, origination_context
from meshlib.identity import LocalCA

BACKEND = "backend.internal"
SPIFFE = "spiffe://cluster.local/ns/default/sa/api"


class Leaf:
    """A server certificate with chosen SANs, signed by ``ca`` (what ``TlsServer`` installs)."""

    def __init__(self, ca: LocalCA, names: Sequence[x509.GeneralName]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca.signing_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.signing_key.public_key()),
                critical=False,
            )
            .sign(ca.signing_key, hashes.SHA256())
        )
        self.cert_chain_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.private_key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.bundle_pem = ca.roots[0].public_bytes(serialization.Encoding.PEM)

    def issue(self, *_: object) -> Leaf:
        return self


def server(folder: Path, ca: LocalCA, *names: x509.GeneralName) -> TlsServer:
    return TlsServer(folder, cast(LocalCA, Leaf(ca, names)), require_client_cert=False)


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.generate("cluster.local")


def rule(port: int, tls: str, service_sans: Sequence[str] = ()) -> str:
    """The origination test's ServiceEntry and DestinationRule, the entry naming SANs."""
    entry = "location: MESH_EXTERNAL"
    return config(port, tls).replace(entry, f"{entry}\n  subjectAltNames: {list(service_sans)}")


def test_sni_is_the_name_sent_and_checked(kind: str, tmp_path: Path, ca: LocalCA) -> None:
    ca_file = tmp_path / "ca.pem"
    with server(tmp_path, ca, x509.DNSName(BACKEND)) as up:
        plain = f"{{mode: SIMPLE, caCertificates: {ca_file}}}"
        assert send(kind, rule(up.port, plain), up.port, 1) == [503]  # api.test is not its name
        named = f"{{mode: SIMPLE, caCertificates: {ca_file}, sni: {BACKEND}}}"
        assert send(kind, rule(up.port, named), up.port, 1) == [200]
        assert up.state.requests == 1


@pytest.mark.parametrize(
    ("names", "wanted"),
    [
        ([x509.DNSName(BACKEND)], [BACKEND]),
        ([x509.DNSName("*.internal")], ["other", BACKEND.upper()]),
        ([x509.UniformResourceIdentifier(SPIFFE)], [SPIFFE]),
        ([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], ["127.0.0.1"]),
    ],
    ids=["dns", "wildcard-dns", "uri", "ip"],
)
def test_subject_alt_names_replace_the_host_name_check(
    kind: str, tmp_path: Path, ca: LocalCA, names: list[x509.GeneralName], wanted: list[str]
) -> None:
    ca_file = tmp_path / "ca.pem"
    with server(tmp_path, ca, *names) as up:
        tls = f"{{mode: SIMPLE, caCertificates: {ca_file}, subjectAltNames: {wanted}}}"
        assert send(kind, rule(up.port, tls), up.port, 2) == [200, 200]


def test_a_server_without_any_wanted_name_is_refused_before_the_request(
    kind: str, tmp_path: Path, ca: LocalCA
) -> None:
    ca_file = tmp_path / "ca.pem"
    # The certificate is valid for the called host itself: only the SAN list refuses it.
    with server(tmp_path, ca, x509.DNSName(HOST), x509.DNSName("a.b.internal")) as up:
        tls = f"{{mode: SIMPLE, caCertificates: {ca_file}, subjectAltNames: [x.internal]}}"
        assert send(kind, rule(up.port, tls), up.port, 1) == [503]
        assert up.state.requests == 0
        skip = "{mode: SIMPLE, insecureSkipVerify: true}"
        assert send(kind, rule(up.port, skip), up.port, 1) == [200]


def test_service_entry_names_apply_with_an_explicit_sni(
    kind: str, tmp_path: Path, ca: LocalCA
) -> None:
    ca_file = tmp_path / "ca.pem"
    with server(tmp_path, ca, x509.DNSName(BACKEND)) as up:
        tls = f"{{mode: SIMPLE, caCertificates: {ca_file}, sni: front.example}}"
        assert send(kind, rule(up.port, tls, [BACKEND]), up.port, 1) == [200]
        assert send(kind, rule(up.port, tls, ["nope.internal"]), up.port, 1) == [503]
        # Without sni the called host is checked (auto SAN validation), not the entry's names.
        auto = f"{{mode: SIMPLE, caCertificates: {ca_file}}}"
        assert send(kind, rule(up.port, auto, [BACKEND]), up.port, 1) == [503]


# -- certificate revocation ----------------------------------------------------------------


def write_crl(path: Path, ca: LocalCA, revoked: Sequence[x509.Certificate]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.signing_cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(hours=1))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - datetime.timedelta(minutes=1))
            .build()
        )
    crl = builder.sign(ca.signing_key, hashes.SHA256())
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def get(kind: str, settings: TlsOrigination, port: int) -> int | str:
    """One request over the origination context (sync: SSLSocket, async: SSLObject)."""
    context = origination_context(settings)
    url = f"https://127.0.0.1:{port}/"
    try:
        if kind == "sync":
            with httpx.Client(verify=context) as client:
                return client.get(url).status_code

        async def run() -> int:
            async with httpx.AsyncClient(verify=context) as client:
                return (await client.get(url)).status_code

        return asyncio.run(run())
    except httpx.ConnectError as error:
        return "revoked" if "revoked" in str(error) else str(error)


def test_ca_crl_refuses_a_revoked_server_certificate(
    kind: str, tmp_path: Path, ca: LocalCA
) -> None:
    ca_file, crl_file = tmp_path / "ca.pem", tmp_path / "crl.pem"
    leaf = Leaf(ca, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    with TlsServer(tmp_path, cast(LocalCA, leaf), require_client_cert=False) as up:
        settings = TlsOrigination("SIMPLE", ca_certificates=str(ca_file), ca_crl=str(crl_file))
        write_crl(crl_file, ca, [])
        assert get(kind, settings, up.port) == 200
        write_crl(crl_file, ca, [leaf.cert])
        assert get(kind, settings, up.port) == "revoked"
        assert up.state.requests == 1
        without = TlsOrigination("SIMPLE", ca_certificates=str(ca_file))
        assert get(kind, without, up.port) == 200


def test_ca_crl_from_the_destination_rule(kind: str, tmp_path: Path, ca: LocalCA) -> None:
    # The same check, configured as a user does: DestinationRule tls.caCrl.
    ca_file, crl_file = tmp_path / "ca.pem", tmp_path / "crl.pem"
    leaf = Leaf(ca, [x509.DNSName(HOST)])
    with TlsServer(tmp_path, cast(LocalCA, leaf), require_client_cert=False) as up:
        tls = f"{{mode: SIMPLE, caCertificates: {ca_file}, caCrl: {crl_file}}}"
        write_crl(crl_file, ca, [leaf.cert])
        assert send(kind, rule(up.port, tls), up.port, 1) == [503]
        assert up.state.requests == 0
        write_crl(crl_file, ca, [])
        assert send(kind, rule(up.port, tls), up.port, 1) == [200]


# -- the matcher ---------------------------------------------------------------------------

LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)


@given(st.lists(LABEL, min_size=2, max_size=4), st.booleans())
def test_dns_names_match_case_insensitively(labels: list[str], upper: bool) -> None:
    name = ".".join(labels)
    matcher = SanMatcher(frozenset({name.upper() if upper else name}))
    assert matcher.matches([("DNS", name)])
    assert matcher.matches([("DNS", name.upper())])
    assert not matcher.matches([("DNS", "x" + name)])
    assert not matcher.matches([("URI", name.upper() if not upper else name.lower() + "/")])


@given(LABEL, LABEL, st.lists(LABEL, min_size=1, max_size=3))
def test_a_wildcard_certificate_name_covers_exactly_one_label(
    first: str, second: str, rest: list[str]
) -> None:
    domain = ".".join(rest)
    pattern = [("DNS", f"*.{domain}")]
    assert SanMatcher(frozenset({f"{first}.{domain}"})).matches(pattern)
    assert not SanMatcher(frozenset({f"{first}.{second}.{domain}"})).matches(pattern)
    assert not SanMatcher(frozenset({domain})).matches(pattern)
    # A wildcard in the wanted list is a literal, as in Envoy's exact matcher.
    assert not SanMatcher(frozenset({f"*.{domain}"})).matches([("DNS", f"{first}.{domain}")])


@given(st.ip_addresses())
def test_ip_names_compare_as_addresses(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    matcher = SanMatcher(frozenset({address.exploded}))
    # getpeercert() spells IPv6 in upper case with a trailing newline on some versions.
    assert matcher.matches([("IP Address", str(address).upper() + "\n")])
    assert not matcher.matches([("DNS", str(address) + ".x")])


def test_uri_and_email_match_exactly_and_mismatch_explains() -> None:
    matcher = SanMatcher(frozenset({SPIFFE, "ops@example.com", "not an ip"}))
    assert matcher.matches([("email", "ops@example.com")])
    assert matcher.matches([("DNS", "a"), ("URI", SPIFFE)])
    assert not matcher.matches([("URI", SPIFFE.upper()), ("IP Address", "10.0.0.1")])
    matcher.check({"subjectAltName": (("URI", SPIFFE),)})
    with pytest.raises(Exception, match=r"none of subjectAltNames .*carries \['a'\]"):
        matcher.check({"subjectAltName": (("DNS", "a"),)})
    with pytest.raises(Exception, match="carries \\[\\]"):
        matcher.check(None)
