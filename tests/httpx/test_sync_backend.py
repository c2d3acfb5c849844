"""The network backend of ``MeshTransport``: non-blocking sockets and TLS on 127.0.0.1."""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpcore
import pytest
from raw_servers import HOST, JOIN_TIMEOUT, OneShotServer, echo_line, refused_port

from meshlib import Mesh
from meshlib.httpx._sync_backend import SyncBackend, SyncStream


def _read_until(stream: httpcore.NetworkStream, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = stream.read(65536, timeout=JOIN_TIMEOUT)
        assert chunk, "the server closed early"
        data += chunk
    return data


def _open_descriptors() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_plain_round_trip_and_extra_info(serve: Callable[..., OneShotServer]) -> None:
    server = serve(echo_line)
    stream = SyncBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    assert isinstance(stream, SyncStream)
    sock = stream.get_extra_info("socket")
    assert sock.getblocking() is False
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    stream.write(b"hello\n", timeout=JOIN_TIMEOUT)
    stream.write(b"", timeout=JOIN_TIMEOUT)  # nothing to send: returns at once
    assert _read_until(stream, b"\n") == b"HELLO\n"
    assert stream.get_extra_info("ssl_object") is None
    assert stream.get_extra_info("server_addr") == ("127.0.0.1", server.port)
    assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
    assert stream.get_extra_info("no such thing") is None
    assert stream.read(1024, timeout=JOIN_TIMEOUT) == b""  # the server closed: EOF
    assert stream.get_extra_info("is_readable")
    stream.close()
    assert stream.get_extra_info("is_readable")  # a closed socket reads as EOF
    with pytest.raises(httpcore.ReadError):
        stream.read(1024, timeout=None)  # fails at once: nothing to wait for


def test_tls_round_trip_large_writes_and_ragged_eof(
    serve: Callable[..., OneShotServer], pki: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = pki
    payload = b"x" * 3_000_000 + b"\n"  # far more than the socket buffers: writes wait
    server = serve(echo_line, server_context)
    plain = SyncBackend().connect_tcp("localhost", server.port, timeout=JOIN_TIMEOUT)
    stream = plain.start_tls(client_context, HOST, timeout=JOIN_TIMEOUT)
    ssl_object = stream.get_extra_info("ssl_object")
    assert isinstance(ssl_object, ssl.SSLSocket)
    assert ssl_object.getpeercert(True)
    assert ssl_object.getblocking() is False
    stream.write(payload, timeout=JOIN_TIMEOUT)
    assert _read_until(stream, b"\n") == payload.upper()
    # The server closes without close_notify: the end of the stream, as httpcore has it.
    assert stream.read(1024, timeout=JOIN_TIMEOUT) == b""
    stream.close()


def test_writes_wait_as_often_as_the_peer_drains_and_reads_may_wait_unbounded(
    serve: Callable[..., OneShotServer],
) -> None:
    size = 32_000_000

    def drain_slowly(conn: socket.socket) -> None:
        received = 0
        while received < size:
            chunk = conn.recv(1 << 20)
            if not chunk:
                return
            received += len(chunk)
            time.sleep(0.001)  # slower than the writer: its send buffer fills again and again
        conn.sendall(b"done\n")

    server = serve(drain_slowly)
    stream = SyncBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    stream.write(b"x" * size, timeout=JOIN_TIMEOUT)
    assert stream.read(1024, timeout=None) == b"done\n"
    stream.close()


def test_refused_certificate_and_wrong_name_are_connect_errors(
    serve: Callable[..., OneShotServer], pki: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = pki
    for context, name in ((ssl.create_default_context(), HOST), (client_context, "other.test")):
        server = serve(None, server_context)
        plain = SyncBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
        with pytest.raises(httpcore.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            plain.start_tls(context, name, timeout=JOIN_TIMEOUT)
        assert plain.get_extra_info("socket").fileno() == -1  # closed, not leaked


def test_handshake_timeout(
    serve: Callable[..., OneShotServer], pki: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server = serve()  # accepts, never answers the ClientHello
    plain = SyncBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    with pytest.raises(httpcore.ConnectTimeout):
        plain.start_tls(pki[1], HOST, timeout=0.2)
    assert plain.get_extra_info("socket").fileno() == -1


def test_read_and_write_timeouts(serve: Callable[..., OneShotServer]) -> None:
    server = serve()  # reads nothing, sends nothing
    stream = SyncBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    with pytest.raises(httpcore.ReadTimeout):
        stream.read(1024, timeout=0.2)  # tried first: nothing was written
    with pytest.raises(httpcore.WriteTimeout):
        stream.write(b"x" * 64_000_000, timeout=0.2)  # nobody drains the buffers
    with pytest.raises(httpcore.ReadTimeout):
        stream.read(1024, timeout=0.2)  # after a write: waits first
    with pytest.raises(httpcore.ReadTimeout):
        stream.read(1024, timeout=0)  # no time at all
    stream.close()


def test_a_record_cut_short_times_out(
    serve: Callable[..., OneShotServer], pki: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """The socket turns readable but OpenSSL still lacks most of the record: the read goes on
    waiting for the time its timeout has left, then fails, as a stalled peer must."""
    server_context, client_context = pki
    stalled = threading.Event()

    def part_of_a_record(conn: socket.socket) -> None:
        conn.recv(1024)
        # Behind OpenSSL's back, on the same descriptor: a header promising 64 bytes, and 10.
        raw = socket.socket(fileno=conn.fileno())
        try:
            raw.sendall(b"\x17\x03\x03\x00\x40" + b"\x00" * 10)
            stalled.wait(JOIN_TIMEOUT)
        finally:
            raw.detach()

    server = serve(part_of_a_record, server_context)
    plain = SyncBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    stream = plain.start_tls(client_context, HOST, timeout=JOIN_TIMEOUT)
    stream.write(b"ping\n", timeout=JOIN_TIMEOUT)
    try:
        with pytest.raises(httpcore.ReadTimeout):
            stream.read(1024, timeout=0.3)
    finally:
        stalled.set()
        stream.close()


def _one_record_per_ping(done: threading.Event) -> Callable[[socket.socket], None]:
    def script(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(b"x" * 16_000)  # one TLS record
        conn.recv(1024)
        done.wait(JOIN_TIMEOUT)

    return script


def test_a_read_after_a_write_takes_what_openssl_holds_already(
    serve: Callable[..., OneShotServer], pki: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """The rest of a record an earlier read left is decrypted in OpenSSL already: the socket
    never turns readable for it, so the read after the next write must not wait for that."""
    server_context, client_context = pki
    done = threading.Event()
    server = serve(_one_record_per_ping(done), server_context)
    plain = SyncBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    stream = plain.start_tls(client_context, HOST, timeout=JOIN_TIMEOUT)
    try:
        stream.write(b"ping", timeout=JOIN_TIMEOUT)
        assert stream.read(100, timeout=JOIN_TIMEOUT) == b"x" * 100
        stream.write(b"ping", timeout=JOIN_TIMEOUT)
        assert stream.read(100, timeout=2.0) == b"x" * 100  # the server sends nothing more
    finally:
        done.set()
        stream.close()


def test_a_read_with_no_time_after_a_write_still_tries(
    serve: Callable[..., OneShotServer],
) -> None:
    server = serve(echo_line)
    stream = SyncBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    stream.write(b"now\n", timeout=JOIN_TIMEOUT)
    select.select([stream.get_extra_info("socket")], [], [], JOIN_TIMEOUT)  # the answer is in
    assert stream.read(1024, timeout=0) == b"NOW\n"
    stream.close()


def test_reset_by_peer_is_a_read_and_write_error(serve: Callable[..., OneShotServer]) -> None:
    def reset(conn: socket.socket) -> None:
        conn.recv(16)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    server = serve(reset)
    stream = SyncBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    stream.write(b"ping", timeout=JOIN_TIMEOUT)
    with pytest.raises(httpcore.ReadError):
        stream.read(1024, timeout=JOIN_TIMEOUT)
    with pytest.raises(httpcore.WriteError):
        stream.write(b"x" * 8_000_000, timeout=JOIN_TIMEOUT)  # more than any buffer
    stream.close()


def test_refused_connection_bad_name_and_bad_socket_option() -> None:
    backend = SyncBackend()
    port = refused_port()
    with pytest.raises(httpcore.ConnectError):
        backend.connect_tcp("127.0.0.1", port, timeout=JOIN_TIMEOUT)
    with pytest.raises(httpcore.ConnectError):
        backend.connect_tcp("a..b", 80, timeout=JOIN_TIMEOUT)  # IDNA refuses an empty label
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, pytest.raises(httpcore.ConnectError):
        backend.connect_tcp(
            "127.0.0.1", listener.getsockname()[1], socket_options=[(socket.SOL_SOCKET, 9999, 1)]
        )


def test_local_address_is_bound(serve: Callable[..., OneShotServer]) -> None:
    server = serve()
    stream = SyncBackend().connect_tcp(
        "127.0.0.1", server.port, timeout=JOIN_TIMEOUT, local_address="127.0.0.1"
    )
    assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
    stream.close()


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts /proc/self/fd")
def test_connect_timeout_closes_its_socket(unanswered_port: int) -> None:
    before = _open_descriptors()
    with pytest.raises(httpcore.ConnectTimeout):
        SyncBackend().connect_tcp("127.0.0.1", unanswered_port, timeout=0.2)
    assert _open_descriptors() == before


def test_is_readable_without_poll(
    serve: Callable[..., OneShotServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(echo_line)
    stream = SyncBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    monkeypatch.delattr(select, "poll")  # as on Windows
    assert not stream.get_extra_info("is_readable")
    stream.write(b"x\n", timeout=JOIN_TIMEOUT)
    assert _read_until(stream, b"\n") == b"X\n"  # the waits go through select() too
    assert stream.read(1024, timeout=JOIN_TIMEOUT) == b""  # the server closed (a race before)
    assert stream.get_extra_info("is_readable")  # EOF
    stream.close()


def test_unix_sockets_and_sleep_go_through_httpcores_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "echo.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def accept() -> None:
        conn, _ = listener.accept()
        with conn:
            echo_line(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    backend = SyncBackend()
    try:
        stream = backend.connect_unix_socket(str(path), timeout=JOIN_TIMEOUT)
        stream.write(b"unix\n", timeout=JOIN_TIMEOUT)
        assert _read_until(stream, b"\n") == b"UNIX\n"
        stream.close()
    finally:
        listener.close()
        thread.join(JOIN_TIMEOUT)
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # the backend's sleep is time.sleep's
    backend.sleep(0.01)
    assert slept == [0.01]


def test_mesh_transport_connections_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[bytes] = []
    opened: list[httpcore.NetworkStream] = []
    connect = SyncBackend.connect_tcp

    def counted(self: SyncBackend, *args: object, **kwargs: object) -> httpcore.NetworkStream:
        stream = connect(self, *args, **kwargs)  # type: ignore[arg-type]
        opened.append(stream)
        return stream

    monkeypatch.setattr(SyncBackend, "connect_tcp", counted)

    def answer(conn: socket.socket) -> None:
        for _ in range(2):  # two requests on one connection: the second reuses it
            received.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    server = OneShotServer(answer)
    try:
        mesh = Mesh.from_text("", namespace="default")
        with mesh.http_client() as client:
            texts = [client.get(f"http://127.0.0.1:{server.port}/x").text for _ in range(2)]
        mesh.close()
    finally:
        server.close()
    assert texts == ["ok", "ok"]
    assert [data.split(b"\r\n")[0] for data in received] == [b"GET /x HTTP/1.1"] * 2
    assert len(opened) == 1
    assert isinstance(opened[0], SyncStream)
