"""VirtualService match blocks: string matchers and whole-request matching."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._model import Call
from meshlib._policy.matching import (
    HttpMatch,
    MatchKind,
    StringMatch,
    match_request,
    match_string,
    parse_query,
)


class Headers:
    """A HeaderView over pairs: case-insensitive, repeated headers joined with ','."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._values: dict[str, str] = {}
        for key, value in items:
            name = key.lower()
            old = self._values.get(name)
            self._values[name] = value if old is None else f"{old},{value}"

    def get(self, key: str, /) -> str | None:
        return self._values.get(key.lower())

    def __contains__(self, key: object, /) -> bool:
        return isinstance(key, str) and key.lower() in self._values


def make_call(
    path: str = "/",
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] = (),
    authority: str = "reviews:9080",
    scheme: str = "http",
    source_labels: Mapping[str, str] | None = None,
    source_namespace: str | None = None,
) -> Call:
    return Call(
        protocol="http",
        method=method,
        scheme=scheme,
        authority=authority,
        host=authority.partition(":")[0],
        port=9080,
        path=path,
        headers=Headers(headers),
        source_labels=source_labels or {},
        source_namespace=source_namespace,
    )


EXACT = MatchKind.EXACT
PREFIX = MatchKind.PREFIX
REGEX = MatchKind.REGEX
PRESENT = MatchKind.PRESENT


# --- match_string -------------------------------------------------------------------------


def test_exact_prefix_regex_present() -> None:
    assert match_string(StringMatch(EXACT, "/a"), "/a")
    assert not match_string(StringMatch(EXACT, "/a"), "/ab")
    assert match_string(StringMatch(PREFIX, "/foo"), "/foobar")  # plain string prefix
    assert not match_string(StringMatch(PREFIX, "/foo"), "/fo")
    assert match_string(StringMatch(REGEX, "/v[0-9]+"), "/v12")
    assert not match_string(StringMatch(REGEX, "/v[0-9]+"), "/v12/x")  # full match only
    assert match_string(StringMatch(PRESENT), "")


@pytest.mark.parametrize("kind", list(MatchKind))
def test_absent_value_never_matches(kind: MatchKind) -> None:
    assert not match_string(StringMatch(kind, ".*" if kind is REGEX else ""), None)


def test_ignore_case_applies_to_exact_and_prefix() -> None:
    assert match_string(StringMatch(EXACT, "/Reviews", ignore_case=True), "/REVIEWS")
    assert match_string(StringMatch(PREFIX, "/API", ignore_case=True), "/api/v1")
    assert not match_string(StringMatch(EXACT, "/Reviews"), "/reviews")


def test_regex_pattern_compiled_when_missing_and_kept_when_given() -> None:
    given_pattern = re.compile("a+")
    assert StringMatch(REGEX, "a+", pattern=given_pattern).pattern is given_pattern
    assert StringMatch(REGEX, "b+").pattern is not None
    assert StringMatch(EXACT, "x").pattern is None


@given(st.text(max_size=8), st.text(max_size=8))
def test_exact_and_prefix_agree_with_str(expected: str, value: str) -> None:
    assert match_string(StringMatch(EXACT, expected), value) == (value == expected)
    assert match_string(StringMatch(PREFIX, expected), value) == value.startswith(expected)


@given(st.text(alphabet="aAbB/", max_size=6), st.text(alphabet="aAbB/", max_size=8))
def test_ignore_case_agrees_with_lowering(expected: str, value: str) -> None:
    folded = StringMatch(EXACT, expected, ignore_case=True)
    assert match_string(folded, value) == (value.lower() == expected.lower())
    prefix = StringMatch(PREFIX, expected, ignore_case=True)
    assert match_string(prefix, value) == value.lower().startswith(expected.lower())


@given(st.text(max_size=6), st.text(max_size=6))
def test_escaped_literal_regex_is_exact(expected: str, value: str) -> None:
    regex = StringMatch(REGEX, re.escape(expected))
    assert match_string(regex, value) == (value == expected)


