"""What the mesh adds to a gRPC call, as differences and ratios against bare grpc in one run.

    python bench/bench_grpc.py [--calls N] [--rounds R] [--messages M] [--plaintext]
    python bench/bench_grpc.py --driver [--calls N] [--rounds R]

The server is a grpc server in a child process on 127.0.0.1 (client and server do not share a
GIL) with mesh mTLS (client certificate required) from a throwaway ``LocalCA``. Unary: p50/p99
per call, one in flight, a bare ``grpc.secure_channel`` with the same client certificate against
a mesh channel running a VirtualService with retries and a timeout and a DestinationRule with
load balancing, outlier detection and pool limits. Streaming: messages per second of one
server stream of M messages, bare against mesh (on a route without a timeout, as streaming
routes are written: a route timeout bounds a whole stream). Variants alternate in small
batches; every loop is bounded.

``--driver``: no server. The outbound flow alone against a MeshChannel whose endpoint channel
answers at once: the difference is what the sync gRPC driver itself adds per unary call.
"""

from __future__ import annotations

import argparse
import functools
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

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

from meshlib._config.source import ConfigSource  # noqa: E402
from meshlib._engine.runtime import build_runtime  # noqa: E402
from meshlib._identity.grpc_credentials import (  # noqa: E402
    grpc_channel_credentials,
    grpc_server_credentials,
)
from meshlib._identity.rotation import RotatingIdentity  # noqa: E402
from meshlib._identity.sources import StaticSource  # noqa: E402
from meshlib.grpc import MeshChannel  # noqa: E402
from meshlib.identity import LocalCA  # noqa: E402

START_TIMEOUT = 20.0
BATCH = 50
WARMUP = 300
HOST = "bench.default.svc.cluster.local"
NAMESPACE = "default"
UNARY = "/bench.Bench/Echo"
STREAM = "/bench.Bench/Stream"
PAYLOAD = b"x" * 64


def serve(port: int, ca_dir: str | None) -> None:
    """Child process: a grpc server answering Echo and Stream, until terminated."""

    def echo(request: bytes, context: Any) -> bytes:
        return request

    def stream(request: bytes, context: Any) -> Any:
        for _ in range(int(request)):
            yield PAYLOAD

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Bench",
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(echo),
                    "Stream": grpc.unary_stream_rpc_method_handler(stream),
                },
            ),
        )
    )
    address = f"127.0.0.1:{port}"
    if ca_dir is None:
        server.add_insecure_port(address)
    else:
        ca = LocalCA.load(ca_dir)
        identity = RotatingIdentity(StaticSource(ca.issue(NAMESPACE, "bench", [HOST])))
        server.add_secure_port(address, grpc_server_credentials(identity))
    server.start()
    server.wait_for_termination()


def start_server(port: int, ca_dir: str | None) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--serve", str(port)]
    if ca_dir is not None:
        command += ["--ca", ca_dir]
    process = subprocess.Popen(command, preexec_fn=server_core)  # noqa: PLW1509
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait(START_TIMEOUT)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def config(port: int, mtls: bool) -> str:
    labels = "{version: v1, security.istio.io/tlsMode: istio}" if mtls else "{version: v1}"
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: bench, namespace: {NAMESPACE}}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9090, name: grpc, protocol: GRPC}}]
  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {port}}}, labels: {labels}}}]
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
  - match: [{{uri: {{exact: {STREAM}}}}}]
    retries: {{attempts: 2, retryOn: "unavailable,connect-failure"}}
    route: [{{destination: {{host: bench, subset: v1}}}}]
  - match: [{{uri: {{prefix: /bench.Bench/}}}}]
    timeout: 5s
    retries: {{attempts: 2, retryOn: "unavailable,connect-failure", perTryTimeout: 2s}}
    route: [{{destination: {{host: bench, subset: v1}}}}]
