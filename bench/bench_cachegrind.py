"""Instructions and modelled cache misses per request, bare against mesh: figures that do not
move with the machine's load.

    python bench/bench_cachegrind.py [--requests N] [--l2 BYTES] [--http-only | --grpc-only]
    python bench/bench_cachegrind.py --footprint [--requests N] [--http-only | --grpc-only]

Each client runs in its own process under valgrind's cachegrind, once with no measured
requests and once with N, after the same warm-up; the difference divided by N is what one
request costs: instructions, L1 misses, and misses of a modelled L2 (``--l2``, 512 KiB by
default, the size of one core's L2 on the machines these notes were written on). Upstreams are
the HTTP and gRPC benches' own servers (mTLS, outside valgrind). Client certificates are issued
once up front, so no child generates a key. Routes get long timeouts: valgrind runs the client
about 50 times slower. Wall-clock benches answer "how long"; this one answers "how much work and
how many trips past L2", without the noise of a shared machine. Needs ``valgrind`` (skipped,
saying so, without it).

``--footprint``: how much code and data one request touches. No network: the drivers answer
from memory (as ``bench_http.py --driver`` and ``bench_grpc.py --driver`` do), and before each
request the child copies a buffer eight times the modelled L2, so every request starts from
cold caches, as a real one does after its I/O. Misses per request, mesh minus bare, are then
the lines (64 bytes) of native code (the interpreter's, for what the Python runs) and of data
(bytecode, constants, objects) the mesh's work brings back from beyond L2.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshlib._identity.rotation import RotatingIdentity

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

CHILD_TIMEOUT = 1800.0
WARMUP = 100
DEFAULT_REQUESTS = 1000
DEFAULT_L2 = 512 * 1024
COUNTERS = {
    "instructions": "I   refs",
    "L1i misses": "I1  misses",
    "L1d misses": "D1  misses",
    "L2 misses (code)": "LLi misses",
    "L2 misses (data)": "LLd misses",
}
SLOW_TIMEOUTS = (("timeout: 5s", "timeout: 600s"), ("perTryTimeout: 2s", "perTryTimeout: 300s"))


def _slow(config: str) -> str:
    for before, after in SLOW_TIMEOUTS:
        config = config.replace(before, after)
    return config


def _identity(folder: str) -> RotatingIdentity:
    from meshlib._identity.rotation import RotatingIdentity
    from meshlib._identity.sources import StaticSource, load_svid_files

    base = Path(folder)
    svid = load_svid_files(base / "client.pem", base / "client.key", base / "bundle.pem")
    return RotatingIdentity(StaticSource(svid))


def http_child(variant: str, folder: str, port: int, count: int) -> None:
    import bench_http
    import httpx

    from meshlib import Mesh
    from meshlib._identity.tls import client_context
    from meshlib.httpx import MeshTransport

    identity = _identity(folder)
    if variant == "bare":
        svid = identity.svid
        client = httpx.Client(verify=client_context(svid, alpn=["http/1.1"]), timeout=600)
        url = f"https://127.0.0.1:{port}/"
    else:
        mesh = Mesh.from_text(
            _slow(bench_http.config(port, True)),
            namespace=bench_http.NAMESPACE,
            service_account=bench_http.CLIENT_SA,
            workload="bench-client",
            identity=identity,
        )
        mesh.configure_telemetry(metrics="prometheus" if bench_http._has_prometheus() else None)
        client = httpx.Client(transport=MeshTransport(mesh.runtime), timeout=600)
        url = "http://bench/"
    for _ in range(WARMUP + count):
        client.get(url).read()
    client.close()


def grpc_child(variant: str, folder: str, port: int, count: int) -> None:
    import bench_grpc
    import grpc

    from meshlib._config.source import ConfigSource
    from meshlib._engine.runtime import build_runtime
    from meshlib._identity.grpc_credentials import grpc_channel_credentials
    from meshlib.grpc import MeshChannel

    identity = _identity(folder)
    if variant == "bare":
        channel = grpc.secure_channel(
            f"127.0.0.1:{port}",
            grpc_channel_credentials(identity),
            options=[("grpc.ssl_target_name_override", bench_grpc.HOST)],
        )
    else:
        source = ConfigSource.from_text(
            _slow(bench_grpc.config(port, True)), namespace=bench_grpc.NAMESPACE
        )
        channel = MeshChannel(build_runtime(source, identity), "bench:9090")
    call = channel.unary_unary(bench_grpc.UNARY)
    for _ in range(WARMUP + count):
        call(bench_grpc.PAYLOAD, timeout=600)
    channel.close()


def memory_child(kind: str, variant: str, count: int, l2: int) -> None:
    """``--footprint``: requests answered from memory, each after evicting the modelled L2."""
    if kind == "http-memory":
        import bench_http
        import httpx

        from meshlib.httpx import MeshTransport

        bench_http.answer_from_memory()
        setup = bench_http.Setup(bench_http.free_port(), None)  # nothing listens or is sent
        if variant == "bare":
            client, url = httpx.Client(), setup.bare_url
        else:
            client, url = httpx.Client(transport=MeshTransport(setup.runtime)), setup.mesh_url

        def request() -> None:
            client.get(url).read()

    else:
        import bench_grpc

        if variant == "bare":
            call = bench_grpc._AnsweringChannel().unary_unary(bench_grpc.UNARY)
        else:
            channel = bench_grpc.answering_mesh_channel()[0]
            call = channel.unary_unary(bench_grpc.UNARY)

        def request() -> None:
            call(bench_grpc.PAYLOAD, timeout=600)

    for _ in range(WARMUP):
        request()
    evicted, source = bytearray(8 * l2), bytes(8 * l2)
    for _ in range(count):
        evicted[:] = source
        request()


def counters(
    kind: str, variant: str, folder: str, port: int, count: int, l2: int
) -> dict[str, int]:
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=yes",
        f"--LL={l2},8,64",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--l2",
        str(l2),
        "--child",
        kind,
        variant,
        folder,
        str(port),
        str(count),
    ]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=CHILD_TIMEOUT
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise RuntimeError(f"the {kind} {variant} child failed")
    result = {}
    for name, label in COUNTERS.items():
        found = re.search(re.escape(label) + r":\s+([\d,]+)", done.stderr)
        if found is None:
            raise RuntimeError(f"cachegrind printed no {label!r}")
        result[name] = int(found.group(1).replace(",", ""))
    return result


def per_request(kind: str, folder: str, port: int, count: int, l2: int) -> None:
    figures: dict[str, dict[str, float]] = {}
    for variant in ("bare", "mesh"):
        idle = counters(kind, variant, folder, port, 0, l2)
        busy = counters(kind, variant, folder, port, count, l2)
        figures[variant] = {name: (busy[name] - idle[name]) / count for name in COUNTERS}
    heading = f"{kind}, per request ({count} requests, modelled L2 {l2 // 1024} KiB)"
    if kind.endswith("-memory"):
        heading += ", answered from memory, caches evicted before each request"
    print(heading)
    print(f"  {'':18s} {'bare':>11s} {'mesh':>11s} {'added':>11s}")
    for name in COUNTERS:
        bare, mesh = figures["bare"][name], figures["mesh"][name]
        added = mesh - bare
        # Answered from memory, bare touches almost nothing: a share of it says nothing.
        share = f"({added / bare:+.1%})" if bare and not kind.endswith("-memory") else ""
        print(f"  {name:18s} {bare:11,.0f} {mesh:11,.0f} {added:+11,.0f} {share}")


def write_identity(folder: str) -> None:
    from meshlib.identity import LocalCA

    ca = LocalCA.create(str(Path(folder) / "ca"))
    svid = ca.issue("default", "client")
    base = Path(folder)
    (base / "client.pem").write_bytes(svid.cert_chain_pem)
    (base / "client.key").write_bytes(svid.private_key_pem)
    (base / "bundle.pem").write_bytes(svid.bundle_pem)
    os.chmod(base / "client.key", 0o600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=5, metavar=("KIND", "VARIANT", "DIR", "PORT", "N"))
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--l2", type=int, default=DEFAULT_L2, help="modelled L2 size in bytes")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--http-only", action="store_true")
    only.add_argument("--grpc-only", action="store_true")
    parser.add_argument(
        "--footprint", action="store_true", help="no network, caches evicted before each request"
    )
    args = parser.parse_args()
    if args.child:
        kind, variant, folder, port, count = args.child
        if kind.endswith("-memory"):
            memory_child(kind, variant, int(count), args.l2)
        else:
            child = http_child if kind == "http" else grpc_child
            child(variant, folder, int(port), int(count))
        return
    if shutil.which("valgrind") is None:
        print("bench_cachegrind: valgrind is not installed; skipped")
        return
    import bench_grpc
    import bench_http

    if args.footprint:
        names = ["http-memory", "grpc-memory"]
        if args.http_only:
            names = names[:1]
        elif args.grpc_only:
            names = names[1:]
        for name in names:
            per_request(name, "-", 0, args.requests, args.l2)
        return

    with tempfile.TemporaryDirectory() as folder:
        write_identity(folder)
        ca_dir = str(Path(folder) / "ca")
        kinds = [("http", bench_http), ("grpc", bench_grpc)]
        if args.http_only:
            kinds = kinds[:1]
        elif args.grpc_only:
            kinds = kinds[1:]
        for kind, module in kinds:
            port = module.free_port()
            server = module.start_server(port, ca_dir)
            try:
                per_request(kind, folder, port, args.requests, args.l2)
            finally:
                server.terminate()
                server.wait(10)


if __name__ == "__main__":
    main()
