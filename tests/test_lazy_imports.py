"""A plaintext mesh never loads what it does not use: cryptography waits for a certificate,
watchfiles for a file watch, and a client that only sends requests never loads the server side,
the identity machinery, the explainer, the access log or the circuit breakers (each costs
resident memory in every process that imports meshlib). Nor, while its configuration has no
AuthorizationPolicy or PeerAuthentication, the authorization engine, the security compiler and
validator, or the pydantic models of those kinds.

Each case runs in a fresh interpreter, since this process has long imported them all.
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

SECURITY_LAZY = (
    "meshlib._policy.authz",
    "meshlib._policy.peerauth",
    "meshlib._config.compile_security",
    "meshlib._config.resources_security",
    "meshlib._config.validate_security",
)
"""Loaded with the first AuthorizationPolicy or PeerAuthentication, or when something reads a
snapshot's ``authorization`` or ``peer_authentication`` (the inbound side does)."""

CLIENT_LAZY = (
    "pybreaker",
    "meshlib._breaker",
    "meshlib._engine.inbound",
    "meshlib._engine.explain",
    "meshlib._config.show",
    "meshlib._telemetry.accesslog",
    "meshlib._identity",
    "concurrent.futures",
    "asyncio",
    "meshlib.httpx._asyncio_backend",
    *SECURITY_LAZY,
)
"""Modules (and packages: their submodules too) that the client-only path must not load."""

SECURITY = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: default}
spec:
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""

UPSTREAM = """
import http.server, threading

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=upstream.serve_forever, daemon=True).start()
PORT = upstream.server_address[1]

def loaded(names):
    return sorted(
        m for m in sys.modules for name in names if m == name or m.startswith(name + ".")
    )

def built_models():
    from meshlib._config.edge import EdgeModel

    found, todo = set(), [EdgeModel]
    while todo:
        for model in todo.pop().__subclasses__():
            if model.__module__.startswith("meshlib.") and model.__name__ not in found:
                found.add(model.__name__)
                todo.append(model)
    return found

SECURITY_MODELS = {
    "AuthorizationPolicy", "AuthorizationPolicySpec", "PeerAuthentication",
    "PeerAuthenticationSpec", "MutualTLS", "Rule", "Source", "Operation",
}
"""


def run(code: str) -> None:
    prelude = f"import sys\nCONFIG = {CONFIG!r}\nLAZY = {LAZY!r}\nCLIENT_LAZY = {CLIENT_LAZY!r}\n"
    prelude += f"SECURITY_LAZY = {SECURITY_LAZY!r}\nSECURITY = {SECURITY!r}\n"
    prelude += UPSTREAM
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


def test_client_only_mesh_loads_no_server_identity_explain_accesslog_or_breaker() -> None:
    run("""
        import meshlib

        assert not loaded(CLIENT_LAZY), f"import meshlib loaded {loaded(CLIENT_LAZY)}"
        mesh = meshlib.Mesh.from_text(
            CONFIG.replace("number: 9080", f"number: {PORT}"), namespace="default"
        )
        with mesh.http_client() as client:
            for _ in range(3):
                response = client.get(f"http://reviews:{PORT}/", timeout=10)
                assert response.status_code == 200, response
                assert response.text == "ok"
        assert not loaded(CLIENT_LAZY), f"a client-only mesh loaded {loaded(CLIENT_LAZY)}"
        built = built_models()
        assert "VirtualService" in built and not built & SECURITY_MODELS, built & SECURITY_MODELS
        mesh.close()
        upstream.shutdown()
    """)


def test_circuit_breaker_names_load_pybreaker_on_first_use() -> None:
    run("""
        import meshlib

        assert "pybreaker" not in sys.modules
        assert {"CircuitBreaker", "CircuitOpenError", "breakers", "circuit_breaker"} <= set(
            dir(meshlib)
        )
        from meshlib import CircuitBreaker, CircuitOpenError

        assert "pybreaker" in sys.modules
        breaker = meshlib.circuit_breaker("lazy-db", fail_max=1)
        assert isinstance(breaker, CircuitBreaker)
        assert meshlib.breakers()["lazy-db"] is breaker
        assert issubclass(CircuitOpenError, meshlib.MeshError)
        assert meshlib.CircuitBreaker is CircuitBreaker
    """)


def test_explain_access_log_and_inbound_hooks_load_on_first_use() -> None:
    run("""
        import logging

        import meshlib

        mesh = meshlib.Mesh.from_text(CONFIG, namespace="default")
        mesh.configure_telemetry(metrics=None)
        assert not loaded(["meshlib._engine.explain", "meshlib._telemetry.accesslog"])
        assert "meshlib._engine.inbound" not in sys.modules
        explained = mesh.explain("GET", "http://reviews:9080/")
        assert "reviews.default.svc.cluster.local" in str(explained)
        assert "meshlib._engine.explain" in sys.modules

        hooks = mesh.inbound_hooks
        assert hooks is mesh.telemetry.inbound_hooks is mesh._inbound_hooks()
        assert hooks is not None and hooks.on_request is not None
        from meshlib._engine.inbound import InboundHooks

        assert isinstance(hooks, InboundHooks)
        mesh.inbound_hooks = None
        assert mesh.inbound_hooks is None
        mesh.configure_telemetry(metrics=None)
        assert isinstance(mesh.inbound_hooks, InboundHooks)

        lines = []

        class Keep(logging.Handler):
            def emit(self, record):
                lines.append(record.getMessage())

        logging.getLogger("meshlib.access").addHandler(Keep())
        logging.getLogger("meshlib.access").setLevel(logging.INFO)
        assert "meshlib._telemetry.accesslog" not in sys.modules
        mesh.configure_telemetry(metrics=None, access_log="text")
        assert "meshlib._telemetry.accesslog" in sys.modules
        served = meshlib.Mesh.from_text(
            CONFIG.replace("number: 9080", f"number: {PORT}"), namespace="default"
        )
        served.configure_telemetry(metrics=None, access_log="json")
        with served.http_client() as client:
            assert client.get(f"http://reviews:{PORT}/a", timeout=10).status_code == 200
        assert any('"/a"' in line for line in lines), lines
        served.close()
        mesh.close()
        upstream.shutdown()
    """)


