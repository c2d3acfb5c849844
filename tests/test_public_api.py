"""The public API is exactly what ``__all__`` says, sorted, in every public module."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import types

import pytest

PUBLIC_MODULES = ["meshlib", "meshlib.errors"]
OPTIONAL_PUBLIC_MODULES = [
    "meshlib.asgi",
    "meshlib.grpc",
    "meshlib.handlers",
    "meshlib.httpx",
    "meshlib.identity",
    "meshlib.wsgi",
]


def public_names(module: types.ModuleType) -> set[str]:
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") and name != "__version__":
            continue
        if isinstance(value, types.ModuleType):
            continue  # submodules and imported modules are not API
        if name in {"annotations", "TYPE_CHECKING"}:  # __future__ and typing plumbing
            continue
        foreign = not getattr(value, "__module__", "meshlib").startswith("meshlib")
        if (inspect.isclass(value) or inspect.isfunction(value)) and foreign:
            continue  # re-imported helpers such as typing names
        names.add(name)
    return names


def modules_under_test() -> list[str]:
    found = list(PUBLIC_MODULES)
    for name in OPTIONAL_PUBLIC_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if (error.name or "").startswith("meshlib") and error.name != name:
                raise  # a broken meshlib import is a failure, a missing extra is not
            continue
        found.append(name)
    return found


@pytest.mark.parametrize("module_name", modules_under_test())
def test_all_is_sorted_and_complete(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for name in exported:
        # First: names a module imports on first use (PEP 562) are bound by this lookup.
        assert hasattr(module, name), name
    assert set(exported) == public_names(module)


def test_core_never_imports_an_extra() -> None:
    # In the core-only run the extras are not installed at all; in both runs importing meshlib
    # must not pull them in.
    extras = os.environ.get(
        "MESHLIB_EXTRA_MODULES", "grpc,prometheus_client,opentelemetry.sdk,typer,rich,spiffe"
    ).split(",")
    code = (
        "import sys, meshlib, meshlib.errors\n"
        f"extras = {extras!r}\n"
        "loaded = [m for m in extras if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)
