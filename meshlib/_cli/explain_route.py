"""``meshlib explain route``: which route, destination and endpoints one request would get."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from meshlib._config.source import ConfigSource
from meshlib._engine.explain import RESULT_PASSTHROUGH, RESULT_ROUTED
from meshlib._engine.runtime import build_runtime
from meshlib.errors import ConfigError
from meshlib.httpx import explain_request

__all__ = ["EXIT_OK", "EXIT_USAGE", "explain_route", "register"]

EXIT_OK = 0
EXIT_USAGE = 2
DEFAULT_NAMESPACE = "default"
DEFAULT_PORT = 80
"""When ``--port`` is absent and the configuration declares no port for the host."""


class Output(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def register(explain_app: typer.Typer) -> None:
    explain_app.command("route")(explain_route)


def _pairs(values: list[str], separator: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, found, rest = value.partition(separator)
        if not found or not name.strip():
            typer.echo(f"error: {what} {value!r} is not NAME{separator}VALUE", err=True)
            raise typer.Exit(EXIT_USAGE)
        pairs.append((name.strip(), rest.strip()))
    return pairs


def explain_route(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of Istio YAML.")],
    host: Annotated[str, typer.Option("--host", help="Host as the client calls it.")],
    method: Annotated[str, typer.Option("--method", "-X", help="HTTP method.")] = "GET",
    path: Annotated[str, typer.Option("--path", help="Request path, with the query.")] = "/",
    port: Annotated[
        int | None, typer.Option("--port", help="Port called (default: the service's first).")
    ] = None,
    scheme: Annotated[str, typer.Option("--scheme", help="http or https.")] = "http",
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="NAME:VALUE, repeatable.")
    ] = None,
    source_labels: Annotated[
        str | None,
        typer.Option("--source-labels", help="Calling workload's labels: app=productpage,v=1."),
    ] = None,
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Calling workload's namespace.")
    ] = DEFAULT_NAMESPACE,
    output: Annotated[Output, typer.Option("--output", "-o", help="text or json.")] = Output.TEXT,
) -> None:
    """Which route and match block a request takes, its destinations, endpoints and limits."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        typer.echo(f"error: no such file or directory: {', '.join(missing)}", err=True)
        raise typer.Exit(EXIT_USAGE)
    headers = _pairs(header or [], ":", "header")
    labels = dict(_pairs(source_labels.split(","), "=", "label")) if source_labels else {}
    if not path.startswith("/"):
        path = "/" + path
    try:
        source = ConfigSource.from_paths(paths, namespace=namespace, labels=labels)
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    runtime = build_runtime(source)
    if port is None:
        config = source.snapshot.lookup_host(host)
        port = (config.default_port if config is not None else 0) or DEFAULT_PORT
    view = explain_request(
        runtime, method.upper(), f"{scheme}://{host}:{port}{path}", headers=headers
    )
    if output is Output.JSON:
        typer.echo(json.dumps(view, indent=2, sort_keys=True))
        return
    _print(view)


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:g}s"


def _print(view: dict[str, Any]) -> None:
    out = Console(soft_wrap=True, highlight=False)

    def line(text: str) -> None:
        out.print(escape(text))

    request = view["request"]
    line(f"{request['method']} {request['authority']}{request['path']} -> {view['service']}")
    result = view["result"]
    if result == RESULT_PASSTHROUGH:
        line("not in the configuration: sent as a plain client would (PassthroughCluster)")
        return
    line(f"virtual service: {view['virtual_service'] or 'none (implicit default route)'}")
    route = view["route"]
    if route is None:
        reply = view["reply"]
        line(f"no route matched: {reply['status']} {','.join(reply['flags'])}")
        return
    block = "no match list" if route["match_index"] < 0 else f"match[{route['match_index']}]"
    line(f"route: {route['name'] or '-'} ({route['source'] or 'implicit'}), {block}")
    if result != RESULT_ROUTED:
        reply = view["reply"]
        line(f"local reply ({result}): {reply['status']} {reply['body']}".rstrip())
        return
    timeout = view["timeout"]
    retries = view["retries"]
    line(
        f"timeout: {_seconds(timeout['effective'])} (route {_seconds(timeout['route'])}); "
        f"retries: {retries['attempts']} on {','.join(retries['retry_on']) or '-'}, "
        f"per try {_seconds(retries['per_try_timeout'])}"
    )
    fault = view["fault"]
    if fault is not None:
        line(
            f"fault: delay {_seconds(fault['delay'])} at {fault['delay_fraction']:.2%}, "
            f"abort {fault['abort_http_status'] or fault['abort_grpc_status'] or '-'} "
            f"at {fault['abort_fraction']:.2%}"
        )
    for dest in view["destinations"]:
        line(
            f"-> {dest['host']} subset {dest['subset'] or '-'} port {dest['port']} "
            f"weight {dest['weight']} ({dest['share']:g}%)"
        )
        if dest["cluster"] is None:
            line(f"   subset not defined: {dest['reply']['status']} {dest['reply']['flags'][0]}")
            continue
        pool = dest["connection_pool"]
        line(
            f"   cluster {dest['cluster']}  lb {dest['load_balancer']['simple']}  "
            f"tls {dest['tls_mode']}  maxConnections {pool['max_connections']}  "
            f"pending {pool['http1_max_pending_requests']}"
        )
        od = dest["outlier_detection"]
        if od is not None:
            line(
                f"   outliers: 5xx {od['consecutive_5xx_errors']} gateway "
                f"{od['consecutive_gateway_errors']} interval {_seconds(od['interval'])} "
                f"ejection {_seconds(od['base_ejection_time'])} max {od['max_ejection_percent']}%"
            )
        for endpoint in dest["endpoints"]:
            state = "EJECTED" if endpoint["ejected"] else "ok"
            mtls = " mTLS" if endpoint["mtls"] else ""
            line(f"   {endpoint['address']}:{endpoint['port']} {state}{mtls}")
