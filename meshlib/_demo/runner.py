"""Run the demo: start the mesh, drive the scenarios, measure the overhead, stop everything."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlib._demo.cluster import DemoCluster, find_examples
from meshlib._demo.scenarios import SCENARIOS, DemoContext, ScenarioResult
from meshlib._demo.topology import CLIENT, SERVICE_PORT, WORKLOADS
from meshlib.errors import MeshError

__all__ = ["DEFAULT_REQUESTS", "DEFAULT_SEED", "DemoOptions", "DemoResult", "Overhead", "run_demo"]

DEFAULT_REQUESTS = 500
DEFAULT_SEED = 7
CLIENT_TIMEOUT_SECONDS = 10.0
"""No demo request may hang: the slowest legitimate one (the 1 s delay fault) is far below."""
OVERHEAD_SAMPLES = 200
OVERHEAD_WARMUP = 20


@dataclass(frozen=True, slots=True)
class DemoOptions:
    requests: int = DEFAULT_REQUESTS
    seed: int = DEFAULT_SEED
    scenarios: tuple[str, ...] = ()
    """Names to run, in the demo's order; empty: all."""
    ca_dir: Path | None = None
    config_dir: Path | None = None
    """A folder of Istio YAML in place of examples/demo (same names and hosts)."""
    overhead_samples: int = OVERHEAD_SAMPLES


@dataclass(frozen=True, slots=True)
class Overhead:
    """Sync GET /ping on productpage over mTLS: mesh client vs bare httpx with the same SVID."""

    samples: int
    mesh_p50_us: float
    bare_p50_us: float

    @property
    def added_p50_us(self) -> float:
        return self.mesh_p50_us - self.bare_p50_us

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "mesh_p50_us": round(self.mesh_p50_us, 1),
            "bare_p50_us": round(self.bare_p50_us, 1),
            "added_p50_us": round(self.added_p50_us, 1),
        }


@dataclass(frozen=True, slots=True)
class DemoResult:
    options: DemoOptions
    scenarios: tuple[ScenarioResult, ...]
    overhead: Overhead | None
    inbound_middleware: bool
    seconds: float
    workloads: dict[str, int] = field(default_factory=dict)
    """Workload name -> the port it listened on."""

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.scenarios)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seed": self.options.seed,
            "requests": self.options.requests,
            "inbound_middleware": self.inbound_middleware,
            "seconds": round(self.seconds, 2),
            "workloads": self.workloads,
            "scenarios": [s.to_json() for s in self.scenarios],
            "overhead": self.overhead.to_json() if self.overhead is not None else None,
        }


def selected(names: Sequence[str]) -> tuple[str, ...]:
    known = [s.name for s in SCENARIOS]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown scenario {', '.join(unknown)}: choose from {', '.join(known)}")
    return tuple(n for n in known if not names or n in names)


def run_demo(options: DemoOptions, *, progress: Callable[[str], None] | None = None) -> DemoResult:
    """Start the mesh, run the chosen scenarios and stop everything, even on errors."""
    names = selected(options.scenarios)
    say = progress or (lambda _: None)
    started = time.perf_counter()
    examples = options.config_dir or find_examples()
    if not any(examples.glob("*.yaml")):
        raise MeshError(f"{examples}: no Istio YAML (*.yaml) to run the demo with")
    with tempfile.TemporaryDirectory(prefix="meshlib-demo-") as tmp:
        say("starting 7 workloads, each with its own SVID, on 127.0.0.1")
        with DemoCluster(Path(tmp), examples, ca_dir=options.ca_dir, seed=options.seed) as cluster:
            ports = {name: server.port for name, server in cluster.servers.items()}
            with cluster.mesh(CLIENT).http_client(timeout=CLIENT_TIMEOUT_SECONDS) as client:
                ctx = DemoContext(cluster, client, options.requests, options.seed)
                results = []
                for scenario in SCENARIOS:
                    if scenario.name in names:
                        say(f"scenario {scenario.name}: {scenario.help}")
                        results.append(scenario.run(ctx))
                overhead = None
                if options.overhead_samples > 0:
                    say("measuring the mesh's per-request overhead")
                    overhead = measure_overhead(cluster, client, options.overhead_samples)
            inbound = cluster.inbound_middleware
    return DemoResult(
        options=options,
        scenarios=tuple(results),
        overhead=overhead,
        inbound_middleware=inbound,
        seconds=time.perf_counter() - started,
        workloads=ports,
    )


def measure_overhead(cluster: DemoCluster, client: Any, samples: int) -> Overhead:
    """Interleaved sequential requests, so both clients see the same server and machine state."""
    import httpx

    identity = cluster.mesh(CLIENT).identity
    assert identity is not None
    port = cluster.port(WORKLOADS[0])
    mesh_url = f"http://productpage:{SERVICE_PORT}/ping"
    bare_url = f"https://127.0.0.1:{port}/ping"
    mesh_times: list[float] = []
    bare_times: list[float] = []
    context = identity.current_client_context()
    with httpx.Client(verify=context, timeout=CLIENT_TIMEOUT_SECONDS) as bare:
        for index in range(OVERHEAD_WARMUP + samples):
            for url, http, times in ((mesh_url, client, mesh_times), (bare_url, bare, bare_times)):
                begin = time.perf_counter()
                http.get(url).raise_for_status()
                if index >= OVERHEAD_WARMUP:
                    times.append(time.perf_counter() - begin)
    return Overhead(
        samples=samples,
        mesh_p50_us=statistics.median(mesh_times) * 1e6,
        bare_p50_us=statistics.median(bare_times) * 1e6,
    )
