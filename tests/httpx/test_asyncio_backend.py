"""The asyncio network backend of ``AsyncMeshTransport``: real sockets and TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import httpcore
import httpx
import pytest
import sniffio
from raw_servers import HOST, JOIN_TIMEOUT, OneShotServer, echo_line, fill_queue, refused_port

from meshlib.httpx._asyncio_backend import AsyncioBackend, AsyncioStream


def _resolve_to(monkeypatch: pytest.MonkeyPatch, *ports: int) -> None:
    """Every name resolves to these ports of 127.0.0.1, in this order."""
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p)) for p in ports]

    async def resolve(host: bytes, port: int, **kwargs: object) -> list[object]:
        return list(answers)

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolve)


async def _read_until(stream: httpcore.AsyncNetworkStream, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = await stream.read(65536, timeout=JOIN_TIMEOUT)
        assert chunk, "the server closed early"
        data += chunk
    return data


async def test_plain_round_trip_and_extra_info(serve: Callable[..., OneShotServer]) -> None:
    server = serve(echo_line)
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    assert isinstance(stream, AsyncioStream)
    await stream.write(b"hello\n", timeout=JOIN_TIMEOUT)
    assert await _read_until(stream, b"\n") == b"HELLO\n"
    assert stream.get_extra_info("ssl_object") is None
    assert stream.get_extra_info("server_addr") == ("127.0.0.1", server.port)
    assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
    sock = stream.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert stream.get_extra_info("no such thing") is None
    assert await stream.read(1024, timeout=JOIN_TIMEOUT) == b""  # the server closed: EOF
    assert stream.get_extra_info("is_readable")
    await stream.aclose()
    assert stream.get_extra_info("is_readable")  # a closed socket reads as EOF


async def test_tls_round_trip_large_writes_and_ragged_eof(
    serve: Callable[..., OneShotServer], pki: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = pki
    payload = b"x" * 3_000_000 + b"\n"  # far more than the socket buffers: writes wait
    server = serve(echo_line, server_context)
    backend = AsyncioBackend()
    plain = await backend.connect_tcp("localhost", server.port, timeout=JOIN_TIMEOUT)
    stream = await plain.start_tls(client_context, HOST, timeout=JOIN_TIMEOUT)
    ssl_object = stream.get_extra_info("ssl_object")
    assert isinstance(ssl_object, ssl.SSLSocket)
    assert ssl_object.getpeercert(True)
    await stream.write(payload, timeout=JOIN_TIMEOUT)
    assert await _read_until(stream, b"\n") == payload.upper()
    # The server closes without close_notify: the end of the stream, as for httpcore's anyio.
    assert await stream.read(1024, timeout=JOIN_TIMEOUT) == b""
    await stream.aclose()


async def test_refused_certificate_and_wrong_name_are_connect_errors(
    serve: Callable[..., OneShotServer], pki: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = pki
    backend = AsyncioBackend()
    for context, name in ((ssl.create_default_context(), HOST), (client_context, "other.test")):
        server = serve(None, server_context)
        plain = await backend.connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
        with pytest.raises(httpcore.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await plain.start_tls(context, name, timeout=JOIN_TIMEOUT)
        assert plain.get_extra_info("socket").fileno() == -1  # closed, not leaked


async def test_handshake_timeout(
    serve: Callable[..., OneShotServer], pki: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server = serve()  # accepts, never answers the ClientHello
    plain = await AsyncioBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    with pytest.raises(httpcore.ConnectTimeout):
        await plain.start_tls(pki[1], HOST, timeout=0.2)


async def test_read_and_write_timeouts(serve: Callable[..., OneShotServer]) -> None:
    server = serve()  # reads nothing, sends nothing
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    with pytest.raises(httpcore.ReadTimeout):
        await stream.read(1024, timeout=0.2)
    with pytest.raises(httpcore.WriteTimeout):
        await stream.write(b"x" * 64_000_000, timeout=0.2)  # nobody drains the buffers
    with pytest.raises(httpcore.ReadTimeout):
        await stream.read(1024, timeout=0.2)  # after a write: waits first
    await stream.aclose()


async def test_a_read_after_a_write_takes_what_openssl_holds_already(
    serve: Callable[..., OneShotServer], pki: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """As for the sync backend: the rest of a record is in OpenSSL, not on the socket."""
    server_context, client_context = pki
    done = threading.Event()

    def one_record_per_ping(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(b"x" * 16_000)  # one TLS record
        conn.recv(1024)
        done.wait(JOIN_TIMEOUT)

    server = serve(one_record_per_ping, server_context)
    backend = AsyncioBackend()
    plain = await backend.connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    stream = await plain.start_tls(client_context, HOST, timeout=JOIN_TIMEOUT)
    try:
        await stream.write(b"ping", timeout=JOIN_TIMEOUT)
        assert await stream.read(100, timeout=JOIN_TIMEOUT) == b"x" * 100
        await stream.write(b"ping", timeout=JOIN_TIMEOUT)
        assert await stream.read(100, timeout=2.0) == b"x" * 100  # nothing more is sent
    finally:
        done.set()
        await stream.aclose()


async def test_reset_by_peer_is_a_read_error(serve: Callable[..., OneShotServer]) -> None:
    def reset(conn: socket.socket) -> None:
        conn.recv(16)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    server = serve(reset)
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    await stream.write(b"ping", timeout=JOIN_TIMEOUT)
    with pytest.raises(httpcore.ReadError):
        await stream.read(1024, timeout=JOIN_TIMEOUT)
    with pytest.raises(httpcore.WriteError):
        await stream.write(b"x" * 8_000_000, timeout=JOIN_TIMEOUT)  # more than any buffer
    await stream.aclose()


async def test_refused_connection_and_bad_socket_option() -> None:
    backend = AsyncioBackend()
    port = refused_port()
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("127.0.0.1", port, timeout=JOIN_TIMEOUT)
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("::1" if socket.has_ipv6 else "127.0.0.1", port)
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp(
            "127.0.0.1", listener.getsockname()[1], socket_options=[(socket.SOL_SOCKET, 9999, 1)]
        )


async def test_local_address_is_bound(serve: Callable[..., OneShotServer]) -> None:
    server = serve()
    stream = await AsyncioBackend().connect_tcp(
        "127.0.0.1", server.port, timeout=JOIN_TIMEOUT, local_address="127.0.0.1"
    )
    assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
    await stream.aclose()


async def test_cancelled_read_leaves_no_reader_behind(serve: Callable[..., OneShotServer]) -> None:
    server = serve(echo_line)
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    reading = asyncio.ensure_future(stream.read(1024))
    await asyncio.sleep(0.05)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    # The same socket reads again: the cancelled wait took its reader registration with it.
    await stream.write(b"again\n", timeout=JOIN_TIMEOUT)
    assert await _read_until(stream, b"\n") == b"AGAIN\n"
    await stream.aclose()


async def test_other_event_loops_get_httpcores_anyio_backend() -> None:
    backend = AsyncioBackend()
    assert backend._other() is None
    token = sniffio.current_async_library_cvar.set("trio")
    try:
        fallback = backend._other()
    finally:
        sniffio.current_async_library_cvar.reset(token)
    assert isinstance(fallback, httpcore.AnyIOBackend)
    await backend.sleep(0)


async def test_mesh_transport_connections_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[bytes] = []
    opened: list[httpcore.AsyncNetworkStream] = []
    connect = AsyncioBackend.connect_tcp

    async def counted(self: AsyncioBackend, *args: object, **kwargs: object) -> object:
        stream = await connect(self, *args, **kwargs)  # type: ignore[arg-type]
        opened.append(stream)
        return stream

    monkeypatch.setattr(AsyncioBackend, "connect_tcp", counted)

    def answer(conn: socket.socket) -> None:
        received.append(conn.recv(65536))
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    server = OneShotServer(answer)
    try:
        from meshlib import Mesh

        mesh = Mesh.from_text("", namespace="default")
        async with mesh.async_http_client() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/x")
        mesh.close()
    finally:
        server.close()
    assert response.status_code == 200
    assert response.text == "ok"
    assert received[0].startswith(b"GET /x HTTP/1.1")
    assert len(opened) == 1
    assert isinstance(opened[0], AsyncioStream)


def _open_descriptors() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts /proc/self/fd")
async def test_connect_timeout_and_cancelled_connect_close_their_socket(
    unanswered_port: int,
) -> None:
    backend = AsyncioBackend()
    before = _open_descriptors()
    with pytest.raises(httpcore.ConnectTimeout):
        await backend.connect_tcp("127.0.0.1", unanswered_port, timeout=0.2)
    connecting = asyncio.ensure_future(backend.connect_tcp("127.0.0.1", unanswered_port))
    await asyncio.sleep(0.05)
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    assert _open_descriptors() == before


async def test_cancelled_handshake_closes_the_socket(
    serve: Callable[..., OneShotServer], pki: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server = serve()  # never answers the ClientHello
    plain = await AsyncioBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    handshake = asyncio.ensure_future(plain.start_tls(pki[1], HOST))
    await asyncio.sleep(0.05)
    handshake.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handshake
    assert plain.get_extra_info("socket").fileno() == -1


async def test_without_readiness_callbacks_httpcores_anyio_backend_connects(
    serve: Callable[..., OneShotServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a proactor loop (Windows) gets; the same hand-over as under trio.
    monkeypatch.setattr("meshlib.httpx._asyncio_backend._has_readiness_callbacks", lambda: False)
    server = serve(echo_line)
    backend = AsyncioBackend()
    stream = await backend.connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    assert not isinstance(stream, AsyncioStream)
    await stream.write(b"via anyio\n", timeout=JOIN_TIMEOUT)
    assert await _read_until(stream, b"\n") == b"VIA ANYIO\n"
    await backend.sleep(0)
    await stream.aclose()


async def test_unix_sockets_go_through_httpcores_anyio_backend(tmp_path: Path) -> None:
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
    try:
        stream = await AsyncioBackend().connect_unix_socket(str(path), timeout=JOIN_TIMEOUT)
        await stream.write(b"unix\n", timeout=JOIN_TIMEOUT)
        assert await _read_until(stream, b"\n") == b"UNIX\n"
        await stream.aclose()
    finally:
        listener.close()
        thread.join(JOIN_TIMEOUT)


async def test_a_host_name_that_does_not_resolve_is_a_connect_error() -> None:
    with pytest.raises(httpcore.ConnectError):
        await AsyncioBackend().connect_tcp("no-such-host.invalid", 80, timeout=JOIN_TIMEOUT)


async def test_a_name_that_resolves_to_nothing_listening_is_a_connect_error() -> None:
    with pytest.raises(httpcore.ConnectError):
        await AsyncioBackend().connect_tcp("localhost", refused_port(), timeout=JOIN_TIMEOUT)


async def test_closing_from_another_task_ends_a_waiting_read(
    serve: Callable[..., OneShotServer],
) -> None:
    # What httpx's response.aclose() does to a stalled stream read by another task.
    server = serve()
    backend = AsyncioBackend()
    stream = await backend.connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    reading = asyncio.ensure_future(stream.read(1024))  # no timeout: only the close ends it
    await asyncio.sleep(0.05)
    await stream.aclose()
    with pytest.raises(httpcore.ReadError):
        await asyncio.wait_for(reading, JOIN_TIMEOUT)
    # The descriptor number is free again and no longer registered: a new socket may take it.
    again = serve(echo_line)
    fresh = await backend.connect_tcp("127.0.0.1", again.port, timeout=JOIN_TIMEOUT)
    await fresh.write(b"fresh\n", timeout=JOIN_TIMEOUT)
    assert await _read_until(fresh, b"\n") == b"FRESH\n"
    await fresh.aclose()


async def test_closing_from_another_task_ends_a_waiting_write(
    serve: Callable[..., OneShotServer], pki: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server = serve(None, pki[0])  # completes the handshake, then reads nothing
    plain = await AsyncioBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    stream = await plain.start_tls(pki[1], HOST, timeout=JOIN_TIMEOUT)
    writing = asyncio.ensure_future(stream.write(b"x" * 64_000_000))
    await asyncio.sleep(0.2)
    assert not writing.done()
    await stream.aclose()
    with pytest.raises(httpcore.WriteError):
        await asyncio.wait_for(writing, JOIN_TIMEOUT)


async def test_a_silent_first_address_does_not_hold_up_the_next(
    unanswered_port: int, serve: Callable[..., OneShotServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name whose first address never answers (broken IPv6 on a dual-stack host, say).
    server = serve(echo_line)
    _resolve_to(monkeypatch, unanswered_port, server.port)
    before = _open_descriptors()
    stream = await AsyncioBackend().connect_tcp("dual.test", 80, timeout=JOIN_TIMEOUT)
    assert stream.get_extra_info("server_addr") == ("127.0.0.1", server.port)
    await stream.write(b"second\n", timeout=JOIN_TIMEOUT)
    assert await _read_until(stream, b"\n") == b"SECOND\n"
    await stream.aclose()
    await asyncio.sleep(0.05)  # the cancelled first attempt closes its socket as it ends
    assert _open_descriptors() == before


async def test_when_every_address_fails_the_last_error_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports = (refused_port(), refused_port())
    _resolve_to(monkeypatch, *ports)
    with pytest.raises(httpcore.ConnectError, match=str(ports[1])):
        await AsyncioBackend().connect_tcp("two.test", 80, timeout=JOIN_TIMEOUT)
    _resolve_to(monkeypatch)
    with pytest.raises(httpcore.ConnectError, match="resolved to no address"):
        await AsyncioBackend().connect_tcp("none.test", 80, timeout=JOIN_TIMEOUT)


async def test_the_connect_timeout_covers_every_address(
    unanswered_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _resolve_to(monkeypatch, unanswered_port, refused_port())
    before = _open_descriptors()
    with pytest.raises(httpcore.ConnectTimeout):
        await AsyncioBackend().connect_tcp("slow.test", 80, timeout=0.6)
    await asyncio.sleep(0.05)
    assert _open_descriptors() == before


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".test", "münchen..de"])
async def test_names_the_resolver_refuses_are_connect_errors(host: str) -> None:
    with pytest.raises(httpcore.ConnectError):
        await AsyncioBackend().connect_tcp(host, 80, timeout=JOIN_TIMEOUT)


async def test_is_readable_without_poll(
    serve: Callable[..., OneShotServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(echo_line)
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)
    monkeypatch.delattr(select, "poll")  # as on Windows
    assert not stream.get_extra_info("is_readable")
    await stream.write(b"x\n", timeout=JOIN_TIMEOUT)
    await asyncio.sleep(0.2)
    assert stream.get_extra_info("is_readable")
    await stream.aclose()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_addresses_are_host_port_pairs() -> None:
    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    port = listener.getsockname()[1]
    with listener:
        stream = await AsyncioBackend().connect_tcp("::1", port, timeout=JOIN_TIMEOUT)
        assert stream.get_extra_info("server_addr") == ("::1", port)
        assert stream.get_extra_info("client_addr")[0] == "::1"
        await stream.aclose()


async def test_a_slow_address_still_wins_when_the_others_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first address accepts only after its queue drains (the kernel retries the SYN about a
    # second later), the second refuses at once: the attempt still running wins.
    slow = socket.socket()
    slow.bind(("127.0.0.1", 0))
    slow.listen(0)
    fillers = fill_queue(slow)
    slow_port = slow.getsockname()[1]
    _resolve_to(monkeypatch, slow_port, refused_port())

    def drain() -> None:
        slow.settimeout(JOIN_TIMEOUT)
        for _ in range(3):  # the fillers that made it into the queue, then ours
            with contextlib.suppress(OSError):
                slow.accept()[0].close()

    asyncio.get_running_loop().call_later(
        0.4, lambda: threading.Thread(target=drain, daemon=True).start()
    )
    try:
        stream = await AsyncioBackend().connect_tcp("slow.test", 80, timeout=JOIN_TIMEOUT)
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", slow_port)
        await stream.aclose()
    finally:
        for filler in fillers:
            filler.close()
        slow.close()


async def test_a_stream_closed_by_another_task_ends_its_reader_and_frees_the_socket() -> None:
    # An event stream stopped with response.aclose() while another task iterates it.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def handle(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        if data.startswith(b"GET /events"):
            head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata:1\r\n"
            conn.sendall(head)
            stop.wait(JOIN_TIMEOUT)  # then nothing more, as a quiet event stream
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    listener.settimeout(0.1)  # a close from another thread does not wake accept()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            accepted.append(conn)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    from meshlib import Mesh

    mesh = Mesh.from_text("", namespace="default")
    try:
        timeout = httpx.Timeout(JOIN_TIMEOUT, read=None)  # only the close can end the read
        async with mesh.async_http_client(timeout=timeout) as client:
            async with client.stream("GET", f"http://127.0.0.1:{port}/events") as response:

                async def consume() -> None:
                    async for _ in response.aiter_bytes():
                        pass

                consumer = asyncio.ensure_future(consume())
                await asyncio.sleep(0.2)
                await response.aclose()
                with pytest.raises(httpx.ReadError):
                    await asyncio.wait_for(consumer, JOIN_TIMEOUT)
                other = await client.get(f"http://127.0.0.1:{port}/other")
                assert other.status_code == 200
    finally:
        mesh.close()
        stop.set()
        listener.close()
        acceptor.join(JOIN_TIMEOUT)
        for conn in accepted:
            conn.close()
