"""`meshlib demo` end to end: real mTLS servers on 127.0.0.1, checked through its JSON results."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("typer")
pytest.importorskip("rich")
pytest.importorskip("uvicorn")

from typer.testing import CliRunner

from meshlib._cli import build_app
from meshlib._demo.topology import placeholder_ports, service_entries

pytestmark = pytest.mark.extras

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"
SUBPROCESS_TIMEOUT_SECONDS = 120
ALL = ["shifting", "routing", "faults", "retries", "circuit-breaking", "mtls", "authz"]


def invoke(*args: str) -> Any:
    return CliRunner().invoke(build_app(), ["demo", *args])


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in report["scenarios"]}


def check_report(report: dict[str, Any], requests: int) -> None:
    """What a correct mesh must produce; ranges only, never exact counts."""
    assert report["ok"] is True
    scenarios = by_name(report)
    assert list(scenarios) == ALL
    for name, scenario in scenarios.items():
        expected = {"passed", "skipped"} if name == "authz" else {"passed"}
        assert scenario["status"] in expected, (name, scenario["failures"])
        assert scenario["failures"] == []
    counts = scenarios["shifting"]["data"]["counts"]
    assert counts["v1"] + counts["v3"] == requests
    assert counts["v2"] == 0
    assert 0.02 <= counts["v3"] / requests <= 0.20  # weight 10, Binomial(200, .1) sd 2.1 %
    assert scenarios["routing"]["data"]["jason"] == {"v2": 10}
    assert "v2" not in scenarios["routing"]["data"]["Jason"]
    faults = scenarios["faults"]["data"]
    assert (faults["abort"]["status"], faults["abort"]["flags"]) == (500, ["FI"])
    assert faults["abort"]["message"] == "Ratings service is currently unavailable"
    assert (faults["delay"]["status"], faults["delay"]["flags"]) == (504, ["UT"])
    retries = scenarios["retries"]["data"]
    assert set(retries["statuses"]) == {200}
    assert set(retries["attempts"]) == {2}
    assert set(retries["upstream_calls"]) == {2}
    breaker = scenarios["circuit-breaking"]["data"]
    assert set(breaker["statuses"]) <= {"200", "503"}
    assert breaker["statuses"]["503"] >= 1
    assert breaker["statuses"]["200"] >= 1
    assert breaker["overflow_flags"] == ["UO"]
    mtls = scenarios["mtls"]["data"]
    assert all(v.startswith("refused") for v in mtls["bare_clients"].values())
    peers = mtls["peers"]
    assert peers["demo-client -> productpage"] == "spiffe://cluster.local/ns/demo/sa/demo-client"
    assert peers["productpage -> reviews"] == (
        "spiffe://cluster.local/ns/demo/sa/bookinfo-productpage"
    )
    if scenarios["authz"]["status"] == "passed":
        assert report["inbound_middleware"] is True
        probes = scenarios["authz"]["data"]["probes"]
        assert [p["status"] for p in probes.values()] == [403, 403, 200]
    overhead = report["overhead"]
    assert overhead["samples"] > 0
    assert overhead["mesh_p50_us"] > 0
    assert overhead["bare_p50_us"] > 0
    assert len(report["workloads"]) == 7
    assert all(port > 0 for port in report["workloads"].values())


def test_full_demo_in_process() -> None:
    result = invoke("--output", "json", "--requests", "200", "--seed", "3", "--samples", "100")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    check_report(report, 200)
    assert report["overhead"]["samples"] == 100


def test_demo_as_a_subprocess() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshlib",
            "demo",
            "-o",
            "json",
            "--requests",
            "200",
            "--samples",
            "50",
        ],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report["seed"] == 7
    check_report(report, 200)


def test_text_report_for_chosen_scenarios(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    result = invoke("-s", "retries", "-s", "mtls", "--ca", str(ca), "--samples", "10")
    assert result.exit_code == 0, result.output
    assert "Retries: a flaky upstream" in result.stdout
    assert "spiffe://cluster.local/ns/demo/sa/bookinfo-productpage" in result.stdout
    assert "Traffic shifting" not in result.stdout
    assert "overhead" in result.stdout
    assert "2 passed" in result.stdout
    assert (ca / "root-cert.pem").is_file()
    # The same CA folder is loaded, not re-created, on the next run.
    again = invoke("-s", "mtls", "--quiet", "--ca", str(ca), "--samples", "0")
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith("meshlib demo: 1 passed")


def test_a_misbehaving_mesh_fails_loudly(tmp_path: Path) -> None:
    # 50/50 in place of 90/10: the demo must notice that v3 got far more than 10 %.
    config = tmp_path / "config"
    shutil.copytree(EXAMPLES, config)
    routing = config / "routing.yaml"
    text = routing.read_text()
    assert "weight: 90" in text
    routing.write_text(text.replace("weight: 90", "weight: 50").replace("weight: 10", "weight: 50"))
    args = ["-s", "shifting", "-n", "100", "--config", str(config), "-o", "json", "--samples", "0"]
    result = invoke(*args)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    (shifting,) = report["scenarios"]
    assert shifting["status"] == "failed"
    assert "outside 10%" in shifting["failures"][0]
    assert report["overhead"] is None


def test_unknown_scenario_and_missing_config(tmp_path: Path) -> None:
    result = invoke("-s", "nope")
    assert result.exit_code == 2
    assert "unknown scenario nope" in result.output
    result = invoke("--config", str(tmp_path))
    assert result.exit_code == 2
    assert "no Istio YAML" in result.output
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: r, namespace: demo}\nspec: {hosts: [r], htp: []}\n"
    )
    result = invoke("--config", str(tmp_path), "--samples", "0")
    assert result.exit_code == 2
    assert "could not run" in result.output
    assert "htp" in result.output


def test_examples_are_what_the_demo_generates() -> None:
    # The checked-in services.yaml is the generated file with placeholder ports.
    assert (EXAMPLES / "services.yaml").read_text() == service_entries(placeholder_ports())
    result = CliRunner().invoke(build_app(), ["validate", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    assert "0 errors, 0 warnings" in result.output
