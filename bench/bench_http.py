"""What the mesh adds to an httpx request, as ratios against bare httpx in the same run.

    python bench/bench_http.py [--requests N] [--rounds R] [--inflight K] [--plaintext] [--driver]

The upstream is uvicorn in a child process on 127.0.0.1 (so client and server do not share
a GIL), serving mesh mTLS (STRICT) with an SVID from a throwaway ``LocalCA``. Sync: p50/p99
per request, one in flight, bare ``httpx.Client`` with the same client certificate vs a
client whose ``MeshTransport`` runs a VirtualService with retries and a timeout and a
DestinationRule with load balancing, outlier detection and pool limits, metrics and trace
propagation on (the Mesh defaults). Async: requests per
second with K in flight on one ``AsyncMeshTransport`` client, on one bare shared
``AsyncClient``, and on one bare client per worker. Variants are interleaved in small
batches; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpcore
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _measure import (  # noqa: E402
    TAIL_WINDOW,
    free_port,
    paired_median,
    paired_tail,
    percentile,
    pin_client,
    server_core,
)

from meshlib import Mesh  # noqa: E402
from meshlib._engine.runtime import OutboundRuntime  # noqa: E402
from meshlib._identity.rotation import RotatingIdentity  # noqa: E402
from meshlib._identity.sources import StaticSource  # noqa: E402
from meshlib._identity.tls import client_context  # noqa: E402
from meshlib.httpx import AsyncMeshTransport, MeshTransport  # noqa: E402
from meshlib.identity import LocalCA  # noqa: E402

START_TIMEOUT = 20.0
SYNC_BATCH = 50
WARMUP = 300
HOST = "bench.default.svc.cluster.local"
SERVER_SA = "bench"
CLIENT_SA = "client"
NAMESPACE = "default"


async def app(scope: dict[str, object], receive: object, send: object) -> None:
    """The smallest ASGI answer: 200 with a short body."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


def http_impl() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


def serve(port: int, ca_dir: str | None) -> None:
    """Child process: plaintext uvicorn, or mesh mTLS (STRICT) with an SVID of ``ca_dir``."""
    if ca_dir is None:
        import uvicorn

        uvicorn.run(
            app, host="127.0.0.1", port=port, log_level="warning", http=http_impl(),
            lifespan="off", backlog=1024,
        )  # fmt: skip
        return
    from meshlib._identity.serving import Server

    ca = LocalCA.load(ca_dir)
    identity = RotatingIdentity(StaticSource(ca.issue(NAMESPACE, SERVER_SA, [HOST])))
    Server(app, identity=identity, port=port, mtls_mode="STRICT", http=http_impl()).run()


def start_server(port: int, ca_dir: str | None) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--serve", str(port)]
    if ca_dir is not None:
        command += ["--ca", ca_dir]
    process = subprocess.Popen(command, preexec_fn=server_core)  # noqa: PLW1509
    wait_for_port(port, process)
    return process


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until 127.0.0.1:port accepts; kills ``process`` and raises if it never does."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait(START_TIMEOUT)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def config(port: int, mtls: bool) -> str:
    labels = "{version: v1, security.istio.io/tlsMode: istio}" if mtls else "{version: v1}"
    account = f", serviceAccount: {SERVER_SA}" if mtls else ""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: bench, namespace: {NAMESPACE}}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}, labels: {labels}{account}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: bench, namespace: {NAMESPACE}}}
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
metadata: {{name: bench, namespace: {NAMESPACE}}}
spec:
  hosts: [bench]
  http:
  - match: [{{uri: {{prefix: /}}}}]
    timeout: 5s
    retries: {{attempts: 2, retryOn: "5xx,connect-failure", perTryTimeout: 2s}}
    route: [{{destination: {{host: bench, subset: v1}}}}]
