"""A Flask service behind meshlib: mTLS with SPIFFE identities and AuthorizationPolicy.

    python examples/flask_app.py [--certs DIR] [--port 9080]

The Flask twin of ``fastapi_app.py`` (same policies, same curl commands). ``mesh.serve``
runs the WSGI app on meshlib's mTLS server through ``meshlib.wsgi.WSGIBridge``, which hands
the verified peer to ``mesh.wsgi``; under another WSGI server there is no TLS peer, so the
STRICT policy would refuse every request (see docs/authorization.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flask import Flask, jsonify

import meshlib
from meshlib.handlers import current_peer

HERE = Path(__file__).resolve().parent
POLICIES = HERE / "authz" / "policies.yaml"
HOST = "reviews.store.svc"
TRIES = ("/reviews/1", "/public/about", "/admin/users", "/public/../admin/users", "//admin/users")


def caller() -> str:
    peer = current_peer()
    return (peer.principal if peer is not None else None) or "plaintext"


def build_app() -> Flask:
    app = Flask("reviews")

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    @app.get("/reviews/<int:review_id>")
    def review(review_id: int) -> Any:
        return jsonify(review=review_id, stars=4, caller=caller())

    @app.get("/public/<path:rest>")
    def public(rest: str) -> Any:
        return jsonify(public=rest, caller=caller())

    @app.route("/admin/<path:rest>", methods=["GET", "POST", "DELETE"])
    def admin(rest: str) -> Any:
        return jsonify(admin=rest, caller=caller())

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
        mesh.wsgi(build_app(), exempt_paths=["/healthz"]), host="127.0.0.1", port=options.port
    )


if __name__ == "__main__":
    main()
