"""``meshlib explain route`` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_explain import MESH

typer_testing = pytest.importorskip("typer.testing")
pytestmark = pytest.mark.extras


def _run(*args: str) -> tuple[int, str, str]:
    from meshlib._cli import build_app

    result = typer_testing.CliRunner().invoke(build_app(), ["explain", "route", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH)
    return str(path)


def test_text_output_for_a_header_match(config: str) -> None:
    code, out, _ = _run(config, "--host", "reviews", "--path", "/x", "-H", "end-user: jason")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "GET reviews:9080/x -> reviews.default.svc.cluster.local"
    assert lines[1] == "virtual service: VirtualService/default/reviews"
    assert lines[2] == "route: jason (VirtualService/default/reviews#http[0]), match[1]"
    assert lines[4] == "fault: delay none at 0.00%, abort 500 at 10.00%"
    assert lines[5] == (
        "-> reviews.default.svc.cluster.local subset v2 port 9080 weight 100 (100%)"
    )
    assert lines[7] == "   outliers: 5xx 1 gateway 0 interval 1s ejection 30s max 100%"
    assert "   10.0.0.2:9080 ok" in lines
    assert "   10.0.0.3:9080 ok" in lines
    assert "10.0.0.1:9080" not in out


def test_json_output_with_source_labels(config: str) -> None:
    code, out, _ = _run(
        config, "--host", "reviews", "--source-labels", "app=productpage", "-o", "json"
    )
    assert code == 0, out
    view = json.loads(out)
    assert view["route"]["name"] == "split"
    assert [(d["subset"], d["share"]) for d in view["destinations"]] == [("v1", 90.0), ("v2", 10.0)]
    assert view["client"]["labels"] == {"app": "productpage"}


def test_no_route_local_reply_and_passthrough(config: str) -> None:
    code, out, _ = _run(config, "--host", "reviews", "--namespace", "default")
    assert code == 0
    assert out.splitlines()[-1] == "no route matched: 404 NR"
    code, out, _ = _run(config, "--host", "reviews", "--path", "tea")
    assert out.splitlines()[-1] == "local reply (direct_response): 418 teapot"
    code, out, _ = _run(config, "--host", "reviews", "--path", "/ghost")
    assert out.splitlines()[-1] == "   subset not defined: 503 NC"
    code, out, _ = _run(config, "--host", "example.org", "--port", "8080")
    assert out.splitlines() == [
        "GET example.org:8080/ -> example.org",
        "not in the configuration: sent as a plain client would (PassthroughCluster)",
    ]


def test_usage_errors(config: str, tmp_path: Path) -> None:
    code, _, err = _run(str(tmp_path / "missing.yaml"), "--host", "reviews")
    assert code == 2
    assert "no such file" in err
    code, _, err = _run(config, "--host", "reviews", "-H", "no-colon")
    assert code == 2
    assert "NAME:VALUE" in err
