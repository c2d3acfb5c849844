"""Zero-code adoption: every httpx client (and gRPC channel) created afterwards uses the mesh.

``meshlib.instrument()`` patches ``httpx.Client.__init__`` and ``httpx.AsyncClient.__init__`` so a
client built without a ``transport`` gets the mesh's; a client given its own transport (or
``mounts``, or an in-process ``app``) is left alone, so code that already uses the mesh
explicitly is not wrapped twice. When the Mesh offers ``grpc_channel``/``grpc_aio_channel``,
``grpc.insecure_channel`` and ``grpc.aio.insecure_channel`` return mesh channels too (a
``secure_channel`` is the application's own TLS: untouched). ``uninstrument()`` restores all.

``MeshInstrumentor`` is the same as an ``opentelemetry-instrumentation`` ``BaseInstrumentor``, so
``opentelemetry-instrument python app.py`` adopts the mesh from ``MESHLIB_*`` variables through
the ``opentelemetry_instrumentor`` entry point. It exists only when that package is installed.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from meshlib._mesh import Mesh

__all__ = ["instrument", "instrumented_mesh", "uninstrument"]

logger = logging.getLogger("meshlib.instrument")

ENV_CONFIG: Final = "MESHLIB_CONFIG"
_TRANSPORT_ARGS: Final = ("transport", "mounts", "app")
"""A caller who passed any of these chose where requests go: leave the client alone."""

_lock = threading.Lock()
_originals: dict[tuple[Any, str], Any] = {}
_current: list[Mesh] = []


def instrumented_mesh() -> Mesh | None:
    """The Mesh the patched clients use, or ``None`` when not instrumented."""
    return _current[0] if _current else None


def _patch(owner: Any, name: str, replacement: Any) -> None:
    _originals[(owner, name)] = getattr(owner, name)
    setattr(owner, name, replacement)


def _client_init(original: Callable[..., None], make: Callable[[], Any]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if all(kwargs.get(key) is None for key in _TRANSPORT_ARGS):
            kwargs["transport"] = make()
        original(self, *args, **kwargs)

    return __init__


def _channel_factory(original: Callable[..., Any], make: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def insecure_channel(target: str, options: Any = None, compression: Any = None) -> Any:
        if compression is not None:  # not something the mesh channel takes: keep the original
            return original(target, options, compression)
        return make(target) if options is None else make(target, options=options)

    return insecure_channel


def instrument(mesh: Mesh | None = None) -> Mesh:
    """Route every httpx client (and gRPC channel) created from now on through ``mesh``.

    ``mesh`` defaults to ``Mesh.from_env()`` (``MESHLIB_CONFIG``...). Calling again with another
    Mesh switches to it; returns the Mesh in use.
    """
    import httpx

    if mesh is None:
        from meshlib._mesh import Mesh

        mesh = Mesh.from_env()
    with _lock:
        _restore()
        target = mesh
        _patch(
            httpx.Client,
            "__init__",
            _client_init(httpx.Client.__init__, target.http_transport),
        )
        _patch(
            httpx.AsyncClient,
            "__init__",
            _client_init(httpx.AsyncClient.__init__, target.async_http_transport),
        )
        _patch_grpc(target)
        _current.append(target)
    return mesh


def _patch_grpc(mesh: Mesh) -> None:
    sync_channel = getattr(mesh, "grpc_channel", None)
    aio_channel = getattr(mesh, "grpc_aio_channel", None)
    if sync_channel is None and aio_channel is None:
        return
    try:
        import grpc
    except ImportError:
        return
    if sync_channel is not None:
        _patch(grpc, "insecure_channel", _channel_factory(grpc.insecure_channel, sync_channel))
    if aio_channel is not None:
        from grpc import aio

        _patch(aio, "insecure_channel", _channel_factory(aio.insecure_channel, aio_channel))


def _restore() -> None:
    for (owner, name), original in reversed(list(_originals.items())):
        setattr(owner, name, original)
    _originals.clear()
    _current.clear()


def uninstrument() -> None:
    """Restore the original httpx and gRPC factories (clients already built keep the mesh)."""
    with _lock:
        _restore()
