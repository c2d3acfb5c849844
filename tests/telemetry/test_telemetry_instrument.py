"""meshlib.instrument(): httpx clients built afterwards go through the mesh; uninstrument undoes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshlib import Mesh
from meshlib._telemetry import instrument as instrument_module
from meshlib._telemetry.instrument import instrument, instrumented_mesh, uninstrument
from meshlib.httpx import AsyncMeshTransport, MeshTransport

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
"""


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    built = Mesh.from_text(CONFIG, workload="productpage-v1", labels={"app": "productpage"})
    try:
        yield built
    finally:
        uninstrument()
        built.close()


def test_clients_built_afterwards_use_the_mesh(mesh: Mesh) -> None:
    original = httpx.Client.__init__
    assert instrument(mesh) is mesh
    assert instrumented_mesh() is mesh
    with httpx.Client() as client:
        assert isinstance(client._transport, MeshTransport)
    mine = httpx.HTTPTransport()
    with httpx.Client(transport=mine) as client:
        assert client._transport is mine  # the caller's choice is kept
    with mesh.http_client() as client:
        assert isinstance(client._transport, MeshTransport)
    uninstrument()
    assert instrumented_mesh() is None
    assert httpx.Client.__init__ is original
    with httpx.Client() as client:
        assert isinstance(client._transport, httpx.HTTPTransport)


async def test_async_clients_too(mesh: Mesh) -> None:
    original = httpx.AsyncClient.__init__
    instrument(mesh)
    async with httpx.AsyncClient() as client:
        assert isinstance(client._transport, AsyncMeshTransport)
    uninstrument()
    assert httpx.AsyncClient.__init__ is original


def test_instrumented_client_routes_by_the_configuration(mesh: Mesh) -> None:
    # The ServiceEntry sends this name to 127.0.0.1:9 (discard, closed): a plain client would
    # fail name resolution; through the mesh the endpoint refuses and Envoy answers 503 UF.
    instrument(mesh)
    with httpx.Client() as client:
        response = client.get("http://ratings.default.svc.cluster.local:9080/")
    assert response.status_code == 503


def test_instrument_again_switches_mesh(mesh: Mesh) -> None:
    other = Mesh.from_text(CONFIG, workload="other")
    try:
        instrument(mesh)
        instrument(other)
        assert instrumented_mesh() is other
        uninstrument()
        assert instrumented_mesh() is None
    finally:
        other.close()


def test_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(CONFIG)
    monkeypatch.setenv("MESHLIB_CONFIG", str(config))
    monkeypatch.setenv("MESHLIB_WATCH", "0")
    built = instrument()
    try:
        assert built.workload == "default"
        assert instrumented_mesh() is built
    finally:
        uninstrument()
        built.close()


class FakeGrpcMesh:
    """Stands for a Mesh with the gRPC section: records the targets it was asked for."""

    def __init__(self) -> None:
        self.targets: list[tuple[str, str, Any]] = []

    def http_transport(self) -> MeshTransport:  # pragma: no cover - not called here
        raise AssertionError

    def async_http_transport(self) -> AsyncMeshTransport:  # pragma: no cover
        raise AssertionError

    def grpc_channel(self, target: str, options: Any = None) -> str:
        self.targets.append(("sync", target, options))
        return "mesh-channel"

    def grpc_aio_channel(self, target: str, options: Any = None) -> str:
        self.targets.append(("aio", target, options))
        return "mesh-aio-channel"


@pytest.mark.extras
def test_grpc_channels_when_the_mesh_offers_them() -> None:
    grpc = pytest.importorskip("grpc")
    from grpc import aio

    original, original_aio = grpc.insecure_channel, aio.insecure_channel
    fake = FakeGrpcMesh()
    instrument(fake)  # type: ignore[arg-type]
    try:
        assert grpc.insecure_channel("ratings:9090") == "mesh-channel"
        assert grpc.insecure_channel("ratings:9090", [("a", 1)]) == "mesh-channel"
        assert aio.insecure_channel("ratings:9090") == "mesh-aio-channel"
        with grpc.insecure_channel("127.0.0.1:1", compression=grpc.Compression.Gzip) as plain:
            assert plain != "mesh-channel"  # an option the mesh does not take: left alone
    finally:
        uninstrument()
    assert fake.targets == [
        ("sync", "ratings:9090", None),
        ("sync", "ratings:9090", [("a", 1)]),
        ("aio", "ratings:9090", None),
    ]
    assert grpc.insecure_channel is original
    assert aio.insecure_channel is original_aio


def test_a_mesh_without_grpc_leaves_grpc_alone(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Mesh, "grpc_channel", raising=False)
    monkeypatch.delattr(Mesh, "grpc_aio_channel", raising=False)
    instrument(mesh)
    assert not any(name != "__init__" for _, name in instrument_module._originals)


@pytest.mark.extras
def test_opentelemetry_instrumentor(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("opentelemetry.instrumentation.instrumentor")
    from meshlib._telemetry.instrumentor import MeshInstrumentor

    assert MeshInstrumentor is not None
    instrumentor = MeshInstrumentor()
    assert "httpx >= 0.27" in instrumentor.instrumentation_dependencies()
    instrumentor.instrument(mesh=mesh)
    try:
        assert instrumented_mesh() is mesh
    finally:
        instrumentor.uninstrument()
    assert instrumented_mesh() is None
    # From the environment: without MESHLIB_CONFIG nothing changes, and it says so.
    monkeypatch.delenv("MESHLIB_CONFIG", raising=False)
    caplog.set_level(logging.WARNING, logger="meshlib.instrument")
    instrumentor.instrument()
    try:
        assert instrumented_mesh() is None
        assert "MESHLIB_CONFIG is not set" in caplog.text
    finally:
        instrumentor.uninstrument()


@pytest.mark.extras
def test_entry_point_shape() -> None:
    module = pytest.importorskip("opentelemetry.instrumentation.instrumentor")
    from meshlib._telemetry.instrumentor import MeshInstrumentor

    assert issubclass(MeshInstrumentor, module.BaseInstrumentor)
