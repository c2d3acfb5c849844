"""The gRPC chain A -> B -> C: trace id, request id and deadline cross two hops unaided.

Real grpc servers with the mesh's server interceptor and rotating mTLS credentials; B's handler
only calls C through ``mesh.grpc_channel`` (sync) or ``mesh.grpc_aio_channel`` (grpc.aio).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack
from typing import Any

import pytest
from obs_chain import A_ROUTE_TIMEOUT, HEADER_GRANULARITY, NAMESPACE, PORT, TRACE_HEADERS

from meshlib import Mesh
from meshlib._telemetry.context import current_deadline, current_request_id
from meshlib.identity import LocalCA

grpc = pytest.importorskip("grpc")
pytestmark = pytest.mark.extras

SERVICE = "obs.Chain"
METHOD = f"/{SERVICE}/Get"
B_HOST = f"b.{NAMESPACE}.svc.cluster.local"
C_HOST = f"c.{NAMESPACE}.svc.cluster.local"
WAIT = 10.0
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
REQUEST_ID = "7d1c2a4e-8f1b-4c1e-9a57-2d0f2bb0c002"


def grpc_entry(host: str, port: int, service_account: str) -> str:
    name = host.split(".", 1)[0]
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PORT}, name: grpc, protocol: GRPC}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{grpc: {port}}}
    labels: {{app: {name}, security.istio.io/tlsMode: istio}}
    serviceAccount: {service_account}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  hosts: [{host}]
  http:
  - route: [{{destination: {{host: {host}}}}}]
    timeout: {A_ROUTE_TIMEOUT}s
"""


def seen(context: Any) -> dict[str, Any]:
    metadata = [(k, v) for k, v in context.invocation_metadata() if isinstance(v, str)]
    deadline = current_deadline()
    return {
        "headers": {k: v for k, v in metadata if k in TRACE_HEADERS},
        "counts": {name: sum(1 for k, _ in metadata if k == name) for name in TRACE_HEADERS},
        "remaining": None if deadline is None else deadline - time.monotonic(),
        "request_id": current_request_id(),
    }


def serve(mesh: Mesh, handler: Callable[[bytes, Any], bytes], stack: ExitStack) -> int:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[mesh.grpc_server_interceptor()],
    )
    handlers = {"Get": grpc.unary_unary_rpc_method_handler(handler)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    # PERMISSIVE credentials do not ask for a client certificate: require one, so the peer
    # is known (the principal labels are part of what is checked).
    credentials = mesh.grpc_server_credentials(require_client_auth=True)
    port: int = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    stack.callback(lambda: server.stop(grace=None).wait(WAIT))
    return port


def make(ca: LocalCA, name: str, config: str, stack: ExitStack) -> Mesh:
    mesh = Mesh.from_text(
        config or "# empty\n",
        workload=f"{name}-v1",
        namespace=NAMESPACE,
        service_account=name,
        labels={"app": name, "version": "v1"},
        identity=ca,
    )
    stack.callback(mesh.close)
    mesh.configure_telemetry()
    return mesh


@pytest.fixture(scope="module")
def meshes() -> Iterator[dict[str, Mesh]]:
    ca = LocalCA.generate("cluster.local")
    with ExitStack() as stack:
        c = make(ca, "c", "", stack)
        c_port = serve(c, lambda request, context: json.dumps(seen(context)).encode(), stack)
        b = make(ca, "b", grpc_entry(C_HOST, c_port, "c"), stack)
        sync_channel = b.grpc_channel(f"{C_HOST}:{PORT}")
        stack.callback(sync_channel.close)

        def b_handler(request: bytes, context: Any) -> bytes:
            mine = seen(context)
            if request == b"aio":

                async def call_c() -> bytes:
                    channel = b.grpc_aio_channel(f"{C_HOST}:{PORT}")
                    try:
                        answer: bytes = await channel.unary_unary(METHOD)(b"")
                        return answer
                    finally:
                        await channel.close()

                downstream = asyncio.run(call_c())
            else:
                downstream = sync_channel.unary_unary(METHOD)(b"")
            return json.dumps({"b": mine, "c": json.loads(downstream)}).encode()

        b_port = serve(b, b_handler, stack)
        yield {"a": make(ca, "a", grpc_entry(B_HOST, b_port, "b"), stack), "b": b, "c": c}


@pytest.mark.parametrize("kind", ["sync", "aio"])
@pytest.mark.parametrize(
    "carried",
    [
        {"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"},
        {"x-b3-traceid": TRACE_ID, "x-b3-spanid": "b7ad6b7169203331", "x-b3-sampled": "1"},
    ],
    ids=["w3c", "b3"],
)
def test_grpc_chain_carries_trace_request_id_and_deadline(
    meshes: dict[str, Mesh], kind: str, carried: dict[str, str]
) -> None:
    a_mesh = meshes["a"]
    metadata = (*carried.items(), ("x-request-id", REQUEST_ID))
    with a_mesh.grpc_channel(f"{B_HOST}:{PORT}") as channel:
        answer = channel.unary_unary(METHOD)(kind.encode(), metadata=metadata, timeout=WAIT)
    body = json.loads(answer)
    for hop in (body["b"], body["c"]):
        headers = hop["headers"]
        # No SDK: the trace headers travel exactly as A sent them.
        for name, value in carried.items():
            assert headers.get(name) == value
        assert headers["x-request-id"] == REQUEST_ID
        assert hop["request_id"] == REQUEST_ID
        assert all(count <= 1 for count in hop["counts"].values()), hop["counts"]
    b, c = body["b"], body["c"]
    assert b["remaining"] is not None
    assert c["remaining"] is not None
    assert 0 < c["remaining"] <= b["remaining"] + HEADER_GRANULARITY
    assert b["remaining"] <= A_ROUTE_TIMEOUT


def test_grpc_series_at_both_ends(meshes: dict[str, Mesh]) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    with meshes["a"].grpc_channel(f"{B_HOST}:{PORT}") as channel:
        channel.unary_unary(METHOD)(b"sync", timeout=WAIT)
    wanted = ('reporter="destination"', 'request_protocol="grpc"', 'grpc_response_status="0"')
    lines: list[str] = []
    until = time.monotonic() + WAIT
    while not lines and time.monotonic() < until:
        text = prometheus_client.generate_latest(meshes["c"].telemetry.sink.registry).decode()
        lines = [
            line
            for line in text.splitlines()
            if line.startswith("istio_requests_total{") and all(w in line for w in wanted)
        ]
        time.sleep(0.02)
    assert lines, "no gRPC destination series at C"
    assert 'source_principal="spiffe://cluster.local/ns/default/sa/b"' in lines[0]
    assert 'connection_security_policy="mutual_tls"' in lines[0]
    text = prometheus_client.generate_latest(meshes["b"].telemetry.sink.registry).decode()
    outbound = [
        line
        for line in text.splitlines()
        if line.startswith("istio_requests_total{") and 'reporter="source"' in line
    ]
    assert outbound
    assert all('request_protocol="grpc"' in line for line in outbound)
    assert all('destination_service="c.default.svc.cluster.local"' in line for line in outbound)
