"""The current configuration of a Mesh: built from files or text, optionally hot-reloaded."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from meshlib._config.compile import compile_snapshot
from meshlib._config.hosts import DEFAULT_TRUST_DOMAIN, ROOT_NAMESPACE
from meshlib._config.loader import LoadResult, load_paths, load_text
from meshlib._config.watch import (
    DEFAULT_DEBOUNCE,
    BuildFn,
    BuildResult,
    ConfigStatus,
    ConfigWatcher,
)
from meshlib._engine.snapshot import MeshSnapshot
from meshlib._policy.paths import DEFAULT_PATH_NORMALIZATION, PathNormalization
from meshlib.errors import ConfigError

if TYPE_CHECKING:
    from meshlib._policy.authz import AuthzRequest

__all__ = ["ConfigSource", "MeshSettings", "build_function"]


@dataclass(frozen=True, slots=True)
class MeshSettings:
    """The mesh-wide settings Istio keeps in MeshConfig; every default is Istio's."""

    root_namespace: str = ROOT_NAMESPACE
    path_normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION
    custom_providers: Mapping[str, Callable[[AuthzRequest], bool]] = field(default_factory=dict)
    case_insensitive_paths: bool = False


DEFAULT_MESH_SETTINGS = MeshSettings()


def build_function(
    load: Callable[[], LoadResult],
    *,
    namespace: str,
    workload: str = "",
    labels: Mapping[str, str] | None = None,
    service_account: str = "default",
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    settings: MeshSettings = DEFAULT_MESH_SETTINGS,
) -> BuildFn:
    """A build step (load, then compile) for ConfigWatcher, for one workload identity."""

    def build(generation: int) -> BuildResult:
        loaded = load()
        snapshot, issues = compile_snapshot(
            loaded,
            namespace=namespace,
            workload=workload,
            labels=labels,
            service_account=service_account,
            trust_domain=trust_domain,
            generation=generation,
            root_namespace=settings.root_namespace,
            path_normalization=settings.path_normalization,
            custom_providers=settings.custom_providers,
            case_insensitive_paths=settings.case_insensitive_paths,
        )
        return BuildResult(snapshot, (*loaded.issues, *issues), loaded.skipped)

    return build


class ConfigSource:
    """Holds the snapshot in use; ``snapshot`` is one attribute read, safe from any thread."""

    def __init__(
        self,
        build: BuildFn,
        paths: Iterable[str | Path] = (),
        *,
        watch: bool = False,
        debounce: float = DEFAULT_DEBOUNCE,
    ) -> None:
        self._snapshot: MeshSnapshot | None = None
        self._watcher = ConfigWatcher(paths, build, self._swap, debounce)
        result = self._watcher.reload()
        if not result.ok:
            raise ConfigError(result.errors or result.issues)
        if watch:
            self._watcher.start()

    @classmethod
    def from_paths(
        cls,
        paths: Iterable[str | Path],
        *,
        namespace: str,
        workload: str = "",
        labels: Mapping[str, str] | None = None,
        service_account: str = "default",
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        watch: bool = False,
        debounce: float = DEFAULT_DEBOUNCE,
        root_namespace: str = ROOT_NAMESPACE,
        path_normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION,
        custom_providers: Mapping[str, Callable[[AuthzRequest], bool]] | None = None,
        case_insensitive_paths: bool = False,
    ) -> ConfigSource:
        """Load files and folders of Istio YAML; raises ConfigError if the first build fails."""
        paths = tuple(paths)
        build = build_function(
            lambda: load_paths(paths, namespace, cooperative=True),
            namespace=namespace,
            workload=workload,
            labels=labels,
            service_account=service_account,
            trust_domain=trust_domain,
            settings=MeshSettings(
                root_namespace,
                path_normalization,
                dict(custom_providers or {}),
                case_insensitive_paths,
            ),
        )
        return cls(build, paths, watch=watch, debounce=debounce)

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        namespace: str,
        workload: str = "",
        labels: Mapping[str, str] | None = None,
        service_account: str = "default",
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        name: str = "<config>",
        root_namespace: str = ROOT_NAMESPACE,
        path_normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION,
        custom_providers: Mapping[str, Callable[[AuthzRequest], bool]] | None = None,
        case_insensitive_paths: bool = False,
    ) -> ConfigSource:
        """In-memory configuration (tests, ``meshlib.testing``); never watched."""
        build = build_function(
            lambda: load_text(text, name, namespace),
            namespace=namespace,
            workload=workload,
            labels=labels,
            service_account=service_account,
            trust_domain=trust_domain,
            settings=MeshSettings(
                root_namespace,
                path_normalization,
                dict(custom_providers or {}),
                case_insensitive_paths,
            ),
        )
        return cls(build)

    def _swap(self, snapshot: MeshSnapshot) -> None:
        self._snapshot = snapshot  # one reference: readers see the old or the new, whole

    @property
    def snapshot(self) -> MeshSnapshot:
        snapshot = self._snapshot
        assert snapshot is not None  # the constructor raised otherwise
        return snapshot

    @property
    def status(self) -> ConfigStatus:
        return self._watcher.status

    def reload(self) -> BuildResult:
        """Rebuild now; on error the current snapshot stays and ``status`` reports why."""
        return self._watcher.reload()

    def close(self) -> None:
        self._watcher.stop()

    def __enter__(self) -> ConfigSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
