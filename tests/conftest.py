"""Shared fixtures and the switch between the core-only and the all-extras test runs."""

from __future__ import annotations

import importlib.util

import pytest


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # "extras" tests need optional dependencies; the core-only run skips them, saying why.
    missing = [
        name for name in ("grpc", "prometheus_client", "typer", "rich") if not has_module(name)
    ]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"core-only install: {', '.join(missing)} not installed")
    for item in items:
        if "extras" in item.keywords:
            item.add_marker(skip)