"""


def unary_round(call: Any, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call(PAYLOAD, timeout=10)
        samples.append(time.perf_counter() - start)
    return samples


def stream_rate(call: Any, messages: int) -> float:
    start = time.perf_counter()
    count = sum(1 for _ in call(str(messages).encode(), timeout=60))
    assert count == messages
    return messages / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int)
    parser.add_argument("--ca")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--plaintext", action="store_true", help="no mTLS on either side")
    parser.add_argument("--driver", action="store_true", help="the driver alone, no server")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.ca)
        return
    if args.driver:
        driver_only(args.calls, args.rounds)
        return
    with tempfile.TemporaryDirectory() as folder:
        ca_dir = None if args.plaintext else str(Path(folder) / "ca")
        ca = None if ca_dir is None else LocalCA.create(ca_dir)
        port = free_port()
        server = start_server(port, ca_dir)
        pin_client()
        try:
            run(port, ca, args.calls, args.rounds, args.messages)
        finally:
            server.terminate()
            server.wait(10)


def run(port: int, ca: LocalCA | None, n: int, rounds: int, messages: int) -> None:
    identity = None
    if ca is None:
        bare_channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    else:
        identity = RotatingIdentity(StaticSource(ca.issue(NAMESPACE, "client")))
        bare_channel = grpc.secure_channel(
            f"127.0.0.1:{port}",
            grpc_channel_credentials(identity),
            options=[("grpc.ssl_target_name_override", HOST)],
        )
    source = ConfigSource.from_text(config(port, ca is not None), namespace=NAMESPACE)
    mesh_channel = MeshChannel(build_runtime(source, identity), "bench:9090")
    bare, mesh = bare_channel.unary_unary(UNARY), mesh_channel.unary_unary(UNARY)
    # Bare grpc sending the metadata the mesh adds (Envoy adds the same kinds): splits the
    # added time into what the metadata costs both sides and what meshlib's code costs.
    mesh_metadata = (("x-envoy-attempt-count", "1"), ("x-envoy-expected-rq-timeout-ms", "4999"))
    headed = functools.partial(bare, metadata=mesh_metadata)
    variants: dict[str, Any] = {"bare": bare, "headers": headed, "mesh": mesh}
    for call in variants.values():
        unary_round(call, WARMUP)
    wall: dict[str, list[float]] = {name: [] for name in variants}
    batch_p50: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    # Small alternating batches: load drifting on a shared box hits every variant alike.
    for _ in range(rounds * max(1, n // BATCH)):
        for name, call in variants.items():
            start = time.thread_time()
            samples = unary_round(call, BATCH)
            cpu[name].append((time.thread_time() - start) / BATCH)
            wall[name].extend(samples)
            batch_p50[name].append(statistics.median(samples))
    us = 1e6
    p50 = {name: percentile(samples, 0.5) * us for name, samples in wall.items()}
    p99 = {name: percentile(samples, 0.99) * us for name, samples in wall.items()}
    cpu50 = {name: statistics.median(samples) * us for name, samples in cpu.items()}
    paired = {
        name: paired_median(batch_p50[name], batch_p50["bare"]) * us for name in ("headers", "mesh")
    }
    mode = "plaintext" if ca is None else "mTLS"
    print(f"unary, 1 in flight, {len(wall['mesh'])} calls per variant ({mode})")
    labels = {"bare": "bare grpc channel", "headers": "bare + mesh metadata", "mesh": "MeshChannel"}
    for name, label in labels.items():
        print(
            f"  {label:22s} p50 {p50[name]:7.0f} us   p99 {p99[name]:7.0f} us   "
            f"client CPU {cpu50[name]:5.0f} us"
        )
    print(
        f"  added                  p50 {p50['mesh'] - p50['bare']:+7.0f} us   "
        f"p99 {p99['mesh'] - p99['bare']:+7.0f} us   client CPU "
        f"{cpu50['mesh'] - cpu50['bare']:+5.0f} us (median of {BATCH}-call batches)"
    )
    print(
        f"  of which the metadata  p50 {p50['headers'] - p50['bare']:+7.0f} us   "
        f"meshlib's code p50 {p50['mesh'] - p50['headers']:+7.0f} us"
    )
    print(
        f"  paired (median of per-round batch-median differences): added {paired['mesh']:+.0f} us"
        f", metadata {paired['headers']:+.0f} us, meshlib's code "
        f"{paired['mesh'] - paired['headers']:+.0f} us"
    )
    tail = paired_tail(wall["mesh"], wall["bare"]) * us
    print(
        f"  paired p99 (median over windows of {TAIL_WINDOW} calls per variant of the p99"
        f" difference): added {tail:+.0f} us"
    )
    bare_stream, mesh_stream = bare_channel.unary_stream(STREAM), mesh_channel.unary_stream(STREAM)
    bare_rates: list[float] = []
    mesh_rates: list[float] = []
    for _ in range(rounds):
        bare_rates.append(stream_rate(bare_stream, messages))
        mesh_rates.append(stream_rate(mesh_stream, messages))
    b, m = statistics.median(bare_rates), statistics.median(mesh_rates)
    print(f"server stream of {messages} messages, median of {rounds}")
    print(f"  bare {b:,.0f} msg/s   mesh {m:,.0f} msg/s   ratio {m / b:.3f}")
    bare_channel.close()
    mesh_channel.close()
    if identity is not None:
        identity.close()


def _answer(request: bytes, **_: Any) -> bytes:
    return request


class _AnsweringChannel:
    """An endpoint channel that answers at once: what remains is the mesh's own Python."""

    def unary_unary(self, path: str, **_: Any) -> Any:
        return _answer

    def close(self) -> None:
        return None


