"""A real Prometheus scrapes meshlib services under a 90/10 split; Istio's PromQL shows it.

The OS package's ``prometheus`` binary runs on 127.0.0.1 with a generated configuration and a
temporary data directory, scraping every second; the test stops it by its own PID. Skipped only
where the binary is absent (CI installs the OS package).

rate() extrapolates each series from its own first and last sample in the window to the window's
edges. Over a window a scrape or two long that factor ranges from 1 to about 2, and series from
different targets (the destination reporter's: one target per version) get different factors, so
their ratio is off by up to 2x. The split is therefore read from the source reporter, whose
per-version series come from one target and share every scrape timestamp, over a window pinned to
the scrapes just before and just after the measured traffic: it shows that traffic's split exactly.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from obs_chain import NAMESPACE, PORT, make_mesh

from meshlib import Mesh
from meshlib.identity import LocalCA

pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytestmark = pytest.mark.extras

PROMETHEUS = shutil.which("prometheus")
HOST = f"reviews.{NAMESPACE}.svc.cluster.local"
SCRAPE_INTERVAL = "1s"
STARTUP_LIMIT = 20.0
WAIT_LIMIT = 20.0
POLL = 0.25
WARMUP_REQUESTS = 40
MAX_WARMUP_BATCHES = 10
REQUESTS = 300
CLIENT_SERIES = 'istio_requests_total{reporter="source", destination_service_name="reviews"}'
SPLIT_PROMQL = f"sum(rate({CLIENT_SERIES}[%dms])) by (destination_version)"
TOTAL_PROMQL = 'sum(istio_requests_total{reporter="%s"}) by (destination_version)'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def split_config(v1_port: int, v2_port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: {NAMESPACE}}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {v1_port}}}
    labels: {{app: reviews, version: v1, security.istio.io/tlsMode: istio}}
    serviceAccount: reviews
  - address: 127.0.0.1
    ports: {{http: {v2_port}}}
    labels: {{app: reviews, version: v2, security.istio.io/tlsMode: istio}}
    serviceAccount: reviews
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {NAMESPACE}}}
spec:
  host: {HOST}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {NAMESPACE}}}
spec:
  hosts: [{HOST}]
  http:
  - route:
    - {{destination: {{host: {HOST}, subset: v1}}, weight: 90}}
    - {{destination: {{host: {HOST}, subset: v2}}, weight: 10}}
"""


def version_app(version: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": version.encode()})

    return app


class Prometheus:
    """The prometheus binary on 127.0.0.1, scraping ``targets``; ``stop()`` ends its PID."""

    def __init__(self, binary: str, folder: Path, targets: list[str]) -> None:
        self.port = free_port()
        config = folder / "prometheus.yml"
        scrape = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [
                {"job_name": "meshlib", "static_configs": [{"targets": targets}]},
            ],
        }
        config.write_text(json.dumps(scrape))  # JSON is YAML
        self.log = (folder / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5.0)

    def wait_ready(self) -> None:
        until = time.monotonic() + STARTUP_LIMIT
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}")
            try:
                if self.api.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(POLL)
        raise RuntimeError("prometheus not ready in time")

    def query(self, promql: str, at_ms: int | None = None) -> dict[str, float]:
        """An instant query, evaluated now or at ``at_ms`` (ms since the epoch)."""
        params = {"query": promql}
        if at_ms is not None:  # RFC 3339 keeps the millisecond exact; float seconds may not
            params["time"] = datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(
                timespec="milliseconds"
            )
        response = self.api.get("/api/v1/query", params=params)
        response.raise_for_status()
        result = response.json()["data"]["result"]
        return {
            item["metric"].get("destination_version", ""): float(item["value"][1])
            for item in result
        }

    def scrapes(self, series: str) -> list[tuple[int, dict[str, float]]]:
        """The stored samples of ``series`` (one target's), as (timestamp ms, value by version)."""
        response = self.api.get("/api/v1/query", params={"query": f"{series}[5m]"})
        response.raise_for_status()
        found: dict[int, dict[str, float]] = {}
        for item in response.json()["data"]["result"]:
            version = item["metric"].get("destination_version", "")
            for stamp, value in item["values"]:
                found.setdefault(round(float(stamp) * 1000), {})[version] = float(value)
        return sorted(found.items())

    def wait_for(self, promql: str, done: Callable[[dict[str, float]], bool]) -> dict[str, float]:
        until = time.monotonic() + WAIT_LIMIT
        found: dict[str, float] = {}
        while time.monotonic() < until:
            found = self.query(promql)
            if done(found):
                return found
            time.sleep(POLL)
        raise AssertionError(f"{promql} never satisfied the test; last {found}")

    def stop(self) -> None:
        self.api.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Mesh, list[Mesh], Prometheus]]:
    if PROMETHEUS is None:
        pytest.skip("the prometheus binary is not installed (OS package 'prometheus')")
    ca = LocalCA.generate("cluster.local")
    with ExitStack() as stack:
        servers: list[Mesh] = []
        ports: list[int] = []
        metrics: list[str] = []
        for version in ("v1", "v2"):
            mesh = make_mesh(ca, "reviews", "", version=version)
            stack.callback(mesh.close)
            mesh.configure_telemetry(metrics="prometheus")
            server = mesh.server(version_app(version)).start()
            stack.callback(server.stop)
            exposed = mesh.serve_metrics(port=0)
            stack.callback(exposed.stop)
            servers.append(mesh)
            ports.append(server.port)
            metrics.append(f"127.0.0.1:{exposed.port}")
        client = make_mesh(ca, "productpage", split_config(*ports))
        stack.callback(client.close)
        client.configure_telemetry(metrics="prometheus")
        exposed = client.serve_metrics(port=0)
        stack.callback(exposed.stop)
        metrics.append(f"127.0.0.1:{exposed.port}")
        prometheus = Prometheus(PROMETHEUS, tmp_path, metrics)
        stack.callback(prometheus.stop)
        prometheus.wait_ready()
        yield client, servers, prometheus


