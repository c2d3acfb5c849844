"""DestinationRule tls SIMPLE and MUTUAL: the client originates TLS to a server outside the mesh."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from httpx_upstreams import NAMESPACE, UpstreamState, make_app, run_requests

from meshlib._config.source import ConfigSource
from meshlib._engine.runtime import build_runtime
from meshlib.identity import LocalCA

HOST = "api.test"
START_TIMEOUT = 10.0


class TlsServer:
    """uvicorn over plain TLS (no mesh), optionally requiring a client certificate."""

    def __init__(self, folder: Path, ca: LocalCA, *, require_client_cert: bool) -> None:
        svid = ca.issue(NAMESPACE, "api", [HOST])
        (folder / "server.pem").write_bytes(svid.cert_chain_pem)
        (folder / "server.key").write_bytes(svid.private_key_pem)
        (folder / "ca.pem").write_bytes(svid.bundle_pem)
        self.state = UpstreamState("tls")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            make_app(self.state),
            log_level="warning",
            lifespan="off",
            http="h11",
            ssl_certfile=str(folder / "server.pem"),
            ssl_keyfile=str(folder / "server.key"),
            ssl_ca_certs=str(folder / "ca.pem"),
            ssl_cert_reqs=ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> TlsServer:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if time.monotonic() > deadline:  # a bounded wait, not a speed check
                raise RuntimeError("the TLS upstream did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(START_TIMEOUT)
        self.sock.close()


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA.generate("cluster.local")


def config(port: int, tls: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: {NAMESPACE}}}
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: {NAMESPACE}}}
spec:
  host: {HOST}
  trafficPolicy:
    tls: {tls}
"""


def send(kind: str, text: str, port: int, count: int = 2) -> list[object]:
    runtime = build_runtime(ConfigSource.from_text(text, namespace=NAMESPACE))
    results = run_requests(kind, runtime, [("GET", f"http://{HOST}:{port}/", {})] * count)
    return [r.status_code if isinstance(r, httpx.Response) else r for r in results]


def test_simple_with_configured_ca(kind: str, tmp_path: Path, ca: LocalCA) -> None:
    with TlsServer(tmp_path, ca, require_client_cert=False) as server:
        tls = f"{{mode: SIMPLE, caCertificates: {tmp_path / 'ca.pem'}}}"
        assert send(kind, config(server.port, tls), server.port) == [200, 200]
        assert server.state.requests == 2


def test_simple_with_sni_and_system_cas_rejects_an_unknown_ca(
    kind: str, tmp_path: Path, ca: LocalCA
) -> None:
    with TlsServer(tmp_path, ca, require_client_cert=False) as server:
        statuses = send(kind, config(server.port, "{mode: SIMPLE, sni: api.test}"), server.port, 1)
        assert statuses == [503]  # the throwaway CA is not a system CA: connect failure
        assert server.state.requests == 0
        tls = "{mode: SIMPLE, insecureSkipVerify: true}"
        assert send(kind, config(server.port, tls), server.port, 1) == [200]


def test_mutual_presents_the_client_certificate(kind: str, tmp_path: Path, ca: LocalCA) -> None:
    client = ca.issue(NAMESPACE, "client")
    (tmp_path / "client.pem").write_bytes(client.cert_chain_pem)
    (tmp_path / "client.key").write_bytes(client.private_key_pem)
    with TlsServer(tmp_path, ca, require_client_cert=True) as server:
        simple = f"{{mode: SIMPLE, caCertificates: {tmp_path / 'ca.pem'}}}"
        assert send(kind, config(server.port, simple), server.port, 1) == [503]
        mutual = (
            f"{{mode: MUTUAL, caCertificates: {tmp_path / 'ca.pem'}, "
            f"clientCertificate: {tmp_path / 'client.pem'}, privateKey: {tmp_path / 'client.key'}}}"
        )
        assert send(kind, config(server.port, mutual), server.port) == [200, 200]
