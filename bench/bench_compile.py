"""Compile 1,000 generated Istio resources and print the time (target: under one second).

Not a test: run ``python bench/bench_compile.py`` (or ``nox -s bench``).
"""

from __future__ import annotations

import time

from meshlib._config.compile import compile_snapshot
from meshlib._config.loader import load_text

SERVICES = 250
"""Four resources per service: ServiceEntry, WorkloadEntry, DestinationRule, VirtualService."""


def generate(services: int = SERVICES) -> str:
    documents: list[str] = []
    for i in range(services):
        name = f"svc{i}"
        documents.append(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: {name}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}-v1, namespace: default}}
spec:
  address: 10.0.{i // 250}.{i % 250}
  ports: {{http: 8080}}
  labels: {{app: {name}, version: v1}}
  serviceAccount: {name}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {name}
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 100}}, http: {{http1MaxPendingRequests: 10}}}}
    outlierDetection: {{consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 1m}}
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
    - match: [{{headers: {{end-user: {{exact: jason}}}}, uri: {{prefix: /api}}}}]
      route: [{{destination: {{host: {name}, subset: v2}}}}]
      timeout: 2s
      retries: {{attempts: 3, perTryTimeout: 500ms, retryOn: "connect-failure,503"}}
    - route:
        - {{destination: {{host: {name}, subset: v1}}, weight: 90}}
        - {{destination: {{host: {name}, subset: v2}}, weight: 10}}
""")
    return "---\n".join(documents)


def main() -> None:
    text = generate()
    started = time.perf_counter()
    loaded = load_text(text, "bench.yaml", "default")
    loaded_at = time.perf_counter()
    snapshot, issues = compile_snapshot(loaded, namespace="default", labels={"app": "bench"})
    done = time.perf_counter()
    if loaded.errors or issues:
        raise SystemExit(f"unexpected issues: {[*loaded.errors, *issues]}")
    print(f"resources: {len(loaded.resources)}  hosts: {len(snapshot.hosts)}")
    print(f"load + validate: {loaded_at - started:.3f} s")
    print(f"compile:         {done - loaded_at:.3f} s  (target < 1 s for 1,000 resources)")


if __name__ == "__main__":
    main()
