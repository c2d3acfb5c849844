"""The ``opentelemetry-instrument`` entry point (extra ``otel``).

Kept apart from ``instrument.py`` so that importing meshlib never imports
opentelemetry-instrumentation: only the entry point loads this module.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from meshlib._telemetry.instrument import ENV_CONFIG, instrument, logger, uninstrument

if TYPE_CHECKING:
    from meshlib._mesh import Mesh

__all__ = ["MeshInstrumentor"]


class MeshInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``instrument(mesh=...)``, or a Mesh from the environment (``Mesh.from_env()``).

    Without ``MESHLIB_CONFIG`` (and no ``mesh``) it logs a warning and changes nothing, so
    installing meshlib never breaks a service that has not configured it.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("httpx >= 0.27",)

    def _instrument(self, **kwargs: Any) -> None:
        mesh: Mesh | None = kwargs.get("mesh")
        if mesh is None and not os.environ.get(ENV_CONFIG):
            logger.warning("meshlib not instrumented: %s is not set", ENV_CONFIG)
            return
        instrument(mesh)

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument()
