"""Mesh gRPC servers: rotating mTLS credentials, the peer's SPIFFE ID, AuthorizationPolicy on
``POST /pkg.Service/Method`` (sync and grpc.aio interceptors), plain grpcio clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

from meshlib import Mesh
from meshlib._identity.grpc_credentials import grpc_channel_credentials
from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.sources import StaticSource
from meshlib._model.call import Peer
from meshlib.grpc import peer_of
from meshlib.identity import LocalCA

pytestmark = pytest.mark.extras
WAIT = 10.0
SERVICE = "test.Ratings"
SERVER_DNS = "ratings.default.svc.cluster.local"
# STRICT: grpcio's Python API cannot request a client certificate without requiring it, so a
# PERMISSIVE gRPC server never learns the peer's identity.
POLICY = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
    to: [{operation: {methods: [POST], paths: ["/test.Ratings/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/test.Ratings/Admin"]}}]
"""


def _who(request: bytes, context: Any) -> bytes:
    return json.dumps({"peer": peer_of(context).spiffe_id}).encode()


def _count(request: bytes, context: Any) -> Iterator[bytes]:
    for index in range(3):
        yield b"%d" % index


def _sync_handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Who": grpc.unary_unary_rpc_method_handler(_who),
            "Admin": grpc.unary_unary_rpc_method_handler(_who),
            "Count": grpc.unary_stream_rpc_method_handler(_count),
        },
    )


@pytest.fixture(scope="module")
def server_mesh(ca: LocalCA) -> Iterator[Mesh]:
    mesh = Mesh.from_text(
        POLICY,
        workload="ratings-v1",
        service_account="ratings",
        labels={"app": "ratings"},
        identity=ca,
    )
    yield mesh
    mesh.close()


@pytest.fixture(scope="module")
def sync_server(server_mesh: Mesh) -> Iterator[int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[server_mesh.grpc_server_interceptor()],
    )
    server.add_generic_rpc_handlers((_sync_handlers(),))
    port = server.add_secure_port("127.0.0.1:0", server_mesh.grpc_server_credentials())
    server.start()
    yield port
    server.stop(grace=None).wait(WAIT)


def _client(ca: LocalCA, account: str) -> RotatingIdentity:
    return RotatingIdentity(StaticSource(ca.issue("default", account)))


def _channel(port: int, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    options = [("grpc.ssl_target_name_override", SERVER_DNS)]
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options)


def test_plain_grpc_client_with_an_svid_is_served(sync_server: int, ca: LocalCA) -> None:
    identity = _client(ca, "productpage")
    with _channel(sync_server, grpc_channel_credentials(identity)) as channel:
        answer = json.loads(channel.unary_unary(f"/{SERVICE}/Who")(b"", timeout=WAIT))
        assert answer == {"peer": "spiffe://cluster.local/ns/default/sa/productpage"}
        counted = list(channel.unary_stream(f"/{SERVICE}/Count")(b"", timeout=WAIT))
        assert counted == [b"0", b"1", b"2"]
    identity.close()


