"""SPIFFE ID parsing and formatting (SPIFFE ID spec section 2, Istio's ns/sa form)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib.identity import SpiffeId, SpiffeIdError

TD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-_"
SEGMENT_CHARS = TD_CHARS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

trust_domains = st.text(TD_CHARS, min_size=1, max_size=40)
segments = st.text(SEGMENT_CHARS, min_size=1, max_size=20).filter(lambda s: s not in {".", ".."})
paths = st.lists(segments, max_size=6).map(lambda parts: "".join("/" + p for p in parts))


@given(trust_domains, paths)
def test_format_then_parse_round_trips(trust_domain: str, path: str) -> None:
    spiffe_id = SpiffeId(trust_domain, path)
    text = str(spiffe_id)
    assert text == f"spiffe://{trust_domain}{path}"
    assert SpiffeId.parse(text) == spiffe_id
    assert spiffe_id.principal == text.removeprefix("spiffe://")


@given(trust_domains, segments, segments)
def test_istio_workload_ids_expose_namespace_and_service_account(
    trust_domain: str, namespace: str, service_account: str
) -> None:
    spiffe_id = SpiffeId.for_workload(trust_domain, namespace, service_account)
    assert spiffe_id.namespace == namespace
    assert spiffe_id.service_account == service_account
    assert spiffe_id.trust_domain == trust_domain
    assert spiffe_id.uri == f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


@given(st.text(max_size=60))
def test_parse_accepts_only_what_it_can_format_back(text: str) -> None:
    try:
        spiffe_id = SpiffeId.parse(text)
    except SpiffeIdError:
        return
    assert str(spiffe_id) == text


@pytest.mark.parametrize(
    "text",
    [
        "http://cluster.local/ns/a/sa/b",
        "spiffe://",
        "spiffe:///ns/a",
        "spiffe://Cluster.local/ns/a",
        "spiffe://cluster.local/",
        "spiffe://cluster.local/ns//sa/b",
        "spiffe://cluster.local/ns/./sa/b",
        "spiffe://cluster.local/ns/../sa/b",
        "spiffe://cluster.local:8080/ns/a",
        "spiffe://user@cluster.local/ns/a",
        "spiffe://cluster.local/ns/a?x=1",
        "spiffe://cluster.local/ns/a#frag",
        "spiffe://cluster.local/ns/a b",
        "spiffe://clus ter.local",
        "spiffe://cluster.local/" + "a" * 2048,
    ],
)
def test_invalid_ids_are_rejected(text: str) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(text)


def test_path_must_start_with_slash() -> None:
    with pytest.raises(SpiffeIdError, match="must start with"):
        SpiffeId("cluster.local", "ns/a")


@pytest.mark.parametrize(
    "path", ["", "/ns/a", "/ns/a/sa", "/ns/a/sa/b/c", "/x/a/sa/b", "/ns/a/x/b"]
)
def test_non_istio_paths_have_no_namespace(path: str) -> None:
    spiffe_id = SpiffeId("cluster.local", path)
    assert spiffe_id.namespace is None
    assert spiffe_id.service_account is None


def test_trust_domain_only_id() -> None:
    spiffe_id = SpiffeId.parse("spiffe://example.org")
    assert spiffe_id.path == ""
    assert spiffe_id.principal == "example.org"
