"""The transports' own connection pools against real uvicorn upstreams on 127.0.0.1.

Which TCP connection carried a request is read from the upstream's view of the client port.
DestinationRule ``connectionPool`` settings that act on connections: ``maxRequestsPerConnection``,
``idleTimeout`` and ``connectTimeout``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from httpx_upstreams import make_runtime

from meshlib._engine.runtime import OutboundRuntime
from meshlib.httpx import AsyncMeshTransport, MeshTransport

HOST = "pool.default.svc.cluster.local"
URL = "http://pool:8080/"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


async def client_port_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the client's port: one port, one TCP connection."""
    assert scope["type"] == "http"
    body = str(scope["client"][1]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


class PortUpstream:
    def __init__(self, keep_alive: float) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            client_port_app,
            log_level="warning",
            lifespan="off",
            http="h11",
            timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> PortUpstream:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the upstream did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT)
        self.sock.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[PortUpstream]:
    with PortUpstream(keep_alive=30) as server:
        yield server


def config(port: int, pool: str = "", timeout: str = "5s") -> str:
    text = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: pool, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pool, namespace: default}}
spec:
  hosts: [pool]
  http: [{{timeout: {timeout}, route: [{{destination: {{host: pool}}}}]}}]
"""
    if pool:
        text += f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pool, namespace: default}}
spec:
  host: pool
  trafficPolicy:
{pool}
"""
    return text


def ports_seen(kind: str, runtime: OutboundRuntime, count: int, pause: float = 0.0) -> list[str]:
    """The client port of each of ``count`` sequential requests, ``pause`` seconds apart."""
    if kind == "sync":
        with httpx.Client(transport=MeshTransport(runtime)) as client:
            seen = []
            for index in range(count):
                if index and pause:
                    time.sleep(pause)
                response = client.get(URL)
                assert response.status_code == 200, response.text
                seen.append(response.text)
            return seen

    async def go() -> list[str]:
        async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime)) as client:
            seen = []
            for index in range(count):
                if index and pause:
                    await asyncio.sleep(pause)
                response = await client.get(URL)
                assert response.status_code == 200, response.text
                seen.append(response.text)
            return seen

    return asyncio.run(go())


def test_keep_alive_uses_one_connection(kind: str, upstream: PortUpstream) -> None:
    assert len(set(ports_seen(kind, make_runtime(config(upstream.port)), 12))) == 1


def test_max_requests_per_connection(kind: str, upstream: PortUpstream) -> None:
    runtime = make_runtime(
        config(upstream.port, "    connectionPool: {http: {maxRequestsPerConnection: 3}}")
    )
    uses = Counter(ports_seen(kind, runtime, 9))
    assert sorted(uses.values()) == [3, 3, 3]


def test_idle_timeout_closes_idle_connections(kind: str, upstream: PortUpstream) -> None:
    runtime = make_runtime(config(upstream.port, "    connectionPool: {http: {idleTimeout: 0.1s}}"))
    # Idle for longer than idleTimeout between requests: every request needs a new connection.
    assert len(set(ports_seen(kind, runtime, 3, pause=0.4))) == 3
    # The same pauses without the setting keep one connection (the 5 s keep-alive).
    assert len(set(ports_seen(kind, make_runtime(config(upstream.port)), 3, pause=0.4))) == 1


def test_connection_the_server_closed_is_replaced(kind: str) -> None:
    with PortUpstream(keep_alive=0.1) as short_lived:
        runtime = make_runtime(config(short_lived.port))
        # The server hangs up idle connections after 0.1 s: no request fails, each gets a new one.
        assert len(set(ports_seen(kind, runtime, 3, pause=0.4))) == 3


def test_connections_are_closed_with_the_transport(upstream: PortUpstream) -> None:
    transport = MeshTransport(make_runtime(config(upstream.port)))
    with httpx.Client(transport=transport) as client:
        client.get(URL).read()
        # A response left open holds its connection; a second request opens another one.
        with client.stream("GET", URL) as open_response:
            client.get(URL).read()
            assert transport.connection_count == 2
            open_response.read()
    assert transport.connection_count == 0


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """Accepts TCP connections (the kernel does) and never says a word: a TLS handshake stalls."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_connect_timeout_bounds_the_handshake(kind: str, silent_listener: int) -> None:
    # TLS origination to a server that never answers the ClientHello: with connectTimeout the
    # attempt fails as a connect failure (503 UF) long before the 4 s route timeout (504 UT).
    pool = "    connectionPool: {tcp: {connectTimeout: 0.2s}}\n    tls: {mode: SIMPLE}"
    runtime = make_runtime(config(silent_listener, pool, timeout="4s"))
    if kind == "sync":
        with httpx.Client(transport=MeshTransport(runtime)) as client:
            response = client.get(URL)
    else:

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime)) as client:
                return await client.get(URL)

        response = asyncio.run(go())
    assert response.status_code == 503
    assert "UF" in response.extensions["meshlib"]["flags"]
    assert "upstream connect error" in response.text


def test_mirror_copies_in_flight_are_bounded() -> None:
    from meshlib.httpx._transport import _InFlight

    slots = _InFlight(2)
    assert slots.start()
    assert slots.start()
    assert not slots.start()  # the third copy is dropped, never waited for
    slots.end()
    assert slots.start()
    assert slots.count == 2
