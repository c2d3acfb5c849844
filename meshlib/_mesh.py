"""The Mesh facade: owns the configuration, the identity and the shared per-cluster state, and
builds the clients, servers and middleware that run the flows."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from meshlib._config.hosts import DEFAULT_TRUST_DOMAIN
from meshlib._config.issues import ConfigIssue
from meshlib._config.source import ConfigSource
from meshlib._config.watch import ConfigStatus
from meshlib._engine.snapshot import MeshSnapshot

__all__ = ["Mesh"]

ConfigPaths = str | Path | Iterable[str | Path]


def _paths(config: ConfigPaths) -> tuple[str | Path, ...]:
    if isinstance(config, str | Path):
        return (config,)
    return tuple(config)


def parse_labels(text: str) -> dict[str, str]:
    """``app=reviews,version=v1`` -> mapping; empty text -> no labels."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"label {item!r} is not of the form key=value")
        labels[key.strip()] = value.strip()
    return labels


class Mesh:
    """One workload's view of the mesh.

    Build it with :meth:`from_config` (files or folders of Istio YAML, hot-reloaded) or
    :meth:`from_env`. The Mesh is thread-safe and meant to live as long as the process.
    """

    def __init__(
        self,
        source: ConfigSource,
        *,
        workload: str,
        namespace: str,
        service_account: str,
        labels: Mapping[str, str],
        trust_domain: str,
        identity: Any = None,
    ) -> None:
        self._source = source
        self.workload = workload
        self.namespace = namespace
        self.service_account = service_account
        self.labels: Mapping[str, str] = dict(labels)
        self.trust_domain = trust_domain
        self.identity = identity
        self._closed = False

    @classmethod
    def from_config(
        cls,
        config: ConfigPaths,
        *,
        workload: str | None = None,
        namespace: str = "default",
        service_account: str = "default",
        labels: Mapping[str, str] | None = None,
        identity: Any = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        watch: bool = True,
    ) -> Mesh:
        """Load Istio YAML from files or folders; raises ``ConfigError`` listing every problem.

        With ``watch`` (the default) edits are picked up: a bad edit keeps the last good
        configuration and shows in :attr:`config_status`.
        """
        labels = dict(labels or {})
        workload = workload or labels.get("app", "") or service_account
        source = ConfigSource.from_paths(
            _paths(config),
            namespace=namespace,
            workload=workload,
            labels=labels,
            service_account=service_account,
            trust_domain=trust_domain,
            watch=watch,
        )
        return cls(
            source,
            workload=workload,
            namespace=namespace,
            service_account=service_account,
            labels=labels,
            trust_domain=trust_domain,
            identity=identity,
        )

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        workload: str | None = None,
        namespace: str = "default",
        service_account: str = "default",
        labels: Mapping[str, str] | None = None,
        identity: Any = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> Mesh:
        """Configuration held in a string (tests, examples); never reloaded."""
        labels = dict(labels or {})
        workload = workload or labels.get("app", "") or service_account
        source = ConfigSource.from_text(
            text,
            namespace=namespace,
            workload=workload,
            labels=labels,
            service_account=service_account,
            trust_domain=trust_domain,
        )
        return cls(
            source,
            workload=workload,
            namespace=namespace,
            service_account=service_account,
            labels=labels,
            trust_domain=trust_domain,
            identity=identity,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Mesh:
        """Build from ``MESHLIB_*`` variables.

        ``MESHLIB_CONFIG`` (paths joined with the OS path separator, required),
        ``MESHLIB_NAMESPACE`` (default ``default``), ``MESHLIB_WORKLOAD``,
        ``MESHLIB_SERVICE_ACCOUNT`` (default ``default``), ``MESHLIB_LABELS``
        (``app=reviews,version=v1``), ``MESHLIB_TRUST_DOMAIN``, ``MESHLIB_WATCH`` (``0`` to
        disable reloading). Keyword arguments override the environment.
        """
        env = os.environ if environ is None else environ
        config = env.get("MESHLIB_CONFIG", "")
        if not config and "config" not in overrides:
            raise ValueError("MESHLIB_CONFIG is not set: name the Istio YAML files or folders")
        settings: dict[str, Any] = {
            "config": [p for p in config.split(os.pathsep) if p],
            "namespace": env.get("MESHLIB_NAMESPACE", "default"),
            "workload": env.get("MESHLIB_WORKLOAD") or None,
            "service_account": env.get("MESHLIB_SERVICE_ACCOUNT", "default"),
            "labels": parse_labels(env.get("MESHLIB_LABELS", "")),
            "trust_domain": env.get("MESHLIB_TRUST_DOMAIN", DEFAULT_TRUST_DOMAIN),
            "watch": env.get("MESHLIB_WATCH", "1") not in {"0", "false", "no"},
        }
        settings.update(overrides)
        return cls.from_config(**settings)

    # --- configuration ---------------------------------------------------------------------

    @property
    def snapshot(self) -> MeshSnapshot:
        """The compiled configuration in use now (immutable; a reload swaps it whole)."""
        return self._source.snapshot

    @property
    def config_status(self) -> ConfigStatus:
        """Generation, reload counts and the last error, if the last reload failed."""
        return self._source.status

    @property
    def config_errors(self) -> tuple[ConfigIssue, ...]:
        """The problems of the last failed reload (empty when the last reload succeeded)."""
        return self._source.status.last_error

    def reload(self) -> bool:
        """Rebuild from the files now; returns whether the new configuration is in use."""
        return self._source.reload().ok

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop watching files and release connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._source.close()

    def __enter__(self) -> Mesh:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Mesh {self.namespace}/{self.workload} sa={self.service_account} "
            f"generation={self.snapshot.generation}>"
        )
