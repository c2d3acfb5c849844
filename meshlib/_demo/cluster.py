"""Start the demo mesh: a CA, a config folder, one Mesh and one mTLS server per workload."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from meshlib._demo.services import DemoService
from meshlib._demo.topology import (
    CLIENT,
    NAMESPACE,
    TRUST_DOMAIN,
    UNTRUSTED,
    WORKLOADS,
    Workload,
    service_entries,
)
from meshlib.errors import MeshError

if TYPE_CHECKING:
    from meshlib._identity.serving import Server
    from meshlib._mesh import Mesh
    from meshlib.identity import LocalCA

__all__ = ["SERVICES_FILE", "DemoCluster", "find_examples", "has_inbound_middleware"]

SERVICES_FILE = "services.yaml"
PACKAGED_EXAMPLES = Path(__file__).resolve().parent / "examples"
"""Where a wheel carries examples/demo (see the report for the build setting)."""
SOURCE_EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"


def find_examples() -> Path:
    # A non-editable install from a checkout (``nox -s demo``) finds them in the working folder.
    for candidate in (SOURCE_EXAMPLES, PACKAGED_EXAMPLES, Path("examples") / "demo"):
        if (candidate / "routing.yaml").is_file():
            return candidate
    raise MeshError(
        "the demo's Istio YAML (examples/demo) was not found: run from a source checkout "
        "or pass --config DIR"
    )


def has_inbound_middleware(mesh: Mesh) -> bool:
    """Whether this build has ``mesh.asgi`` (authorization, inbound PeerAuthentication)."""
    return callable(getattr(mesh, "asgi", None))


def load_or_create_ca(directory: Path) -> LocalCA:
    from meshlib._identity.ca import CA_KEY_FILE
    from meshlib.identity import LocalCA

    if (directory / CA_KEY_FILE).exists():
        return LocalCA.load(directory)
    return LocalCA.create(directory, TRUST_DOMAIN)


def _each(action: Callable[[Server], object], servers: list[Server]) -> None:
    """``action`` on every server in parallel; the first error is raised after all finished."""
    if not servers:
        return
    with ThreadPoolExecutor(len(servers), thread_name_prefix="demo-servers") as pool:
        futures = [pool.submit(action, server) for server in servers]
    for future in futures:
        future.result()


@dataclass
class DemoCluster:
    """Everything the demo started; ``close()`` stops every server and mesh it made."""

    workdir: Path
    examples: Path
    ca_dir: Path | None = None
    seed: int | None = None
    ca: LocalCA | None = None
    config_dir: Path = field(init=False)
    meshes: dict[str, Mesh] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    services: dict[str, DemoService] = field(default_factory=dict)
    inbound_middleware: bool = False

    def __post_init__(self) -> None:
        self.config_dir = self.workdir / "config"

    def start(self) -> DemoCluster:
        self.ca = load_or_create_ca(self.ca_dir or self.workdir / "ca")
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for source in sorted(self.examples.glob("*.yaml")):
            shutil.copyfile(source, self.config_dir / source.name)
        try:
            for index, workload in enumerate((*WORKLOADS, CLIENT, UNTRUSTED)):
                self.meshes[workload.name] = self._mesh(workload, index)
            for workload in WORKLOADS:
                self._serve(workload)
            # uvicorn takes a while to come up: start them all at once.
            _each(lambda server: server.start(), list(self.servers.values()))
            # The servers have their ports now: tell every workload where the others listen,
            # through the same reload a file watcher would trigger.
            ports = {name: server.port for name, server in self.servers.items()}
            (self.config_dir / SERVICES_FILE).write_text(service_entries(ports))
            for name, mesh in self.meshes.items():
                if not mesh.reload():
                    raise MeshError(f"{name}: the generated configuration did not load")
        except BaseException:
            self.close()
            raise
        return self

    def _mesh(self, workload: Workload, index: int) -> Mesh:
        from meshlib._mesh import Mesh

        mesh = Mesh.from_config(
            self.config_dir,
            workload=workload.name,
            namespace=NAMESPACE,
            service_account=workload.service_account,
            labels=workload.labels,
            identity=self.ca,
            trust_domain=TRUST_DOMAIN,
            watch=False,
        )
        if self.seed is not None:
            # Weighted routes and fault percentages draw from the caller's runtime.
            mesh.runtime.rng = random.Random(self.seed * 1000 + index)
        return mesh

    def _serve(self, workload: Workload) -> None:
        mesh = self.meshes[workload.name]
        service = DemoService(workload, mesh)
        app: Any = service
        if has_inbound_middleware(mesh):
            # mesh.server may apply it itself; wrapping twice is detected and harmless.
            app = mesh.asgi(app)
            self.inbound_middleware = True
        self.services[workload.name] = service
        self.servers[workload.name] = mesh.server(app, host="127.0.0.1", port=0)

    def mesh(self, workload: Workload) -> Mesh:
        return self.meshes[workload.name]

    def port(self, workload: Workload) -> int:
        return self.servers[workload.name].port

    def close(self) -> None:
        servers, self.servers = self.servers, {}
        meshes, self.meshes = self.meshes, {}
        _each(lambda server: server.stop(), list(servers.values()))
        for mesh in meshes.values():
            mesh.close()

    def __enter__(self) -> DemoCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
