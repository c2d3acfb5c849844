"""gRPC credentials that follow rotation, and the SPIFFE Workload API source against a fake
Workload API server (grpcio on a unix socket) started by the test."""

from __future__ import annotations

import queue
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshlib._identity.grpc_credentials import grpc_channel_credentials, grpc_server_credentials
from meshlib._identity.rotation import Generation, RotatingIdentity
from meshlib._identity.sources import StaticSource
from meshlib.errors import IdentityError
from meshlib.identity import LocalCA, SpiffeWorkloadAPI, Svid

grpc = pytest.importorskip("grpc")
pytestmark = pytest.mark.extras

SERVER_DNS = "server.default.svc.cluster.local"
METHOD = "/test.Echo/Who"
RPC_TIMEOUT = 10.0
WAIT_SECONDS = 10.0


def _who(request: bytes, context: Any) -> bytes:
    peer = dict(context.auth_context()).get("peer_spiffe_id", [b"-"])
    return bytes(peer[0])


@pytest.fixture
def grpc_server(ca: LocalCA) -> Iterator[tuple[int, StaticSource, RotatingIdentity]]:
    source = StaticSource(ca.issue("default", "server", [SERVER_DNS]))
    identity = RotatingIdentity(source)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(_who)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(identity))
    server.start()
    yield port, source, identity
    server.stop(grace=None).wait(WAIT_SECONDS)
    identity.close()


def _call(port: int, identity: RotatingIdentity) -> bytes:
    options = [("grpc.ssl_target_name_override", SERVER_DNS)]
    with grpc.secure_channel(
        f"127.0.0.1:{port}", grpc_channel_credentials(identity), options=options
    ) as channel:
        result: bytes = channel.unary_unary(METHOD)(b"", timeout=RPC_TIMEOUT)
        return result


def _server_serial(port: int, identity: RotatingIdentity) -> int:
    context = identity.current_client_context(http2=True)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=RPC_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_DNS) as tls,
    ):
        der = tls.getpeercert(True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_grpc_mtls_and_server_rotation(
    grpc_server: tuple[int, StaticSource, RotatingIdentity],
    client_identity: RotatingIdentity,
    ca: LocalCA,
) -> None:
    port, source, server_identity = grpc_server
    assert _call(port, client_identity) == b"spiffe://cluster.local/ns/default/sa/client"
    before = _server_serial(port, client_identity)
    assert before == server_identity.svid.serial
    source.set(ca.issue("default", "server", [SERVER_DNS]))
    after = _server_serial(port, client_identity)
    assert after == server_identity.svid.serial != before
    assert _call(port, client_identity) == b"spiffe://cluster.local/ns/default/sa/client"


def test_grpc_refuses_a_client_of_another_ca(
    grpc_server: tuple[int, StaticSource, RotatingIdentity], other_ca: LocalCA, ca: LocalCA
) -> None:
    port, _, _ = grpc_server
    foreign = other_ca.issue("default", "intruder")
    client = RotatingIdentity(
        StaticSource(Svid.build(foreign.cert_chain, foreign.private_key, ca.roots))
    )
    with pytest.raises(grpc.RpcError) as info:
        _call(port, client)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_rotation_listener_hook_for_channel_swaps(ca: LocalCA) -> None:
    source = StaticSource(ca.issue("default", "client"))
    identity = RotatingIdentity(source)
    seen: list[Generation] = []
    unsubscribe = identity.subscribe(seen.append)
    source.set(ca.issue("default", "client"))
    unsubscribe()
    unsubscribe()
    source.set(ca.issue("default", "client"))
    assert [g.number for g in seen] == [2]
    assert identity.generation.number == 3
    identity.close()


# --- SPIFFE Workload API ------------------------------------------------------------------------


def _response(svid: Svid) -> Any:
    from spiffe._proto import workload_pb2

    der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in svid.cert_chain)
    key = svid.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    bundle = b"".join(c.public_bytes(serialization.Encoding.DER) for c in svid.bundle)
    return workload_pb2.X509SVIDResponse(
        svids=[
            workload_pb2.X509SVID(
                spiffe_id=str(svid.spiffe_id), x509_svid=der, x509_svid_key=key, bundle=bundle
            )
        ]
    )


class FakeWorkloadAPI:
    """Streams whatever ``push`` is given to every FetchX509SVID caller."""

    def __init__(self, path: Path) -> None:
        from spiffe._proto import workload_pb2_grpc

        self.updates: queue.Queue[Any] = queue.Queue()
        self.stopped = threading.Event()
        self.headers_ok = True
        outer = self

        class Servicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
            def FetchX509SVID(self, request: Any, context: Any) -> Iterator[Any]:
                metadata = dict(context.invocation_metadata())
                outer.headers_ok = outer.headers_ok and metadata.get("workload.spiffe.io") == "true"
                while context.is_active() and not outer.stopped.is_set():
                    try:
                        yield outer.updates.get(timeout=0.05)
                    except queue.Empty:
                        continue

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(  # type: ignore[no-untyped-call]
            Servicer(), self.server
        )
        self.server.add_insecure_port(f"unix:{path}")
        self.server.start()

    def push(self, svid: Svid) -> None:
        self.updates.put(_response(svid))

    def stop(self) -> None:
        self.stopped.set()
        self.server.stop(grace=None).wait(WAIT_SECONDS)


@pytest.fixture
def workload_api(tmp_path: Path) -> Iterator[tuple[FakeWorkloadAPI, Path]]:
    pytest.importorskip("spiffe")
    path = tmp_path / "agent.sock"
    fake = FakeWorkloadAPI(path)
    yield fake, path
    fake.stop()


def test_workload_api_source_follows_updates(
    workload_api: tuple[FakeWorkloadAPI, Path], ca: LocalCA
) -> None:
    fake, path = workload_api
    first = ca.issue("default", "foo")
    fake.push(first)
    source = SpiffeWorkloadAPI(str(path), timeout=WAIT_SECONDS)
    try:
        assert source.current().serial == first.serial
        assert str(source.current().spiffe_id) == "spiffe://cluster.local/ns/default/sa/foo"
        assert source.current().bundle == ca.roots
        changed = threading.Event()
        heard: list[Svid] = []

        def listener(svid: Svid) -> None:
            heard.append(svid)
            changed.set()

        # Listeners run in order: the identity rebuilds its contexts before ``listener`` fires.
        identity = RotatingIdentity(source, owns_source=False)
        source.subscribe(listener)
        second = ca.issue("default", "bar")
        fake.push(second)
        assert changed.wait(WAIT_SECONDS)
        assert heard[-1].serial == second.serial
        assert identity.svid.serial == second.serial
        assert fake.headers_ok
        identity.close()
    finally:
        source.close()


def test_workload_api_unreachable_raises_identity_error(tmp_path: Path) -> None:
    pytest.importorskip("spiffe")
    with pytest.raises(IdentityError, match="Workload API"):
        SpiffeWorkloadAPI(f"unix://{tmp_path / 'none.sock'}", timeout=1.0)


def test_workload_api_contexts_work_for_tls(
    workload_api: tuple[FakeWorkloadAPI, Path], ca: LocalCA
) -> None:
    fake, path = workload_api
    fake.push(ca.issue("default", "foo"))
    with SpiffeWorkloadAPI(str(path), timeout=WAIT_SECONDS) as source:
        identity = RotatingIdentity(source, owns_source=False)
        assert isinstance(identity.current_client_context(), ssl.SSLContext)
        assert identity.peer_policy().trust_domains == frozenset({"cluster.local"})