"""


def sync_round(client: httpx.Client, url: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        client.get(url).read()
        samples.append(time.perf_counter() - start)
    return samples


async def async_rps(clients: list[httpx.AsyncClient], url: str, total: int, inflight: int) -> float:
    per_worker = max(1, total // inflight)

    async def worker(index: int) -> None:
        client = clients[index % len(clients)]
        for _ in range(per_worker):
            response = await client.get(url)
            await response.aread()

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(inflight)))
    return per_worker * inflight / (time.perf_counter() - start)


class Setup:
    """Upstream URL, the bare clients' TLS and the mesh for one security mode.

    The mesh is built as a user builds it (``Mesh.from_text``), with its default telemetry:
    Istio's Prometheus metrics and trace propagation (B3 + W3C, Istio's 1 % sampling; spans
    only exist with an OTel SDK, which the bench does not install).
    """

    def __init__(self, port: int, ca: LocalCA | None) -> None:
        self.mtls = ca is not None
        scheme = "https" if self.mtls else "http"
        self.bare_url = f"{scheme}://127.0.0.1:{port}/"
        self.mesh_url = "http://bench/"
        self.verify: ssl.SSLContext | bool = True
        identity: RotatingIdentity | None = None
        if ca is not None:
            svid = ca.issue(NAMESPACE, CLIENT_SA)
            # The same client certificate and trust as the mesh, without the SPIFFE check.
            self.verify = client_context(svid, alpn=["http/1.1"])
            identity = RotatingIdentity(StaticSource(svid))
        self.mesh = Mesh.from_text(
            config(port, self.mtls),
            namespace=NAMESPACE,
            service_account=CLIENT_SA,
            workload="bench-client",
            identity=identity,
        )
        self.mesh.configure_telemetry(metrics="prometheus" if _has_prometheus() else None)
        self.runtime: OutboundRuntime = self.mesh.runtime


def _has_prometheus() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int)
    parser.add_argument("--ca")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=50)
    parser.add_argument("--plaintext", action="store_true", help="no mTLS on either side")
    parser.add_argument("--sync-only", action="store_true")
    parser.add_argument("--driver", action="store_true", help="no network: the Python layers")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.ca)
        return
    if args.driver:
        driver_only(args.requests, args.rounds)
        return
    with tempfile.TemporaryDirectory() as folder:
        ca = None
        ca_dir = None
        if not args.plaintext:
            ca_dir = str(Path(folder) / "ca")
            ca = LocalCA.create(ca_dir)
        port = free_port()
        server = start_server(port, ca_dir)
        pin_client()
        try:
            setup = Setup(port, ca)
            run_sync(setup, args.requests, args.rounds)
            if not args.sync_only:
                asyncio.run(run_async(setup, args.requests, args.rounds, args.inflight))
        finally:
            server.terminate()
            server.wait(10)


class _AnsweringConnection(httpcore.HTTPConnection):
    """An httpcore connection that answers from memory: no socket, no HTTP/1.1 parser."""

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        return httpcore.Response(
            200,
            headers=[(b"content-length", b"2")],
            content=b"ok",
            extensions={"http_version": b"HTTP/1.1"},
        )

    def is_available(self) -> bool:
        return True

    def is_idle(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return False

    def has_expired(self) -> bool:
        return False


def answer_from_memory() -> None:
    """Every httpcore connection of this process answers from memory (the bench's own child)."""
    httpcore.HTTPConnection.handle_request = _AnsweringConnection.handle_request  # type: ignore[method-assign]
    for name in ("is_available", "is_idle", "is_closed", "has_expired"):
        setattr(httpcore.HTTPConnection, name, getattr(_AnsweringConnection, name))


def driver_only(n: int, rounds: int) -> None:
    """Client CPU per request without the network, bare and mesh answering from the same
    in-memory connection: meshlib's code (flow, driver, metrics) less the pool bookkeeping it
    skips, without the noise of sockets and the other process (nor the cost of the headers)."""
    answer_from_memory()
    setup = Setup(free_port(), None)  # nothing listens: nothing is ever sent
    bare = httpx.Client()
    mesh = httpx.Client(transport=MeshTransport(setup.runtime))
    variants = {"bare": (bare, setup.bare_url), "mesh": (mesh, setup.mesh_url)}
    for client, url in variants.values():
        sync_round(client, url, WARMUP)
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    # Per batch, the median request: one that the cyclic GC did not interrupt (a young
    # collection runs every few dozen requests and lands in the batch means above).
    typical: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds * max(1, n // SYNC_BATCH)):
        for name, (client, url) in variants.items():
            start = time.thread_time()
            samples = sync_round(client, url, SYNC_BATCH)
            cpu[name].append((time.thread_time() - start) / SYNC_BATCH)
            typical[name].append(statistics.median(samples))
    us = 1e6
    low = {name: percentile(samples, 0.1) * us for name, samples in cpu.items()}
    mid = {name: statistics.median(samples) * us for name, samples in cpu.items()}
    one = {name: statistics.median(samples) * us for name, samples in typical.items()}
    print(f"no network, client CPU per request, {len(cpu['mesh'])} batches of {SYNC_BATCH}")
    print(f"  bare httpx.Client      p10 {low['bare']:6.1f} us   median {mid['bare']:6.1f} us")
    print(f"  MeshTransport          p10 {low['mesh']:6.1f} us   median {mid['mesh']:6.1f} us")
    print(
        f"  added                  p10 {low['mesh'] - low['bare']:+6.1f} us   "
        f"median {mid['mesh'] - mid['bare']:+6.1f} us"
    )
    print(
        f"  the median request (wall): bare {one['bare']:6.1f} us, mesh {one['mesh']:6.1f} us,"
        f" added {one['mesh'] - one['bare']:+6.1f} us (no GC pass: what a p50 sees)"
    )
    bare.close()
    mesh.close()


def mesh_headers(setup: Setup) -> dict[str, str]:
    """The headers the mesh adds to this bench's requests (Envoy adds the same kinds)."""
    headers = dict(setup.runtime.hooks.outbound_headers(0.0, None) or ())
    headers["x-envoy-attempt-count"] = "1"
    headers["x-envoy-expected-rq-timeout-ms"] = "4999"
    return headers


def wire_headers_transport(extra: dict[str, str], verify: ssl.SSLContext | bool) -> Any:
    """httpx's own transport, adding ``extra`` to each request below httpx, as the mesh does.

    Headers given to ``httpx.Client(headers=...)`` would also cost httpx's per-header Python
    work on every request (merging, normalising, a dozen case-folding walks), which the mesh's
    headers never go through: they are added to the httpcore request.
    """
    transport = httpx.HTTPTransport(verify=verify)
    pool: Any = transport._pool
    send = pool.handle_request
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()]

    def handle_request(request: httpcore.Request) -> httpcore.Response:
        request.headers = [*request.headers, *raw]
        return send(request)  # type: ignore[no-any-return]

    pool.handle_request = handle_request
    return transport


def run_sync(setup: Setup, n: int, rounds: int) -> tuple[float, float]:
    """Prints and returns (p50, p99) added, in microseconds.

    A third variant, bare httpx sending the headers the mesh adds (attempt count, expected
    timeout, peer metadata) on the wire, splits the added time into what those headers cost
    on the wire and in the HTTP/1.1 parsers of both sides, and what meshlib's code costs.
    """
    bare = httpx.Client(verify=setup.verify)
    headed = httpx.Client(transport=wire_headers_transport(mesh_headers(setup), setup.verify))
    mesh = httpx.Client(transport=MeshTransport(setup.runtime))
    variants = {"bare": (bare, setup.bare_url), "headers": (headed, setup.bare_url)}
    variants["mesh"] = (mesh, setup.mesh_url)
    for client, url in variants.values():
        sync_round(client, url, WARMUP)  # warm up connections and caches
    wall: dict[str, list[float]] = {name: [] for name in variants}
    # Per round, each variant's batch median: differences within a round are paired, so load
    # that drifts between rounds cancels out (the pooled percentiles above do not).
    batch_p50: dict[str, list[float]] = {name: [] for name in variants}
    # The client thread's CPU time per request, per batch: what the mesh costs the caller,
    # much less sensitive than wall time to other load on a shared box.
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    # Small alternating batches: load drifting on a shared box hits every variant alike.
    for _ in range(rounds * max(1, n // SYNC_BATCH)):
        for name, (client, url) in variants.items():
            start = time.thread_time()
            samples = sync_round(client, url, SYNC_BATCH)
            cpu[name].append((time.thread_time() - start) / SYNC_BATCH)
            wall[name].extend(samples)
            batch_p50[name].append(statistics.median(samples))
    for client, _ in variants.values():
        client.close()
    us = 1e6
    p50 = {name: percentile(samples, 0.5) * us for name, samples in wall.items()}
    p99 = {name: percentile(samples, 0.99) * us for name, samples in wall.items()}
    cpu50 = {name: statistics.median(samples) * us for name, samples in cpu.items()}
    mode = "mTLS" if setup.mtls else "plaintext"
    print(f"sync, 1 in flight, {len(wall['mesh'])} requests per variant ({mode})")
    labels = {
        "bare": "bare httpx.Client",
        "headers": "bare + mesh headers",
        "mesh": "MeshTransport",
    }
    for name, label in labels.items():
        print(
            f"  {label:22s} p50 {p50[name]:7.0f} us   p99 {p99[name]:7.0f} us   "
            f"client CPU {cpu50[name]:5.0f} us"
        )
    added50, added99 = p50["mesh"] - p50["bare"], p99["mesh"] - p99["bare"]
    print(
        f"  added                  p50 {added50:+7.0f} us   p99 {added99:+7.0f} us   "
        f"ratio p50 {p50['mesh'] / p50['bare']:.3f}   client CPU "
        f"{cpu50['mesh'] - cpu50['bare']:+5.0f} us (median of {SYNC_BATCH}-request batches)"
    )
    print(
        f"  of which the headers   p50 {p50['headers'] - p50['bare']:+7.0f} us   "
        f"meshlib's code p50 {p50['mesh'] - p50['headers']:+7.0f} us"
    )
    paired = {
        name: paired_median(batch_p50[name], batch_p50["bare"]) * us for name in ("headers", "mesh")
    }
    code = paired["mesh"] - paired["headers"]
    print(
        f"  paired (median of per-round batch-median differences): added {paired['mesh']:+.0f} us"
        f", headers {paired['headers']:+.0f} us, meshlib's code {code:+.0f} us"
    )
    tail = paired_tail(wall["mesh"], wall["bare"]) * us
    print(
        f"  paired p99 (median over windows of {TAIL_WINDOW} requests per variant of the p99"
        f" difference): added {tail:+.0f} us"
    )
    return added50, added99


async def run_async(setup: Setup, n: int, rounds: int, inflight: int) -> None:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    shared = httpx.AsyncClient(limits=limits, verify=setup.verify)
    per_worker = [httpx.AsyncClient(verify=setup.verify) for _ in range(inflight)]
    mesh = httpx.AsyncClient(transport=AsyncMeshTransport(setup.runtime))
    variants = {"mesh": ([mesh], setup.mesh_url), "shared": ([shared], setup.bare_url)}
    variants["per-worker"] = (per_worker, setup.bare_url)
    for clients, url in variants.values():  # handshakes happen outside the measurement
        await async_rps(clients, url, inflight * 2, inflight)
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (clients, url) in variants.items():
            results[name].append(await async_rps(clients, url, n, inflight))
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