def answering_mesh_channel() -> tuple[MeshChannel, RotatingIdentity]:
    """A MeshChannel (this bench's routes, mTLS) whose endpoint channels answer at once, and
    its identity (close both when done)."""
    identity = RotatingIdentity(StaticSource(LocalCA.generate().issue(NAMESPACE, "client")))
    source = ConfigSource.from_text(config(9090, True), namespace=NAMESPACE)
    channel = MeshChannel(build_runtime(source, identity), "bench:9090")
    channel._pool._factory = lambda address, credentials, options: _AnsweringChannel()
    return channel, identity


def driver_only(n: int, rounds: int) -> None:
    from meshlib._engine.outbound import conclude, outbound_flow
    from meshlib._model.commands import Send
    from meshlib._model.outcome import Outcome
    from meshlib.grpc._common import build_call, parse_target

    channel, identity = answering_mesh_channel()
    runtime = channel.runtime
    mesh = channel.unary_unary(UNARY)
    call = build_call(parse_target("bench:9090"), UNARY, None, replayable=True)
    started, ok = Outcome(status=200), Outcome(status=200, grpc_status=0)

    def flow(payload: bytes, timeout: float) -> None:
        # The least a driver can do: answer every Send, complete the Deliver, conclude.
        steps = outbound_flow(call, runtime, caller_timeout=timeout)
        command = next(steps)
        while type(command) is Send:
            command = steps.send(started)
        command.complete(ok)  # type: ignore[union-attr]
        conclude(steps)

    def batch_mean(fn: Any) -> float:
        start = time.perf_counter()
        for _ in range(BATCH):
            fn(PAYLOAD, timeout=10)
        return (time.perf_counter() - start) / BATCH

    unary_round(flow, WARMUP)
    unary_round(mesh, WARMUP)
    flows: list[float] = []
    meshes: list[float] = []
    for _ in range(rounds * max(1, n // BATCH)):
        flows.append(batch_mean(flow))
        meshes.append(batch_mean(mesh))
    us = 1e6
    f_min, m_min = min(flows) * us, min(meshes) * us
    f_med, m_med = statistics.median(flows) * us, statistics.median(meshes) * us
    print(f"driver alone: batches of {BATCH} unary calls, {len(flows)} batches per variant")
    print(f"  outbound flow only     min {f_min:6.1f} us   median {f_med:6.1f} us")
    print(f"  MeshChannel            min {m_min:6.1f} us   median {m_med:6.1f} us")
    print(
        f"  driver adds            min {m_min - f_min:+6.1f} us   median {m_med - f_med:+6.1f} us"
    )
    channel.close()
    identity.close()


if __name__ == "__main__":
    main()