def test_security_without_policies_is_built_when_first_read() -> None:
    run("""
        import meshlib
        from meshlib._policy.paths import PathNormalization

        mesh = meshlib.Mesh.from_text(CONFIG, namespace="default", path_normalization="NONE")
        assert not loaded(SECURITY_LAZY), loaded(SECURITY_LAZY)
        authorizer = mesh.snapshot.authorization
        assert loaded(["meshlib._policy.authz", "meshlib._policy.peerauth"])
        from meshlib._policy.authz import Authorizer, AuthzRequest

        # Istio: no AuthorizationPolicy allows every request; the mesh's settings still apply.
        assert isinstance(authorizer, Authorizer) and authorizer is mesh.snapshot.authorization
        assert authorizer.policies == ()
        assert authorizer.path_normalization is PathNormalization.NONE
        assert authorizer.check(AuthzRequest(method="DELETE", path="/x")).allowed
        mtls = mesh.snapshot.peer_authentication
        assert mtls is not None and mtls.mode.value == "PERMISSIVE" and not mtls.decided_by
        assert mesh.mtls_mode(9080) == "PERMISSIVE"
        assert not loaded(["meshlib._config.resources_security"])
        assert not built_models() & SECURITY_MODELS
        mesh.close()
    """)


def test_security_resources_load_their_models_and_compile_on_first_use() -> None:
    run("""
        import meshlib
        from meshlib._config import resources

        assert not loaded(SECURITY_LAZY), f"import meshlib loaded {loaded(SECURITY_LAZY)}"
        mesh = meshlib.Mesh.from_text(CONFIG + "---" + SECURITY, namespace="default")
        assert set(loaded(SECURITY_LAZY)) == set(SECURITY_LAZY), loaded(SECURITY_LAZY)
        from meshlib._config import resources_security
        from meshlib._policy.authz import AuthzRequest

        assert mesh.mtls_mode(9080) == "STRICT"
        authorizer = mesh.snapshot.authorization
        assert authorizer is not None and len(authorizer.policies) == 1
        assert authorizer.check(AuthzRequest(method="GET", path="/")).allowed
        assert not authorizer.check(AuthzRequest(method="POST", path="/")).allowed
        # The lazy names are the security module's, under their old names too.
        assert resources.AuthorizationPolicySpec is resources_security.AuthorizationPolicySpec
        assert resources.RESOURCE_MODELS["PeerAuthentication"] is resources.PeerAuthentication
        assert list(resources.RESOURCE_MODELS)[-2:] == ["PeerAuthentication", "AuthorizationPolicy"]
        assert resources_security.PeerAuthenticationSpec in resources.SpecModel.__args__
        mesh.close()
    """)


def test_a_bad_security_document_is_reported_as_before_when_it_loads_the_models() -> None:
    run("""
        import meshlib

        bad = SECURITY.replace("methods: [GET]", "method: [GET]").replace(
            "metadata: {name: default, namespace: default}",
            "metadata: {name: default, namespace: default, annotations: {istio.io/dry-run: 'yes'}}",
        )
        assert not loaded(SECURITY_LAZY)
        try:
            meshlib.Mesh.from_text(CONFIG + "---" + bad, namespace="default")
        except meshlib.ConfigError as exc:
            text = str(exc)
        else:
            raise AssertionError("the bad AuthorizationPolicy loaded")
        assert "AuthorizationPolicy/default/readers" in text, text
        assert "spec.rules[0].to[0].operation.method" in text, text
        assert "unknown field 'method'" in text, text
        assert "PeerAuthentication/default/default" in text, text
        assert "metadata.annotations.istio.io/dry-run" in text, text
        assert "unsupported annotation istio.io/dry-run" in text, text
        assert "<config>" in text, text
    """)


def test_the_context_helpers_leave_the_thread_pool_module_for_the_executor() -> None:
    run("""
        from meshlib._telemetry import context

        assert "concurrent.futures" not in sys.modules
        executor_type = context.MeshThreadPoolExecutor
        assert "concurrent.futures" in sys.modules
        from meshlib._telemetry.context import MeshThreadPoolExecutor

        assert MeshThreadPoolExecutor is executor_type
        with MeshThreadPoolExecutor(max_workers=1) as pool:
            assert pool.submit(lambda: 42).result(timeout=10) == 42
        try:
            context.NoSuchName
        except AttributeError:
            pass
        else:
            raise AssertionError("context.NoSuchName resolved")
    """)


def test_no_configuration_loads_pydantic_itself() -> None:
    # The CRD models are validated by pydantic-core alone; pydantic's Python layer would add
    # about 6 MB to every process (docs/performance.md, memory).
    run("""
        import meshlib

        mesh = meshlib.Mesh.from_text(CONFIG + "---" + SECURITY, namespace="default")
        assert mesh.snapshot.authorization is not None
        assert "pydantic_core" in sys.modules
        assert not loaded(["pydantic"]), loaded(["pydantic"])
        mesh.close()
    """)
