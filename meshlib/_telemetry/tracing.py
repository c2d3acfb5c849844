"""Trace propagation choice, request-id sampling, and spans only when someone will read them.

Costs that shape this module (PLUMBING-NOTES §7, DESIGN §7): an OTel extract is 5–15 µs, an
inject 2–7 µs, an SDK span 20–30 µs. So: propagate always (cheaply, see ``context``), decide
sampling from ``x-request-id`` like Envoy so every hop agrees without talking, and build span
objects only when an SDK tracer provider is installed *and* the request is sampled.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from opentelemetry import trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, TextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.util.types import AttributeValue

    from meshlib._model.call import HeaderView

DEFAULT_SAMPLING_PERCENT: Final = 1.0
"""Istio's default (``meshConfig.defaultConfig.tracing.sampling`` / ``PILOT_TRACE_SAMPLING``)."""
SAMPLING_DENOMINATOR: Final = 10_000
"""Envoy compares ``request-id integer % 10000`` with the percentage in hundredths."""
REQUEST_ID_HEX_DIGITS: Final = 8
"""Envoy reads the first 8 hex digits of a UUID request id as the sampling integer."""
TRACER_NAME: Final = "meshlib"
ENV_PROPAGATORS: Final = "OTEL_PROPAGATORS"
GLOBAL_PROPAGATOR: Final = "global"
"""Propagator spec meaning: use ``opentelemetry.propagate.get_global_textmap()`` as it is."""
DEFAULT_PROPAGATORS_WITH_B3: Final = "b3multi,tracecontext,baggage"
DEFAULT_PROPAGATORS: Final = "tracecontext,baggage"

HEADER_REQUEST_ID: Final = "x-request-id"
HEADER_FORCE_TRACE: Final = "x-envoy-force-trace"
B3_PASSTHROUGH_EXTRA: Final = ("b3", "x-b3-parentspanid", "x-b3-flags")
"""B3 headers a propagator reads but does not list in ``fields``; Istio says forward them."""
STATUS_ERROR_FROM: Final = 500


# --- propagators ---------------------------------------------------------------------------


def b3_installed() -> bool:
    try:
        import opentelemetry.propagators.b3  # noqa: F401
    except ImportError:
        return False
    return True


def _named_propagator(name: str) -> TextMapPropagator:
    # The built-in names resolve without entry points (faster, and works from a source tree).
    if name == "tracecontext":
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        return TraceContextTextMapPropagator()
    if name == "baggage":
        from opentelemetry.baggage.propagation import W3CBaggagePropagator

        return W3CBaggagePropagator()
    if name in {"b3", "b3multi"}:
        try:
            from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
        except ImportError as exc:
            raise ValueError(
                f"propagator {name!r} needs opentelemetry-propagator-b3 (extra 'otel')"
            ) from exc
        return B3SingleFormat() if name == "b3" else B3MultiFormat()
    from importlib.metadata import entry_points

    found = entry_points(group="opentelemetry_propagator", name=name)
    for entry in found:
        factory = entry.load()
        propagator: TextMapPropagator = factory()
        return propagator
    raise ValueError(f"propagator {name!r} not found: misspelled or not installed")


def select_propagator(
    spec: str | None = None, *, environ: Mapping[str, str] | None = None
) -> TextMapPropagator:
    """The propagator meshlib extracts and injects with.

    ``spec`` is a comma-separated OTel list (``tracecontext,baggage,b3multi``, ``b3`` = single
    header, ``none``) or ``"global"``. ``None`` means: ``OTEL_PROPAGATORS`` when set (through
    the global textmap, so ``set_global_textmap`` is honoured too), else meshlib's default —
    B3 multi (when installed), W3C tracecontext and baggage, W3C last so it wins when both
    arrive and disagree.
    """
    if spec is None:
        env = os.environ if environ is None else environ
        if env.get(ENV_PROPAGATORS):
            spec = GLOBAL_PROPAGATOR
        else:
            spec = DEFAULT_PROPAGATORS_WITH_B3 if b3_installed() else DEFAULT_PROPAGATORS
    if spec == GLOBAL_PROPAGATOR:
        from opentelemetry import propagate

        return propagate.get_global_textmap()
    names = [part.strip().lower() for part in spec.split(",") if part.strip()]
    if "none" in names:
        return CompositePropagator([])
    return CompositePropagator([_named_propagator(name) for name in names])


def passthrough_fields(propagator: TextMapPropagator) -> tuple[str, ...]:
    """Headers to copy verbatim from inbound to outbound when nothing changed the context."""
    fields = {field.lower() for field in propagator.fields}
    if "x-b3-traceid" in fields or "b3" in fields:
        fields.update(B3_PASSTHROUGH_EXTRA)
    return tuple(sorted(fields))


class HeaderGetter(Getter["HeaderView"]):
    """OTel getter over a read-only header view (no copy of the headers)."""

    def get(self, carrier: HeaderView, key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: HeaderView) -> list[str]:
        # Only needed by propagators that scan for prefixes; none of the defaults do.
        return []


