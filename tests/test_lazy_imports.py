"""A plaintext mesh never loads what it does not use: cryptography waits for a certificate,
watchfiles for a file watch.

Each case runs in a fresh interpreter, since this process has long imported both.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 10}}
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}}]
    timeout: 5s
    retries: {attempts: 2, retryOn: 5xx}
"""

LAZY = ("cryptography", "watchfiles")


def run(code: str) -> None:
    prelude = f"import sys\nCONFIG = {CONFIG!r}\nLAZY = {LAZY!r}\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_plaintext_http_mesh_loads_neither_cryptography_nor_watchfiles() -> None:
    run("""
        import meshlib

        loaded = [name for name in LAZY if name in sys.modules]
        assert not loaded, f"import meshlib loaded {loaded}"
        mesh = meshlib.Mesh.from_text(CONFIG, namespace="default")
        with mesh.http_client() as client:
            assert client is not None
        loaded = [name for name in LAZY if name in sys.modules]
        assert not loaded, f"a plaintext Mesh and http_client loaded {loaded}"
        mesh.close()
    """)


@pytest.mark.extras
@pytest.mark.skipif(
    importlib.util.find_spec("grpc") is None, reason="grpcio (extra 'grpc') not installed"
)
def test_plaintext_grpc_channel_does_not_load_cryptography() -> None:
    run("""
        import meshlib

        mesh = meshlib.Mesh.from_text(CONFIG, namespace="default")
        channel = mesh.grpc_channel("reviews:9080")
        loaded = [name for name in LAZY if name in sys.modules]
        assert not loaded, f"a plaintext grpc_channel loaded {loaded}"
        channel.close()
        mesh.close()
    """)


def test_identity_still_resolves_as_an_attribute_and_by_from_import() -> None:
    run("""
        import meshlib

        assert "cryptography" not in sys.modules
        ca = meshlib.identity.LocalCA.generate("example.org")
        assert "cryptography" in sys.modules
        svid = ca.issue("default", "reviews")
        assert str(svid.spiffe_id) == "spiffe://example.org/ns/default/sa/reviews"
        from meshlib import identity
        from meshlib.identity import LocalCA

        assert identity is meshlib.identity and LocalCA is ca.__class__
        assert "identity" in dir(meshlib)
        mesh = meshlib.Mesh.from_text(CONFIG, namespace="default", identity=ca)
        assert mesh.identity is not None
        assert mesh.identity.svid.spiffe_id.trust_domain == "example.org"
        mesh.close()
    """)
