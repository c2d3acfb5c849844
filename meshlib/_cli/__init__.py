"""The ``meshlib`` command: each area registers its own sub-commands."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

# Modules that add commands to the app; each exposes ``register(app)``.
_COMMAND_MODULES = (
    "meshlib._cli.config",
    "meshlib._cli.ca",
    "meshlib._cli.explain",
    "meshlib._cli.policytest",
    "meshlib._cli.demo",
)


def build_app() -> typer.Typer:
    import typer

    app = typer.Typer(
        name="meshlib",
        help="A service mesh as a library: validate, show and explain Istio configuration.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:
                continue  # that area has not registered commands yet
            raise
        module.register(app)
    return app


def main() -> None:
    try:
        app = build_app()
    except ModuleNotFoundError as error:
        if error.name not in {"typer", "rich", "click"}:
            raise
        sys.stderr.write("the meshlib command needs the 'cli' extra: pip install 'meshlib[cli]'\n")
        raise SystemExit(2) from None
    app()
