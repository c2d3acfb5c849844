"""``meshlib explain authz`` and ``meshlib test authz`` through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .conftest import write

if TYPE_CHECKING:
    from typer.testing import CliRunner, Result

typer_testing = pytest.importorskip("typer.testing")
pytestmark = pytest.mark.extras

from meshlib._cli import build_app  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "authz"
POLICIES = EXAMPLES / "policies.yaml"
PRODUCTPAGE = "cluster.local/ns/store/sa/productpage"

runner: CliRunner = typer_testing.CliRunner()


def invoke(*args: str | Path) -> Result:
    return runner.invoke(build_app(), [str(a) for a in args])


def explain(*args: str) -> dict[str, object]:
    result = invoke("explain", "authz", POLICIES, "-n", "store", "--labels", "app=reviews", *args)
    assert result.exit_code == 0, result.output
    document: dict[str, object] = json.loads(result.output)
    return document


def test_explain_allow_names_policy_and_rule() -> None:
    found = explain("--principal", PRODUCTPAGE, "--path", "/reviews/1", "-o", "json")
    assert (found["decision"], found["policy"], found["rule"]) == (
        "allow",
        "store/reviews-readers",
        0,
    )


def test_explain_deny_by_deny_policy() -> None:
    found = explain(
        "--principal",
        "spiffe://cluster.local/ns/store/sa/admin",
        "--method",
        "DELETE",
        "--path",
        "/admin/x",
        "-o",
        "json",
    )
    assert (found["decision"], found["policy"], found["rule"]) == ("deny", "store/no-delete", 0)
    assert found["stage"] == "authorization"


def test_explain_normalization_and_plaintext() -> None:
    found = explain("--principal", PRODUCTPAGE, "--path", "/public/../admin", "-o", "json")
    assert (found["decision"], found["policy"], found["path"]) == ("deny", None, "/admin")
    plaintext = explain("--principal", PRODUCTPAGE, "--plaintext", "-o", "json")
    assert (plaintext["decision"], plaintext["policy"], plaintext["stage"]) == (
        "deny",
        "store/reviews-strict",
        "peer_authentication",
    )
    bad = explain("--principal", PRODUCTPAGE, "--path", "/a%00", "-o", "json")
    assert (bad["decision"], bad["stage"], bad["status"]) == ("deny", "normalization", 400)


def test_explain_text_headers_host_port_and_source_ip(tmp_path: Path) -> None:
    policy = write(
        tmp_path,
        "p.yaml",
        """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: hdr, namespace: default}
spec:
  rules:
  - to: [{operation: {hosts: [reviews*], ports: ["9080"]}}]
    when:
    - {key: "request.headers[x-team]", values: [blue]}
    - {key: source.ip, values: [10.0.0.0/8]}
""",
    )
    args = ["explain", "authz", policy, "--path", "/x", "--port", "9080", "--host", "reviews"]
    result = invoke(*args, "-H", "x-team: blue", "--source-ip", "10.1.1.1")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("allow")
    assert "default/hdr" in result.output
    assert "rule 0 matches" in result.output
    result = invoke(*args, "-H", "x-team: red", "--source-ip", "10.1.1.1")
    assert result.output.startswith("deny")
    assert "no rule matches" in result.output
    assert invoke(*args, "-H", "nocolon").exit_code == 2


def test_explain_without_policies_allows(tmp_path: Path) -> None:
    empty = write(tmp_path, "empty.yaml", "")
    result = invoke("explain", "authz", empty, "--output", "json")
    assert json.loads(result.output)["decision"] == "allow"


def test_explain_usage_errors(tmp_path: Path) -> None:
    assert invoke("explain", "authz", tmp_path / "missing.yaml").exit_code == 2
    broken = write(
        tmp_path,
        "broken.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: x}\nspec: {action: NOPE}\n",
    )
    result = invoke("explain", "authz", broken)
    assert result.exit_code == 2
    assert "error" in result.output
    assert invoke("explain", "authz", POLICIES, "--labels", "novalue").exit_code == 2


def test_example_cases_pass() -> None:
    result = invoke("test", "authz", POLICIES, EXAMPLES / "cases.yaml")
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output


def test_mismatches_are_all_listed(tmp_path: Path) -> None:
    cases = write(
        tmp_path,
        "cases.yaml",
        f"""
target: {{namespace: store, labels: {{app: reviews}}}}
cases:
- {{name: wrong one, principal: {PRODUCTPAGE}, path: /admin, expect: allow}}
- {{name: right one, principal: {PRODUCTPAGE}, path: /reviews/1, expect: allow}}
- {{principal: {PRODUCTPAGE}, path: /reviews/1, expect: allow, policy: store/other}}
- {{principal: {PRODUCTPAGE}, path: /x, expect: deny, namespace: other, labels: {{app: x}}}}
- {{principal: {PRODUCTPAGE}, path: /x, headers: {{a: b}}, port: 80, source_ip: 1.2.3.4,
   host: h, method: GET, plaintext: false, expect: allow}}
""",
    )
    result = invoke("test", "authz", POLICIES, cases)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert len(lines) == 4
    assert "wrong one: expected allow, got deny" in lines[0]
    assert "not store/other" in lines[1]
    assert "case 3: expected deny, got allow" in lines[2]
    assert "2 passed" not in result.output
    assert "1 passed, 4 failed" in result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "'cases' list"),
        ("cases: [1]", "must be a mapping"),
        ("cases: [{expect: maybe}]", "expect must be allow or deny"),
        ("cases: [{expect: allow, typo: 1}]", "unknown field(s) typo"),
        ("cases: [{expect: allow, headers: [1]}]", "headers must be a mapping"),
        ("cases: [{expect: allow, port: 0}]", "port must be"),
        ("target: [1]\ncases: []", "target must be a mapping"),
        ("target: {labels: [1]}\ncases: [{expect: allow}]", "labels must be a mapping"),
        ("cases: [{: }", "error"),
    ],
)
def test_bad_case_files(tmp_path: Path, text: str, message: str) -> None:
    cases = write(tmp_path, "cases.yaml", text)
    result = invoke("test", "authz", POLICIES, cases)
    assert result.exit_code == 2
    assert message in result.output


def test_case_file_usage(tmp_path: Path) -> None:
    assert invoke("test", "authz", POLICIES).exit_code == 2
    assert invoke("test", "authz", POLICIES, tmp_path / "none.yaml").exit_code == 2
