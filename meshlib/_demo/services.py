"""The demo's services: tiny ASGI apps in the spirit of Istio's bookinfo and httpbin.

Each answers JSON and reports the SPIFFE ID of the peer it saw (from the mTLS connection, via
``scope["extensions"]["tls"]``). Outbound calls go through the workload's own mesh client, and the
``end-user`` header is forwarded by hand, as bookinfo's services do.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from meshlib._demo.topology import SERVICE_PORT, Workload

if TYPE_CHECKING:
    import httpx

    from meshlib._mesh import Mesh

__all__ = [
    "RATINGS_UNAVAILABLE",
    "REVIEWS_UNAVAILABLE",
    "DemoService",
    "flags_of",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"
REVIEWS_UNAVAILABLE = "Sorry, product reviews are currently unavailable for this book."
MAX_DELAY_SECONDS = 2.0
"""httpbin's /delay is capped so that no demo request can hold a server at shutdown for long."""
FORWARDED = ("end-user",)
STARS = {"v2": "black", "v3": "red"}


def flags_of(response: httpx.Response) -> list[str]:
    """Envoy-style response flags the mesh set (empty for a plain upstream answer)."""
    info = response.extensions.get("meshlib") or {}
    return list(info.get("flags", ()))


class DemoService:
    """One workload's ASGI app; ``workload.app`` picks the behaviour."""

    def __init__(self, workload: Workload, mesh: Mesh) -> None:
        self.workload = workload
        self.mesh = mesh
        self._client: httpx.AsyncClient | None = None
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}
        """Requests seen per key (details' flaky endpoint)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        tls = (scope.get("extensions") or {}).get("tls") or {}
        status, body = await self.handle(
            scope["method"], scope["path"], headers, tls.get("spiffe_id")
        )
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _outbound(self) -> httpx.AsyncClient:
        # Made on first use, inside the server's event loop, and closed at lifespan shutdown.
        if self._client is None:
            self._client = self.mesh.async_http_client()
        return self._client

    async def handle(
        self, method: str, path: str, headers: dict[str, str], peer: str | None
    ) -> tuple[int, dict[str, Any]]:
        base: dict[str, Any] = {"service": self.workload.name, "peer": peer}
        app = self.workload.app
        forwarded = {k: headers[k] for k in FORWARDED if k in headers}
        if path == "/ping":
            return 200, base
        if app == "productpage" and path == "/productpage":
            return 200, base | {"reviews": await self._reviews(forwarded)}
        if app == "productpage" and path.startswith("/admin"):
            return 200, base | {"admin": True}
        if app == "reviews" and path.startswith("/reviews/"):
            return 200, base | {"version": self.workload.version, **await self._ratings(forwarded)}
        if app == "ratings" and path.startswith("/ratings/"):
            return 200, base | {"ratings": {"Reviewer1": 5, "Reviewer2": 4}}
        if app == "details" and path.startswith("/flaky/"):
            return self._flaky(path, base)
        if app == "httpbin" and path.startswith("/delay/"):
            await asyncio.sleep(min(float(path.rsplit("/", 1)[1]), MAX_DELAY_SECONDS))
            return 200, base
        return 404, base | {"error": f"no such path {path}"}

    async def _reviews(self, forwarded: dict[str, str]) -> dict[str, Any]:
        response = await self._outbound().get(
            f"http://reviews:{SERVICE_PORT}/reviews/0", headers=forwarded
        )
        if response.status_code != 200:
            return {
                "error": REVIEWS_UNAVAILABLE,
                "status": response.status_code,
                "flags": flags_of(response),
            }
        reviews: dict[str, Any] = response.json()
        return reviews

    async def _ratings(self, forwarded: dict[str, str]) -> dict[str, Any]:
        if self.workload.version not in STARS:
            return {"ratings": None}  # v1 shows no stars and never calls ratings
        response = await self._outbound().get(
            f"http://ratings:{SERVICE_PORT}/ratings/0", headers=forwarded
        )
        if response.status_code != 200:
            return {
                "ratings": {
                    "error": RATINGS_UNAVAILABLE,
                    "status": response.status_code,
                    "flags": flags_of(response),
                    "body": response.text[:80],
                }
            }
        ratings: dict[str, Any] = response.json()
        return {"ratings": ratings, "color": STARS[self.workload.version]}

    def _flaky(self, path: str, base: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            seen = self.calls[path] = self.calls.get(path, 0) + 1
        if seen == 1:
            return 503, base | {"error": "first call fails"}
        return 200, base | {"calls": seen}
