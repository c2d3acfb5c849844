"""``mesh.explain`` for httpx requests: build the neutral call, then ask the pure explainer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from meshlib.httpx._common import build_call

if TYPE_CHECKING:
    from meshlib._engine.runtime import OutboundRuntime

__all__ = ["explain_request"]

Headers = Mapping[str, str] | Sequence[tuple[str, str]]


def explain_request(
    runtime: OutboundRuntime,
    request: httpx.Request | str,
    url: str | httpx.URL | None = None,
    *,
    headers: Headers | None = None,
) -> dict[str, Any]:
    """What the mesh would do with ``request`` (or ``method`` + ``url`` + ``headers``).

    Nothing is sent and no state changes; see docs/traffic.md ("Explain") for the keys.
    The caller's own timeout is read from ``request.extensions["timeout"]`` when present.
    """
    # Loaded on first use: a client that only sends requests never needs the explainer.
    from meshlib._engine.explain import explain_call

    if isinstance(request, str):
        if url is None:
            raise TypeError("explain_request(runtime, method, url): the url is missing")
        request = httpx.Request(request, url, headers=headers)
    elif url is not None or headers is not None:
        raise TypeError("pass either an httpx.Request or method, url and headers")
    timeouts: Mapping[str, float | None] | None = request.extensions.get("timeout")
    caller = timeouts.get("read") if timeouts is not None else None
    return explain_call(build_call(request), runtime, caller_timeout=caller)
