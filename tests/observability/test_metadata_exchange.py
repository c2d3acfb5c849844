"""Metadata exchange end to end: a mesh caller's labels reach the destination reporter.

A ``productpage`` Mesh calls a ``reviews`` Mesh server over real mTLS; the server's Prometheus
registry then holds ``source_app="productpage"``. A plaintext caller forging the header stays
``unknown`` and its header never reaches the app.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from obs_chain import NAMESPACE, PORT, Receive, Scope, Send, make_mesh, reply, service_entry

from meshlib import Mesh
from meshlib._telemetry.hooks import PEER_METADATA_HEADER
from meshlib.identity import LocalCA

pytest.importorskip("uvicorn")
prometheus_client = pytest.importorskip("prometheus_client")
pytestmark = pytest.mark.extras

HOST = f"reviews.{NAMESPACE}.svc.cluster.local"
FORGED = "app=mallory;version=v9;workload=mallory-v9"
RECORD_WAIT = 5.0


async def echo_metadata(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    seen = [v.decode() for k, v in scope["headers"] if k.decode().lower() == PEER_METADATA_HEADER]
    await reply(send, {"metadata": seen})


def series(registry: Any, reporter: str) -> list[str]:
    """The reporter's request series once one exists: the server records a request after its
    response went out, so the caller can read the registry a moment before that."""
    deadline = time.monotonic() + RECORD_WAIT
    while True:
        text = prometheus_client.generate_latest(registry).decode()
        found = [
            line
            for line in text.splitlines()
            if line.startswith("istio_requests_total{") and f'reporter="{reporter}"' in line
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


@pytest.fixture
def reviews() -> Iterator[tuple[Mesh, Any, int]]:
    ca = LocalCA.generate("cluster.local")
    registry = prometheus_client.CollectorRegistry()
    server_mesh = make_mesh(ca, "reviews", "")
    server_mesh.configure_telemetry(metrics="prometheus", registry=registry)
    server = server_mesh.server(echo_metadata).start()
    caller = make_mesh(
        ca, "productpage", service_entry(HOST, server.port, "reviews", {"app": "reviews"})
    )
    caller.configure_telemetry(metrics=None)
    try:
        yield caller, registry, server.port
    finally:
        caller.close()
        server.stop()
        server_mesh.close()


def test_mtls_caller_labels_reach_the_destination_reporter(
    reviews: tuple[Mesh, Any, int],
) -> None:
    caller, registry, _ = reviews
    with caller.http_client() as client:
        response = client.get(f"http://{HOST}:{PORT}/")
    assert response.status_code == 200
    # A trusted peer's metadata reaches the app, as x-envoy-* headers do.
    (sent,) = response.json()["metadata"]
    assert "app=productpage" in sent
    (line,) = series(registry, "destination")
    assert 'source_app="productpage"' in line
    assert 'source_version="v1"' in line
    assert 'source_workload="productpage-v1"' in line
    assert 'source_canonical_service="productpage"' in line
    assert 'source_canonical_revision="v1"' in line
    assert f'source_workload_namespace="{NAMESPACE}"' in line
    assert 'source_principal="spiffe://cluster.local/ns/default/sa/productpage"' in line
    assert 'connection_security_policy="mutual_tls"' in line


def test_plaintext_forged_metadata_is_stripped_and_ignored(
    reviews: tuple[Mesh, Any, int],
) -> None:
    _, registry, port = reviews
    with httpx.Client() as client:
        response = client.get(f"http://127.0.0.1:{port}/", headers={PEER_METADATA_HEADER: FORGED})
    assert response.status_code == 200
    assert response.json() == {"metadata": []}
    (line,) = series(registry, "destination")
    assert 'source_app="unknown"' in line
    assert 'source_workload="unknown"' in line
    assert 'source_version="unknown"' in line
    assert "mallory" not in json.dumps(line)
