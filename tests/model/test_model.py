"""The neutral values: peers, request targets, endpoints, issues."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshlib._config.issues import ConfigIssue, Severity
from meshlib._model import Call, Endpoint, MonotonicClock, Peer, SystemRandom, split_path
from meshlib.errors import ConfigError


def test_peer_reads_istio_principal_parts() -> None:
    peer = Peer(spiffe_id="spiffe://cluster.local/ns/default/sa/sleep", mtls=True)
    assert peer.principal == "cluster.local/ns/default/sa/sleep"
    assert peer.trust_domain == "cluster.local"
    assert peer.namespace == "default"
    assert peer.service_account == "sleep"


def test_plaintext_peer_has_no_identity() -> None:
    peer = Peer(address="127.0.0.1", port=5000)
    assert peer.principal is None
    assert peer.trust_domain is None
    assert peer.namespace is None
    assert peer.service_account is None


def test_peer_without_namespace_segment() -> None:
    peer = Peer(spiffe_id="spiffe://example.org/workload/x")
    assert peer.namespace is None
    assert peer.trust_domain == "example.org"


@given(
    st.text(alphabet="/abc%.", max_size=20),
    st.text(alphabet="a=&b", max_size=10),
    st.text(max_size=5),
)
def test_split_path_separates_query_and_drops_fragment(path: str, query: str, frag: str) -> None:
    assert split_path(f"{path}?{query}#{frag}") == (path, query)
    assert split_path(path) == (path, "")


def test_call_splits_its_target_once() -> None:
    call = Call(
        protocol="http",
        method="GET",
        scheme="http",
        authority="reviews:9080",
        host="reviews",
        port=9080,
        path="/reviews/1?x=1",
        headers={},  # type: ignore[arg-type]
    )
    assert call.path_only == "/reviews/1"
    assert call.query == "x=1"
    assert call._split is not None


def test_endpoint_prints_like_an_address() -> None:
    assert str(Endpoint("127.0.0.1", 80)) == "127.0.0.1:80"
    assert str(Endpoint("::1", 80)) == "[::1]:80"
    assert Endpoint("10.0.0.1", 9080).key == ("10.0.0.1", 9080)


def test_config_issue_names_file_document_resource_and_field() -> None:
    issue = ConfigIssue(
        Severity.ERROR,
        "unknown field 'weigth'",
        file="mesh/reviews.yaml",
        document=2,
        resource="VirtualService/default/reviews",
        field="spec.http[0].route[1].weigth",
    )
    assert str(issue) == (
        "mesh/reviews.yaml (document 2): error: VirtualService/default/reviews: "
        "spec.http[0].route[1].weigth: unknown field 'weigth'"
    )
    assert str(ConfigIssue(Severity.WARNING, "w")) == "<config>: warning: w"


def test_config_error_lists_every_issue() -> None:
    first = ConfigIssue(Severity.ERROR, "a", file="f")
    second = ConfigIssue(Severity.ERROR, "b", file="g")
    error = ConfigError([first, second])
    assert error.issues == (first, second)
    assert str(error) == "f: error: a\ng: error: b"
    assert str(ConfigError([])) == "invalid configuration"


def test_runtime_randomness_is_seedable_and_clock_moves_forward() -> None:
    one, two = SystemRandom(7), SystemRandom(7)
    assert [one.random() for _ in range(3)] == [two.random() for _ in range(3)]
    assert 0 <= one.randrange(10) < 10
    clock = MonotonicClock()
    assert clock.now() <= clock.now()


def test_outcome_with_response_bytes_keeps_every_other_field() -> None:
    from meshlib._model import FailureKind, Outcome

    first = Outcome(503, FailureKind.RESET, 14, None, 0.5, "reset", 0)
    counted = first.with_response_bytes(42)
    assert counted == Outcome(503, FailureKind.RESET, 14, None, 0.5, "reset", 42)
    assert first.response_bytes == 0
