"""Websockets behind meshlib's mTLS server: the upgraded scope carries the verified peer."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

import meshlib
from meshlib._identity.serving import Server
from meshlib.handlers import current_peer
from meshlib.identity import LocalCA

from .conftest import POLICIES, ClientContext

pytest.importorskip("websockets")
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

OPEN_TIMEOUT_SECONDS = 10
WEB = "spiffe://cluster.local/ns/default/sa/web"
ADMIN = "spiffe://cluster.local/ns/default/sa/admin"

PERMISSIVE = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: PERMISSIVE}}
"""


async def echo_peer(websocket: WebSocket) -> None:
    await websocket.accept()
    peer = current_peer()
    extensions = websocket.scope.get("extensions") or {}
    tls = extensions.get("tls") or {}
    await websocket.send_json(
        {
            "peer": peer.spiffe_id if peer is not None else None,
            "tls": tls.get("spiffe_id"),
            "mtls": extensions.get("mtls"),
            "chain": len(tls.get("client_cert_chain") or ()),
        }
    )
    await websocket.close()


def ws_app() -> Starlette:
    return Starlette(routes=[WebSocketRoute("/ws", echo_peer)])


@pytest.fixture
def mesh(ca: LocalCA) -> Iterator[meshlib.Mesh]:
    with meshlib.Mesh.from_text(
        POLICIES, service_account="reviews", labels={"app": "reviews"}, identity=ca
    ) as built:
        yield built


async def _first_message(url: str, context: ssl.SSLContext | None) -> dict[str, Any]:
    async with connect(url, ssl=context, open_timeout=OPEN_TIMEOUT_SECONDS) as socket:
        loaded: dict[str, Any] = json.loads(await socket.recv(decode=True))
        return loaded


async def _refused_status(url: str, context: ssl.SSLContext | None) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await _first_message(url, context)
    return int(refused.value.response.status_code)


async def test_mesh_server_gives_websockets_the_peer(
    mesh: meshlib.Mesh, client_context: ClientContext
) -> None:
    server = mesh.server(ws_app()).start()
    try:
        url = f"wss://127.0.0.1:{server.port}/ws"
        seen = await _first_message(url, client_context("web"))
        assert seen == {"peer": WEB, "tls": WEB, "mtls": True, "chain": 1}
        # another service account: the upgrade is answered 403, as Envoy does
        assert await _refused_status(url, client_context("ratings")) == 403
        assert await _refused_status(url, client_context("web", namespace="prod")) == 403
    finally:
        server.stop()


def _ws_implementations() -> list[Any]:
    kinds: list[Any] = ["websockets", "websockets-sansio"]
    try:
        import wsproto  # noqa: F401
    except ImportError:
        kinds.append(pytest.param("wsproto", marks=pytest.mark.skip(reason="wsproto missing")))
    else:
        kinds.append("wsproto")
    return kinds


@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
@pytest.mark.parametrize("kind", _ws_implementations())
@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_every_uvicorn_websocket_implementation(
    mesh: meshlib.Mesh, client_context: ClientContext, kind: str, http: str
) -> None:
    if http == "httptools":
        pytest.importorskip("httptools")
    server = Server(mesh.asgi(ws_app()), identity=mesh.identity, ws=kind, http=http).start()
    try:
        url = f"wss://127.0.0.1:{server.port}/ws"
        assert (await _first_message(url, client_context("admin")))["peer"] == ADMIN
        assert await _refused_status(url, client_context("ratings")) == 403
    finally:
        server.stop()


async def test_permissive_port_plaintext_and_mtls_websockets(
    ca: LocalCA, client_context: ClientContext
) -> None:
    with meshlib.Mesh.from_text(PERMISSIVE, service_account="reviews", identity=ca) as mesh:
        server = mesh.server(ws_app()).start()
        try:
            plain = await _first_message(f"ws://127.0.0.1:{server.port}/ws", None)
            mutual = await _first_message(
                f"wss://127.0.0.1:{server.port}/ws", client_context("web")
            )
        finally:
            server.stop()
    assert plain == {"peer": None, "tls": None, "mtls": False, "chain": 0}
    assert mutual == {"peer": WEB, "tls": WEB, "mtls": True, "chain": 1}


async def test_without_a_websocket_implementation_upgrades_are_not_made(
    mesh: meshlib.Mesh, client_context: ClientContext
) -> None:
    server = Server(mesh.asgi(ws_app()), identity=mesh.identity, ws="none").start()
    try:
        url = f"wss://127.0.0.1:{server.port}/ws"
        assert await _refused_status(url, client_context("web")) != 101
    finally:
        server.stop()
