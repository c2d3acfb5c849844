"""Istio's host-name rules: short-name expansion, wildcards, authorities and exportTo."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._config.hosts import (
    expand_host,
    is_ip,
    is_visible,
    is_wildcard,
    normalize_export_to,
    service_aliases,
    spiffe_id,
    split_authority,
    wildcard_covers,
    wildcard_keys,
)

label = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
namespace = label


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("reviews", "reviews.prod.svc.cluster.local"),
        ("Reviews", "reviews.prod.svc.cluster.local"),
        ("reviews.prod", "reviews.prod"),
        ("reviews.default.svc.cluster.local", "reviews.default.svc.cluster.local"),
        ("*", "*"),
        ("*.example.com", "*.example.com"),
        ("10.0.0.1", "10.0.0.1"),
        ("::1", "::1"),
        ("", ""),
    ],
)
def test_expand_host(host: str, expected: str) -> None:
    assert expand_host(host, "prod") == expected


@given(label, namespace)
def test_short_names_get_the_rule_namespace(name: str, ns: str) -> None:
    expanded = expand_host(name, ns)
    assert expanded == f"{name}.{ns}.svc.cluster.local"
    assert expand_host(expanded, "other") == expanded  # idempotent, whatever the namespace


@given(label, label, namespace)
def test_dotted_names_are_never_expanded(first: str, second: str, ns: str) -> None:
    assert expand_host(f"{first}.{second}", ns) == f"{first}.{second}"


@given(label, namespace)
def test_aliases_of_a_service(name: str, ns: str) -> None:
    fqdn = f"{name}.{ns}.svc.cluster.local"
    assert service_aliases(fqdn, ns) == [f"{name}.{ns}", f"{name}.{ns}.svc", name]
    assert name not in service_aliases(fqdn, ns + "x")


def test_aliases_only_for_cluster_services() -> None:
    assert service_aliases("api.example.com", "default") == []
    assert service_aliases("*.default.svc.cluster.local", "default") == []
    assert service_aliases("a.b.c.svc.cluster.local", "default") == []


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("reviews", ("reviews", None)),
        ("Reviews:9080", ("reviews", 9080)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::1]", ("::1", None)),
        ("[::1", ("[::1", None)),
        ("::1", ("::1", None)),
        ("host:notaport", ("host", None)),
        ("host:0", ("host", None)),
        ("host:70000", ("host", None)),
    ],
)
def test_split_authority(authority: str, expected: tuple[str, int | None]) -> None:
    assert split_authority(authority) == expected


@given(label, st.integers(1, 65535))
def test_split_authority_round_trip(host: str, port: int) -> None:
    assert split_authority(f"{host}:{port}") == (host, port)


@given(st.lists(label, min_size=1, max_size=5))
def test_every_wildcard_key_covers_the_host(labels: list[str]) -> None:
    host = ".".join(labels)
    keys = list(wildcard_keys(host))
    assert keys[-1] == "*"
    assert len(keys) == len(labels)
    assert all(wildcard_covers(key, host) for key in keys)
    assert keys == sorted(keys, key=len, reverse=True)  # most specific first


def test_wildcard_keys_of_a_wildcard() -> None:
    assert list(wildcard_keys("*.a.example.com")) == ["*.example.com", "*.com", "*"]


@pytest.mark.parametrize(
    ("pattern", "host", "covers"),
    [
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "*.a.example.com", True),
        ("*.a.example.com", "*.example.com", False),
        ("*", "anything", True),
        ("a.example.com", "a.example.com", True),
        ("a.example.com", "b.example.com", False),
    ],
)
def test_wildcard_covers(pattern: str, host: str, covers: bool) -> None:
    assert wildcard_covers(pattern, host) is covers


@pytest.mark.parametrize(
    ("export_to", "resource_ns", "client_ns", "visible"),
    [
        (None, "a", "b", True),
        ([], "a", "b", True),
        (["*"], "a", "b", True),
        (["."], "a", "a", True),
        (["."], "a", "b", False),
        (["b"], "a", "b", True),
        (["c"], "a", "b", False),
        (["~"], "a", "a", False),
        ([".", "c"], "a", "c", True),
    ],
)
def test_export_to(
    export_to: list[str] | None, resource_ns: str, client_ns: str, visible: bool
) -> None:
    assert is_visible(export_to, resource_ns, client_ns) is visible


@given(st.lists(st.sampled_from([".", "*", "~", "a", "b"]), max_size=3), namespace, namespace)
def test_export_to_properties(export_to: list[str], resource_ns: str, client_ns: str) -> None:
    visible = is_visible(export_to, resource_ns, client_ns)
    if "~" in export_to:
        assert not visible
    elif not export_to or "*" in export_to:
        assert visible
    assert normalize_export_to(export_to) <= frozenset(export_to) | {"*"}


def test_is_wildcard() -> None:
    assert is_wildcard("*.example.com")
    assert is_wildcard("*")
    assert not is_wildcard("example.com")


def test_ip_and_spiffe() -> None:
    assert is_ip("[::1]")
    assert is_ip("127.0.0.1")
    assert not is_ip("reviews")
    assert (
        spiffe_id("cluster.local", "default", "sleep")
        == "spiffe://cluster.local/ns/default/sa/sleep"
    )