# --- match_request ------------------------------------------------------------------------


def test_empty_block_matches_everything() -> None:
    assert match_request(HttpMatch(), make_call("/x?y=1"), 9080)


def test_uri_sees_path_without_query() -> None:
    block = HttpMatch(uri=StringMatch(EXACT, "/productpage"))
    assert match_request(block, make_call("/productpage?u=normal"), 9080)
    assert not match_request(block, make_call("/productpage/x"), 9080)


def test_uri_uses_the_callers_normalized_path() -> None:
    block = HttpMatch(uri=StringMatch(PREFIX, "/admin"))
    call = make_call("/public/../admin")
    assert not match_request(block, call, 9080)
    assert match_request(block, call, 9080, path="/admin")


def test_method_scheme_authority() -> None:
    block = HttpMatch(
        method=StringMatch(EXACT, "POST"),
        scheme=StringMatch(EXACT, "https"),
        authority=StringMatch(EXACT, "reviews:9080"),
    )
    assert match_request(block, make_call(method="POST", scheme="https"), 9080)
    assert not match_request(block, make_call(method="post", scheme="https"), 9080)
    assert not match_request(block, make_call(method="POST", scheme="http"), 9080)
    no_port = make_call(method="POST", scheme="https", authority="reviews")
    assert not match_request(block, no_port, 9080)  # authority includes the port as sent


def test_header_exact_is_case_sensitive() -> None:
    block = HttpMatch(headers=(("end-user", StringMatch(EXACT, "jason")),))
    assert match_request(block, make_call(headers=[("End-User", "jason")]), 9080)
    assert not match_request(block, make_call(headers=[("end-user", "Jason")]), 9080)
    assert not match_request(block, make_call(), 9080)


def test_repeated_headers_are_joined() -> None:
    block = HttpMatch(headers=(("x-tag", StringMatch(EXACT, "a,b")),))
    assert match_request(block, make_call(headers=[("x-tag", "a"), ("x-tag", "b")]), 9080)


def test_header_presence() -> None:
    block = HttpMatch(headers=(("x-debug", StringMatch(PRESENT)),))
    assert match_request(block, make_call(headers=[("x-debug", "")]), 9080)
    assert not match_request(block, make_call(), 9080)


def test_without_headers_value_matcher_treats_missing_as_empty() -> None:
    block = HttpMatch(without_headers=(("end-user", StringMatch(EXACT, "jason")),))
    assert match_request(block, make_call(), 9080)
    assert match_request(block, make_call(headers=[("end-user", "mike")]), 9080)
    assert not match_request(block, make_call(headers=[("end-user", "jason")]), 9080)
    empty = HttpMatch(without_headers=(("end-user", StringMatch(EXACT, "")),))
    assert not match_request(empty, make_call(), 9080)  # "" == "" then inverted


def test_without_headers_presence_matches_only_when_absent() -> None:
    block = HttpMatch(without_headers=(("x-canary", StringMatch(PRESENT)),))
    assert match_request(block, make_call(), 9080)
    assert not match_request(block, make_call(headers=[("x-canary", "1")]), 9080)


def test_query_params() -> None:
    block = HttpMatch(
        query_params=(
            ("v", StringMatch(EXACT, "2")),
            ("debug", StringMatch(EXACT, "")),
            ("trace", StringMatch(PRESENT)),
        )
    )
    assert match_request(block, make_call("/p?v=2&debug&trace=on"), 9080)
    assert not match_request(block, make_call("/p?v=3&debug&trace=on"), 9080)
    assert not match_request(block, make_call("/p?v=2&trace=on"), 9080)
    assert not match_request(block, make_call("/p?v=2&debug"), 9080)


def test_query_not_parsed_without_query_matchers() -> None:
    call = make_call("/p?v=2")
    assert match_request(HttpMatch(headers=()), call, 9080)
    assert call._split is None  # neither path nor query was needed


