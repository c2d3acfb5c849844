"""Mesh.configure_telemetry and the defaults, through real requests to a local server."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from obs_chain import NAMESPACE, PORT, c_app, service_entry

from meshlib import Mesh
from meshlib._telemetry.hooks import prometheus_installed
from meshlib._telemetry.metrics import NOOP_SINK

pytest.importorskip("uvicorn")
HOST = f"c.{NAMESPACE}.svc.cluster.local"


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server_mesh = Mesh.from_text("# empty\n", workload="c-v1", labels={"app": "c"})
    server = server_mesh.server(c_app()).start()
    try:
        yield server.port
    finally:
        server.stop()
        server_mesh.close()


@pytest.fixture
def mesh(upstream: int) -> Iterator[Mesh]:
    entry = service_entry(HOST, upstream, "c", {"app": "c"}).replace(
        "security.istio.io/tlsMode", "plain"
    )
    built = Mesh.from_text(entry, workload="a-v1", labels={"app": "a", "version": "v1"})
    try:
        yield built
    finally:
        built.close()


def test_defaults(mesh: Mesh) -> None:
    telemetry = mesh.telemetry
    assert telemetry is mesh.telemetry  # built once
    expected = "PrometheusSink" if prometheus_installed() else "NoopSink"
    assert type(telemetry.sink).__name__ == expected
    assert telemetry.access_log is None
    assert telemetry.tracing.sampling_percent == 1.0
    assert mesh._outbound_hooks() is telemetry.outbound_hooks
    assert mesh._inbound_hooks() is telemetry.inbound_hooks
    assert mesh.runtime.hooks is telemetry.outbound_hooks


def test_access_log_lines_from_real_requests(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    mesh.configure_telemetry(metrics=None, access_log="json")
    caplog.set_level(logging.INFO, logger="meshlib.access")
    with mesh.http_client() as client:
        assert client.get(f"http://{HOST}:{PORT}/x", headers={"x-request-id": "r-1"}).is_success
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "meshlib.access"]
    assert line["path"] == "/x"
    assert line["response_code"] == 200
    assert line["request_id"] == "r-1"
    assert line["upstream_cluster"] == f"outbound|{PORT}||{HOST}"
    assert mesh.telemetry.sink is NOOP_SINK
    with pytest.raises(TypeError, match="no Prometheus registry"):
        mesh.metrics_app()


def test_reconfiguring_switches_clients_already_built(mesh: Mesh) -> None:
    pytest.importorskip("prometheus_client")
    import prometheus_client

    client = mesh.http_client()
    try:
        registry = prometheus_client.CollectorRegistry()
        mesh.configure_telemetry(metrics="prometheus", registry=registry)
        assert client.get(f"http://{HOST}:{PORT}/").is_success
    finally:
        client.close()
    text = prometheus_client.generate_latest(registry).decode()
    assert 'destination_service="c.default.svc.cluster.local"' in text


def test_otel_metrics_option(mesh: Mesh) -> None:
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    mesh.configure_telemetry(metrics="otel", meter_provider=MeterProvider([reader]))
    with mesh.http_client() as client:
        assert client.get(f"http://{HOST}:{PORT}/").is_success
    data: Any = reader.get_metrics_data()
    names = {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert "istio_requests_total" in names


def test_bad_options(mesh: Mesh) -> None:
    with pytest.raises(ValueError, match="access_log must be"):
        mesh.configure_telemetry(access_log="xml")
    with pytest.raises(ValueError, match="metrics must be"):
        mesh.configure_telemetry(metrics="statsd")
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        mesh.configure_telemetry(tracing_sampling=250.0)


def test_scrape_refresh_errors_do_not_break_the_scrape(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("prometheus_client")
    import prometheus_client

    mesh.configure_telemetry(metrics="prometheus")
    sink: Any = mesh.telemetry.sink

    def broken() -> None:
        raise RuntimeError("gauge source gone")

    sink.on_collect(broken)
    text = prometheus_client.generate_latest(sink.registry).decode()
    assert "meshlib_config_reloads_total 1.0" in text
    assert "gauge source gone" in caplog.text
