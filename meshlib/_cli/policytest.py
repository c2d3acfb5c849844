"""``meshlib test authz PATH CASES.yaml``: policy tests as a table, for CI.

The case file (YAML)::

    target: {namespace: default, labels: {app: reviews}}   # the workload receiving requests
    cases:
    - name: productpage reads a review                       # optional, shown on failure
      principal: cluster.local/ns/default/sa/productpage     # omit (or plaintext: true): no mTLS
      method: GET                                            # default GET
      path: /reviews/1                                       # as sent, query included; default /
      headers: {x-user: alice}                               # optional
      port: 9080                                             # workload port; default 8080
      source_ip: 10.0.0.7                                    # optional
      host: reviews.default.svc.cluster.local:9080           # optional
      expect: allow                                          # allow | deny (required)
      policy: default/reviews-readers                        # optional: the deciding policy too

A case may override ``namespace`` and ``labels`` of the target. Every case runs through the
same inbound flow as the middleware (PeerAuthentication, path normalization, authorization).
Exit 0 when every case holds, 1 listing every mismatch, 2 when the files cannot be used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from meshlib._cli.explain_authz import EXIT_USAGE, evaluate, load_snapshot
from meshlib._engine.snapshot import MeshSnapshot

__all__ = ["EXIT_MISMATCH", "register", "run_cases", "test_authz"]

EXIT_MISMATCH = 1
_EXPECT = ("allow", "deny")
_CASE_KEYS = frozenset(
    {
        "name",
        "principal",
        "plaintext",
        "method",
        "path",
        "headers",
        "port",
        "source_ip",
        "host",
        "expect",
        "policy",
        "namespace",
        "labels",
    }
)


class CaseFileError(ValueError):
    """The case file is not usable; the message says where."""


def _labels(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CaseFileError(f"{where}: labels must be a mapping")
    return {str(k): str(v) for k, v in value.items()}


def _check_case(case: object, index: int) -> Mapping[str, Any]:
    where = f"cases[{index}]"
    if not isinstance(case, Mapping):
        raise CaseFileError(f"{where}: must be a mapping")
    unknown = sorted(set(case) - _CASE_KEYS)
    if unknown:
        raise CaseFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if case.get("expect") not in _EXPECT:
        raise CaseFileError(f"{where}: expect must be allow or deny")
    headers = case.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        raise CaseFileError(f"{where}: headers must be a mapping")
    port = case.get("port")
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise CaseFileError(f"{where}: port must be a number from 1 to 65535")
    return case


def run_cases(paths: list[Path], document: object) -> tuple[int, list[str]]:
    """``(cases run, failure lines)``; raises ``CaseFileError`` or ``ValueError`` (config)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("cases"), list):
        raise CaseFileError("the case file needs a 'cases' list")
    target = document.get("target") or {}
    if not isinstance(target, Mapping):
        raise CaseFileError("target must be a mapping")
    default_namespace = str(target.get("namespace", "default"))
    default_labels = _labels(target.get("labels"), "target")
    cases = [_check_case(case, i) for i, case in enumerate(document["cases"])]
    snapshots: dict[tuple[str, tuple[tuple[str, str], ...]], MeshSnapshot] = {}
    failures: list[str] = []
    for index, case in enumerate(cases):
        namespace = str(case.get("namespace", default_namespace))
        labels = _labels(case["labels"], f"cases[{index}]") if "labels" in case else default_labels
        key = (namespace, tuple(sorted(labels.items())))
        if key not in snapshots:
            snapshots[key] = load_snapshot(paths, namespace, labels)
        principal = case.get("principal")
        verdict = evaluate(
            snapshots[key],
            principal=str(principal) if principal else None,
            method=str(case.get("method", "GET")),
            path=str(case.get("path", "/")),
            headers={str(k): str(v) for k, v in (case.get("headers") or {}).items()},
            port=int(case.get("port", 8080)),
            source_ip=str(case["source_ip"]) if case.get("source_ip") else None,
            host=str(case.get("host", "")),
            plaintext=bool(case.get("plaintext", False)),
        )
        name = case.get("name") or f"case {index}"
        wanted_policy = case.get("policy")
        if verdict.decision != case["expect"]:
            failures.append(
                f"{name}: expected {case['expect']}, got {verdict.decision} "
                f"(policy {verdict.policy or '-'}, rule {_rule(verdict.rule)}: {verdict.reason})"
            )
        elif wanted_policy is not None and verdict.policy != wanted_policy:
            failures.append(
                f"{name}: {verdict.decision} as expected, but decided by "
                f"{verdict.policy or 'no policy'}, not {wanted_policy}"
            )
    return len(cases), failures


def _rule(rule: int | None) -> str:
    return "-" if rule is None else str(rule)


def test_authz(
    paths: Annotated[
        list[Path], typer.Argument(help="Istio YAML files or folders, then CASES.yaml last.")
    ],
) -> None:
    """Run a table of requests against the AuthorizationPolicies; exit 1 on any mismatch."""
    if len(paths) < 2:
        typer.echo("error: give the configuration PATH(s) and then the CASES.yaml file", err=True)
        raise typer.Exit(EXIT_USAGE)
    *config, cases_file = paths
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        typer.echo(f"error: no such file or directory: {', '.join(missing)}", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        document = yaml.safe_load(cases_file.read_text(encoding="utf-8"))
        total, failures = run_cases(config, document)
    except (yaml.YAMLError, ValueError) as error:
        typer.echo(f"error: {cases_file}: {error}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    for line in failures:
        typer.echo(f"FAIL {line}")
    typer.echo(f"{total - len(failures)} passed, {len(failures)} failed")
    if failures:
        raise typer.Exit(EXIT_MISMATCH)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Test policies against a table of requests.", no_args_is_help=True)
    group.command("authz")(test_authz)
    app.add_typer(group, name="test")
