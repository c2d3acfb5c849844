"""Rotation under load: client and server SVIDs rotate every ~2 s and the CA rotates once (with an
overlapping bundle) while clients keep sending; no request may fail.

``MESHLIB_ROTATION_SECONDS`` sets how long the clients send (default 8; run 60 by hand).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpcore
import pytest

from meshlib._identity.backend import MeshNetworkBackend, pool_ssl_context
from meshlib._identity.rotation import Generation, RotatingIdentity
from meshlib._identity.serving import Server
from meshlib.identity import LocalCA

from .conftest import PeerApp

ROTATION_SECONDS = float(os.environ.get("MESHLIB_ROTATION_SECONDS", "8"))
SVID_TTL_SECONDS = 4.0  # rotated at half-life: every ~2 s
CLIENT_THREADS = 2
FD_SLACK = 8
FD_SETTLE_SECONDS = 10.0
MAX_REQUESTS_PER_CLIENT = 1_000_000  # a bound for the loop; time ends it first


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Client(threading.Thread):
    """A sequential client that, like the mesh transport, opens a new pool per generation and
    closes the previous one once it is idle (here: at once, as requests are sequential)."""

    def __init__(self, identity: RotatingIdentity, url: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.identity = identity
        self.url = url
        self.stop = stop
        self.ok = 0
        self.errors: list[BaseException] = []
        self.server_serials: Counter[int] = Counter()
        self.pools = 0

    def _new_pool(self) -> tuple[int, httpcore.ConnectionPool]:
        self.pools += 1
        generation = self.identity.generation.number
        pool = httpcore.ConnectionPool(
            ssl_context=pool_ssl_context(),
            network_backend=MeshNetworkBackend(self.identity),
        )
        return generation, pool

    def run(self) -> None:
        generation, pool = self._new_pool()
        fresh = True
        try:
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if self.stop.is_set():
                    break
                if self.identity.generation.number != generation:
                    pool.close()
                    generation, pool = self._new_pool()
                    fresh = True
                try:
                    response = pool.request("GET", self.url)
                except Exception as error:
                    self.errors.append(error)
                    continue
                if response.status != 200:
                    self.errors.append(AssertionError(response.status))
                    continue
                self.ok += 1
                if fresh:
                    stream = response.extensions["network_stream"]
                    der = stream.get_extra_info("ssl_object").getpeercert(True)
                    from cryptography import x509

                    self.server_serials[x509.load_der_x509_certificate(der).serial_number] += 1
                    fresh = False
        finally:
            pool.close()


@pytest.mark.system
def test_zero_failures_while_svids_and_the_ca_rotate(app: PeerApp) -> None:
    old_ca = LocalCA.generate("cluster.local")
    new_ca = LocalCA.generate("cluster.local")
    overlap = (*old_ca.roots, *new_ca.roots)

    server_source = old_ca.source("default", "server", ttl=SVID_TTL_SECONDS)
    client_source = old_ca.source("default", "client", ttl=SVID_TTL_SECONDS)
    server_identity = RotatingIdentity(server_source)
    client_identity = RotatingIdentity(client_source)
    generations: list[Generation] = []
    client_identity.subscribe(generations.append)

    with Server(app, identity=server_identity, mtls_mode="STRICT") as server:
        stop = threading.Event()
        clients = [Client(client_identity, f"{server.url}/", stop) for _ in range(CLIENT_THREADS)]
        time.sleep(0.2)
        fds_before = _open_fds()
        for client in clients:
            client.start()
        start = time.monotonic()
        deadline = start + ROTATION_SECONDS
        # CA rotation, as an operator would: 1) everyone trusts both roots, 2) everyone gets
        # certificates from the new CA, 3) the old root is dropped.
        steps: list[tuple[float, Callable[[], object]]] = [
            (
                0.35,
                lambda: [
                    s.rotate_ca(old_ca.with_roots(overlap)) for s in (server_source, client_source)
                ],
            ),
            (
                0.5,
                lambda: [
                    s.rotate_ca(new_ca.with_roots(overlap)) for s in (server_source, client_source)
                ],
            ),
            (0.75, lambda: [s.rotate_ca(new_ca) for s in (server_source, client_source)]),
        ]
        for fraction, step in steps:
            time.sleep(max(0.0, start + ROTATION_SECONDS * fraction - time.monotonic()))
            step()
        time.sleep(max(0.0, deadline - time.monotonic()))
        stop.set()
        for client in clients:
            client.join(timeout=30)
            assert not client.is_alive()
        settle = time.monotonic() + FD_SETTLE_SECONDS
        while _open_fds() > fds_before + FD_SLACK and time.monotonic() < settle:
            time.sleep(0.1)
        fds_after = _open_fds()

    server_identity.close()
    client_identity.close()

    errors = [e for c in clients for e in c.errors]
    total = sum(c.ok for c in clients)
    new_issuer = new_ca.signing_cert.subject
    client_serials = set(app.serials)
    server_serials = {s for c in clients for s in c.server_serials}
    print(
        f"\nrotation: {ROTATION_SECONDS:.0f}s, {total} requests, {len(errors)} failures, "
        f"{len(generations)} client generations, {len(client_serials)} client serials seen by "
        f"the server, {len(server_serials)} server serials seen by clients, "
        f"{sum(c.pools for c in clients)} pools, fds {fds_before} -> {fds_after}"
    )
    assert errors == []
    assert total > 0
    assert len(generations) >= 4
    assert len(client_serials) >= 3
    assert len(server_serials) >= 3
    assert client_source.current().leaf.issuer == new_issuer
    assert server_source.current().bundle == new_ca.roots
    assert fds_after <= fds_before + FD_SLACK
