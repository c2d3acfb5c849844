"""The demo's report and scenario bookkeeping, without servers."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("rich")

from rich.console import Console

from meshlib._demo.report import render, render_json, summary_line
from meshlib._demo.runner import DemoOptions, DemoResult, Overhead, selected
from meshlib._demo.scenarios import ScenarioResult
from meshlib._demo.topology import CLIENT, WORKLOADS, service_entries

pytestmark = pytest.mark.extras


def result(*statuses: str, overhead: Overhead | None = None) -> DemoResult:
    scenarios = tuple(
        ScenarioResult(
            name=f"s{i}",
            title=f"Scenario [{i}]",
            status=status,  # type: ignore[arg-type]
            lines=(f"line {i}",),
            data={"i": i},
            failures=("it broke [badly]",) if status == "failed" else (),
        )
        for i, status in enumerate(statuses)
    )
    return DemoResult(DemoOptions(), scenarios, overhead, False, 1.25, {"a": 1})


def text_of(demo: DemoResult) -> str:
    console = Console(record=True, width=120)
    render(demo, console)
    return console.export_text()


def test_failed_scenario_is_shown_with_its_problem() -> None:
    demo = result("passed", "failed", "skipped")
    assert not demo.ok
    text = text_of(demo)
    assert "✘ FAILED" in text
    assert "it broke [badly]" in text  # markup in messages is escaped, not interpreted
    assert "Scenario [1]" in text
    assert "– skipped" in text
    assert "THE MESH MISBEHAVED" in text
    assert "1 passed, 1 failed, 1 skipped" in summary_line(demo)
    assert "overhead" not in text


def test_json_and_overhead() -> None:
    demo = result("passed", "skipped", overhead=Overhead(10, 120.0, 100.0))
    assert demo.ok
    report = json.loads(render_json(demo))
    assert report["ok"] is True
    assert report["overhead"] == {
        "samples": 10,
        "mesh_p50_us": 120.0,
        "bare_p50_us": 100.0,
        "added_p50_us": 20.0,
    }
    assert [s["status"] for s in report["scenarios"]] == ["passed", "skipped"]
    assert "+20 µs" in text_of(demo)
    assert "nothing run" in summary_line(result())


def test_scenario_selection_keeps_the_demo_order() -> None:
    assert selected(()) == selected(
        ["authz", "shifting", "mtls", "routing", "faults", "retries", "circuit-breaking"]
    )
    assert selected(["mtls", "shifting"]) == ("shifting", "mtls")
    with pytest.raises(ValueError, match="unknown scenario x"):
        selected(["x", "mtls"])


def test_service_entries_name_every_workload() -> None:
    ports = {w.name: 40000 + i for i, w in enumerate(WORKLOADS)}
    text = service_entries(ports)
    for workload in WORKLOADS:
        assert f"ports: {{http: {ports[workload.name]}}}" in text
        assert f"serviceAccount: {workload.service_account}" in text
    assert text.count("kind: ServiceEntry") == len({w.app for w in WORKLOADS})
    assert CLIENT.spiffe_id == "spiffe://cluster.local/ns/demo/sa/demo-client"
