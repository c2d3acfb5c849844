"""mTLS end to end on 127.0.0.1: uvicorn via meshlib's serving, httpcore with the mesh backend,
curl and openssl as a user would run them."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from meshlib._identity.asgi_tls import ConnectionStats, tls_extension
from meshlib._identity.backend import (
    AsyncMeshNetworkBackend,
    MeshNetworkBackend,
    pool_ssl_context,
)
from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.serving import Server, uvicorn_config_kwargs
from meshlib._identity.tls import PeerPolicy, PeerRejected
from meshlib.errors import MeshError
from meshlib.identity import LocalCA

from .conftest import PeerApp, identity_for, write_svid

CURL_TIMEOUT = "10"
SUBPROCESS_TIMEOUT = 30
SERVER_DNS = "server.default.svc.cluster.local"
system = pytest.mark.system


def _pool(
    identity: RotatingIdentity, **kwargs: Any
) -> tuple[httpcore.ConnectionPool, MeshNetworkBackend]:
    backend = MeshNetworkBackend(identity, **kwargs)
    pool = httpcore.ConnectionPool(ssl_context=pool_ssl_context(), network_backend=backend)
    return pool, backend


def _json(response: httpcore.Response) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(response.content)
    return result


@pytest.fixture
def strict(app: PeerApp, server_identity: RotatingIdentity) -> Iterator[Server]:
    with Server(app, identity=server_identity, mtls_mode="STRICT") as server:
        yield server


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_strict_mtls_exposes_the_peer_to_the_app(
    app: PeerApp, server_identity: RotatingIdentity, client_identity: RotatingIdentity, http: str
) -> None:
    with Server(app, identity=server_identity, mtls_mode="STRICT", http=http) as server:
        pool, backend = _pool(client_identity)
        with pool:
            response = pool.request("GET", f"{server.url}/")
        assert response.status == 200
        assert _json(response) == {
            "mtls": True,
            "spiffe_id": "spiffe://cluster.local/ns/default/sa/client",
            "tls_version": 0x0304,
            "chain_length": 1,
        }
        assert backend.handshakes == 1
        assert server.stats.tls == 1


async def test_async_backend(strict: Server, client_identity: RotatingIdentity) -> None:
    backend = AsyncMeshNetworkBackend(client_identity)
    async with httpcore.AsyncConnectionPool(
        ssl_context=pool_ssl_context(), network_backend=backend
    ) as pool:
        for _ in range(3):
            response = await pool.request("GET", f"{strict.url}/")
            assert _json(response)["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/client"
    assert backend.handshakes == 1
    assert backend.rejected == 0


async def test_async_backend_rejects_wrong_server(
    strict: Server, client_identity: RotatingIdentity, app: PeerApp
) -> None:
    wanted = "spiffe://cluster.local/ns/default/sa/someone-else"
    backend = AsyncMeshNetworkBackend(
        client_identity, policy_for=lambda name: PeerPolicy(frozenset(), frozenset({wanted}))
    )
    async with httpcore.AsyncConnectionPool(
        ssl_context=pool_ssl_context(), network_backend=backend
    ) as pool:
        with pytest.raises(httpcore.ConnectError, match="someone-else"):
            await pool.request("GET", f"{strict.url}/")
    assert backend.rejected == 1
    assert not app.serials


def test_one_handshake_for_a_thousand_sequential_requests(
    strict: Server, client_identity: RotatingIdentity
) -> None:
    pool, backend = _pool(client_identity)
    with pool:
        for _ in range(1000):
            assert pool.request("GET", f"{strict.url}/").status == 200
    assert backend.handshakes == 1
    assert strict.stats.tls == 1


def test_client_refuses_a_server_with_the_wrong_spiffe_id_before_sending(
    strict: Server, client_identity: RotatingIdentity, app: PeerApp
) -> None:
    expected = "spiffe://cluster.local/ns/default/sa/reviews"
    seen: list[str | None] = []

    def policy_for(name: str | None) -> PeerPolicy:
        seen.append(name)
        return PeerPolicy(frozenset({"cluster.local"}), frozenset({expected}))

    pool, backend = _pool(client_identity, policy_for=policy_for)
    with pool, pytest.raises(httpcore.ConnectError) as info:
        pool.request("GET", f"{strict.url}/", extensions={"sni_hostname": "reviews.default.svc"})
    message = str(info.value)
    assert expected in message
    assert "spiffe://cluster.local/ns/default/sa/server" in message
    assert seen == ["reviews.default.svc"]
    assert backend.rejected == 1
    assert not app.serials  # the request never reached the server


def test_client_refuses_a_server_of_another_trust_domain(
    app: PeerApp, ca: LocalCA, other_ca: LocalCA, client_identity: RotatingIdentity
) -> None:
    # The server's CA is trusted (federated bundle) but its trust domain is not ours.
    both = (*ca.roots, *other_ca.roots)
    mine = client_identity.svid
    trusting = identity_for(type(mine).build(mine.cert_chain, mine.private_key, both))
    svid = other_ca.issue("default", "server")
    server_identity = identity_for(type(svid).build(svid.cert_chain, svid.private_key, both))
    federated = PeerPolicy(frozenset({"cluster.local", "evil.example"}))
    with Server(app, identity=server_identity, mtls_mode="STRICT", policy=federated) as server:
        pool, _ = _pool(trusting)
        with (
            pool,
            pytest.raises(
                httpcore.ConnectError, match=r"spiffe://evil\.example/ns/default/sa/server"
            ),
        ):
            pool.request("GET", f"{server.url}/")
        # Told to accept evil.example too, the same client gets through.
        pool2, _ = _pool(trusting, policy_for=lambda name: federated)
        with pool2:
            assert pool2.request("GET", f"{server.url}/").status == 200


def test_server_refuses_a_client_of_another_trust_domain_even_if_chained(
    app: PeerApp, ca: LocalCA, other_ca: LocalCA
) -> None:
    svid = ca.issue("default", "server")
    both = (*ca.roots, *other_ca.roots)
    server_identity = identity_for(type(svid).build(svid.cert_chain, svid.private_key, both))
    foreign = other_ca.issue("default", "intruder")
    client = identity_for(type(foreign).build(foreign.cert_chain, foreign.private_key, both))
    with Server(app, identity=server_identity, mtls_mode="STRICT") as server:
        pool, _ = _pool(client, policy_for=lambda name: PeerPolicy(frozenset({"cluster.local"})))
        with pool, pytest.raises((httpcore.ReadError, httpcore.RemoteProtocolError)):
            pool.request("GET", f"{server.url}/")
        assert server.stats.rejected == 1
    assert not app.serials


def test_certificate_without_spiffe_uri_is_refused(ca: LocalCA) -> None:
    from cryptography.hazmat.primitives import serialization

    from .test_ca import _strip_san

    der = _strip_san(ca).public_bytes(serialization.Encoding.DER)
    policy = PeerPolicy(frozenset({"cluster.local"}))
    with pytest.raises(PeerRejected, match="without exactly one SPIFFE URI SAN"):
        policy.check(der)
    with pytest.raises(PeerRejected, match="presented no certificate") as info:
        policy.check(None)
    assert info.value.presented is None
    assert PeerPolicy(frozenset(), frozenset()).describe() == "(no identity allowed)"


def test_plaintext_client_cannot_talk_to_strict(strict: Server) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{strict.port}/", timeout=5)


def test_disable_serves_plaintext_only(app: PeerApp) -> None:
    with Server(app, identity=None, mtls_mode="DISABLE") as server:
        assert server.url.startswith("http://")
        response = httpx.get(f"{server.url}/", timeout=5)
    assert response.json()["mtls"] is False
    assert server.stats.plaintext == 1


def test_port_modes_override_the_default(app: PeerApp, server_identity: RotatingIdentity) -> None:
    server = Server(app, identity=server_identity, port=0, port_modes={0: "DISABLE"})
    assert server.mode == "DISABLE"
    with pytest.raises(MeshError, match="needs an identity"):
        Server(app, identity=None, mtls_mode="STRICT")
    with pytest.raises(MeshError, match="must be one of"):
        Server(app, identity=server_identity, mtls_mode="BOGUS")  # type: ignore[arg-type]


def test_uvicorn_config_kwargs(server_identity: RotatingIdentity) -> None:
    stats = ConnectionStats()
    kwargs = uvicorn_config_kwargs(server_identity, http="httptools", stats=stats)
    assert set(kwargs) == {"ssl_context_factory", "http"}
    context = kwargs["ssl_context_factory"](None, lambda: None)
    assert context is server_identity.current_server_context()
    assert kwargs["http"].__name__ == "MeshTLSHttpToolsProtocol"


def test_server_that_cannot_bind_reports_it(app: PeerApp, strict: Server) -> None:
    clash = Server(app, identity=None, mtls_mode="DISABLE", port=strict.port)
    with pytest.raises(MeshError, match="did not start"):
        clash.start()


def test_tls_extension_without_client_certificate() -> None:
    class NoPeer:
        def getpeercert(self, binary_form: bool = False) -> None:
            return None

        def version(self) -> str:
            return "TLSv1.2"

    extension, mutual = tls_extension(NoPeer(), PeerPolicy(frozenset()))
    assert not mutual
    assert extension["client_cert_chain"] == []
    assert extension["tls_version"] == 0x0303


# --- as a user would: curl and openssl --------------------------------------------------------


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", CURL_TIMEOUT, *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@system
@needs_curl
def test_curl_against_strict(
    strict: Server, ca: LocalCA, other_ca: LocalCA, tmp_path: Path
) -> None:
    chain, key, root = write_svid(ca.issue("default", "curl"), tmp_path / "good")
    resolve = f"{SERVER_DNS}:{strict.port}:127.0.0.1"
    url = f"https://{SERVER_DNS}:{strict.port}/"

    no_cert = _curl("--resolve", resolve, "--cacert", str(root), url)
    assert no_cert.returncode != 0, no_cert

    bad_chain, bad_key, _ = write_svid(other_ca.issue("default", "curl"), tmp_path / "bad")
    foreign = _curl(
        "--resolve",
        resolve,
        "--cacert",
        str(root),
        "--cert",
        str(bad_chain),
        "--key",
        str(bad_key),
        url,
    )
    assert foreign.returncode != 0, foreign

    good = _curl(
        "--resolve",
        resolve,
        "--cacert",
        str(root),
        "--cert",
        str(chain),
        "--key",
        str(key),
        "-w",
        "\n%{http_code}",
        url,
    )
    assert good.returncode == 0, good.stderr
    body, status = good.stdout.rsplit("\n", 1)
    assert status == "200"
    assert json.loads(body)["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/curl"
    assert strict.stats.tls == 1


@system
@needs_curl
def test_permissive_serves_plaintext_and_mtls_on_one_port(
    app: PeerApp,
    server_identity: RotatingIdentity,
    ca: LocalCA,
    tmp_path: Path,
    client_identity: RotatingIdentity,
) -> None:
    chain, key, root = write_svid(ca.issue("default", "curl"), tmp_path / "good")
    with Server(app, identity=server_identity, mtls_mode="PERMISSIVE") as server:
        plain = _curl(f"http://127.0.0.1:{server.port}/")
        assert plain.returncode == 0, plain.stderr
        assert json.loads(plain.stdout) == {
            "mtls": False,
            "spiffe_id": None,
            "tls_version": None,
            "chain_length": 0,
        }
        resolve = f"{SERVER_DNS}:{server.port}:127.0.0.1"
        mutual = _curl(
            "--resolve",
            resolve,
            "--cacert",
            str(root),
            "--cert",
            str(chain),
            "--key",
            str(key),
            f"https://{SERVER_DNS}:{server.port}/",
        )
        assert mutual.returncode == 0, mutual.stderr
        assert json.loads(mutual.stdout)["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/curl"
        assert json.loads(mutual.stdout)["mtls"] is True
        # TLS without a client certificate: encrypted, but no identity.
        anonymous = _curl(
            "--resolve", resolve, "--cacert", str(root), f"https://{SERVER_DNS}:{server.port}/"
        )
        assert anonymous.returncode == 0, anonymous.stderr
        assert json.loads(anonymous.stdout)["mtls"] is False
        # And the mesh client on the same port.
        pool, _ = _pool(client_identity)
        with pool:
            assert _json(pool.request("GET", f"https://127.0.0.1:{server.port}/"))["mtls"] is True
        assert server.stats.plaintext == 1
        assert server.stats.tls == 3


@system
@needs_openssl
def test_openssl_s_client_shows_the_chain(app: PeerApp, tmp_path: Path) -> None:
    ca = LocalCA.generate(intermediate=True)
    server_identity = identity_for(ca.issue("default", "server", [SERVER_DNS]))
    chain, key, root = write_svid(ca.issue("default", "openssl"), tmp_path / "client")
    with Server(app, identity=server_identity, mtls_mode="STRICT") as server:
        result = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{server.port}",
                "-servername",
                SERVER_DNS,
                "-CAfile",
                str(root),
                "-cert",
                str(chain),
                "-key",
                str(key),
                "-showcerts",
                "-verify_return_error",
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
    out = result.stdout
    assert "Certificate chain" in out, result.stderr
    assert " 0 s:" in out  # the leaf
    assert " 1 s:" in out  # and the intermediate
    assert "CN = meshlib intermediate CA" in out
    assert "Verify return code: 0 (ok)" in out
    assert out.count("-----BEGIN CERTIFICATE-----") == 2


def test_backend_passes_plaintext_through(app: PeerApp, client_identity: RotatingIdentity) -> None:
    with Server(app, identity=None, mtls_mode="DISABLE") as server:
        pool, backend = _pool(client_identity)
        with pool:
            response = pool.request("GET", f"{server.url}/")
        assert _json(response)["mtls"] is False
        assert backend.handshakes == 0


async def test_async_backend_passes_plaintext_through(
    app: PeerApp, client_identity: RotatingIdentity
) -> None:
    with Server(app, identity=None, mtls_mode="DISABLE") as server:
        backend = AsyncMeshNetworkBackend(client_identity)
        async with httpcore.AsyncConnectionPool(network_backend=backend) as pool:
            response = await pool.request("GET", f"{server.url}/")
        assert _json(response)["mtls"] is False
        await backend.sleep(0)
        assert backend.handshakes == 0


def test_permissive_connection_closed_before_any_byte(
    app: PeerApp, server_identity: RotatingIdentity
) -> None:
    import socket

    with Server(app, identity=server_identity, mtls_mode="PERMISSIVE") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""  # the server closed its side too
        assert httpx.get(f"http://127.0.0.1:{server.port}/", timeout=5).status_code == 200
    assert server.stats.plaintext == 1


def test_server_refuses_a_chained_client_certificate_without_spiffe_id(
    app: PeerApp, ca: LocalCA, strict: Server
) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from meshlib._identity.certs import Svid, new_key

    key = new_key()
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.signing_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("no-spiffe.example")]), critical=True
        )
        .sign(ca.signing_key, hashes.SHA256())
    )
    good = ca.issue("default", "client")
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    svid = Svid(good.spiffe_id, (leaf,), key, ca.roots, pem, key_pem(key), good.bundle_pem)
    client = identity_for(svid)
    pool, _ = _pool(client)
    with pool, pytest.raises((httpcore.ReadError, httpcore.RemoteProtocolError)):
        pool.request("GET", f"{strict.url}/")
    assert strict.stats.rejected == 1
    assert not app.serials


def key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_permissive_survives_a_broken_tls_hello(
    app: PeerApp, server_identity: RotatingIdentity
) -> None:
    import socket

    with Server(app, identity=server_identity, mtls_mode="PERMISSIVE") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05hello")
            answer = sock.recv(4096)
        # A TLS alert record (0x15) or a plain close: never an HTTP answer, never a hang.
        assert answer == b"" or answer[0] == 0x15
        assert httpx.get(f"http://127.0.0.1:{server.port}/", timeout=5).status_code == 200
