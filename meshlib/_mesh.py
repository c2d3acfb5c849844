"""The Mesh facade: owns the configuration, the identity and the shared per-cluster state, and
builds the clients, servers and middleware that run the flows."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from meshlib._config.hosts import DEFAULT_TRUST_DOMAIN, ROOT_NAMESPACE
from meshlib._config.issues import ConfigIssue
from meshlib._config.source import ConfigSource, MeshSettings
from meshlib._config.watch import ConfigStatus
from meshlib._engine.runtime import OutboundRuntime, build_runtime
from meshlib._engine.snapshot import MeshSnapshot
from meshlib._policy.paths import (
    DEFAULT_PATH_NORMALIZATION,
    PathNormalization,
    parse_path_normalization,
)

if TYPE_CHECKING:
    import httpx

    from meshlib._engine.inbound import InboundHooks
    from meshlib._engine.runtime import TelemetryHooks
    from meshlib._identity.rotation import RotatingIdentity
    from meshlib._identity.serving import Server
    from meshlib._policy.authz import AuthzRequest
    from meshlib._telemetry.hooks import MeshTelemetry
    from meshlib._telemetry.metrics import MetricsServer
    from meshlib.httpx import AsyncMeshTransport, DnsResolver, MeshTransport

__all__ = ["Mesh"]


ConfigPaths = str | Path | Iterable[str | Path]


def _paths(config: ConfigPaths) -> tuple[str | Path, ...]:
    if isinstance(config, str | Path):
        return (config,)
    return tuple(config)


def _normalization(value: PathNormalization | str) -> PathNormalization:
    """Accept meshConfig's names (``BASE``, ``MERGE_SLASHES``, ...) as well as the enum."""
    return value if isinstance(value, PathNormalization) else parse_path_normalization(value)


