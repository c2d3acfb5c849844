"""meshlib's metadata exchange: encoding, parsing, and who the destination believes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshlib._engine.inbound import InboundRecord
from meshlib._model.call import Call, Peer
from meshlib._telemetry.hooks import (
    MAX_PEER_METADATA,
    PEER_METADATA_HEADER,
    InboundTelemetry,
    OutboundTelemetry,
    encode_peer_metadata,
    parse_peer_metadata,
)
from meshlib._telemetry.metrics import NOOP_SINK, UNKNOWN, RequestLabels, WorkloadLabels
from meshlib._telemetry.tracing import Tracing
from meshlib.asgi import _needs_sanitizing, _sanitized
from meshlib.wsgi import _sanitize

SERVICE = "reviews.default.svc.cluster.local"
OWN = WorkloadLabels.from_workload(
    workload="reviews-v2",
    namespace="default",
    principal="spiffe://cluster.local/ns/default/sa/reviews",
    labels={"app": "reviews", "version": "v2"},
)
PRODUCTPAGE = WorkloadLabels.from_workload(
    workload="productpage-v1",
    namespace="default",
    principal="spiffe://cluster.local/ns/default/sa/productpage",
    labels={"app": "productpage", "version": "v1"},
)
TRUSTED = Peer(spiffe_id="spiffe://cluster.local/ns/shop/sa/productpage", mtls=True)
FOREIGN = Peer(spiffe_id="spiffe://elsewhere.org/ns/shop/sa/productpage", mtls=True)
PLAIN = Peer(address="10.0.0.9")
label_text = st.text(min_size=1, max_size=20).filter(lambda v: v != UNKNOWN)


class Sink:
    def __init__(self) -> None:
        self.seen: list[RequestLabels] = []

    def request(self, labels: RequestLabels, duration_ms: float, req: int, resp: int) -> None:
        self.seen.append(labels)


def inbound() -> tuple[InboundTelemetry, Sink]:
    sink = Sink()
    tracing = Tracing(propagator="tracecontext")
    return InboundTelemetry(sink, tracing, destination=OWN, service=SERVICE), sink  # type: ignore[arg-type]


def served(
    telemetry: InboundTelemetry, sink: Sink, peer: Peer | None, value: str
) -> dict[str, str]:
    the_call = Call(
        protocol="http",
        method="GET",
        scheme="http",
        authority="reviews:9080",
        host="reviews",
        port=9080,
        path="/",
        headers={PEER_METADATA_HEADER: value},
        peer=peer,
    )
    telemetry.on_request(
        InboundRecord(call=the_call, status=200, flags=(), start=1.0, end=1.1, peer=peer)
    )
    return sink.seen[-1].as_dict()


def test_encoding_is_short_and_skips_unknowns() -> None:
    assert encode_peer_metadata(PRODUCTPAGE) == (
        "app=productpage;version=v1;workload=productpage-v1;namespace=default;"
        "service=productpage;revision=v1"
    )
    assert encode_peer_metadata(WorkloadLabels(canonical_revision=UNKNOWN)) is None


@given(app=label_text, version=label_text, workload=label_text, namespace=label_text)
def test_round_trip(app: str, version: str, workload: str, namespace: str) -> None:
    own = WorkloadLabels.from_workload(
        workload=workload, namespace=namespace, labels={"app": app, "version": version}
    )
    encoded = encode_peer_metadata(own)
    assert encoded is not None
    assert encoded.isascii()
    assert "," not in encoded
    assert " " not in encoded
    parsed = parse_peer_metadata(encoded)
    assert parsed["app"] == app
    assert parsed["version"] == version
    assert parsed["workload"] == workload
    assert parsed["namespace"] == namespace


@given(st.text(max_size=200))
def test_parsing_never_fails_and_keeps_only_known_keys(value: str) -> None:
    assert set(parse_peer_metadata(value)) <= {
        "app",
        "version",
        "workload",
        "namespace",
        "service",
        "revision",
    }


def test_parsing_skips_malformed_parts_and_oversized_values() -> None:
    assert parse_peer_metadata("app=a; junk ;color=red;version=;workload=w%3Bx") == {
        "app": "a",
        "workload": "w;x",
    }
    assert parse_peer_metadata("app=a;" + "x" * MAX_PEER_METADATA) == {}


def test_outbound_headers_carry_the_precomputed_metadata() -> None:
    telemetry = OutboundTelemetry(NOOP_SINK, Tracing(propagator="tracecontext"), source=PRODUCTPAGE)
    first = telemetry.outbound_headers(1.0, None)
    assert (PEER_METADATA_HEADER, encode_peer_metadata(PRODUCTPAGE)) in first
    assert telemetry.outbound_headers(2.0, None).count(first[-1]) == 1
    # Outside any inbound request or trace: one constant, which the flow keeps its work for.
    assert telemetry.outbound_headers(2.0, None) is first
    silent = OutboundTelemetry(
        NOOP_SINK,
        Tracing(propagator="tracecontext"),
        source=WorkloadLabels(canonical_revision=UNKNOWN),
    )
    assert all(name != PEER_METADATA_HEADER for name, _ in silent.outbound_headers(1.0, None))


def test_destination_believes_only_mtls_peers_of_its_trust_domain() -> None:
    telemetry, sink = inbound()
    value = encode_peer_metadata(PRODUCTPAGE)
    assert value is not None
    labels = served(telemetry, sink, TRUSTED, value)
    assert labels["source_app"] == "productpage"
    assert labels["source_version"] == "v1"
    assert labels["source_workload"] == "productpage-v1"
    assert labels["source_canonical_service"] == "productpage"
    assert labels["source_canonical_revision"] == "v1"
    # The certificate's namespace wins over the header's.
    assert labels["source_workload_namespace"] == "shop"
    assert labels["source_principal"] == TRUSTED.spiffe_id
    for peer in (FOREIGN, PLAIN, None):
        untrusted = served(telemetry, sink, peer, value)
        assert untrusted["source_app"] == UNKNOWN
        assert untrusted["source_workload"] == UNKNOWN


def test_partial_metadata_fills_what_it_can() -> None:
    telemetry, sink = inbound()
    labels = served(telemetry, sink, TRUSTED, "workload=batch-7")
    assert labels["source_workload"] == "batch-7"
    assert labels["source_app"] == UNKNOWN
    assert labels["source_canonical_service"] == "batch-7"
    assert labels["source_canonical_revision"] == "latest"
    labels = served(telemetry, sink, TRUSTED, "app=ratings")
    assert labels["source_canonical_service"] == "ratings"
    no_namespace = Peer(spiffe_id="spiffe://cluster.local/workload", mtls=True)
    assert (
        served(telemetry, sink, no_namespace, "namespace=ops")["source_workload_namespace"] == "ops"
    )


def test_asgi_and_wsgi_strip_the_header_from_untrusted_callers_only() -> None:
    raw = [(b"x-meshlib-peer-metadata", b"app=x")]
    assert _needs_sanitizing(raw, PLAIN)
    assert _sanitized(raw, PLAIN, "spiffe://cluster.local/ns/default/sa/reviews", False) == []
    kept = _sanitized(raw, TRUSTED, "spiffe://cluster.local/ns/default/sa/reviews", True)
    assert raw[0] in kept
    environ = {"HTTP_X_MESHLIB_PEER_METADATA": "app=x"}
    _sanitize(environ, PLAIN, "spiffe://cluster.local/ns/default/sa/reviews", "cluster.local")
    assert environ == {}
    environ = {"HTTP_X_MESHLIB_PEER_METADATA": "app=x"}
    _sanitize(environ, TRUSTED, "spiffe://cluster.local/ns/default/sa/reviews", "cluster.local")
    assert environ["HTTP_X_MESHLIB_PEER_METADATA"] == "app=x"
