"""A three-service chain A -> B -> C on 127.0.0.1 with real mTLS, each its own Mesh.

A is the test process (a client only). B is an ASGI app whose handler just calls C through its
mesh client; C answers with what it saw: trace headers, request id, and the deadline meshlib
made current. Nothing in B touches headers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from meshlib import Mesh
from meshlib._telemetry.context import current_deadline, current_request_id
from meshlib.identity import LocalCA

NAMESPACE = "default"
PORT = 9080
B_HOST = f"b.{NAMESPACE}.svc.cluster.local"
C_HOST = f"c.{NAMESPACE}.svc.cluster.local"
A_ROUTE_TIMEOUT = 5.0
HEADER_GRANULARITY = 0.001
"""x-envoy-expected-rq-timeout-ms carries whole milliseconds."""
TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "b3",
    "x-request-id",
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def service_entry(host: str, port: int, service_account: str, labels: dict[str, str]) -> str:
    name = host.split(".", 1)[0]
    label_text = json.dumps({"security.istio.io/tlsMode": "istio", **labels})
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {port}}}
    labels: {label_text}
    serviceAccount: {service_account}
"""


def route_timeout(host: str, seconds: float) -> str:
    name = host.split(".", 1)[0]
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  hosts: [{host}]
  http:
  - route: [{{destination: {{host: {host}}}}}]
    timeout: {seconds}s
"""


def raw_headers(scope: Scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])]


def seen(scope: Scope) -> dict[str, Any]:
    """The trace headers as received (with their repeat counts) and the current deadline."""
    headers = raw_headers(scope)
    deadline = current_deadline()
    return {
        "headers": {name: value for name, value in headers if name in TRACE_HEADERS},
        "counts": {name: sum(1 for n, _ in headers if n == name) for name in TRACE_HEADERS},
        "remaining": None if deadline is None else deadline - time.monotonic(),
        "request_id": current_request_id(),
    }


async def reply(send: Send, payload: dict[str, Any], status: int = 200) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def c_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await reply(send, seen(scope))

    return app


def b_app(mesh: Mesh) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """B's handler only calls C: on ``/sync`` with the sync client in a worker thread, on
    ``/async`` with the async client."""
    url = f"http://{C_HOST}:{PORT}/"
    sync_client = mesh.http_client()
    async_client = mesh.async_http_client()

    def call_sync() -> Any:
        return sync_client.get(url).json()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        mine = seen(scope)  # before calling C: the deadline as it arrived
        if scope["path"] == "/sync":
            downstream = await asyncio.to_thread(call_sync)
        else:
            downstream = (await async_client.get(url)).json()
        await reply(send, {"b": mine, "c": downstream})

    return app


@dataclass
class Chain:
    a: Mesh
    b: Mesh
    c: Mesh
    closers: list[Callable[[], object]] = field(default_factory=list)


def make_mesh(ca: LocalCA, name: str, config: str, version: str = "v1") -> Mesh:
    return Mesh.from_text(
        config or "# empty\n",
        workload=f"{name}-{version}",
        namespace=NAMESPACE,
        service_account=name,
        labels={"app": name, "version": version},
        identity=ca,
    )


@contextmanager
def chain(
    ca: LocalCA,
    *,
    configure: Callable[[Mesh], None] = lambda mesh: mesh.configure_telemetry(),
    wrap_b: Callable[[Any], Any] = lambda app: app,
) -> Iterator[Chain]:
    """Start C and B (servers with the inbound middleware), build A; stop all on exit."""
    closers: list[Callable[[], object]] = []
    try:
        c = make_mesh(ca, "c", "")
        closers.append(c.close)
        configure(c)
        c_server = c.server(c_app()).start()
        closers.append(c_server.stop)

        b = make_mesh(ca, "b", service_entry(C_HOST, c_server.port, "c", {"app": "c"}))
        closers.append(b.close)
        configure(b)
        b_server = b.server(wrap_b(b_app(b))).start()
        closers.append(b_server.stop)

        a_config = service_entry(B_HOST, b_server.port, "b", {"app": "b", "version": "v1"})
        a = make_mesh(ca, "a", a_config + "---" + route_timeout(B_HOST, A_ROUTE_TIMEOUT))
        closers.append(a.close)
        configure(a)
        yield Chain(a, b, c, closers)
    finally:
        for close in reversed(closers):
            close()
