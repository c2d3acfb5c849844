"""Who runs in the demo mesh, and the ServiceEntries telling each workload where the others are."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CLIENT",
    "NAMESPACE",
    "SERVICE_PORT",
    "TRUST_DOMAIN",
    "UNTRUSTED",
    "WORKLOADS",
    "Workload",
    "service_entries",
]

NAMESPACE = "demo"
TRUST_DOMAIN = "cluster.local"
SERVICE_PORT = 9080
"""The port every service is addressed on (``http://reviews:9080``); endpoints listen elsewhere."""
SERVICES_FILE_HEADER = """\
# Where the demo's workloads listen. `meshlib demo` replaces this file, in its own temporary
# copy of this folder, with the ports its servers were given; the ports below are placeholders.
"""


@dataclass(frozen=True, slots=True)
class Workload:
    app: str
    version: str
    service_account: str

    @property
    def name(self) -> str:
        return f"{self.app}-{self.version}"

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.app, "version": self.version}

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{self.service_account}"


WORKLOADS: tuple[Workload, ...] = (
    Workload("productpage", "v1", "bookinfo-productpage"),
    Workload("reviews", "v1", "bookinfo-reviews"),
    Workload("reviews", "v2", "bookinfo-reviews"),
    Workload("reviews", "v3", "bookinfo-reviews"),
    Workload("ratings", "v1", "bookinfo-ratings"),
    Workload("details", "v1", "bookinfo-details"),
    Workload("httpbin", "v1", "httpbin"),
)
CLIENT = Workload("demo-client", "v1", "demo-client")
"""The demo's own caller, in the place of Istio's ingress gateway."""
UNTRUSTED = Workload("untrusted", "v1", "untrusted")
"""A caller with a valid mesh certificate whose service account a DENY policy names."""


def service_entries(ports: Mapping[str, int]) -> str:
    """One STATIC ServiceEntry per app, an endpoint per workload at ``127.0.0.1:ports[name]``."""
    apps: dict[str, list[Workload]] = {}
    for workload in WORKLOADS:
        apps.setdefault(workload.app, []).append(workload)
    documents = []
    for app, members in apps.items():
        endpoints = "".join(
            f"    - address: 127.0.0.1\n"
            f"      ports: {{http: {ports[w.name]}}}\n"
            f"      labels: {{app: {w.app}, version: {w.version}}}\n"
            f"      serviceAccount: {w.service_account}\n"
            for w in members
        )
        documents.append(
            "apiVersion: networking.istio.io/v1\n"
            "kind: ServiceEntry\n"
            f"metadata: {{name: {app}, namespace: {NAMESPACE}}}\n"
            "spec:\n"
            f"  hosts: [{app}]\n"
            "  location: MESH_INTERNAL\n"
            "  resolution: STATIC\n"
            f"  ports:\n    - {{number: {SERVICE_PORT}, name: http, protocol: HTTP}}\n"
            f"  endpoints:\n{endpoints}"
        )
    return SERVICES_FILE_HEADER + "---\n".join(documents)


def placeholder_ports() -> dict[str, int]:
    """The ports written in examples/demo/services.yaml (the demo never listens on them)."""
    return {w.name: SERVICE_PORT + 1 + i for i, w in enumerate(WORKLOADS)}
