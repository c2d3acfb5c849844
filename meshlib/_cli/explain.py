"""``meshlib explain route|authz``: what the mesh would do with one request, and why."""

from __future__ import annotations

import importlib

import typer

# Each module adds one sub-command to the ``explain`` group through ``register(explain_app)``.
_EXPLAIN_MODULES = ("meshlib._cli.explain_route", "meshlib._cli.explain_authz")


def register(app: typer.Typer) -> None:
    explain = typer.Typer(
        help="Explain which route, destination or policy decides a request.",
        no_args_is_help=True,
    )
    registered = 0
    for module_name in _EXPLAIN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue
            raise
        module.register(explain)
        registered += 1
    if registered:
        app.add_typer(explain, name="explain")
