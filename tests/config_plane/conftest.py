"""Helpers: load Istio YAML from text and compile it as a given workload."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from meshlib._config.compile import compile_snapshot
from meshlib._config.issues import ConfigIssue
from meshlib._config.loader import LoadResult, load_text
from meshlib._engine.snapshot import MeshSnapshot

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(text: str, namespace: str = "default") -> LoadResult:
    # Validation is another layer's job; compile must cope with whatever parses.
    result = load_text(text, "test.yaml", namespace, validate=False)
    assert not result.errors, [str(i) for i in result.errors]
    return result


def compiled(
    text: str,
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    generation: int = 1,
) -> tuple[MeshSnapshot, list[ConfigIssue]]:
    return compile_snapshot(
        load(text, namespace),
        namespace=namespace,
        labels=labels,
        generation=generation,
        workload="test",
        service_account="test",
    )


def snap(
    text: str, namespace: str = "default", labels: Mapping[str, str] | None = None
) -> MeshSnapshot:
    snapshot, issues = compiled(text, namespace, labels)
    assert issues == [], [str(i) for i in issues]
    return snapshot