HEADER_GETTER: Final = HeaderGetter()


# --- sampling ------------------------------------------------------------------------------


def new_request_id() -> str:
    """A fresh ``x-request-id``: a UUIDv4, as Envoy generates."""
    return str(uuid.uuid4())


def request_id_bucket(request_id: str) -> int:
    """The request id's sampling integer in ``[0, 10000)``.

    Envoy (``use_request_id_for_trace_sampling``) reads the first 8 hex digits of the UUID;
    ids that are not hex fall back to CRC-32, still stable so every hop agrees.
    """
    head = request_id[:REQUEST_ID_HEX_DIGITS]
    try:
        value = int(head, 16) if len(head) == REQUEST_ID_HEX_DIGITS else -1
    except ValueError:
        value = -1
    if value < 0:
        value = zlib.crc32(request_id.encode("utf-8", "surrogatepass"))
    return value % SAMPLING_DENOMINATOR


def sampling_threshold(percent: float) -> int:
    """Percent (0–100) as the number of buckets out of 10000 that are sampled."""
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"sampling percent must be within 0..100, got {percent}")
    return round(percent * SAMPLING_DENOMINATOR / 100.0)


def request_id_sampled(request_id: str, percent: float) -> bool:
    return request_id_bucket(request_id) < sampling_threshold(percent)


# --- spans ---------------------------------------------------------------------------------


def span_name(fqdn: str, port: int, pattern: str = "/*") -> str:
    """Istio's span name: ``reviews.default.svc.cluster.local:9080/*``."""
    return f"{fqdn}:{port}{pattern}"


class MeshSpan:
    """A sampled client or server span; retries and ejections become span events."""

    __slots__ = ("_ended", "context", "span")

    def __init__(self, span: trace.Span, context: Context) -> None:
        self.span = span
        self.context = context
        """An OTel context holding this span: inject it into the upstream request."""
        self._ended = False

    def retry(self, attempt: int, reason: str) -> None:
        self.span.add_event("retry", {"attempt": attempt, "reason": reason})

    def ejection(self, host: str, cluster: str) -> None:
        self.span.add_event("outlier_ejection", {"host": host, "upstream_cluster": cluster})

    def event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        self.span.add_event(name, attributes)

    def finish(
        self,
        *,
        status_code: int,
        response_flags: str = "-",
        grpc_status: int | None = None,
        upstream_host: str | None = None,
        request_size: int | None = None,
        response_size: int | None = None,
    ) -> None:
        """Set the response attributes and end the span (once; later calls do nothing)."""
        if self._ended:
            return
        self._ended = True
        span = self.span
        span.set_attribute("http.status_code", status_code)
        span.set_attribute("response_flags", response_flags)
        if grpc_status is not None:
            span.set_attribute("grpc.status_code", grpc_status)
        if upstream_host is not None:
            span.set_attribute("upstream_address", upstream_host)
        if request_size is not None:
            span.set_attribute("request_size", request_size)
        if response_size is not None:
            span.set_attribute("response_size", response_size)
        failed = status_code == 0 or status_code >= STATUS_ERROR_FROM
        if failed or (grpc_status is not None and grpc_status != 0):
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end()

    def end(self) -> None:
        """End without a response (cancelled, or the driver had none to report)."""
        if not self._ended:
            self._ended = True
            self.span.end()


_NOOP_PROVIDERS: Final = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_NO_GLOBAL: Final = trace.NoOpTracerProvider()
"""Marks "no global provider was set when last looked"."""
_NOT_EXPOSED: Final = object()


