"""Fixtures for identity tests: throwaway CAs, SVID files, and an ASGI app that reports the peer."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meshlib._identity.certs import Svid
from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.sources import StaticSource
from meshlib.identity import LocalCA


class PeerApp:
    """ASGI app answering JSON with what the server saw; counts client serials it was shown."""

    def __init__(self) -> None:
        self.serials: Counter[int] = Counter()
        self.lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        extensions = scope.get("extensions") or {}
        tls = extensions.get("tls")
        if tls and tls["client_cert_chain"]:
            leaf = x509.load_pem_x509_certificate(tls["client_cert_chain"][0].encode())
            with self.lock:
                self.serials[leaf.serial_number] += 1
        body = json.dumps(
            {
                "mtls": extensions.get("mtls"),
                "spiffe_id": tls["spiffe_id"] if tls else None,
                "tls_version": tls["tls_version"] if tls else None,
                "chain_length": len(tls["client_cert_chain"]) if tls else 0,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="session")
def ca() -> LocalCA:
    return LocalCA.generate("cluster.local")


@pytest.fixture(scope="session")
def other_ca() -> LocalCA:
    return LocalCA.generate("evil.example")


@pytest.fixture
def app() -> PeerApp:
    return PeerApp()


def identity_for(svid: Svid) -> RotatingIdentity:
    return RotatingIdentity(StaticSource(svid))


@pytest.fixture
def server_identity(ca: LocalCA) -> Iterator[RotatingIdentity]:
    identity = identity_for(ca.issue("default", "server", ["server.default.svc.cluster.local"]))
    yield identity
    identity.close()


@pytest.fixture
def client_identity(ca: LocalCA) -> Iterator[RotatingIdentity]:
    identity = identity_for(ca.issue("default", "client"))
    yield identity
    identity.close()


def write_svid(svid: Svid, folder: Path) -> tuple[Path, Path, Path]:
    """cert-chain.pem, key.pem and root-cert.pem in ``folder`` (curl and FileSource read them)."""
    folder.mkdir(parents=True, exist_ok=True)
    chain, key, root = folder / "cert-chain.pem", folder / "key.pem", folder / "root-cert.pem"
    chain.write_bytes(svid.cert_chain_pem)
    key.write_bytes(svid.private_key_pem)
    key.chmod(0o600)
    root.write_bytes(svid.bundle_pem)
    return chain, key, root
