"""Fixtures of the httpx behavioural suite: real upstreams on 127.0.0.1, stopped by their handle."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from httpx_upstreams import Upstream
from raw_servers import HOST, OneShotServer, fill_queue

from meshlib.identity import LocalCA


@pytest.fixture(scope="session")
def upstreams() -> Iterator[dict[str, Upstream]]:
    started = {name: Upstream(name) for name in ("v1", "v2", "bad")}
    try:
        for upstream in started.values():
            upstream.start()
        yield started
    finally:
        for upstream in started.values():
            upstream.stop()


@pytest.fixture(autouse=True)
def _reset(upstreams: dict[str, Upstream]) -> None:
    for upstream in upstreams.values():
        with upstream.state.lock:
            upstream.state.requests = 0
            upstream.state.fail_first.clear()
            upstream.state.always_status = None


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context (a certificate for ``api.test``) and a client context that trusts it."""
    folder: Path = tmp_path_factory.mktemp("pki")
    ca = LocalCA.generate("example.org")
    svid = ca.issue("default", "api", [HOST])
    (folder / "server.pem").write_bytes(svid.cert_chain_pem)
    (folder / "server.key").write_bytes(svid.private_key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "server.pem", folder / "server.key")
    client = ssl.create_default_context(cadata=svid.bundle_pem.decode())
    return server, client


@pytest.fixture
def serve() -> Iterator[Callable[..., OneShotServer]]:
    """Starts ``OneShotServer`` objects; closes them (and re-raises their errors) afterwards."""
    servers: list[OneShotServer] = []

    def start(
        script: Callable[[socket.socket], None] | None = None,
        context: ssl.SSLContext | None = None,
    ) -> OneShotServer:
        server = OneShotServer(script, context)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full: a connect to it hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = fill_queue(listener)
    yield listener.getsockname()[1]
    for filler in fillers:
        filler.close()
    listener.close()