def test_port_filter() -> None:
    block = HttpMatch(port=9080)
    assert match_request(block, make_call(), 9080)
    assert not match_request(block, make_call(), 8080)


def test_source_filters_checked_only_against_stated_source() -> None:
    block = HttpMatch(source_labels={"app": "productpage"}, source_namespace="default")
    assert match_request(block, make_call(), 9080)  # the call states no source
    good = make_call(source_labels={"app": "productpage", "v": "1"}, source_namespace="default")
    assert match_request(block, good, 9080)
    assert not match_request(block, make_call(source_labels={"app": "other"}), 9080)
    assert not match_request(block, make_call(source_namespace="prod"), 9080)


def test_all_conditions_are_anded() -> None:
    block = HttpMatch(uri=StringMatch(PREFIX, "/api"), headers=(("x", StringMatch(EXACT, "1")),))
    assert match_request(block, make_call("/api/v1", headers=[("x", "1")]), 9080)
    assert not match_request(block, make_call("/web", headers=[("x", "1")]), 9080)
    assert not match_request(block, make_call("/api/v1"), 9080)


# --- parse_query --------------------------------------------------------------------------


def test_parse_query_rules() -> None:
    assert parse_query("") == {}
    assert parse_query("a=1&a=2&&b&c=x%20y") == {"a": "1", "b": "", "c": "x y"}


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), max_size=5))
def test_parse_query_inverts_percent_encoding(params: dict[str, str]) -> None:
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
    assert parse_query(query) == params


@given(
    st.sampled_from([EXACT, PREFIX, PRESENT]),
    st.text(alphabet="ab", max_size=3),
    st.one_of(st.none(), st.text(alphabet="ab", max_size=4)),
)
def test_without_headers_inverts_headers(kind: MatchKind, expected: str, sent: str | None) -> None:
    sm = StringMatch(kind, expected)
    call = make_call(headers=[] if sent is None else [("x", sent)])
    positive = match_request(HttpMatch(headers=(("x", sm),)), call, 9080)
    negative = match_request(HttpMatch(without_headers=(("x", sm),)), call, 9080)
    if sent is None and kind is not PRESENT:
        assert negative == (not match_string(sm, ""))  # missing reads as ""
    else:
        assert negative == (not positive)


@given(
    st.sampled_from([EXACT, PREFIX, REGEX]),
    st.text(alphabet="/abAB?", max_size=5),
    st.text(alphabet="/abAB?#", max_size=8),
    st.booleans(),
    st.one_of(st.none(), st.text(alphabet="/abAB", max_size=6)),
)
def test_uri_only_block_agrees_with_the_general_matcher(
    kind: MatchKind, expected: str, sent: str, ignore_case: bool, normalized: str | None
) -> None:
    # A block with only ``uri`` takes a shortcut; adding a condition every call meets (the
    # method is always there) takes the general road: both must decide alike.
    uri = StringMatch(kind, re.escape(expected) if kind is REGEX else expected, None, ignore_case)
    fast = HttpMatch(uri=uri)
    general = HttpMatch(uri=uri, method=StringMatch(PRESENT))
    assert fast._uri_only
    assert not general._uri_only
    call = make_call(sent or "/")
    assert match_request(fast, call, 9080, normalized) == match_request(
        general, call, 9080, normalized
    )


def test_only_a_lone_uri_takes_the_shortcut() -> None:
    uri = StringMatch(PREFIX, "/")
    assert HttpMatch(uri=uri, name="named")._uri_only
    assert not HttpMatch()._uri_only
    assert not HttpMatch(uri=uri, port=9080)._uri_only
    assert not HttpMatch(uri=uri, headers=(("a", StringMatch(PRESENT)),))._uri_only
    assert not HttpMatch(uri=uri, source_labels={"app": "a"})._uri_only
    assert not HttpMatch(uri=uri, source_namespace="default")._uri_only
    assert not HttpMatch(uri=uri, query_params=(("q", StringMatch(PRESENT)),))._uri_only
