"""hypercorn run by the user with mesh mTLS: client certificate required, rotation live."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from meshlib._identity.hypercorn_support import hypercorn_config
from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.sources import StaticSource
from meshlib._identity.tls import client_context
from meshlib.identity import LocalCA

pytest.importorskip("hypercorn")


async def ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(ca: LocalCA) -> Iterator[tuple[int, StaticSource, RotatingIdentity]]:
    from hypercorn.asyncio import serve

    source = StaticSource(ca.issue("default", "reviews", ["reviews.default.svc.cluster.local"]))
    identity = RotatingIdentity(source)
    config = hypercorn_config(identity)
    port = free_port()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    async def run() -> None:
        ready.set()
        await serve(ok, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        for _ in range(200):  # bounded wait for the listening socket
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            threading.Event().wait(0.02)
        yield port, source, identity
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)
        loop.close()
        identity.close()


def server_serial(port: int, context: ssl.SSLContext) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return int(x509.load_der_x509_certificate(der).serial_number)


def test_hypercorn_requires_a_client_certificate_and_rotates(
    ca: LocalCA, served: tuple[int, StaticSource, RotatingIdentity]
) -> None:
    port, source, identity = served
    client_svid = ca.issue("default", "productpage")
    context = client_context(client_svid, alpn=["http/1.1"])
    with httpx.Client(verify=context) as client:
        assert client.get(f"https://127.0.0.1:{port}/").text == "ok"
    bare = ssl.create_default_context()
    bare.check_hostname = False
    bare.load_verify_locations(cadata=client_svid.bundle_pem.decode())
    with httpx.Client(verify=bare) as client, pytest.raises(httpx.TransportError):
        client.get(f"https://127.0.0.1:{port}/")
    first = server_serial(port, context)
    assert first == identity.svid.cert_chain[0].serial_number
    source.set(ca.issue("default", "reviews", ["reviews.default.svc.cluster.local"]))
    second = server_serial(port, context)
    assert second != first
    assert second == identity.svid.cert_chain[0].serial_number