def test_client_without_a_certificate_cannot_connect(sync_server: int, ca: LocalCA) -> None:
    roots = _client(ca, "anyone")
    credentials = grpc.ssl_channel_credentials(root_certificates=roots.svid.bundle_pem)
    with _channel(sync_server, credentials) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(f"/{SERVICE}/Who")(b"", timeout=WAIT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    roots.close()


@pytest.mark.parametrize(
    ("account", "method"),
    [("reviews", "Who"), ("reviews", "Count"), ("productpage", "Admin")],
)
def test_authorization_denies_with_permission_denied(
    sync_server: int, ca: LocalCA, account: str, method: str
) -> None:
    identity = _client(ca, account)
    with _channel(sync_server, grpc_channel_credentials(identity)) as channel:
        if method == "Count":
            with pytest.raises(grpc.RpcError) as info:
                list(channel.unary_stream(f"/{SERVICE}/{method}")(b"", timeout=WAIT))
        else:
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(f"/{SERVICE}/{method}")(b"", timeout=WAIT)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details() == "RBAC: access denied"
    identity.close()


# ------------------------------------------------------------------------------------ aio


async def _aio_who(request: bytes, context: Any) -> bytes:
    return json.dumps({"peer": peer_of(context).spiffe_id}).encode()


async def _aio_count(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for index in range(3):
        yield b"%d" % index


async def _aio_write(request: bytes, context: Any) -> None:
    await context.write(b"written")


def test_aio_server_interceptor(server_mesh: Mesh, ca: LocalCA) -> None:
    async def go() -> None:
        server = grpc.aio.server(interceptors=[server_mesh.grpc_aio_server_interceptor()])
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Who": grpc.unary_unary_rpc_method_handler(_aio_who),
                        "Admin": grpc.unary_unary_rpc_method_handler(_aio_who),
                        "Count": grpc.unary_stream_rpc_method_handler(_aio_count),
                        "Write": grpc.unary_stream_rpc_method_handler(_aio_write),
                    },
                ),
            )
        )
        port = server.add_secure_port("127.0.0.1:0", server_mesh.grpc_server_credentials())
        await server.start()
        allowed = _client(ca, "productpage")
        denied = _client(ca, "reviews")
        options = [("grpc.ssl_target_name_override", SERVER_DNS)]
        try:
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{port}", grpc_channel_credentials(allowed), options=options
            ) as channel:
                answer = await channel.unary_unary(f"/{SERVICE}/Who")(b"", timeout=WAIT)
                assert json.loads(answer)["peer"].endswith("/sa/productpage")
                counted = [m async for m in channel.unary_stream(f"/{SERVICE}/Count")(b"")]
                assert counted == [b"0", b"1", b"2"]
                written = [m async for m in channel.unary_stream(f"/{SERVICE}/Write")(b"")]
                assert written == [b"written"]
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await channel.unary_unary(f"/{SERVICE}/Admin")(b"", timeout=WAIT)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{port}", grpc_channel_credentials(denied), options=options
            ) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await channel.unary_unary(f"/{SERVICE}/Who")(b"", timeout=WAIT)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert info.value.details() == "RBAC: access denied"
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in channel.unary_stream(f"/{SERVICE}/Count")(b""):
                        pass
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await server.stop(None)
            allowed.close()
            denied.close()

    asyncio.run(go())


def test_peer_of_a_plaintext_context() -> None:
    class Context:
        def auth_context(self) -> dict[str, list[bytes]]:
            return {}

        def peer(self) -> str:
            return "ipv6:[::1]:5555"

    assert peer_of(Context()) == Peer(spiffe_id=None, address="::1", port=5555, mtls=False)


# ---------------------------------------------------------------------- mesh to mesh


def test_mesh_channels_call_a_mesh_server(server_mesh: Mesh, sync_server: int, ca: LocalCA) -> None:
    entry = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9090, name: grpc, protocol: GRPC}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{grpc: {sync_server}}}
    labels: {{security.istio.io/tlsMode: istio}}
"""
    client = Mesh.from_text(
        entry, workload="productpage-v1", service_account="productpage", identity=ca
    )
    try:
        with client.grpc_channel("ratings:9090") as channel:
            answer = json.loads(channel.unary_unary(f"/{SERVICE}/Who")(b"", timeout=WAIT))
            assert answer == {"peer": "spiffe://cluster.local/ns/default/sa/productpage"}

        async def go() -> bytes:
            async with client.grpc_aio_channel("ratings:9090") as channel:
                reply: bytes = await channel.unary_unary(f"/{SERVICE}/Who")(b"", timeout=WAIT)
                return reply

        assert json.loads(asyncio.run(go()))["peer"].endswith("/sa/productpage")
    finally:
        client.close()
