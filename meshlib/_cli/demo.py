"""``meshlib demo``: a small bookinfo-style mesh on 127.0.0.1, driven through Istio scenarios."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

EXIT_MISBEHAVED = 1
EXIT_CANNOT_RUN = 2


class Output(StrEnum):
    text = "text"
    json = "json"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def _scenario_help() -> str:
    from meshlib._demo import SCENARIOS

    return "Run only this scenario (repeatable): " + ", ".join(s.name for s in SCENARIOS) + "."


def demo(
    requests: Annotated[
        int,
        typer.Option("--requests", "-n", min=1, max=100_000, help="Requests for traffic shifting."),
    ] = 500,
    seed: Annotated[int, typer.Option(help="Seeds the weighted and fault draws.")] = 7,
    scenario: Annotated[
        list[str] | None, typer.Option("--scenario", "-s", help=_scenario_help())
    ] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="text or json.")] = Output.text,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the verdict.")] = False,
    samples: Annotated[
        int,
        typer.Option(min=0, max=100_000, help="Requests per client to measure overhead (0: skip)."),
    ] = 200,
    ca: Annotated[
        Path | None,
        typer.Option(help="Use (or create) this CA folder instead of a throwaway one."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Istio YAML folder in place of examples/demo (same hosts)."),
    ] = None,
) -> None:
    """Run a small bookinfo mesh on 127.0.0.1 and check what the mesh does.

    productpage -> reviews v1/v2/v3 -> ratings (plus details and httpbin), each with its own SVID
    and STRICT mTLS: traffic shifting, header routing, faults, timeouts, retries, circuit
    breaking, mTLS and authorization. Exit 0 if all behave as in Istio, 1 if the mesh
    misbehaves, 2 if the demo cannot run.
    """
    from rich.console import Console

    from meshlib._demo.report import render, render_json, summary_line
    from meshlib._demo.runner import DemoOptions, run_demo, selected
    from meshlib.errors import MeshError

    err = Console(stderr=True)
    try:
        selected(scenario or ())
    except ValueError as error:
        err.print(f"[red]error:[/] {error}")
        raise typer.Exit(EXIT_CANNOT_RUN) from None
    options = DemoOptions(
        requests=requests,
        seed=seed,
        scenarios=tuple(scenario or ()),
        ca_dir=ca,
        config_dir=config,
        overhead_samples=samples,
    )
    progress = None
    if output is Output.text and not quiet:
        progress = lambda text: err.print(f"[dim]· {text}[/]")  # noqa: E731
    try:
        result = run_demo(options, progress=progress)
    except (MeshError, OSError) as error:
        err.print(f"[red]meshlib demo could not run:[/] {error}")
        raise typer.Exit(EXIT_CANNOT_RUN) from None
    if output is Output.json:
        sys.stdout.write(render_json(result) + "\n")
    elif quiet:
        sys.stdout.write(summary_line(result) + "\n")
    else:
        render(result, Console(soft_wrap=False))
    if not result.ok:
        raise typer.Exit(EXIT_MISBEHAVED)
