"""Hot reload: rebuild the whole snapshot on file changes, then swap one reference.

A reader holds whichever snapshot it read; it can never observe half of two configurations
because the only shared mutable thing is the single reference that ``on_swap`` receives.
A build with any error keeps the last good snapshot, is logged and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from meshlib._config.issues import ConfigIssue, Severity
from meshlib._engine.snapshot import MeshSnapshot

logger = logging.getLogger("meshlib.config")

DEFAULT_DEBOUNCE = 0.2
STOP_JOIN_TIMEOUT = 1.0
_WATCH_STEP_MS = 50
"""How often the watch thread checks its stop event: bounds ``stop()``."""
CONFIG_SUFFIXES = frozenset({".yaml", ".yml", ".json"})


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What one build of the configuration produced."""

    snapshot: MeshSnapshot | None
    """``None`` when the build failed before a snapshot existed."""
    issues: tuple[ConfigIssue, ...] = ()
    skipped: Mapping[str, int] = field(default_factory=dict)
    """Kinds meshlib does not handle, with how many documents of each were skipped."""

    @property
    def errors(self) -> tuple[ConfigIssue, ...]:
        return tuple(issue for issue in self.issues if issue.severity is Severity.ERROR)

    @property
    def ok(self) -> bool:
        return self.snapshot is not None and not self.errors


BuildFn = Callable[[int], BuildResult]
"""Builds generation ``n`` from the current files (load + compile)."""


@dataclass(frozen=True, slots=True)
class ConfigStatus:
    generation: int = 0
    """Generation of the snapshot in use (0: none yet)."""
    last_ok_at: float | None = None
    """Wall-clock time of the last successful build."""
    last_error: tuple[ConfigIssue, ...] = ()
    """Errors of the last failed build; empty after a successful one."""
    reloads: int = 0
    """Successful builds, the first one included."""
    errors: int = 0
    """Failed builds."""
    skipped: Mapping[str, int] = field(default_factory=dict)
    warnings: tuple[ConfigIssue, ...] = ()
    """Warnings of the snapshot in use."""


class ConfigWatcher:
    """Rebuilds on file changes (watchfiles, one daemon thread) and on ``reload()``."""

    def __init__(
        self,
        paths: Iterable[str | Path],
        compile_fn: BuildFn,
        on_swap: Callable[[MeshSnapshot], None],
        debounce: float = DEFAULT_DEBOUNCE,
        *,
        generation: int = 0,
    ) -> None:
        self._paths = tuple(Path(path) for path in paths)
        self._compile = compile_fn
        self._on_swap = on_swap
        self._debounce = debounce
        self._lock = threading.Lock()
        """Serialises builds: a file event and an explicit reload never interleave."""
        self._next_generation = generation + 1
        self._status = ConfigStatus(generation=generation)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def status(self) -> ConfigStatus:
        return self._status

    def reload(self) -> BuildResult:
        """Build now, synchronously; swap only if the build has no error."""
        with self._lock:
            generation = self._next_generation
            try:
                result = self._compile(generation)
            except Exception as error:  # a bug in a build step must not kill the watcher
                logger.exception("configuration build failed")
                result = BuildResult(
                    None,
                    (
                        ConfigIssue(
                            Severity.ERROR, f"build failed: {error!r}", code="meshlib.build"
                        ),
                    ),
                )
            old = self._status
            if not result.ok or result.snapshot is None:
                errors = result.errors or result.issues
                for issue in errors:
                    logger.error(
                        "configuration rejected, keeping generation %d: %s", old.generation, issue
                    )
                self._status = ConfigStatus(
                    generation=old.generation,
                    last_ok_at=old.last_ok_at,
                    last_error=tuple(errors),
                    reloads=old.reloads,
                    errors=old.errors + 1,
                    skipped=result.skipped or old.skipped,
                    warnings=old.warnings,
                )
                return result
            self._next_generation += 1
            warnings = tuple(i for i in result.issues if i.severity is Severity.WARNING)
            for issue in warnings:
                logger.warning("%s", issue)
            self._on_swap(result.snapshot)
            self._status = ConfigStatus(
                generation=result.snapshot.generation,
                last_ok_at=time.time(),
                last_error=(),
                reloads=old.reloads + 1,
                errors=old.errors,
                skipped=MappingProxyType(dict(result.skipped)),
                warnings=warnings,
            )
            logger.info("configuration generation %d in use", result.snapshot.generation)
            return result

    def start(self) -> None:
        """Watch the paths in a daemon thread; idempotent."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="meshlib-config-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; returns within about a second."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(STOP_JOIN_TIMEOUT)

    def __enter__(self) -> ConfigWatcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _roots(self) -> list[Path]:
        # Watch directories, not files: editors replace a file by renaming over it, which
        # would silently end a watch on the file itself.
        roots = {path if path.is_dir() else path.parent for path in self._paths}
        return sorted(root for root in roots if root.exists())

    def _relevant(self, changed: str) -> bool:
        path = Path(changed)
        for configured in self._paths:
            if path == configured:
                return True
            if (
                configured.is_dir()
                and path.suffix in CONFIG_SUFFIXES
                and path.is_relative_to(configured)
            ):
                return True
        return False

    def _run(self) -> None:
        import watchfiles

        roots = self._roots()
        if not roots:
            logger.error("no configuration path exists to watch: %s", self._paths)
            return
        try:
            for changes in watchfiles.watch(
                *roots,
                debounce=max(1, int(self._debounce * 1000)),
                step=_WATCH_STEP_MS,
                stop_event=self._stop,
                raise_interrupt=False,
            ):
                if any(self._relevant(path) for _, path in changes):
                    self.reload()
        except Exception:  # pragma: no cover - watchfiles backend failure; keep serving
            logger.exception("configuration watcher stopped")


def errors_of(issues: Sequence[ConfigIssue]) -> tuple[ConfigIssue, ...]:
    return tuple(issue for issue in issues if issue.severity is Severity.ERROR)
