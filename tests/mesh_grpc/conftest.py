"""Fixtures of the gRPC suite: a throwaway CA, mTLS grpc servers on 127.0.0.1 stopped by their
handle, and the client identity the mesh channels use."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.sources import StaticSource
from meshlib.identity import LocalCA

HOST = "reviews.default.svc.cluster.local"

# The core-only run has no grpcio: nothing here can even be imported.
collect_ignore_glob = [] if importlib.util.find_spec("grpc") else ["*.py"]


@pytest.fixture(scope="session")
def ca() -> LocalCA:
    return LocalCA.generate("cluster.local")


@pytest.fixture(scope="session")
def server_identity(ca: LocalCA) -> Iterator[RotatingIdentity]:
    identity = RotatingIdentity(StaticSource(ca.issue("default", "reviews", [HOST])))
    yield identity
    identity.close()


@pytest.fixture(scope="session")
def client_identity(ca: LocalCA) -> Iterator[RotatingIdentity]:
    identity = RotatingIdentity(StaticSource(ca.issue("default", "productpage")))
    yield identity
    identity.close()


@pytest.fixture(scope="session")
def upstreams(server_identity: RotatingIdentity) -> Iterator[dict[str, Any]]:
    from grpc_upstreams import Upstream

    started = {name: Upstream(name, server_identity) for name in ("v1", "v2")}
    try:
        for upstream in started.values():
            upstream.start()
        yield started
    finally:
        for upstream in started.values():
            upstream.stop()


@pytest.fixture(autouse=True)
def _reset(upstreams: dict[str, Any]) -> None:
    for upstream in upstreams.values():
        with upstream.state.lock:
            upstream.state.requests = 0
            upstream.state.fail_first = 0
            upstream.state.always_code = None
            upstream.state.abandoned = 0


@pytest.fixture(params=["sync", "aio"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)