class Tracing:
    """Process or Mesh tracing settings: propagator, sampling percentage, tracer provider."""

    __slots__ = (
        "_active",
        "_explicit_provider",
        "_seen_provider",
        "_threshold",
        "_tracer",
        "passthrough",
        "propagator",
        "sampling_percent",
    )

    def __init__(
        self,
        *,
        sampling_percent: float = DEFAULT_SAMPLING_PERCENT,
        propagator: TextMapPropagator | str | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._threshold = sampling_threshold(sampling_percent)
        self.sampling_percent = sampling_percent
        if propagator is None or isinstance(propagator, str):
            propagator = select_propagator(propagator)
        self.propagator: TextMapPropagator = propagator
        self.passthrough: tuple[str, ...] = passthrough_fields(propagator)
        self._explicit_provider = tracer_provider
        self._seen_provider: trace.TracerProvider | None = None
        # Under _NO_GLOBAL the global is re-read on every call (a module attribute), so a
        # provider installed later is picked up.
        self._active = False
        self._tracer: trace.Tracer | None = None

    def active(self) -> bool:
        """Whether spans could be recorded: a non-no-op tracer provider is installed.

        Cached per provider object. ``trace.get_tracer_provider()`` looks ``os.environ`` up on
        every call while no provider is set (~1 µs), so OTel's module global is read first.
        """
        provider = self._explicit_provider
        if provider is None:
            global_provider: object = getattr(trace, "_TRACER_PROVIDER", _NOT_EXPOSED)
            if global_provider is None and self._seen_provider is _NO_GLOBAL:
                return False
            if isinstance(global_provider, trace.TracerProvider):
                provider = global_provider
            else:
                provider = trace.get_tracer_provider()
                if isinstance(provider, trace.ProxyTracerProvider):
                    # Nothing set (not even through OTEL_PYTHON_TRACER_PROVIDER): remember that.
                    self._seen_provider = _NO_GLOBAL
                    self._active = False
                    self._tracer = None
                    return False
        if provider is not self._seen_provider:
            self._seen_provider = provider
            self._active = not isinstance(provider, _NOOP_PROVIDERS)
            self._tracer = provider.get_tracer(TRACER_NAME) if self._active else None
        return self._active

    def sampled(
        self, request_id: str, *, parent_sampled: bool | None = None, forced: bool = False
    ) -> bool:
        """The trace decision: a caller's decision wins (B3/W3C sampled flag, force-trace),
        else the request-id bucket against the percentage (every hop computes the same)."""
        if forced:
            return True
        if parent_sampled is not None:
            return parent_sampled
        return request_id_bucket(request_id) < self._threshold

    def sampled_for(self, request_id: str, headers: HeaderView, parent: Context | None) -> bool:
        parent_sampled: bool | None = None
        if parent is not None:
            span_context = trace.get_current_span(parent).get_span_context()
            if span_context.is_valid:
                parent_sampled = span_context.trace_flags.sampled
        forced = headers.get(HEADER_FORCE_TRACE) is not None
        return self.sampled(request_id, parent_sampled=parent_sampled, forced=forced)

    def extract(self, headers: HeaderView) -> Context:
        return self.propagator.extract(headers, getter=HEADER_GETTER)

    def inject(self, context: Context | None) -> list[tuple[str, str]]:
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=context)
        return list(carrier.items())

    def _start(
        self,
        kind: trace.SpanKind,
        name: str,
        parent: Context | None,
        attributes: Mapping[str, AttributeValue],
    ) -> MeshSpan:
        tracer = self._tracer
        assert tracer is not None  # set together with _active
        span = tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        return MeshSpan(span, trace.set_span_in_context(span, parent))

    def start_client_span(
        self,
        *,
        fqdn: str,
        port: int,
        method: str,
        url: str,
        cluster: str,
        request_id: str | None = None,
        protocol: str = "http",
        peer_address: str | None = None,
        parent: Context | None = None,
        extra: Iterable[tuple[str, AttributeValue]] = (),
    ) -> MeshSpan | None:
        """A CLIENT span named like Istio's; ``None`` when no SDK provider is installed.

        Call it only for sampled requests. ``parent`` defaults to the current OTel context
        (the inbound server span or the caller's remote context).
        """
        if not self.active():
            return None
        attributes: dict[str, AttributeValue] = {
            "http.method": method,
            "http.url": url,
            "http.protocol": protocol,
            "upstream_cluster": cluster,
            "upstream_cluster.name": cluster,
            "component": "proxy",
        }
        if request_id is not None:
            attributes["guid:x-request-id"] = request_id
        if peer_address is not None:
            attributes["peer.address"] = peer_address
        attributes.update(extra)
        return self._start(trace.SpanKind.CLIENT, span_name(fqdn, port), parent, attributes)

    def start_server_span(
        self,
        *,
        fqdn: str,
        port: int,
        method: str,
        url: str,
        request_id: str | None = None,
        protocol: str = "http",
        peer_address: str | None = None,
        peer_principal: str | None = None,
        parent: Context | None = None,
        extra: Sequence[tuple[str, AttributeValue]] = (),
    ) -> MeshSpan | None:
        """A SERVER span (``inbound|<port>||`` cluster), child of the extracted context."""
        if not self.active():
            return None
        attributes: dict[str, AttributeValue] = {
            "http.method": method,
            "http.url": url,
            "http.protocol": protocol,
            "upstream_cluster": f"inbound|{port}||",
            "upstream_cluster.name": f"inbound|{port}||",
            "component": "proxy",
        }
        if request_id is not None:
            attributes["guid:x-request-id"] = request_id
        if peer_address is not None:
            attributes["peer.address"] = peer_address
        if peer_principal is not None:
            attributes["peer.principal"] = peer_principal
        attributes.update(extra)
        return self._start(trace.SpanKind.SERVER, span_name(fqdn, port), parent, attributes)


_DEFAULT: list[Tracing | None] = [None]
"""The process default; a one-slot list rather than a ``global`` statement."""


def get_tracing() -> Tracing:
    """The process default settings (built on first use; ``OTEL_PROPAGATORS`` read then)."""
    tracing = _DEFAULT[0]
    if tracing is None:
        tracing = _DEFAULT[0] = Tracing()
    return tracing


def set_tracing(tracing: Tracing | None) -> None:
    """Replace the process default (``None``: rebuild from the environment on next use)."""
    _DEFAULT[0] = tracing


def tracing_active() -> bool:
    return get_tracing().active()
