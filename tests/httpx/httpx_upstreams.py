"""Helpers of the httpx behavioural suite: real upstreams (uvicorn in threads), runtimes, runners.

Every fixture stops what it started through its own handle; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from meshlib._config.source import ConfigSource
from meshlib._engine.runtime import OutboundRuntime, build_runtime
from meshlib._model.runtime import SystemRandom
from meshlib.httpx import AsyncMeshTransport, MeshTransport

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
NAMESPACE = "default"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class UpstreamState:
    """What an upstream saw, and how it should misbehave."""

    name: str
    requests: int = 0
    fail_first: dict[str, int] = field(default_factory=dict)
    """Per path: answer 503 to this many requests first."""
    always_status: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_app(state: UpstreamState) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path: str = scope["path"]
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        with state.lock:
            state.requests += 1
            remaining = state.fail_first.get(path, 0)
            if remaining:
                state.fail_first[path] = remaining - 1
        status = 200
        if state.always_status is not None:
            status = state.always_status
        elif remaining:
            status = 503
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        if path.startswith("/delay/"):
            await asyncio.sleep(float(path.rsplit("/", 1)[1]))
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for index in range(5):
                await send(
                    {"type": "http.response.body", "body": b"chunk%d;" % index, "more_body": True}
                )
            await send({"type": "http.response.body", "body": b""})
            return
        payload = {
            "name": state.name,
            "path": path,
            "query": scope["query_string"].decode(),
            "headers": headers,
            "body": body.decode("latin-1"),
        }
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"x-upstream", state.name.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    return app


class Upstream:
    """A uvicorn server in a thread on an ephemeral 127.0.0.1 port."""

    def __init__(self, name: str) -> None:
        self.state = UpstreamState(name)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            make_app(self.state),
            log_level="warning",
            lifespan="off",
            loop="asyncio",
            http="h11",
            timeout_graceful_shutdown=1,
            backlog=256,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"upstream {self.state.name} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT)
        self.sock.close()


def service_entry(
    host: str, endpoints: list[tuple[int, dict[str, str]]], *, port: int = 9080
) -> str:
    """A MESH_INTERNAL STATIC ServiceEntry with 127.0.0.1 endpoints."""
    items = "\n".join(
        f"  - address: 127.0.0.1\n    ports: {{http: {p}}}\n    labels: {json.dumps(labels)}"
        for p, labels in endpoints
    )
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host.split(".", maxsplit=1)[0]}, namespace: {NAMESPACE}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: {port}, name: http, protocol: HTTP}}
  endpoints:
{items}
"""


class FakeClock:
    def __init__(self) -> None:
        self.value = 1000.0
        self.lock = threading.Lock()

    def now(self) -> float:
        with self.lock:
            return self.value

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.value += seconds


@dataclass
class Mesh:
    """A runtime over an in-memory config, and a client factory for one driver kind."""

    kind: str
    runtime: OutboundRuntime
    transports: list[Any] = field(default_factory=list)

    def sync_client(self, **kwargs: Any) -> httpx.Client:
        transport = MeshTransport(self.runtime, **kwargs)
        self.transports.append(transport)
        return httpx.Client(transport=transport)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        transport = AsyncMeshTransport(self.runtime, **kwargs)
        self.transports.append(transport)
        return httpx.AsyncClient(transport=transport)


def make_runtime(
    text: str, *, seed: int = 7, clock: Any = None, sleep: Any = None
) -> OutboundRuntime:
    source = ConfigSource.from_text(text, namespace=NAMESPACE, workload="productpage")
    kwargs: dict[str, Any] = {"rng": SystemRandom(seed), "clock": clock}
    if sleep is not None:
        kwargs["sleep"] = sleep

        async def async_sleep(seconds: float) -> None:
            sleep(seconds)

        kwargs["async_sleep"] = async_sleep
    return build_runtime(source, **kwargs)


Runner = Callable[..., Any]


def run_requests(
    kind: str,
    runtime: OutboundRuntime,
    requests: list[tuple[str, str, dict[str, Any]]],
    *,
    concurrency: int = 1,
) -> list[httpx.Response | BaseException]:
    """Send ``(method, url, kwargs)`` through one client of ``kind``; bodies are read."""
    if kind == "sync":
        return _run_sync(runtime, requests, concurrency)
    return asyncio.run(_run_async(runtime, requests, concurrency))


def _run_sync(
    runtime: OutboundRuntime, requests: list[tuple[str, str, dict[str, Any]]], concurrency: int
) -> list[httpx.Response | BaseException]:
    results: list[httpx.Response | BaseException] = [RuntimeError("not run")] * len(requests)
    transport = MeshTransport(runtime)
    with httpx.Client(transport=transport) as client:

        def one(index: int) -> None:
            method, url, kwargs = requests[index]
            try:
                response = client.request(method, url, **kwargs)
                response.read()
                results[index] = response
            except Exception as error:
                results[index] = error

        if concurrency == 1:
            for index in range(len(requests)):
                one(index)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(one, range(len(requests))))
    return results


async def _run_async(
    runtime: OutboundRuntime, requests: list[tuple[str, str, dict[str, Any]]], concurrency: int
) -> list[httpx.Response | BaseException]:
    results: list[httpx.Response | BaseException] = [RuntimeError("not run")] * len(requests)
    transport = AsyncMeshTransport(runtime)
    async with httpx.AsyncClient(transport=transport) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(len(requests)):
            queue.put_nowait(index)

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                method, url, kwargs = requests[index]
                try:
                    response = await client.request(method, url, **kwargs)
                    await response.aread()
                    results[index] = response
                except Exception as error:
                    results[index] = error

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


@contextlib.asynccontextmanager
async def async_client(runtime: OutboundRuntime) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime)) as client:
        yield client
