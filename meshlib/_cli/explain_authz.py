"""``meshlib explain authz``: would this request reach the workload, and which policy decided.

The request runs through the same inbound flow the middleware uses (PeerAuthentication, path
normalization, AuthorizationPolicy), against the configuration compiled for the target workload.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from meshlib._config.compile import compile_snapshot
from meshlib._config.compile_security import CODE_AUTHZ_PROVIDER
from meshlib._config.issues import Severity
from meshlib._config.loader import load_paths
from meshlib._engine.inbound import DETAILS_MTLS_REQUIRED, inbound_flow
from meshlib._engine.snapshot import MeshSnapshot, split_authority
from meshlib._mesh import parse_labels
from meshlib._model.call import Call, Peer
from meshlib._policy.authz import AuthzRequest
from meshlib._policy.paths import DEFAULT_PATH_NORMALIZATION, normalize_path

__all__ = [
    "DEFAULT_PORT",
    "EXIT_USAGE",
    "Verdict",
    "evaluate",
    "explain_authz",
    "load_snapshot",
    "register",
]

DEFAULT_PORT = 8080
"""``mesh.serve``'s default port: the workload port when ``--port`` is not given."""
EXIT_USAGE = 2


class Output(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class _Headers:
    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = {k.lower(): v for k, v in values.items()}

    def get(self, key: str, /) -> str | None:
        return self._values.get(key.lower())

    def __contains__(self, key: object, /) -> bool:
        return isinstance(key, str) and key.lower() in self._values


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one request, as ``explain`` prints it."""

    decision: str
    """``allow`` or ``deny``."""
    policy: str | None
    """``namespace/name`` of the deciding policy (a PeerAuthentication for a refused plaintext
    peer); ``None`` when nothing decided (allowed by default, or no ALLOW policy matched)."""
    rule: int | None
    reason: str
    stage: str
    """``normalization``, ``peer_authentication`` or ``authorization``."""
    status: int
    path: str
    """The path authorization matched (normalized)."""
    policies: tuple[dict[str, Any], ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "policy": self.policy,
            "rule": self.rule,
            "reason": self.reason,
            "stage": self.stage,
            "status": self.status,
            "path": self.path,
            "policies": list(self.policies),
        }


def load_snapshot(
    paths: Sequence[Path], namespace: str, labels: Mapping[str, str], service_account: str = ""
) -> MeshSnapshot:
    """The configuration as the target workload compiles it; ``ValueError`` on errors."""
    loaded = load_paths(list(paths), namespace)
    errors = [i for i in loaded.issues if i.severity is Severity.ERROR]
    snapshot, compiled = compile_snapshot(
        loaded,
        namespace=namespace,
        labels=labels,
        workload=labels.get("app", ""),
        service_account=service_account or "default",
    )
    # A CUSTOM provider without a callable is a startup error for a server, not for explain:
    # the flow then denies what the policy matches, which is what gets explained.
    errors += [
        i for i in compiled if i.severity is Severity.ERROR and i.code != CODE_AUTHZ_PROVIDER
    ]
    if errors:
        raise ValueError("\n".join(str(issue) for issue in errors))
    return snapshot


def evaluate(
    snapshot: MeshSnapshot,
    *,
    principal: str | None,
    method: str = "GET",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    port: int = DEFAULT_PORT,
    source_ip: str | None = None,
    host: str = "",
    plaintext: bool = False,
) -> Verdict:
    """Run one request through the inbound flow (no principal, or ``plaintext``: no mTLS)."""
    values = dict(headers or {})
    authority = host or values.get("host") or values.get(":authority") or ""
    peer = Peer(address=source_ip)
    if principal and not plaintext:
        spiffe_id = principal if principal.startswith("spiffe://") else f"spiffe://{principal}"
        peer = Peer(spiffe_id=spiffe_id, address=source_ip, mtls=True)
    call = Call(
        protocol="http",
        method=method.upper(),
        scheme="https" if peer.mtls else "http",
        authority=authority,
        host=split_authority(authority)[0],
        port=port,
        path=path,
        headers=_Headers(values),
        peer=peer,
    )
    flow = inbound_flow(call, snapshot, now=time.monotonic(), source_ip=source_ip)
    authorizer = snapshot.authorization
    mode = authorizer.path_normalization if authorizer is not None else DEFAULT_PATH_NORMALIZATION
    normalized = normalize_path(path, mode) or path
    listed: tuple[dict[str, Any], ...] = ()
    if authorizer is not None and flow.decision is not None:
        request = AuthzRequest.from_call(call, source_ip=source_ip)
        _, explanations = authorizer.explain(request)
        listed = tuple(
            {
                "policy": e.policy,
                "action": e.action.value,
                "rule": e.rule if e.rule >= 0 else None,
                "dry_run": e.dry_run,
            }
            for e in explanations
        )
    if flow.details == DETAILS_MTLS_REQUIRED:
        resolved = snapshot.peer_authentication
        decided = ""
        if resolved is not None:
            decided = resolved.port_decided_by.get(port) or resolved.decided_by
        return Verdict(
            "deny",
            decided or None,
            None,
            "PeerAuthentication STRICT refuses a plaintext peer",
            "peer_authentication",
            flow.status,
            normalized,
        )
    if flow.status == 400:
        return Verdict(
            "deny", None, None, "path rejected by normalization", "normalization", 400, path
        )
    decision = flow.decision
    if decision is None:
        return Verdict(
            "allow", None, None, "no AuthorizationPolicy applies", "authorization", 0, normalized
        )
    return Verdict(
        "allow" if decision.allowed else "deny",
        decision.policy or None,
        decision.rule,
        decision.reason,
        "authorization",
        flow.status,
        normalized,
        listed,
    )


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise typer.BadParameter(f"header {text!r} is not of the form name:value")
    return name.strip().lower(), value.strip()


def _print(verdict: Verdict) -> None:
    typer.echo(verdict.decision)
    where = verdict.policy or "-"
    rule = "-" if verdict.rule is None else str(verdict.rule)
    typer.echo(f"  decided by: {where}  rule: {rule}  ({verdict.stage}: {verdict.reason})")
    typer.echo(f"  path matched: {verdict.path}")
    for item in verdict.policies:
        matched = "no rule matches" if item["rule"] is None else f"rule {item['rule']} matches"
        dry = " [dry-run]" if item["dry_run"] else ""
        typer.echo(f"  {item['action']:<6} {item['policy']}: {matched}{dry}")


def explain_authz(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of Istio YAML.")],
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Target workload's namespace.")
    ] = "default",
    labels: Annotated[
        str,
        typer.Option("--labels", "-l", help="Target workload's labels: app=reviews,version=v1."),
    ] = "",
    principal: Annotated[
        str | None,
        typer.Option(
            "--principal", help="Caller: cluster.local/ns/default/sa/x (or a spiffe:// ID)."
        ),
    ] = None,
    method: Annotated[str, typer.Option("--method", "-X")] = "GET",
    path: Annotated[
        str, typer.Option("--path", help="Request target as sent, query included.")
    ] = "/",
    header: Annotated[
        list[str] | None, typer.Option("-H", "--header", help="name:value (repeatable).")
    ] = None,
    port: Annotated[int, typer.Option("--port", help="Workload port.")] = DEFAULT_PORT,
    source_ip: Annotated[str | None, typer.Option("--source-ip")] = None,
    host: Annotated[str, typer.Option("--host", help=":authority / Host.")] = "",
    plaintext: Annotated[
        bool, typer.Option("--plaintext", help="The caller has no mTLS identity.")
    ] = False,
    output: Annotated[Output, typer.Option("--output", "-o")] = Output.TEXT,
) -> None:
    """Print allow or deny for one request and the policy and rule that decided."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        typer.echo(f"error: no such file or directory: {', '.join(missing)}", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        target_labels = parse_labels(labels)
        headers = dict(parse_header(h) for h in header or ())
        snapshot = load_snapshot(paths, namespace, target_labels)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    verdict = evaluate(
        snapshot,
        principal=principal,
        method=method,
        path=path,
        headers=headers,
        port=port,
        source_ip=source_ip,
        host=host,
        plaintext=plaintext,
    )
    if output is Output.JSON:
        typer.echo(json.dumps(verdict.as_dict(), indent=2))
    else:
        _print(verdict)


def register(explain_app: typer.Typer) -> None:
    explain_app.command("authz")(explain_authz)