def send(client: Mesh, count: int, seen: dict[str, int]) -> None:
    with client.http_client() as http:
        for _ in range(count):
            response = http.get(f"http://{HOST}:{PORT}/")
            assert response.status_code == 200
            seen[response.text] = seen.get(response.text, 0) + 1


def test_prometheus_sees_the_90_10_split(setup: tuple[Mesh, list[Mesh], Prometheus]) -> None:
    client, _, prometheus = setup
    seen: dict[str, int] = {}
    # Series must exist in Prometheus before the traffic whose rate is measured: warm up until
    # both versions answered (40 requests miss the 10 % one about 1.5 % of the time).
    for _ in range(MAX_WARMUP_BATCHES):
        send(client, WARMUP_REQUESTS, seen)
        if set(seen) == {"v1", "v2"}:
            break
    assert set(seen) == {"v1", "v2"}
    warmed = sum(seen.values())
    for reporter in ("source", "destination"):
        prometheus.wait_for(TOTAL_PROMQL % reporter, lambda found: sum(found.values()) == warmed)
    warm = {k: float(v) for k, v in seen.items()}
    send(client, REQUESTS, seen)
    assert set(seen) == {"v1", "v2"}
    final = {k: float(v) for k, v in seen.items()}
    # Both reporters count exactly what the client saw, per version.
    for reporter in ("source", "destination"):
        totals = prometheus.wait_for(TOTAL_PROMQL % reporter, lambda found: found == final)
        assert totals == final
    # Istio's dashboard query, over a window from the client's last scrape before the measured
    # traffic to its first scrape after it (+1 ms: ranges exclude their start from Prometheus 3 on).
    # Both versions' series share those timestamps, so rate() extrapolates both alike and the
    # per-version rates are in the exact ratio of the requests sent.
    scrapes = prometheus.scrapes(CLIENT_SERIES)
    before = [stamp for stamp, values in scrapes if values == warm]
    after = [stamp for stamp, values in scrapes if values == final]
    assert before, scrapes
    assert after, scrapes
    start, end = before[-1], after[0]
    rates = prometheus.query(SPLIT_PROMQL % (end - start + 1), at_ms=end)
    assert set(rates) == {"v1", "v2"}
    share = rates["v2"] / (rates["v1"] + rates["v2"])
    sent = (final["v2"] - warm["v2"]) / REQUESTS
    assert 0.02 < sent < 0.25  # the VirtualService's 10 %, with binomial slack (n=300)
    assert share == pytest.approx(sent, abs=1e-6)
