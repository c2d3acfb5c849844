"""The demo's report: a compact rich rendering, or JSON for machines."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from meshlib._demo.runner import DemoResult

__all__ = ["render", "render_json", "summary_line"]

STATUS_STYLE = {
    "passed": "[green]✔ passed [/]",
    "failed": "[red]✘ FAILED [/]",
    "skipped": "[yellow]– skipped[/]",
}


def render_json(result: DemoResult) -> str:
    return json.dumps(result.to_json(), indent=2)


def summary_line(result: DemoResult) -> str:
    counts = {s: sum(1 for r in result.scenarios if r.status == s) for s in STATUS_STYLE}
    parts = [f"{n} {status}" for status, n in counts.items() if n]
    verdict = "the mesh behaved as Istio does" if result.ok else "THE MESH MISBEHAVED"
    return f"meshlib demo: {', '.join(parts) or 'nothing run'} in {result.seconds:.1f}s — {verdict}"


def render(result: DemoResult, console: Console) -> None:
    from rich.markup import escape

    console.print("[bold]meshlib demo[/] — bookinfo on 127.0.0.1, every workload its own SVID")
    for scenario in result.scenarios:
        console.print(f"{STATUS_STYLE[scenario.status]}  [bold]{escape(scenario.title)}[/]")
        for line in scenario.lines:
            console.print(f"    {escape(line)}", highlight=False)
        for problem in scenario.failures:
            console.print(f"    [red]{escape(problem)}[/]")
    if result.overhead is not None:
        o = result.overhead
        console.print(
            f"[dim]overhead, GET /ping over mTLS, p50 of {o.samples} (informative):[/] mesh client "
            f"{o.mesh_p50_us:.0f} µs, bare httpx {o.bare_p50_us:.0f} µs → "
            f"[bold]{o.added_p50_us:+.0f} µs[/] per request",
            highlight=False,
        )
    style = "green" if result.ok else "bold red"
    console.print(f"[{style}]{escape(summary_line(result))}[/]")
