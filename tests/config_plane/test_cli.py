"""``meshlib validate`` and ``meshlib show`` through typer's runner, and once as a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .conftest import EXAMPLES

if TYPE_CHECKING:
    from typer.testing import CliRunner, Result

typer_testing = pytest.importorskip("typer.testing")
pytestmark = pytest.mark.extras

from meshlib._cli import build_app  # noqa: E402

runner: CliRunner = typer_testing.CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(build_app(), list(args))


def test_examples_tree_validates() -> None:
    result = invoke("validate", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    assert "0 errors" in result.output


def test_examples_json_summary() -> None:
    result = invoke("validate", str(EXAMPLES), "--output", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["valid"] is True
    assert document["errors"] == 0
    assert document["resources"]["VirtualService"] >= 6
    assert document["resources"]["WorkloadEntry"] >= 6


@pytest.mark.parametrize("variant", ["all-v1", "90-10", "9-1", "header", "ratings-abort"])
def test_each_variant_validates_alone(variant: str) -> None:
    result = invoke("validate", str(EXAMPLES / "variants" / variant))
    assert result.exit_code == 0, result.output


BROKEN = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
    - route: [{destination: {host: reviews, subset: v4}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
    - route: [{destination: {host: ratings}}]
      timeout: 0s
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ratings}
"""


def test_errors_exit_1_with_located_issues(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 1
    assert "broken.yaml" in result.output
    assert "VirtualService/default/reviews" in result.output
    assert "IST0101" in result.output
    assert "VirtualService/default/ratings" in result.output
    assert "skipped kinds: Deployment x2" in result.output
    document = json.loads(invoke("validate", str(tmp_path), "-o", "json").output)
    assert document["valid"] is False
    assert document["skipped"] == {"Deployment": 2}
    fields = {issue["field"] for issue in document["issues"]}
    assert "spec.http[0].route[0].destination.subset" in fields
    assert "spec.http[0].timeout" in fields
    assert document["errors"] == sum(i["severity"] == "error" for i in document["issues"])


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert invoke("validate", str(tmp_path / "missing.yaml")).exit_code == 2
    assert invoke("validate").exit_code == 2
    assert invoke("show", str(EXAMPLES)).exit_code == 2  # --host is required
    unreadable = tmp_path / "locked.yaml"
    unreadable.mkdir()  # a folder named like a file: nothing to read, still valid
    assert invoke("validate", str(tmp_path)).exit_code == 0


@pytest.mark.parametrize(
    ("variant", "namespace"), [("90-10", "reviews-90-10"), ("9-1", "reviews-9-1")]
)
def test_show_weights(variant: str, namespace: str) -> None:
    path = str(EXAMPLES / "variants" / variant)
    result = invoke("show", path, "--host", "reviews", "--namespace", namespace)
    assert result.exit_code == 0, result.output
    assert "subset v1" in result.output
    assert "(90%)" in result.output
    assert "(10%)" in result.output
    view = json.loads(
        invoke("show", path, "--host", "reviews", "-n", namespace, "-o", "json").output
    )
    (route,) = view["routes"]["routes"]
    assert [(d["subset"], d["share"]) for d in route["destinations"]] == [
        ("v1", 90.0),
        ("v3", 10.0),
    ]


def test_show_bookinfo_and_circuit_breaker() -> None:
    result = invoke("show", str(EXAMPLES), "--host", "reviews")
    assert result.exit_code == 0, result.output
    assert "headers end-user exact 'jason'" in result.output
    ratings = invoke("show", str(EXAMPLES), "--host", "ratings", "-o", "json")
    fault = json.loads(ratings.output)["routes"]["routes"][0]["fault"]
    assert fault["delay"] == 7.0
    assert fault["delay_fraction"] == 1.0
    httpbin = invoke("show", str(EXAMPLES), "--host", "httpbin.httpbin")
    assert "pool maxConnections 1 pending 1" in httpbin.output
    assert "consecutive5xx 1" in httpbin.output
    assert "baseEjection 180s" in httpbin.output
    unknown = invoke("show", str(EXAMPLES), "--host", "example.org")
    assert unknown.exit_code == 0
    assert "not in the configuration" in unknown.output


def test_show_reports_ignored_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    result = invoke("show", str(tmp_path), "--host", "reviews")
    assert result.exit_code == 0
    assert "ignored" in result.output


def test_module_entry_point_runs_as_a_process() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "meshlib", "validate", str(EXAMPLES), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["valid"] is True


def test_terminal_output_is_a_table(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    result = runner.invoke(build_app(), ["validate", str(tmp_path)], env={"FORCE_COLOR": "1"})
    assert result.exit_code == 1
    assert "severity" in result.output
    assert "message" in result.output


def test_unreadable_file_in_a_folder_exits_2(tmp_path: Path) -> None:
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "nowhere.yaml")
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 2
    assert "dangling.yaml" in result.output


ACTIONS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web.example.com]
  http:
    - match: [{uri: {prefix: /old}, port: 8080, queryParams: {q: {exact: "1"}}}]
      redirect: {uri: /new}
    - fault: {abort: {httpStatus: 503, percentage: {value: 5}}}
      route: [{destination: {host: web.example.com}}]
"""


def test_show_prints_actions_and_matches(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(ACTIONS)
    result = invoke("show", str(tmp_path), "--host", "web.example.com")
    assert result.exit_code == 0, result.output
    assert "uri prefix '/old' and query_params q exact '1' and port 8080" in result.output
    assert 'redirect: {"uri": "/new"' in result.output
    assert '"abort_http_status": 503' in result.output
    assert "destination rule: none (defaults)" in result.output


def test_show_makes_every_default_explicit() -> None:
    result = invoke("show", str(EXAMPLES / "bookinfo"), "--host", "reviews")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    for default in (
        "timeout none; retries 2 on cancelled,connect-failure,refused-stream,"
        "retriable-status-codes,unavailable codes none per-try none backoff 0.025s..0.25s",
        "fault: none",
        "subset v2 port (as called) weight 100 (100%)",
        "pool maxConnections unlimited pending unlimited requests unlimited perConnection "
        "unlimited retries unlimited connectTimeout 10s; lb LEAST_REQUEST; tls auto",
        "outlier detection: off",
    ):
        assert default in text
    hashed = invoke("show", str(EXAMPLES / "httpbin"), "--host", "httpbin.httpbin", "-o", "json")
    assert json.loads(hashed.output)["routes"]["implicit"] is True


@pytest.mark.parametrize(
    ("hashing", "shown"),
    [
        ("{httpHeaderName: x-user}", "lb RING_HASH on http_header_name x-user"),
        ("{useSourceIp: true, maglev: {tableSize: 65537}}", "lb MAGLEV on source IP"),
        ("{ringHash: {minimumRingSize: 64}}", "lb RING_HASH on nothing (random)"),
    ],
)
def test_show_consistent_hash(tmp_path: Path, hashing: str, shown: str) -> None:
    (tmp_path / "dr.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: a, namespace: default}\n"
        f"spec: {{host: a, trafficPolicy: {{loadBalancer: {{consistentHash: {hashing}}}}}}}\n"
    )
    result = invoke("show", str(tmp_path), "--host", "a")
    assert result.exit_code == 0, result.output
    assert shown in " ".join(result.output.split())
