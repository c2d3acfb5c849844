"""Serving an ASGI app over rotating mTLS with uvicorn: STRICT, PERMISSIVE or DISABLE.

- STRICT: TLS with a client certificate chained to the bundle and a SPIFFE ID of the trust domain.
- PERMISSIVE: plaintext and mTLS on the same port, told apart by the first byte (Istio sniffs too);
  the app sees ``scope["extensions"]["mtls"]``.
- DISABLE: plaintext only.

Rotation needs no restart: the listening context's ``sni_callback`` points every handshake at the
newest context.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal

from meshlib._identity.asgi_tls import (
    ConnectionStats,
    make_http_protocol,
    make_sniffing_protocol,
)
from meshlib._identity.rotation import RotatingIdentity
from meshlib._identity.tls import PeerPolicy
from meshlib.errors import MeshError

__all__ = ["MTLS_MODES", "MtlsMode", "Server", "serve", "uvicorn_config_kwargs"]

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
MTLS_MODES: tuple[MtlsMode, ...] = ("STRICT", "PERMISSIVE", "DISABLE")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
READY_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
GRACEFUL_SHUTDOWN_SECONDS = 2
DEFAULT_WS = "auto"
"""uvicorn's websocket implementation: ``auto``, ``websockets``, ``websockets-sansio``, ``wsproto``;
every one gets the peer extensions."""


def uvicorn_config_kwargs(
    identity: RotatingIdentity,
    *,
    require_client_cert: bool = True,
    http: str = "h11",
    policy: PeerPolicy | None = None,
    stats: ConnectionStats | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``/``uvicorn.run`` giving rotating mTLS and the peer.

    ``uvicorn.run(app, host=..., port=..., **uvicorn_config_kwargs(identity))``. ``http`` picks
    uvicorn's ``h11`` or ``httptools`` parser.
    """
    return {
        "ssl_context_factory": identity.server_context_factory(require_client_cert),
        "http": make_http_protocol(identity, kind=http, policy=policy, stats=stats),
    }


def _config(
    app: Any,
    *,
    identity: RotatingIdentity | None,
    host: str,
    port: int,
    mode: MtlsMode,
    log_level: str | int | None,
    http: str,
    ws: str,
    policy: PeerPolicy | None,
    stats: ConnectionStats,
) -> Any:
    import uvicorn

    if mode not in MTLS_MODES:
        raise MeshError(f"mtls_mode must be one of {', '.join(MTLS_MODES)}, not {mode!r}")
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "loop": "asyncio",
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "ws": ws,
    }
    if mode == "DISABLE" or identity is None:
        if mode != "DISABLE":
            raise MeshError(f"mtls_mode {mode} needs an identity")
        options["http"] = make_http_protocol(None, kind=http, stats=stats)
    elif mode == "STRICT":
        options.update(uvicorn_config_kwargs(identity, http=http, policy=policy, stats=stats))
    else:
        protocol = make_http_protocol(identity, kind=http, policy=policy, stats=stats)
        options["http"] = make_sniffing_protocol(
            protocol, lambda: identity.current_server_context(require_client_cert=False)
        )
    return uvicorn.Config(app, **options)


class Server:
    """uvicorn in a background thread, with a handle to wait for it and stop it (tests, demos)."""

    def __init__(
        self,
        app: Any,
        *,
        identity: RotatingIdentity | None,
        host: str = DEFAULT_HOST,
        port: int = 0,
        mtls_mode: MtlsMode = "STRICT",
        port_modes: Mapping[int, MtlsMode] | None = None,
        log_level: str | int | None = "warning",
        http: str = "h11",
        ws: str = DEFAULT_WS,
        policy: PeerPolicy | None = None,
    ) -> None:
        import uvicorn

        self.mode: MtlsMode = (port_modes or {}).get(port, mtls_mode)
        self.stats = ConnectionStats()
        config = _config(
            app,
            identity=identity,
            host=host,
            port=port,
            mode=self.mode,
            log_level=log_level,
            http=http,
            ws=ws,
            policy=policy,
            stats=self.stats,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        scheme = "https" if self.mode == "STRICT" else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve())
        except BaseException as error:  # SystemExit from uvicorn on a bind failure, too
            self._error = error

    def start(self) -> Server:
        self._thread = threading.Thread(target=self._run, name="meshlib-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise MeshError(f"server on {self.host}:{self.port} did not start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise MeshError(f"server on {self.host}:{self.port} not ready in time")
            time.sleep(0.01)
        sockets = self._server.servers[0].sockets
        self.port = sockets[0].getsockname()[1]
        return self

    def run(self) -> None:
        """Serve in this thread until uvicorn exits (it handles signals in the main thread)."""
        self._server.run()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_SECONDS)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    app: Any,
    *,
    identity: RotatingIdentity | None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    mtls_mode: MtlsMode = "STRICT",
    port_modes: Mapping[int, MtlsMode] | None = None,
    log_level: str | int | None = "info",
    http: str = "h11",
    ws: str = DEFAULT_WS,
    policy: PeerPolicy | None = None,
) -> None:
    """Run ``app`` with uvicorn in this thread until interrupted (Ctrl-C, SIGTERM).

    ``port_modes[port]`` overrides ``mtls_mode`` (Istio's ``portLevelMtls``). ``ws`` picks
    uvicorn's websocket implementation.
    """
    server = Server(
        app,
        identity=identity,
        host=host,
        port=port,
        mtls_mode=mtls_mode,
        port_modes=port_modes,
        log_level=log_level,
        http=http,
        ws=ws,
        policy=policy,
    )
    server.run()
