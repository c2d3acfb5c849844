"""Resident memory a Mesh with 100 destinations adds to a process (target <= 15 MB).

    python bench/bench_memory.py [--destinations N]

The measurement runs in a fresh child process. It imports httpx and sends requests with a
bare ``httpx.Client``, imports meshlib, then builds a ``Mesh`` from N ServiceEntries,
DestinationRules (subsets, pool limits, outlier detection)
and VirtualServices (retries, timeout, weighted split) and sends one request to every
destination through ``mesh.http_client()``, so every cluster state and pool exists. The
upstream is one uvicorn child on 127.0.0.1 that every endpoint points at.

The child imports from cached bytecode, as an installed meshlib does (pip compiles ``.pyc`` files
on install): without them every import compiles source, and the compiler's scratch memory stays
in the allocator and counts as RSS (several MB here). So the child runs with bytecode writing on
(``PYTHONDONTWRITEBYTECODE`` dropped) and ``PYTHONPYCACHEPREFIX`` pointing at a temporary
directory, filled by a warm-up child before the measured one. ``--no-bytecode-cache`` measures
with the inherited environment instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET_MB = 15.0
CHILD_TIMEOUT = 300.0


def config(count: int, port: int) -> str:
    documents = []
    for index in range(count):
        name = f"svc{index}"
        host = f"{name}.default.svc.cluster.local"
        documents.append(f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.2, ports: {{http: {port}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {name}
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 100}}, http: {{http1MaxPendingRequests: 100}}}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: {name}, subset: v2}}}}]
  - route: [{{destination: {{host: {name}, subset: v1}}}}]
    timeout: 5s
    retries: {{attempts: 2, retryOn: "5xx,connect-failure", perTryTimeout: 2s}}
""")
    return "---".join(documents)


def rss_kb() -> int:
    """Current resident set size (Linux /proc; falls back to the peak elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def child(count: int, port: int) -> None:
    import gc

    import httpx

    with httpx.Client() as bare:
        for _ in range(20):
            bare.get(f"http://127.0.0.1:{port}/").read()
    gc.collect()
    plain = rss_kb()
    import meshlib

    gc.collect()
    imported = rss_kb()
    mesh = meshlib.Mesh.from_text(config(count, port), namespace="default")
    with mesh.http_client() as client:
        for index in range(count):
            client.get(f"http://svc{index}/").read()
        gc.collect()
        built = rss_kb()
    print(json.dumps({"plain_kb": plain, "imported_kb": imported, "built_kb": built}))


def run_child(count: int, port: int, env: dict[str, str] | None) -> dict[str, int]:
    command = [sys.executable, __file__, "--child", "--destinations", str(count)]
    command += ["--port", str(port)]
    output = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env
    )
    if output.returncode != 0:
        sys.stderr.write(output.stderr)
        raise RuntimeError("the measuring child failed")
    result: dict[str, int] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def measure(count: int, port: int, *, bytecode_cache: bool) -> dict[str, int]:
    """One child's figures; with ``bytecode_cache``, a warm-up child first fills a temporary
    bytecode cache that the measured child then imports from."""
    if not bytecode_cache:
        return run_child(count, port, None)
    with tempfile.TemporaryDirectory(prefix="meshlib-bench-pyc-") as prefix:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = prefix
        run_child(count, port, env)  # warm-up: writes the .pyc files
        return run_child(count, port, env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--port", type=int)
    parser.add_argument("--destinations", type=int, default=100)
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run the child with the inherited environment (may compile every import)",
    )
    args = parser.parse_args()
    if args.child:
        child(args.destinations, args.port)
        return
    # Imported here, not at the top: bench_http imports meshlib, which the child must not.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_http

    port = bench_http.free_port()
    server = bench_http.start_server(port, None)
    try:
        result = measure(args.destinations, port, bytecode_cache=not args.no_bytecode_cache)
    finally:
        server.terminate()
        server.wait(10)
    mb = 1024
    imported = (result["imported_kb"] - result["plain_kb"]) / mb
    built = (result["built_kb"] - result["imported_kb"]) / mb
    total = imported + built
    verdict = "ok" if total <= TARGET_MB else "over target"
    print(f"memory, a Mesh with {args.destinations} destinations (one request each)")
    if args.no_bytecode_cache:
        print("  bytecode: inherited environment (without .pyc files, every import compiles)")
    else:
        print("  bytecode: cached, as installed (temporary PYTHONPYCACHEPREFIX, warm-up child)")
    print(f"  httpx process before meshlib   {result['plain_kb'] / mb:7.1f} MB")
    print(f"  import meshlib                 {imported:+7.1f} MB")
    print(f"  build the mesh, send, pools    {built:+7.1f} MB")
    print(f"  total added                    {total:+7.1f} MB   (target <= {TARGET_MB:g} MB)")
    print(f"  verdict                        {verdict}")


if __name__ == "__main__":
    main()
