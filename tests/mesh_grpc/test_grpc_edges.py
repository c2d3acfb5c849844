"""Less common paths of the gRPC drivers: outside the mesh, waiting for a pool slot, futures
and call objects that failed, channel connectivity, handler errors and server records."""

from __future__ import annotations

import asyncio
import json
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_upstreams import (
    GET,
    STREAM,
    TARGET,
    Upstream,
    make_runtime,
    run_calls,
    service_entry,
)

from meshlib import Mesh
from meshlib._engine.inbound import InboundHooks, InboundRecord
from meshlib._identity.grpc_credentials import grpc_channel_credentials
from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.sources import StaticSource
from meshlib.grpc import MeshChannel, MeshRpcError
from meshlib.grpc.aio import MeshAioChannel, MeshAioRpcError
from meshlib.identity import LocalCA

pytestmark = pytest.mark.extras
WAIT = 10.0
QUEUE = """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 5}
"""


def test_outside_the_mesh_raises_grpcs_own_error(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    runtime = make_runtime(service_entry([(upstreams["v1"].port, {})]), client_identity)

    async def aio_call(target: str) -> BaseException:
        async with MeshAioChannel(runtime, target) as channel:
            try:
                await channel.unary_unary(GET)(b"{}", timeout=WAIT)
            except grpc.aio.AioRpcError as error:
                failure: BaseException = error
                return failure
        raise AssertionError("the call succeeded")

    for target in (f"127.0.0.1:{upstreams['v1'].port}", "unknown-host.invalid:1"):
        # Plaintext towards a TLS server, and a name that does not resolve: no mesh reply.
        if kind == "sync":
            with MeshChannel(runtime, target) as channel:
                with pytest.raises(grpc.RpcError) as info:
                    channel.unary_unary(GET)(b"{}", timeout=WAIT)
                error: Any = info.value
        else:
            error = asyncio.run(aio_call(target))
        assert not isinstance(error, MeshRpcError | MeshAioRpcError)
        assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_calls_wait_in_line_for_a_pool_slot(
    kind: str, upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    runtime = make_runtime(service_entry([(upstreams["v1"].port, {})]) + QUEUE, client_identity)
    results = run_calls(kind, runtime, [({"delay": 0.1}, {})] * 3, concurrency=3)
    assert [r["name"] for r in results if isinstance(r, dict)] == ["v1"] * 3


def test_sync_future_and_call_of_a_failed_rpc(
    upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    runtime = make_runtime(service_entry([(upstreams["v1"].port, {})]), client_identity)
    upstreams["v1"].state.always_code = grpc.StatusCode.NOT_FOUND
    with MeshChannel(runtime, TARGET) as channel:
        ready: list[grpc.ChannelConnectivity] = []
        channel.subscribe(ready.append)
        channel.unsubscribe(ready.append)
        assert ready == [grpc.ChannelConnectivity.READY]
        future = channel.unary_unary(GET).future(b"{}", timeout=WAIT)
        error = future.exception(WAIT)
        assert isinstance(error, grpc.RpcError)
        assert future.traceback() is not None
        assert future.code() == grpc.StatusCode.NOT_FOUND
        assert future.details() == "always failing"
        assert future.initial_metadata() is not None
        assert future.trailing_metadata() is not None
        assert future.done()
        assert not future.running()
        assert not future.is_active()
        assert not future.cancelled()
        assert not future.cancel()  # already over
        assert not future.add_callback(lambda: None)
        assert future.time_remaining() is None
        with pytest.raises(grpc.RpcError):
            future.result()


def test_aio_call_objects(
    upstreams: dict[str, Upstream], client_identity: RotatingIdentity
) -> None:
    async def go() -> None:
        async with MeshAioChannel(runtime, TARGET) as channel:
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            await channel.channel_ready()
            ended: list[Any] = []
            call = channel.unary_stream(STREAM)(json.dumps({"count": 2}).encode(), timeout=WAIT)
            call.add_done_callback(ended.append)
            await call.wait_for_connection()
            assert call.time_remaining() is not None
            assert [m async for m in call] == [b"0", b"1"]
            assert await call.details() in ("", None)
            assert await call.initial_metadata() is not None
            assert await call.trailing_metadata() is not None
            assert call.done()
            assert not call.cancelled()
            assert not call.cancel()
            for _ in range(100):
                if ended:
                    break
                await asyncio.sleep(0.01)
            assert ended == [call]

            refused = channel.unary_unary("/other.Service/Get")(b"{}")
            failed: list[Any] = []
            refused.add_done_callback(failed.append)
            with pytest.raises(MeshAioRpcError):
                await refused
            assert failed == [refused]
            assert refused.done()
            assert not refused.cancelled()
            assert not refused.cancel()
            assert refused.time_remaining() is None
            assert await refused.code() == grpc.StatusCode.UNIMPLEMENTED

            waiting = channel.unary_unary(GET)(json.dumps({"delay": 5}).encode())
            assert waiting.cancel()
            await asyncio.sleep(0)
            assert waiting.cancelled()
            assert await waiting.code() == grpc.StatusCode.CANCELLED
            assert await waiting.details() == "Locally cancelled by application!"
            assert await waiting.initial_metadata() is None

    text = (
        service_entry([(upstreams["v1"].port, {})])
        + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /test.Reviews/}}]
    route: [{destination: {host: reviews}}]
"""
    )
    runtime = make_runtime(text, client_identity)
    asyncio.run(go())


# ------------------------------------------------------------------------------ servers


def _boom(request: bytes, context: Any) -> bytes:
    raise RuntimeError("handler failed")


def _not_found(request: bytes, context: Any) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, "no such rating")
    raise AssertionError("abort raises")  # pragma: no cover


def test_server_records_grpc_status_of_every_rpc(ca: LocalCA) -> None:
    mesh = Mesh.from_text(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: default, namespace: default}\nspec: {mtls: {mode: STRICT}}\n",
        workload="ratings-v1",
        service_account="ratings",
        labels={"app": "ratings"},
        identity=ca,
    )
    records: list[InboundRecord] = []
    mesh.inbound_hooks = InboundHooks(on_request=records.append)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[mesh.grpc_server_interceptor()]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Ratings",
                {
                    "Boom": grpc.unary_unary_rpc_method_handler(_boom),
                    "Missing": grpc.unary_unary_rpc_method_handler(_not_found),
                },
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", mesh.grpc_server_credentials())
    server.start()
    client = RotatingIdentity(StaticSource(ca.issue("default", "productpage")))
    try:
        options = [("grpc.ssl_target_name_override", "ratings.default.svc.cluster.local")]
        with grpc.secure_channel(
            f"127.0.0.1:{port}", grpc_channel_credentials(client), options=options
        ) as channel:
            for method, code in (
                ("Boom", grpc.StatusCode.UNKNOWN),
                ("Missing", grpc.StatusCode.NOT_FOUND),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    channel.unary_unary(f"/test.Ratings/{method}")(b"", timeout=WAIT)
                assert info.value.code() == code
    finally:
        server.stop(grace=None).wait(WAIT)
        client.close()
        mesh.close()
    assert [(r.call.path, r.grpc_status) for r in records] == [
        ("/test.Ratings/Boom", grpc.StatusCode.UNKNOWN.value[0]),
        ("/test.Ratings/Missing", grpc.StatusCode.NOT_FOUND.value[0]),
    ]
    assert {r.call.method for r in records} == {"POST"}
    assert {r.peer.spiffe_id for r in records if r.peer} == {
        "spiffe://cluster.local/ns/default/sa/productpage"
    }
