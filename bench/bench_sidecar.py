"""meshlib against a real sidecar pair: what each adds to one sync request (p50/p99).

    python bench/bench_sidecar.py [--requests N] [--rounds R]

Path with sidecars: client -> outbound nginx (plaintext, 127.0.0.1) -> mTLS with the client's
SVID -> inbound nginx (verifies the client certificate) -> uvicorn. nginx comes from the OS
package; without it the bench says so and exits 0. Both nginx run in the foreground with
configs generated into a temp dir and are stopped through their own process handles.
meshlib: ``MeshTransport`` (VirtualService with retries and a timeout, DestinationRule with
LEAST_REQUEST, outlier detection and pool limits) -> mTLS -> uvicorn serving mTLS itself.

Added p50 of the pair = pair - direct plaintext. meshlib's added p50 (DESIGN.md section 7) =
meshlib - bare httpx with the same mTLS; the end-to-end figure (meshlib with mTLS - direct
plaintext) is printed too. Target: meshlib's added p50 <= 1/5 of the pair's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_http

from meshlib.httpx import MeshTransport
from meshlib.identity import LocalCA

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx")
STOP_TIMEOUT = 10.0
TARGET_FRACTION = 0.2
BATCH = 50
WARMUP = 300
UPSTREAM_KEEPALIVE = 16

NGINX_CONF = """
{user}
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_requests 100000;
  upstream next_hop {{
    server 127.0.0.1:{next_port};
    keepalive {keepalive};
    keepalive_requests 100000;
  }}
  server {{
{listen}
    location / {{
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
{proxy}
    }}
  }}
}}
"""


def find_nginx() -> str | None:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found is not None:
            return found
    return None


def write_certs(ca: LocalCA, folder: Path) -> dict[str, Path]:
    """PEM files for the pair: the inbound proxy's server SVID, the outbound's client SVID."""
    server = ca.issue(bench_http.NAMESPACE, bench_http.SERVER_SA, [bench_http.HOST])
    client = ca.issue(bench_http.NAMESPACE, bench_http.CLIENT_SA)
    files = {
        "server_cert": server.cert_chain_pem,
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pem,
        "client_key": client.private_key_pem,
        "bundle": server.bundle_pem,
    }
    paths = {}
    for name, data in files.items():
        path = folder / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = path
    return paths


def nginx_conf(prefix: Path, next_port: int, listen: str, proxy: str) -> str:
    user = "user root root;" if os.geteuid() == 0 else ""
    return NGINX_CONF.format(
        user=user,
        prefix=prefix,
        next_port=next_port,
        keepalive=UPSTREAM_KEEPALIVE,
        listen=listen,
        proxy=proxy,
    )


def start_nginx(
    nginx: str, folder: Path, name: str, conf: str, port: int
) -> subprocess.Popen[bytes]:
    prefix = folder / name
    prefix.mkdir()
    path = prefix / "nginx.conf"
    path.write_text(conf)
    process = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(path)])
    try:
        bench_http.wait_for_port(port, process)
    except RuntimeError:
        log = prefix / "error.log"
        sys.stderr.write(log.read_text() if log.exists() else "")
        raise
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()  # nginx: fast shutdown of master and workers
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    nginx = find_nginx()
    if nginx is None:
        print("bench_sidecar: skipped, nginx is not installed (apt-get install nginx)")
        return
    with tempfile.TemporaryDirectory() as temp:
        run(nginx, Path(temp), args.requests, args.rounds)


def run(nginx: str, folder: Path, n: int, rounds: int) -> None:
    ca_dir = folder / "ca"
    ca = LocalCA.create(ca_dir)
    certs = write_certs(ca, folder)
    plain_port, mtls_port, inbound_port, outbound_port = (bench_http.free_port() for _ in "1234")
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(bench_http.start_server(plain_port, None))
        started.append(bench_http.start_server(mtls_port, str(ca_dir)))
        inbound = nginx_conf(
            folder / "inbound",
            plain_port,
            f"    listen 127.0.0.1:{inbound_port} ssl;\n"
            f"    ssl_certificate {certs['server_cert']};\n"
            f"    ssl_certificate_key {certs['server_key']};\n"
            f"    ssl_client_certificate {certs['bundle']};\n"
            "    ssl_verify_client on;\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;",
            "      proxy_pass http://next_hop;",
        )
        started.append(start_nginx(nginx, folder, "inbound", inbound, inbound_port))
        outbound = nginx_conf(
            folder / "outbound",
            inbound_port,
            f"    listen 127.0.0.1:{outbound_port};",
            "      proxy_pass https://next_hop;\n"
            f"      proxy_ssl_certificate {certs['client_cert']};\n"
            f"      proxy_ssl_certificate_key {certs['client_key']};\n"
            f"      proxy_ssl_trusted_certificate {certs['bundle']};\n"
            "      proxy_ssl_verify on;\n"
            f"      proxy_ssl_name {bench_http.HOST};\n"
            "      proxy_ssl_server_name on;\n"
            "      proxy_ssl_session_reuse on;",
        )
        started.append(start_nginx(nginx, folder, "outbound", outbound, outbound_port))
        measure(ca, plain_port, mtls_port, outbound_port, n, rounds)
    finally:
        for process in reversed(started):
            stop(process)


def measure(
    ca: LocalCA, plain_port: int, mtls_port: int, outbound_port: int, n: int, rounds: int
) -> None:
    setup = bench_http.Setup(mtls_port, ca)
    variants = {
        "direct": (httpx.Client(), f"http://127.0.0.1:{plain_port}/"),
        "pair": (httpx.Client(), f"http://127.0.0.1:{outbound_port}/"),
        "bare-mtls": (httpx.Client(verify=setup.verify), setup.bare_url),
        "meshlib": (httpx.Client(transport=MeshTransport(setup.runtime)), setup.mesh_url),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for client, url in variants.values():
        bench_http.sync_round(client, url, WARMUP)
    for _ in range(rounds * max(1, n // BATCH)):
        for name, (client, url) in variants.items():
            samples[name] += bench_http.sync_round(client, url, BATCH)
    for client, _ in variants.values():
        client.close()
    us = 1e6
    p50 = {name: bench_http.percentile(s, 0.5) * us for name, s in samples.items()}
    p99 = {name: bench_http.percentile(s, 0.99) * us for name, s in samples.items()}
    print(f"sync, 1 in flight, {len(samples['direct'])} requests per variant")
    for name in variants:
        print(f"  {name:10s} p50 {p50[name]:7.0f} us   p99 {p99[name]:7.0f} us")
    pair = p50["pair"] - p50["direct"]
    mesh = p50["meshlib"] - p50["bare-mtls"]
    end_to_end = p50["meshlib"] - p50["direct"]
    print(
        f"  nginx pair adds        p50 {pair:+7.0f} us   p99 {p99['pair'] - p99['direct']:+7.0f} us"
    )
    print(
        f"  meshlib adds           p50 {mesh:+7.0f} us   p99 "
        f"{p99['meshlib'] - p99['bare-mtls']:+7.0f} us   (over bare httpx with the same mTLS)"
    )
    print(f"  meshlib + mTLS adds    p50 {end_to_end:+7.0f} us   (over direct plaintext)")
    ratio = mesh / pair if pair > 0 else float("inf")
    verdict = "ok" if ratio <= TARGET_FRACTION else "over target"
    print(f"  meshlib / pair         {ratio:.2f} (target <= {TARGET_FRACTION:.2f}: {verdict})")


if __name__ == "__main__":
    main()
