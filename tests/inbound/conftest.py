"""Fixtures for the inbound tests: a CA, client TLS contexts per service account, raw requests."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from meshlib.identity import LocalCA

POLICIES = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/web]}}]
    to: [{operation: {methods: [GET, POST], paths: [/public*, /reviews/*, /echo*, /ws]}}]
  - from: [{source: {principals: [cluster.local/ns/default/sa/admin]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE]}}]
"""
"""STRICT; web may GET/POST a few paths; admin anything but DELETE."""

ClientContext = Callable[..., ssl.SSLContext]


@pytest.fixture(scope="session")
def ca() -> LocalCA:
    return LocalCA.generate("cluster.local")


@pytest.fixture(scope="session")
def client_context(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> ClientContext:
    """An ``ssl`` client context presenting the SVID of ``<namespace>/<sa>``, trusting the CA."""
    folder = tmp_path_factory.mktemp("svids")
    made: dict[str, ssl.SSLContext] = {}

    def build(service_account: str, namespace: str = "default") -> ssl.SSLContext:
        name = f"{namespace}-{service_account}"
        if name in made:
            return made[name]
        svid = ca.issue(namespace, service_account)
        cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
        cert.write_bytes(svid.cert_chain_pem)
        key.write_bytes(svid.private_key_pem)
        roots = folder / "roots.pem"
        roots.write_bytes(svid.bundle_pem)
        context = ssl.create_default_context(cafile=str(roots))
        context.check_hostname = False  # server certs name the service, we dial 127.0.0.1
        context.load_cert_chain(str(cert), str(key))
        made[name] = context
        return context

    return build


def raw_request(
    port: int,
    target: str,
    *,
    context: ssl.SSLContext | None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, bytes]:
    """Send ``target`` byte for byte (no client-side normalization), return (status, body)."""
    connection: http.client.HTTPConnection
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path
