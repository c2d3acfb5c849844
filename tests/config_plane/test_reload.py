"""Hot reload: whole snapshots swapped by one reference; bad edits keep the last good one."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from meshlib._config.issues import ConfigIssue, Severity
from meshlib._config.source import ConfigSource
from meshlib._config.watch import BuildResult, ConfigWatcher
from meshlib._engine.snapshot import MeshIdentity, MeshSnapshot
from meshlib.errors import ConfigError

READERS = 4
MAX_READS = 200_000
ROUNDS = 5


def config(version: int) -> str:
    # Route table and DestinationRule name the same subset: a reader that saw the route of one
    # generation and the policy of another would find the subset missing.
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
    - route: [{{destination: {{host: reviews, subset: s{version}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  subsets: [{{name: s{version}, labels: {{version: v{version}}}}}]
"""


BAD = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec: {hosts: 7}
"""


def source_for(path: Path, **kwargs: object) -> ConfigSource:
    return ConfigSource.from_paths([path], namespace="default", workload="pp", **kwargs)  # type: ignore[arg-type]


def test_good_bad_good_with_concurrent_readers(tmp_path: Path) -> None:
    file = tmp_path / "mesh.yaml"
    file.write_text(config(0))
    source = source_for(file)
    stop = threading.Event()
    failures: list[str] = []
    seen: set[int] = set()

    def reader() -> None:
        for _ in range(MAX_READS):
            if stop.is_set():
                return
            snapshot = source.snapshot
            host = snapshot.lookup_host("reviews")
            if host is None or host.routes is None or host.destination is None:
                failures.append(f"generation {snapshot.generation}: host incomplete")
                return
            subset = host.routes.routes[0].destinations[0].subset
            if host.generation != snapshot.generation or subset not in host.destination.subsets:
                failures.append(f"generation {snapshot.generation}: mixed configuration")
                return
            seen.add(snapshot.generation)

    threads = [threading.Thread(target=reader) for _ in range(READERS)]
    for thread in threads:
        thread.start()
    try:
        for version in range(1, ROUNDS + 1):
            file.write_text(config(version))
            assert source.reload().ok
            good = source.snapshot
            file.write_text(BAD)
            result = source.reload()
            assert not result.ok
            assert source.snapshot is good  # the bad edit changed nothing
            assert source.status.last_error
            assert source.status.generation == good.generation
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert seen  # the readers did read
    status = source.status
    assert status.reloads == ROUNDS + 1
    assert status.errors == ROUNDS
    file.write_text(config(99))
    assert source.reload().ok
    assert source.status.last_error == ()
    assert source.snapshot.lookup_host("reviews").destination.subsets.keys() == {"s99"}  # type: ignore[union-attr]
    source.close()


def test_bad_edit_is_logged_precisely(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    file = tmp_path / "mesh.yaml"
    file.write_text(config(1))
    with source_for(file) as source:
        file.write_text(BAD)
        with caplog.at_level(logging.ERROR, logger="meshlib.config"):
            source.reload()
    (record,) = caplog.records
    assert record.name == "meshlib.config"
    assert "keeping generation 1" in record.getMessage()
    assert "mesh.yaml (document 0)" in record.getMessage()
    assert "spec.hosts" in record.getMessage()
    assert source.status.last_error[0].field == "spec.hosts"


def test_first_build_must_succeed(tmp_path: Path) -> None:
    file = tmp_path / "mesh.yaml"
    file.write_text(BAD)
    with pytest.raises(ConfigError) as raised:
        source_for(file)
    assert raised.value.issues[0].file == str(file)


def test_from_text_and_skipped_kinds() -> None:
    text = config(3) + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
    source = ConfigSource.from_text(text, namespace="default", labels={"app": "pp"})
    assert source.snapshot.generation == 1
    assert source.snapshot.identity.labels == {"app": "pp"}
    assert source.status.skipped == {"Deployment": 1}
    assert source.status.last_ok_at is not None


def identity() -> MeshIdentity:
    return MeshIdentity(namespace="default")


def test_watcher_survives_a_crashing_build(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    swapped: list[MeshSnapshot] = []

    def build(generation: int) -> BuildResult:
        calls.append(generation)
        if len(calls) == 2:
            raise RuntimeError("boom")
        if len(calls) == 3:
            return BuildResult(None, (ConfigIssue(Severity.ERROR, "nope"),), {"Service": 2})
        warning = ConfigIssue(Severity.WARNING, "careful")
        return BuildResult(MeshSnapshot.build(generation, identity(), []), (warning,))

    watcher = ConfigWatcher([], build, swapped.append)
    assert watcher.reload().ok
    assert watcher.status.warnings[0].message == "careful"
    with caplog.at_level(logging.ERROR, logger="meshlib.config"):
        assert not watcher.reload().ok
    assert "boom" in watcher.status.last_error[0].message
    assert not watcher.reload().ok
    assert watcher.status.skipped == {"Service": 2}
    assert watcher.status.errors == 2
    assert watcher.reload().ok
    # Generations number successful snapshots only: no gap after failed builds.
    assert [s.generation for s in swapped] == [1, 2]
    assert calls == [1, 2, 2, 2]


def test_watcher_without_existing_paths_stops_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = ConfigWatcher(
        [tmp_path / "missing" / "mesh.yaml"], lambda g: BuildResult(None), lambda s: None
    )
    with caplog.at_level(logging.ERROR, logger="meshlib.config"):
        watcher.start()
        watcher.start()  # idempotent
        watcher.stop()
    assert any("no configuration path exists" in r.getMessage() for r in caplog.records)


def test_relevant_changes(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    single = tmp_path / "one.yaml"
    watcher = ConfigWatcher([folder, single], lambda g: BuildResult(None), lambda s: None)
    assert watcher._relevant(str(folder / "a.yaml"))
    assert watcher._relevant(str(folder / "deep" / "b.yml"))
    assert not watcher._relevant(str(folder / "notes.txt"))
    assert watcher._relevant(str(single))
    assert not watcher._relevant(str(tmp_path / "other.yaml"))
    assert watcher._roots() == sorted([folder, tmp_path])


WAIT_STEPS = 400
WAIT_STEP = 0.05


def test_file_events_trigger_a_reload(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    file = folder / "mesh.yaml"
    file.write_text(config(1))
    source = source_for(folder, watch=True, debounce=0.05)
    try:
        for attempt in range(WAIT_STEPS):  # bounded poll, no timing assertion
            if attempt % 40 == 0:
                file.write_text(
                    config(100 + attempt)
                )  # rewrite in case the watch was not ready yet
            if source.status.generation > 1:
                break
            time.sleep(WAIT_STEP)
        assert source.status.generation > 1
        subsets = source.snapshot.lookup_host("reviews").destination.subsets  # type: ignore[union-attr]
        assert next(iter(subsets)).startswith("s1")
    finally:
        source.close()
    assert source._watcher._thread is None


def test_watcher_context_manager_ignores_unrelated_files(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    builds: list[int] = []

    def build(generation: int) -> BuildResult:
        builds.append(generation)
        return BuildResult(MeshSnapshot.build(generation, identity(), []))

    with ConfigWatcher([folder], build, lambda s: None, debounce=0.05) as watcher:
        for attempt in range(WAIT_STEPS):  # bounded poll; rewrite in case the watch was late
            if attempt % 40 == 0:
                (folder / "notes.txt").write_text(f"not configuration {attempt}")
                (folder / "mesh.yaml").write_text(f"# configuration {attempt}")
            if builds:
                break
            time.sleep(WAIT_STEP)
    assert builds
    assert watcher._thread is None
