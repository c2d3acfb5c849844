"""A FastAPI service behind meshlib: mTLS with SPIFFE identities and AuthorizationPolicy.

    python examples/fastapi_app.py [--certs DIR] [--port 9080]

It creates a local CA in DIR (default ``meshlib-demo-certs``), issues client SVIDs for the
service accounts ``productpage``, ``admin`` and ``stranger``, prints curl commands that call it
as each of them, and serves the "reviews" workload with the policies of
``examples/authz/policies.yaml`` (STRICT mTLS, ALLOW table, DENY on DELETE). ``/healthz`` is
exempt, for probes. ``meshlib test authz examples/authz/policies.yaml
examples/authz/cases.yaml`` checks the same table without a server.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fastapi import FastAPI

import meshlib
from meshlib.handlers import current_peer

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "authz" / "policies.yaml"
HOST = "reviews.store.svc"
TRIES = ("/reviews/1", "/public/about", "/admin/users", "/public/../admin/users", "//admin/users")


def caller() -> str:
    peer = current_peer()
    return (peer.principal if peer is not None else None) or "plaintext"


def build_app() -> FastAPI:
    app = FastAPI(title="reviews")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/reviews/{review_id}")
    async def review(review_id: int) -> dict[str, Any]:
        return {"review": review_id, "stars": 4, "caller": caller()}

    @app.get("/public/{rest:path}")
    async def public(rest: str) -> dict[str, str]:
        return {"public": rest, "caller": caller()}

    @app.api_route("/admin/{rest:path}", methods=["GET", "POST", "DELETE"])
    async def admin(rest: str) -> dict[str, str]:
        return {"admin": rest, "caller": caller()}

    return app


def make_mesh(identity: Any) -> meshlib.Mesh:
    return meshlib.Mesh.from_config(
        POLICIES,
        namespace="store",
        service_account="reviews",
        labels={"app": "reviews"},
        identity=identity,
    )


def main() -> None:
    from authz.demo_certs import curl_lines, prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certs", type=Path, default=Path("meshlib-demo-certs"))
    parser.add_argument("--port", type=int, default=9080)
    options = parser.parse_args()
    ca = prepare(options.certs)
    mesh = make_mesh(ca)
    print("\n".join(curl_lines(options.certs, HOST, options.port, TRIES)))
    mesh.serve(
        mesh.asgi(build_app(), exempt_paths=["/healthz"]), host="127.0.0.1", port=options.port
    )


if __name__ == "__main__":
    main()
