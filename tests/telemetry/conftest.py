"""Fixtures for the telemetry primitives: a clean process default, an SDK tracer when present."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from meshlib._telemetry.tracing import set_tracing


@pytest.fixture(autouse=True)
def _fresh_tracing_default() -> Iterator[None]:
    set_tracing(None)
    yield
    set_tracing(None)


@pytest.fixture
def sdk_spans() -> tuple[Any, Any]:
    """An SDK ``TracerProvider`` (not installed globally) and its in-memory exporter."""
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    exporter = memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    return provider, exporter
