"""``meshlib validate`` and ``meshlib show``: the config plane on the command line."""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meshlib._config.analyze import analyze
from meshlib._config.compile import compile_snapshot
from meshlib._config.issues import ConfigIssue, Severity
from meshlib._config.loader import CODE_UNREADABLE, LoadResult, load_paths
from meshlib._config.show import snapshot_to_dict
from meshlib._policy.limits import UNLIMITED

__all__ = ["EXIT_INVALID", "EXIT_OK", "EXIT_USAGE", "Output", "register", "show", "validate"]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
DEFAULT_NAMESPACE = "default"


class Output(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


PathsArg = Annotated[list[Path], typer.Argument(help="Files or folders of Istio YAML (recursive).")]
NamespaceOpt = Annotated[
    str,
    typer.Option(
        "--namespace", "-n", help="Namespace of documents without one, and of the calling workload."
    ),
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text or json.")]


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("show")(show)


def _console() -> Console:
    return Console(soft_wrap=True, highlight=False)


def _check_paths(paths: Sequence[Path]) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        typer.echo(f"error: no such file or directory: {', '.join(missing)}", err=True)
        raise typer.Exit(EXIT_USAGE)


def _all_issues(paths: Sequence[Path], namespace: str) -> tuple[LoadResult, list[ConfigIssue]]:
    loaded = load_paths(list(paths), namespace)
    snapshot, compiled = compile_snapshot(loaded, namespace=namespace)
    return loaded, [*loaded.issues, *compiled, *analyze(loaded, snapshot)]


def _issue_dict(issue: ConfigIssue) -> dict[str, Any]:
    return {
        "severity": issue.severity.value,
        "code": issue.code,
        "file": issue.file,
        "document": issue.document,
        "resource": issue.resource,
        "field": issue.field,
        "message": issue.message,
    }


def validate(
    paths: PathsArg,
    namespace: NamespaceOpt = DEFAULT_NAMESPACE,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Check Istio YAML like istioctl analyze: exit 0 if valid (warnings allowed), 1 on errors."""
    _check_paths(paths)
    loaded, issues = _all_issues(paths, namespace)
    if any(issue.code == CODE_UNREADABLE for issue in issues):
        for issue in issues:
            if issue.code == CODE_UNREADABLE:
                typer.echo(f"error: {issue}", err=True)
        raise typer.Exit(EXIT_USAGE)
    kinds = Counter(res.kind for res in loaded.resources)
    errors = sum(issue.severity is Severity.ERROR for issue in issues)
    warnings = sum(issue.severity is Severity.WARNING for issue in issues)
    if output is Output.JSON:
        document = {
            "valid": errors == 0,
            "resources": dict(sorted(kinds.items())),
            "skipped": dict(sorted(loaded.skipped.items())),
            "errors": errors,
            "warnings": warnings,
            "issues": [_issue_dict(issue) for issue in issues],
        }
        typer.echo(json.dumps(document, indent=2))
    else:
        _print_issues(issues)
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"
        skipped = ", ".join(f"{kind} x{n}" for kind, n in sorted(loaded.skipped.items()))
        summary = f"{sum(kinds.values())} resources ({counts})"
        if skipped:
            summary += f"; skipped kinds: {skipped}"
        summary += f"; {errors} errors, {warnings} warnings"
        _console().print(escape(summary))
    raise typer.Exit(EXIT_INVALID if errors else EXIT_OK)


def _print_issues(issues: Sequence[ConfigIssue]) -> None:
    if not issues:
        return
    console = _console()
    if not console.is_terminal:
        # One issue per line: greppable, and never truncated by a narrow table.
        for issue in issues:
            line = str(issue) + (f" [{issue.code}]" if issue.code else "")
            console.print(escape(line))
        return
    table = Table(show_lines=False)
    for column in ("severity", "file", "doc", "resource", "field", "message"):
        table.add_column(column, overflow="fold")
    for issue in issues:
        colour = "red" if issue.severity is Severity.ERROR else "yellow"
        table.add_row(
            f"[{colour}]{issue.severity.value}[/]",
            escape(issue.file),
            "" if issue.document is None else str(issue.document),
            escape(issue.resource),
            escape(issue.field),
            escape(f"{issue.message} [{issue.code}]" if issue.code else issue.message),
        )
    console.print(table)


def show(
    paths: PathsArg,
    host: Annotated[str, typer.Option("--host", help="Host as a client calls it (short, FQDN).")],
    namespace: NamespaceOpt = DEFAULT_NAMESPACE,
    output: OutputOpt = Output.TEXT,
) -> None:
    """The compiled routes, subsets, limits and defaults for one host (like proxy-config)."""
    _check_paths(paths)
    loaded = load_paths(list(paths), namespace)
    snapshot, issues = compile_snapshot(loaded, namespace=namespace)
    for issue in (*loaded.issues, *issues):
        if issue.severity is Severity.ERROR:
            typer.echo(f"warning: ignored: {issue}", err=True)
    view = snapshot_to_dict(snapshot, host)
    if output is Output.JSON:
        typer.echo(json.dumps(view, indent=2, sort_keys=True))
        return
    _print_view(view)


def _fmt(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds:g}s"


def _limit(value: int) -> str:
    # Istio's "unset" limits are 2^32-1 (0 for perConnection): say what they mean.
    return "unlimited" if value in (0, UNLIMITED) else str(value)


def _print_view(view: dict[str, Any]) -> None:
    out = _console()
    state = "" if view["known"] else " (not in the configuration: DNS, default route)"
    out.print(f"[bold]{escape(view['host'])}[/]{escape(state)}  generation {view['generation']}")
    service = view["service"]
    if service is not None:
        ports = ", ".join(f"{p['number']}/{p['protocol'] or 'sniffed'}" for p in service["ports"])
        out.print(
            escape(
                f"service: {service['source']} {service['location']} {service['resolution']} "
                f"ports {ports or '-'}"
            )
        )
    routes = view["routes"]
    out.print(escape(f"routes: {routes['source'] or 'implicit default route'}"))
    for index, route in enumerate(routes["routes"]):
        out.print(escape(f"  [{index}] {route['name'] or '-'}  ({route['source']})"))
        for match in route["matches"] or [None]:
            out.print(escape(f"      match: {_match_text(match)}"))
        for dest in route["destinations"]:
            out.print(
                escape(
                    f"      -> {dest['host']} subset {dest['subset'] or '(all endpoints)'} "
                    f"port {dest['port'] or '(as called)'} weight {dest['weight']}"
                    f" ({dest['share']:g}%)"
                )
            )
        retries = route["retries"]
        out.print(
            escape(
                f"      timeout {_fmt(route['timeout'])}; retries {retries['attempts']} on "
                f"{','.join(retries['retry_on']) or 'nothing'} codes "
                f"{','.join(map(str, retries['retriable_status_codes'])) or 'none'} per-try "
                f"{_fmt(retries['per_try_timeout'])} backoff {_fmt(retries['backoff_base'])}"
                f"..{_fmt(retries['backoff_max'])}"
            )
        )
        if not route["fault"]:
            out.print("      fault: none")
        for key in ("fault", "rewrite", "redirect", "direct_response", "headers", "mirrors"):
            if route[key]:
                out.print(escape(f"      {key}: {json.dumps(route[key])}"))
    source = view["destination_rule"]["source"]
    out.print(escape(f"destination rule: {source or 'none (defaults)'}"))
    for name, subset in view["subsets"].items():
        labels = ",".join(f"{k}={v}" for k, v in subset["labels"].items())
        out.print(escape(f"  subset {name or '(any)'} {labels}"))
        for port, policy in subset["policy_by_port"].items():
            pool, outlier, lb = (
                policy["connection_pool"],
                policy["outlier_detection"],
                policy["load_balancer"],
            )
            out.print(
                escape(
                    f"    port {port}: pool maxConnections {_limit(pool['max_connections'])} "
                    f"pending {_limit(pool['http1_max_pending_requests'])} requests "
                    f"{_limit(pool['http2_max_requests'])} perConnection "
                    f"{_limit(pool['max_requests_per_connection'])} retries "
                    f"{_limit(pool['max_retries'])} connectTimeout "
                    f"{_fmt(pool['connect_timeout'])}; lb {_lb_text(lb)}; tls "
                    f"{policy['tls'] if isinstance(policy['tls'], str) else policy['tls']['mode']}"
                )
            )
            if outlier is None:
                out.print("      outlier detection: off")
            else:
                out.print(
                    escape(
                        f"      outlier: consecutive5xx {outlier['consecutive_5xx_errors']} "
                        f"gateway {outlier['consecutive_gateway_errors']} interval "
                        f"{_fmt(outlier['interval'])} baseEjection "
                        f"{_fmt(outlier['base_ejection_time'])} maxEjection "
                        f"{outlier['max_ejection_percent']}%"
                    )
                )
        for port, endpoints in subset["endpoints"].items():
            listed = ", ".join(f"{e['address']}:{e['port']}" for e in endpoints) or "none"
            out.print(escape(f"    endpoints (service port {port}): {listed}"))


def _lb_text(lb: dict[str, Any]) -> str:
    hashing = lb["consistent_hash"]
    if hashing is None:
        return str(lb["simple"])
    keys = ("http_header_name", "http_cookie_name", "http_query_parameter_name")
    key = next((f"{k} {hashing[k]}" for k in keys if hashing[k]), None)
    if key is None:
        key = "source IP" if hashing["use_source_ip"] else "nothing (random)"
    return f"{'MAGLEV' if hashing['maglev'] else 'RING_HASH'} on {key}"


def _match_text(match: dict[str, Any] | None) -> str:
    if match is None:
        return "any request"
    parts: list[str] = []
    for key in ("uri", "scheme", "method", "authority"):
        if match[key] is not None:
            parts.append(f"{key} {match[key]['kind']} {match[key]['value']!r}")
    for key in ("headers", "without_headers", "query_params"):
        for name, condition in match[key]:
            parts.append(f"{key} {name} {condition['kind']} {condition['value']!r}")
    if match["port"]:
        parts.append(f"port {match['port']}")
    return " and ".join(parts) or "any request"