def parse_labels(text: str) -> dict[str, str]:
    """``app=reviews,version=v1`` -> mapping; empty text -> no labels."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"label {item!r} is not of the form key=value")
        labels[key.strip()] = value.strip()
    return labels


class Mesh:
    """One workload's view of the mesh.

    Build it with :meth:`from_config` (files or folders of Istio YAML, hot-reloaded) or
    :meth:`from_env`. The Mesh is thread-safe and meant to live as long as the process.
    """

    def __init__(
        self,
        source: ConfigSource,
        *,
        workload: str,
        namespace: str,
        service_account: str,
        labels: Mapping[str, str],
        trust_domain: str,
        identity: Any = None,
        dns_names: Iterable[str] = (),
    ) -> None:
        self._source = source
        self.workload = workload
        self.namespace = namespace
        self.service_account = service_account
        self.labels: Mapping[str, str] = dict(labels)
        self.trust_domain = trust_domain
        self.dns_names = tuple(dns_names) if dns_names else self._default_dns_names()
        self._identity = self._rotating(identity)
        self._runtime: OutboundRuntime | None = None
        self._resolver: DnsResolver | None = None
        self._closed = False

    def _default_dns_names(self) -> tuple[str, ...]:
        # Server certificates need DNS SANs for gRPC clients (grpcio cannot skip the hostname
        # check); name the service the way in-mesh clients address it.
        service = self.labels.get("app") or self.workload
        ns = self.namespace
        return (
            f"{service}.{ns}.svc.cluster.local",
            f"{service}.{ns}.svc",
            f"{service}.{ns}",
            service,
        )

    def _rotating(self, identity: Any) -> RotatingIdentity | None:
        if identity is None:
            return None  # plaintext: nothing here may import cryptography, nor _identity
        from meshlib._identity.rotation import RotatingIdentity
        from meshlib._identity.sources import IdentitySource

        if isinstance(identity, RotatingIdentity):
            return identity
        from meshlib._identity.ca import LocalCA

        if isinstance(identity, LocalCA):
            identity = identity.source(self.namespace, self.service_account, self.dns_names)
        if not isinstance(identity, IdentitySource):
            raise TypeError(
                "identity must be a LocalCA, an identity source (FileSource, SpiffeWorkloadAPI,"
                f" ...) or None, not {type(identity).__name__}"
            )
        return RotatingIdentity(identity)

    @property
    def identity(self) -> RotatingIdentity | None:
        """The workload identity in use (rotating), or ``None`` when the mesh runs plaintext."""
        return self._identity

    @classmethod
    def from_config(
        cls,
        config: ConfigPaths,
        *,
        workload: str | None = None,
        namespace: str = "default",
        service_account: str = "default",
        labels: Mapping[str, str] | None = None,
        identity: Any = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        watch: bool = True,
        dns_names: Iterable[str] = (),
        root_namespace: str = ROOT_NAMESPACE,
        path_normalization: PathNormalization | str = DEFAULT_PATH_NORMALIZATION,
        custom_providers: Mapping[str, Callable[[AuthzRequest], bool]] | None = None,
        case_insensitive_paths: bool = False,
    ) -> Mesh:
        """Load Istio YAML from files or folders; raises ``ConfigError`` listing every problem.

        With ``watch`` (the default) edits are picked up: a bad edit keeps the last good
        configuration and shows in :attr:`config_status`. The mesh-wide settings Istio keeps in
        MeshConfig have Istio's defaults: ``root_namespace`` (``istio-system``),
        ``path_normalization`` (``BASE``; also ``NONE``, ``MERGE_SLASHES``,
        ``DECODE_AND_MERGE_SLASHES``), ``custom_providers`` (callables deciding CUSTOM
        AuthorizationPolicies by provider name) and ``case_insensitive_paths`` (off, as in Istio).
        """
        return cls._build(
            functools.partial(ConfigSource.from_paths, _paths(config), watch=watch),
            workload=workload,
            namespace=namespace,
            service_account=service_account,
            labels=labels,
            identity=identity,
            trust_domain=trust_domain,
            dns_names=dns_names,
            settings=MeshSettings(
                root_namespace=root_namespace,
                path_normalization=_normalization(path_normalization),
                custom_providers=dict(custom_providers or {}),
                case_insensitive_paths=case_insensitive_paths,
            ),
        )

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        workload: str | None = None,
        namespace: str = "default",
        service_account: str = "default",
        labels: Mapping[str, str] | None = None,
        identity: Any = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        dns_names: Iterable[str] = (),
        root_namespace: str = ROOT_NAMESPACE,
        path_normalization: PathNormalization | str = DEFAULT_PATH_NORMALIZATION,
        custom_providers: Mapping[str, Callable[[AuthzRequest], bool]] | None = None,
        case_insensitive_paths: bool = False,
    ) -> Mesh:
        """Configuration held in a string (tests, examples); never reloaded."""
        return cls._build(
            functools.partial(ConfigSource.from_text, text),
            workload=workload,
            namespace=namespace,
            service_account=service_account,
            labels=labels,
            identity=identity,
            trust_domain=trust_domain,
            dns_names=dns_names,
            settings=MeshSettings(
                root_namespace=root_namespace,
                path_normalization=_normalization(path_normalization),
                custom_providers=dict(custom_providers or {}),
                case_insensitive_paths=case_insensitive_paths,
            ),
        )

    @classmethod
    def _build(
        cls,
        make_source: Callable[..., ConfigSource],
        *,
        workload: str | None,
        namespace: str,
        service_account: str,
        labels: Mapping[str, str] | None,
        identity: Any,
        trust_domain: str,
        dns_names: Iterable[str],
        settings: MeshSettings,
    ) -> Mesh:
        labels = dict(labels or {})
        workload = workload or labels.get("app", "") or service_account
        source = make_source(
            namespace=namespace,
            workload=workload,
            labels=labels,
            service_account=service_account,
            trust_domain=trust_domain,
            root_namespace=settings.root_namespace,
            path_normalization=settings.path_normalization,
            custom_providers=settings.custom_providers,
            case_insensitive_paths=settings.case_insensitive_paths,
        )
        return cls(
            source,
            workload=workload,
            namespace=namespace,
            service_account=service_account,
            labels=labels,
            trust_domain=trust_domain,
            identity=identity,
            dns_names=dns_names,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Mesh:
        """Build from ``MESHLIB_*`` variables.

        ``MESHLIB_CONFIG`` (paths joined with the OS path separator, required),
        ``MESHLIB_NAMESPACE`` (default ``default``), ``MESHLIB_WORKLOAD``,
        ``MESHLIB_SERVICE_ACCOUNT`` (default ``default``), ``MESHLIB_LABELS``
        (``app=reviews,version=v1``), ``MESHLIB_TRUST_DOMAIN``, ``MESHLIB_WATCH`` (``0`` to
        disable reloading). Keyword arguments override the environment.
        """
        env = os.environ if environ is None else environ
        config = env.get("MESHLIB_CONFIG", "")
        if not config and "config" not in overrides:
            raise ValueError("MESHLIB_CONFIG is not set: name the Istio YAML files or folders")
        settings: dict[str, Any] = {
            "config": [p for p in config.split(os.pathsep) if p],
            "namespace": env.get("MESHLIB_NAMESPACE", "default"),
            "workload": env.get("MESHLIB_WORKLOAD") or None,
            "service_account": env.get("MESHLIB_SERVICE_ACCOUNT", "default"),
            "labels": parse_labels(env.get("MESHLIB_LABELS", "")),
            "trust_domain": env.get("MESHLIB_TRUST_DOMAIN", DEFAULT_TRUST_DOMAIN),
            "watch": env.get("MESHLIB_WATCH", "1") not in {"0", "false", "no"},
        }
        settings.update(overrides)
        return cls.from_config(**settings)

    # --- configuration ---------------------------------------------------------------------

    @property
    def snapshot(self) -> MeshSnapshot:
        """The compiled configuration in use now (immutable; a reload swaps it whole)."""
        return self._source.snapshot

    @property
    def config_status(self) -> ConfigStatus:
        """Generation, reload counts and the last error, if the last reload failed."""
        return self._source.status

    @property
    def config_errors(self) -> tuple[ConfigIssue, ...]:
        """The problems of the last failed reload (empty when the last reload succeeded)."""
        return self._source.status.last_error

    def reload(self) -> bool:
        """Rebuild from the files now; returns whether the new configuration is in use."""
        return self._source.reload().ok

    # --- outbound ------------------------------------------------------------------------

    @property
    def runtime(self) -> OutboundRuntime:
        """What the client drivers share: the snapshot, per-cluster state, identity, hooks."""
        if self._runtime is None:
            from meshlib._telemetry.context import current_deadline
            from meshlib.httpx import DnsResolver

            # DNS-resolved destinations re-resolve off the request path, in one daemon thread.
            self._resolver = DnsResolver()
            self._runtime = build_runtime(
                self._source,
                identity=self._identity,
                inherited_deadline=current_deadline,
                hooks=self._outbound_hooks(),
                resolver=self._resolver,
            )
        return self._runtime

    def explain(
        self,
        request: httpx.Request | str,
        url: str | None = None,
        *,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        """What the mesh would do with one request, without sending it: the route and match
        block, the destination (or the weights it draws from), the endpoints it could pick and
        which are ejected, and the effective timeout, retries, fault, pool and outlier settings.

        ``mesh.explain(request)`` with an ``httpx.Request``, or ``mesh.explain("GET", url,
        headers=...)``.
        """
        from meshlib.httpx import explain_request

        return explain_request(self.runtime, request, url, headers=headers)

    def http_transport(self) -> MeshTransport:
        """An ``httpx`` transport routing through the mesh: ``httpx.Client(transport=...)``."""
        from meshlib.httpx import MeshTransport

        return MeshTransport(self.runtime)

    def async_http_transport(self) -> AsyncMeshTransport:
        """The ``httpx.AsyncClient`` twin of :meth:`http_transport`."""
        from meshlib.httpx import AsyncMeshTransport

        return AsyncMeshTransport(self.runtime)

    def http_client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` whose transport is the mesh; ``kwargs`` go to ``httpx.Client``."""
        import httpx

        return httpx.Client(transport=self.http_transport(), **kwargs)

    def async_http_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` whose transport is the mesh."""
        import httpx

        return httpx.AsyncClient(transport=self.async_http_transport(), **kwargs)

    # --- inbound ---------------------------------------------------------------------------

    def mtls_mode(self, port: int) -> str:
        """``STRICT``, ``PERMISSIVE`` or ``DISABLE`` for a port of this workload, as the
        PeerAuthentication policies in the configuration decide (Istio's default PERMISSIVE)."""
        from meshlib._policy.peerauth import MESH_DEFAULT_MTLS

        resolved = self.snapshot.peer_authentication
        mode = resolved.mode_for(port) if resolved is not None else MESH_DEFAULT_MTLS
        return str(mode.value)

    def serve(
        self,
        app: Any,
        *,
        host: str = "0.0.0.0",
        port: int = 8080,
        log_level: str | int | None = "info",
    ) -> None:
        """Run an ASGI app with uvicorn (extra ``serve``) until interrupted, with rotating mTLS
        and the PeerAuthentication mode of ``port`` (STRICT, PERMISSIVE or DISABLE)."""
        from meshlib._identity.serving import serve

        mode = self.mtls_mode(port)
        serve(
            self._inbound_app(app),
            identity=self._identity,
            host=host,
            port=port,
            mtls_mode="DISABLE" if self._identity is None else mode,  # type: ignore[arg-type]
            log_level=log_level,
        )

    def server(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str | int | None = "warning",
    ) -> Server:
        """Like :meth:`serve`, as a handle: ``start()`` runs uvicorn in a background thread,
        ``stop()`` ends it (tests, demos, embedding). ``port=0`` picks a free port."""
        from meshlib._identity.serving import Server

        mode = "DISABLE" if self._identity is None else self.mtls_mode(port)
        return Server(
            self._inbound_app(app),
            identity=self._identity,
            host=host,
            port=port,
            mtls_mode=mode,  # type: ignore[arg-type]
            log_level=log_level,
        )

    def uvicorn_config(self, *, port: int = 0, http: str = "h11") -> dict[str, Any]:
        """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` when you run uvicorn yourself:
        rotating mTLS (client certificate required unless ``port`` is PERMISSIVE or DISABLE) and
        the peer certificate in ``scope["extensions"]["tls"]`` for the middleware."""
        from meshlib._identity.serving import uvicorn_config_kwargs

        identity = self._require_identity("uvicorn_config")
        strict = self.mtls_mode(port) == "STRICT"
        return uvicorn_config_kwargs(identity, require_client_cert=strict, http=http)

    def hypercorn_config(self, *, port: int = 0) -> Any:
        """A ``hypercorn.config.Config`` with rotating mTLS (set ``bind`` on it as usual).
        hypercorn cannot hand the peer certificate to the app: use uvicorn for authorization."""
        from meshlib._identity.hypercorn_support import hypercorn_config

        identity = self._require_identity("hypercorn_config")
        return hypercorn_config(identity, require_client_cert=self.mtls_mode(port) == "STRICT")

    def grpc_server_credentials(self, *, require_client_auth: bool | None = None) -> Any:
        """Rotating ``grpc.ServerCredentials`` (extra ``grpc``); a client certificate is required
        unless the workload's PeerAuthentication is PERMISSIVE or DISABLE."""
        from meshlib._identity.grpc_credentials import grpc_server_credentials

        identity = self._require_identity("grpc_server_credentials")
        if require_client_auth is None:
            require_client_auth = self.mtls_mode(0) == "STRICT"
        return grpc_server_credentials(identity, require_client_auth=require_client_auth)

    # --- inbound middleware (issue: inbound side) ------------------------------------------
    # (section owned by the inbound work: asgi, wsgi, handler)

    @functools.cached_property
    def inbound_hooks(self) -> InboundHooks | None:
        """Server-side telemetry hooks the inbound drivers call; ``None``: only the trace context
        and deadline are made current (``meshlib.handlers.context_hooks``), nothing is recorded.

        :meth:`configure_telemetry` sets them to its own; assigning replaces them.
        """
        # Built on first read, then an instance attribute (read per inbound request): a
        # client-only mesh never builds its inbound telemetry nor loads the inbound flow.
        telemetry = self._telemetry
        return None if telemetry is None else telemetry.inbound_hooks

    def asgi(self, app: Any, *, exempt_paths: Iterable[str] = ()) -> Any:
        """``app`` (Starlette, FastAPI, any ASGI app) behind PeerAuthentication,
        AuthorizationPolicy, trace context and server telemetry. ``exempt_paths`` (``/healthz``,
        ``/health/*``) skip both checks, for probes. Wrapping twice returns the same app."""
        from meshlib.asgi import asgi

        return asgi(self, app, exempt_paths=exempt_paths)

    def wsgi(self, app: Any, *, exempt_paths: Iterable[str] = ()) -> Any:
        """The WSGI twin of :meth:`asgi` (Flask, Django); ``mesh.serve(mesh.wsgi(app))`` runs it
        on the mTLS server with the verified peer (see ``meshlib.wsgi``)."""
        from meshlib.wsgi import wsgi

        return wsgi(self, app, exempt_paths=exempt_paths)

    def handler(
        self,
        fn: Any = None,
        /,
        *,
        principals: Iterable[str] | None = None,
        timeout: float | None = None,
        carrier: Any = None,
        name: str | None = None,
    ) -> Any:
        """Decorator for entry points that are not HTTP (queue consumers, jobs) and for single
        handlers: ``@mesh.handler`` or ``@mesh.handler(principals=[...], timeout=2)``."""
        from meshlib.handlers import handler

        if fn is not None:
            return handler(self, fn)
        return handler(self, principals=principals, timeout=timeout, carrier=carrier, name=name)

    def _inbound_app(self, app: Any) -> Any:
        # serve/server put every app behind the inbound flow: WSGI apps through the bridge.
        from meshlib.wsgi import MeshWSGIMiddleware, WSGIBridge

        if isinstance(app, WSGIBridge):
            return self.asgi(app)
        if isinstance(app, MeshWSGIMiddleware):
            return WSGIBridge(app)
        if callable(getattr(app, "wsgi_app", None)):  # Flask: a WSGI app, not ASGI
            return WSGIBridge(self.wsgi(app))
        return self.asgi(app)

    # --- gRPC (issue: gRPC) ----------------------------------------------------------------
    # (section owned by the gRPC work: grpc_channel, grpc_aio_channel, server interceptors)

    def grpc_channel(self, target: str, *, options: Any = None) -> Any:
        """A ``grpc.Channel`` routed through the mesh (extra ``grpc``): generated stubs work
        unchanged; every call is routed, balanced, retried and sent over rotating mTLS."""
        from meshlib.grpc import MeshChannel

        return MeshChannel(self.runtime, target, identity=self._identity, options=options)

    def grpc_aio_channel(self, target: str, *, options: Any = None) -> Any:
        """The ``grpc.aio.Channel`` twin of :meth:`grpc_channel` (use it on one event loop)."""
        from meshlib.grpc.aio import MeshAioChannel

        return MeshAioChannel(self.runtime, target, identity=self._identity, options=options)

    def grpc_server_interceptor(self, *, port: int | None = None) -> Any:
        """For ``grpc.server(..., interceptors=[...])``: PeerAuthentication (for ``port``) and
        AuthorizationPolicy on ``POST /pkg.Service/Method``, trace context, server telemetry."""
        from meshlib.grpc import MeshServerInterceptor

        return MeshServerInterceptor(self, port=port)

    def grpc_aio_server_interceptor(self, *, port: int | None = None) -> Any:
        """The ``grpc.aio.server`` twin of :meth:`grpc_server_interceptor`."""
        from meshlib.grpc.aio import AioMeshServerInterceptor

        return AioMeshServerInterceptor(self, port=port)

    # --- observability (issue: observability) ----------------------------------------------
    # (section owned by the observability work: metrics_app, serve_metrics, telemetry wiring)

    _telemetry: MeshTelemetry | None = None

    def configure_telemetry(
        self,
        *,
        metrics: str | None = "default",
        registry: Any = None,
        meter_provider: Any = None,
        tracing_sampling: float = 1.0,
        propagators: str | None = None,
        tracer_provider: Any = None,
        access_log: str | None = None,
        access_log_sample: float = 1.0,
    ) -> None:
        """Choose the telemetry backends (call before serving traffic; a later call swaps them).

        ``metrics``: ``"prometheus"`` (prometheus-client, ``registry`` or a fresh one),
        ``"otel"`` (an OTel meter, ``meter_provider`` or the global one), ``None`` (off), or
        ``"default"`` (prometheus when installed). ``tracing_sampling`` is a percentage (Istio's
        default 1); spans exist only with an OTel SDK tracer provider, propagation always.
        ``propagators``: an ``OTEL_PROPAGATORS``-style list (default B3 multi + W3C).
        ``access_log``: ``"text"`` (Envoy's default line) or ``"json"`` to the
        ``meshlib.access`` logger, keeping ``access_log_sample`` (0..1) of the requests.
        """
        from meshlib._telemetry.hooks import MeshTelemetry, make_sink
        from meshlib._telemetry.tracing import Tracing

        sink = make_sink(metrics, registry=registry, meter_provider=meter_provider)
        tracing = Tracing(
            sampling_percent=tracing_sampling,
            propagator=propagators,
            tracer_provider=tracer_provider,
        )
        if access_log not in (None, "text", "json"):
            raise ValueError(f"access_log must be 'text', 'json' or None, got {access_log!r}")
        log = None
        if access_log is not None:
            from meshlib._telemetry.accesslog import AccessLog

            log = AccessLog("json" if access_log == "json" else "text", sample=access_log_sample)
        telemetry = MeshTelemetry(
            sink=sink,
            tracing=tracing,
            access_log=log,
            workload=self.workload,
            namespace=self.namespace,
            principal=self._spiffe_id(),
            labels=self.labels,
            service=self._service_fqdn(),
            clusters=lambda: None if self._runtime is None else self._runtime.clusters,
        )
        self._watch_state(telemetry)
        self._telemetry = telemetry  # first: building the runtime asks for these hooks
        self.runtime.hooks = telemetry.outbound_hooks  # clients built earlier switch too
        self.__dict__.pop("inbound_hooks", None)  # the next read gives telemetry.inbound_hooks

    @property
    def telemetry(self) -> MeshTelemetry:
        """The telemetry in use (``sink``, ``tracing``, ``access_log``); defaults on first use."""
        if self._telemetry is None:
            self.configure_telemetry()
        assert self._telemetry is not None
        return self._telemetry

    def _outbound_hooks(self) -> TelemetryHooks:
        """What ``runtime`` passes to ``build_runtime(hooks=...)``."""
        return self.telemetry.outbound_hooks

    def _inbound_hooks(self) -> InboundHooks:
        """What the inbound drivers call (``meshlib.handlers.inbound_hooks_of``)."""
        hooks: InboundHooks = self.telemetry.inbound_hooks
        return hooks

    def metrics_app(self) -> Any:
        """An ASGI app serving the mesh metrics in the Prometheus text format (extra
        ``prometheus``); mount it at ``/metrics`` next to the service, or serve it alone."""
        from meshlib._telemetry.metrics import metrics_asgi_app

        return metrics_asgi_app(self.telemetry.sink)

    def serve_metrics(self, port: int = 15020, host: str = "127.0.0.1") -> MetricsServer:
        """Serve ``/metrics`` on its own port from a daemon thread (``port=0`` picks one);
        returns a handle with ``url`` and ``stop()``. 15020 is the port Istio's sidecar merges
        application metrics on."""
        from meshlib._telemetry.metrics import serve_metrics

        return serve_metrics(self.telemetry.sink, host=host, port=port)

    def _spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def _service_fqdn(self) -> str:
        service = self.labels.get("app") or self.workload
        return f"{service}.{self.namespace}.svc.cluster.local"

    def _watch_state(self, telemetry: Any) -> None:
        # Reload counts, certificate expiry and breaker states are read at scrape time: no
        # hot-path cost.
        from meshlib._telemetry.hooks import CounterSync

        sink = telemetry.sink
        on_collect = getattr(sink, "on_collect", None)
        if on_collect is None:
            return
        reloads = CounterSync(sink.config_reload)
        errors = CounterSync(sink.config_error)
        identity = self._identity

        def refresh() -> None:
            status = self.config_status
            reloads.update(status.reloads)
            errors.update(status.errors)
            if identity is not None:
                sink.certificate_expiry(identity.svid.not_after)
            # Circuit breakers (meshlib.circuit_breaker) by name, as they are at scrape time.
            # None exist until meshlib._breaker is loaded: a scrape does not load pybreaker.
            module = sys.modules.get("meshlib._breaker")
            if module is not None:
                for name, breaker in module.breakers().items():
                    sink.breaker_state(name, breaker.state)

        on_collect(refresh)

    def _require_identity(self, what: str) -> RotatingIdentity:
        if self._identity is None:
            raise ValueError(f"{what} needs an identity: pass identity= to the Mesh")
        return self._identity

    # --- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop watching files and release connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._source.close()
        if self._resolver is not None:
            self._resolver.close()
        if self._identity is not None:
            self._identity.close()

    def __enter__(self) -> Mesh:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Mesh {self.namespace}/{self.workload} sa={self.service_account} "
            f"generation={self.snapshot.generation}>"
        )
