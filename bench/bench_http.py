"""What the mesh adds to an httpx request, as ratios against bare httpx in the same run.

    python bench/bench_http.py [--requests N] [--rounds R] [--inflight K]

The upstream is uvicorn in a child process on 127.0.0.1 (so client and server do not share
a GIL). Sync: p50/p99 per request, one in flight, bare ``httpx.Client`` vs a client whose
``MeshTransport`` runs a VirtualService with retries and a timeout and a DestinationRule with
load balancing, outlier detection and pool limits. Async: requests per second with K in
flight on one ``AsyncMeshTransport`` client, on one bare shared ``AsyncClient``, and on one
bare client per worker. Variants are interleaved per round; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshlib._config.source import ConfigSource  # noqa: E402
from meshlib._engine.runtime import build_runtime  # noqa: E402
from meshlib.httpx import AsyncMeshTransport, MeshTransport  # noqa: E402

START_TIMEOUT = 15.0
SYNC_BATCH = 100
HOST = "bench.default.svc.cluster.local"


async def app(scope: dict[str, object], receive: object, send: object) -> None:
    """The smallest ASGI answer: 200 with a short body."""
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


def serve(port: int) -> None:
    import uvicorn

    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http=http,
        lifespan="off",
        backlog=1024,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the upstream did not start")


def config(port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: bench, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: bench, namespace: default}}
spec:
  host: bench
  trafficPolicy:
    loadBalancer: {{simple: LEAST_REQUEST}}
    connectionPool:
      tcp: {{maxConnections: 1000}}
      http: {{http1MaxPendingRequests: 1000, maxRetries: 100}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench, namespace: default}}
spec:
  hosts: [bench]
  http:
  - match: [{{uri: {{prefix: /}}}}]
    timeout: 5s
    retries: {{attempts: 2, retryOn: "5xx,connect-failure", perTryTimeout: 2s}}
    route: [{{destination: {{host: bench, subset: v1}}}}]
"""


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def sync_round(client: httpx.Client, url: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        client.get(url).read()
        samples.append(time.perf_counter() - start)
    return samples


async def async_rps(clients: list[httpx.AsyncClient], url: str, total: int, inflight: int) -> float:
    per_worker = total // inflight

    async def worker(index: int) -> None:
        client = clients[index % len(clients)]
        for _ in range(per_worker):
            response = await client.get(url)
            await response.aread()

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(inflight)))
    return per_worker * inflight / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=50)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    port = free_port()
    server = start_server(port)
    try:
        run(port, args.requests, args.rounds, args.inflight)
    finally:
        server.terminate()
        server.wait(10)


def run(port: int, n: int, rounds: int, inflight: int) -> None:
    runtime = build_runtime(ConfigSource.from_text(config(port), namespace="default"))
    bare_url = f"http://127.0.0.1:{port}/"
    mesh_url = "http://bench/"
    bare = httpx.Client()
    mesh = httpx.Client(transport=MeshTransport(runtime))
    sync_round(bare, bare_url, 200)  # warm up connections and caches
    sync_round(mesh, mesh_url, 200)
    bare_samples: list[float] = []
    mesh_samples: list[float] = []
    # Small alternating batches: load drifting on a shared box hits both variants alike.
    batches = max(1, n // SYNC_BATCH)
    for _ in range(rounds * batches):
        bare_samples += sync_round(bare, bare_url, SYNC_BATCH)
        mesh_samples += sync_round(mesh, mesh_url, SYNC_BATCH)
    bare.close()
    mesh.close()
    us = 1e6
    b50, b99 = percentile(bare_samples, 0.5) * us, percentile(bare_samples, 0.99) * us
    m50, m99 = percentile(mesh_samples, 0.5) * us, percentile(mesh_samples, 0.99) * us
    print(f"sync, 1 in flight, {rounds}x{n} requests (plaintext)")
    print(f"  bare httpx.Client      p50 {b50:7.0f} us   p99 {b99:7.0f} us")
    print(f"  MeshTransport          p50 {m50:7.0f} us   p99 {m99:7.0f} us")
    print(
        f"  added                  p50 {m50 - b50:+7.0f} us   p99 {m99 - b99:+7.0f} us   "
        f"ratio p50 {m50 / b50:.3f}"
    )
    asyncio.run(run_async(runtime, port, n, rounds, inflight))


async def run_async(runtime: object, port: int, n: int, rounds: int, inflight: int) -> None:
    from meshlib._engine.runtime import OutboundRuntime

    assert isinstance(runtime, OutboundRuntime)
    bare_url = f"http://127.0.0.1:{port}/"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    shared = httpx.AsyncClient(limits=limits)
    per_worker = [httpx.AsyncClient() for _ in range(inflight)]
    mesh = httpx.AsyncClient(transport=AsyncMeshTransport(runtime))
    results: dict[str, list[float]] = {"mesh": [], "shared": [], "per-worker": []}
    for _ in range(rounds):
        results["mesh"].append(await async_rps([mesh], "http://bench/", n, inflight))
        results["shared"].append(await async_rps([shared], bare_url, n, inflight))
        results["per-worker"].append(await async_rps(per_worker, bare_url, n, inflight))
    for client in (shared, mesh, *per_worker):
        await client.aclose()
    med = {name: statistics.median(values) for name, values in results.items()}
    print(f"async, {inflight} in flight, {rounds}x{n} requests (median rps)")
    print(f"  one AsyncClient + AsyncMeshTransport   {med['mesh']:7.0f} rps")
    print(
        f"  one bare shared AsyncClient            {med['shared']:7.0f} rps "
        f"(mesh ratio {med['mesh'] / med['shared']:.2f})"
    )
    print(
        f"  one bare AsyncClient per worker        {med['per-worker']:7.0f} rps "
        f"(mesh ratio {med['mesh'] / med['per-worker']:.2f})"
    )


if __name__ == "__main__":
    main()
