"""The FastAPI and Flask examples, served with mTLS, against the policy table of examples/authz.

Each caller presents an SVID of its own service account; the answers must be exactly what
examples/authz/policies.yaml says, path-normalization bypass attempts included. One run goes
through curl, as a reader of the example would.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from meshlib._identity.serving import Server
from meshlib.identity import LocalCA

from .conftest import ClientContext, raw_request

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMESPACE = "store"
CURL_TIMEOUT_SECONDS = 20

# (caller service account, method, target, expected status)
TABLE = [
    ("productpage", "GET", "/reviews/1", 200),
    ("productpage", "GET", "/public/about", 200),
    ("productpage", "POST", "/reviews/1", 403),
    ("productpage", "GET", "/admin/users", 403),
    ("productpage", "GET", "/public/../admin/users", 403),
    ("productpage", "GET", "/public/%2e%2e/admin/users", 403),
    ("productpage", "GET", "/public/%2E%2E/admin/users", 403),
    ("productpage", "GET", "/%61dmin/users", 403),
    ("productpage", "GET", "//admin/users", 403),
    ("productpage", "GET", "/admin/users?/public", 403),
    ("productpage", "GET", "/admin/users#/public", 403),
    ("productpage", "GET", "/public\\..\\admin/users", 403),
    ("productpage", "GET", "/PUBLIC/about", 403),
    ("productpage", "GET", "/healthz", 200),
    ("admin", "GET", "/admin/users", 200),
    ("admin", "POST", "/admin/users", 200),
    ("admin", "GET", "/public/../admin/users", 200),
    ("admin", "DELETE", "/admin/users", 403),
    ("admin", "GET", "/public/about", 403),
    ("stranger", "GET", "/reviews/1", 403),
    ("stranger", "GET", "/public/about", 403),
    ("stranger", "GET", "/healthz", 200),
]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def serve(module: ModuleType, ca: LocalCA) -> Iterator[Server]:
    mesh = module.make_mesh(ca)
    wrap = mesh.asgi if module.__name__.endswith("fastapi_app") else mesh.wsgi
    server = mesh.server(wrap(module.build_app(), exempt_paths=["/healthz"]))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        mesh.close()


@pytest.fixture(scope="module", params=["fastapi_app", "flask_app"])
def example(request: pytest.FixtureRequest, ca: LocalCA) -> Iterator[Server]:
    with serve(load(request.param), ca) as server:
        yield server


@pytest.mark.parametrize(("account", "method", "target", "status"), TABLE)
def test_policy_table(
    example: Server,
    client_context: ClientContext,
    account: str,
    method: str,
    target: str,
    status: int,
) -> None:
    context = client_context(account, NAMESPACE)
    got, body = raw_request(example.port, target, context=context, method=method)
    assert got == status, body
    if status == 403:
        assert body == b"RBAC: access denied"


def test_allowed_responses_name_the_caller(example: Server, client_context: ClientContext) -> None:
    got, body = raw_request(
        example.port, "/public/x/../about", context=client_context("productpage", NAMESPACE)
    )
    assert got == 200
    assert b"cluster.local/ns/store/sa/productpage" in body
    assert b'"about"' in body  # the app saw the normalized path


def test_cases_file_matches_the_table() -> None:
    # The cases file documents the same decisions for `meshlib test authz`.
    cases = yaml.safe_load((EXAMPLES / "authz" / "cases.yaml").read_text())["cases"]
    assert len(cases) >= 15
    assert {case["expect"] for case in cases} == {"allow", "deny"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_with_curl_as_a_reader_would(ca: LocalCA, tmp_path: Path) -> None:
    module = load("flask_app")
    for account in ("productpage", "stranger"):
        svid = ca.issue(NAMESPACE, account)
        (tmp_path / f"{account}.pem").write_bytes(svid.cert_chain_pem)
        (tmp_path / f"{account}-key.pem").write_bytes(svid.private_key_pem)
        (tmp_path / "root-cert.pem").write_bytes(svid.bundle_pem)
    host = "reviews.store.svc"

    def curl(port: int, account: str, path: str) -> str:
        command: list[Any] = [
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--path-as-is",
            "--max-time", "10",
            "--cacert", tmp_path / "root-cert.pem",
            "--cert", tmp_path / f"{account}.pem",
            "--key", tmp_path / f"{account}-key.pem",
            "--resolve", f"{host}:{port}:127.0.0.1",
            f"https://{host}:{port}{path}",
        ]  # fmt: skip
        done = subprocess.run(
            [str(part) for part in command],
            capture_output=True,
            text=True,
            timeout=CURL_TIMEOUT_SECONDS,
            check=False,
        )
        return done.stdout

    with serve(module, ca) as server:
        assert curl(server.port, "productpage", "/reviews/1") == "200"
        assert curl(server.port, "productpage", "/public/../admin/users") == "403"
        assert curl(server.port, "productpage", "/%61dmin/users") == "403"
        assert curl(server.port, "stranger", "/reviews/1") == "403"
