"""Path normalization (ISTIO-SEMANTICS 5.4): the bypass table and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._policy.paths import (
    DEFAULT_PATH_NORMALIZATION,
    PathNormalization,
    normalize_path,
    parse_path_normalization,
    strip_query,
)

NONE = PathNormalization.NONE
BASE = PathNormalization.BASE
MERGE = PathNormalization.MERGE_SLASHES
DECODE = PathNormalization.DECODE_AND_MERGE_SLASHES


@pytest.mark.parametrize(
    ("raw", "mode", "expected"),
    [
        # the bypass attempts against a rule on /admin
        ("/admin/../public", BASE, "/public"),
        ("/public/../admin", BASE, "/admin"),
        ("/public/./../admin", BASE, "/admin"),
        ("//admin", BASE, "//admin"),
        ("//admin", MERGE, "/admin"),
        ("//admin", DECODE, "/admin"),
        ("/%61dmin", BASE, "/admin"),
        ("/%61DMIN", BASE, "/aDMIN"),
        ("/ADMIN", BASE, "/ADMIN"),
        ("/public/%2e%2e/admin", BASE, "/admin"),
        ("/public/%2E%2E/admin", BASE, "/admin"),
        ("/public/.%2e/admin", BASE, "/admin"),
        ("/%2e%2e/admin", BASE, "/admin"),
        ("/admin?x=/../public", BASE, "/admin"),
        ("/public?/admin", BASE, "/public"),
        ("/admin#/../public", BASE, "/admin"),
        ("/public#?/admin", BASE, "/public"),
        ("/public\\..\\admin", BASE, "/admin"),
        ("/public%2F..%2Fadmin", BASE, "/public%2F..%2Fadmin"),
        ("/public%2f..%2fadmin", MERGE, "/public%2f..%2fadmin"),
        ("/public%2F..%2Fadmin", DECODE, "/admin"),
        ("/public%5C..%5Cadmin", BASE, "/public%5C..%5Cadmin"),
        ("/public%5c..%5cadmin", DECODE, "/admin"),
        ("/a%2F%2Fb", DECODE, "/a/b"),
        # unreserved escapes decode, case-insensitively; others stay as sent
        ("/%41%5a%61%7A%30%39%2D%2E%5F%7E", BASE, "/AZaz09-._~"),
        ("/%7e%5f", BASE, "/~_"),
        ("/a%20b%25c%3F", BASE, "/a%20b%25c%3F"),
        ("/%2561", BASE, "/%2561"),
        ("/%zz%4", BASE, "/%zz%4"),
        # NUL is rejected whatever the mode but NONE
        ("/a%00b", BASE, None),
        ("/a%00b", MERGE, None),
        ("/a%00b", DECODE, None),
        ("/a%00b", NONE, "/a%00b"),
        # RFC 3986 dot segments
        ("/a/b/../c", BASE, "/a/c"),
        ("/a/./b/.", BASE, "/a/b/"),
        ("/a/b/..", BASE, "/a/"),
        ("/..", BASE, "/"),
        ("/../../x", BASE, "/x"),
        ("/.", BASE, "/"),
        ("/", BASE, "/"),
        ("/a..b/.c/d.", BASE, "/a..b/.c/d."),
        ("/a//../b", BASE, "/a/b"),
        ("/a//../b", MERGE, "/a/b"),
        ("/a///b//", MERGE, "/a/b/"),
        # not origin-form: only the query goes
        ("*", BASE, "*"),
        ("a/../b", BASE, "a/../b"),
        # NONE keeps everything but the query and fragment
        ("/a/../b//%61?q", NONE, "/a/../b//%61"),
        ("", BASE, ""),
    ],
)
def test_normalize_table(raw: str, mode: PathNormalization, expected: str | None) -> None:
    assert normalize_path(raw, mode) == expected


def test_case_is_kept() -> None:
    # Istio paths are case-sensitive: /ADMIN is not /admin (Authorizer has an opt-in).
    assert normalize_path("/ADMIN", DECODE) == "/ADMIN"


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("DEFAULT", BASE),
        ("default", BASE),
        (" NONE ", NONE),
        ("BASE", BASE),
        ("MERGE_SLASHES", MERGE),
        ("decode_and_merge_slashes", DECODE),
    ],
)
def test_parse(name: str, mode: PathNormalization) -> None:
    assert parse_path_normalization(name) is mode


def test_parse_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="DECODE_AND_MERGE_SLASHES"):
        parse_path_normalization("SOMETIMES")


def test_default_is_base() -> None:
    assert DEFAULT_PATH_NORMALIZATION is BASE


@pytest.mark.parametrize(
    ("target", "path"),
    [("/a?b#c", "/a"), ("/a#b?c", "/a"), ("/a", "/a"), ("?x", ""), ("/a?", "/a")],
)
def test_strip_query(target: str, path: str) -> None:
    assert strip_query(target) == path


# Tokens never form a new escape when decoded, so one pass must be a fixed point.
TOKENS = ["/", "//", ".", "..", "a", "b", "\\", "%2e", "%2E", "%2f", "%5C", "%61", "%41", "?", "#"]
paths = st.lists(st.sampled_from(TOKENS), max_size=14).map(lambda t: "/" + "".join(t))
modes = st.sampled_from([BASE, MERGE, DECODE])


@given(paths, modes)
def test_idempotent(raw: str, mode: PathNormalization) -> None:
    once = normalize_path(raw, mode)
    assert once is not None
    assert normalize_path(once, mode) == once


@given(paths, modes)
def test_no_dot_segments_left(raw: str, mode: PathNormalization) -> None:
    out = normalize_path(raw, mode)
    assert out is not None
    assert out.startswith("/")
    segments = out.split("/")[1:]
    assert "." not in segments
    assert ".." not in segments
    assert "\\" not in out
    assert "?" not in out
    assert "#" not in out
    if mode is not BASE:
        assert "//" not in out


@given(paths)
def test_decode_leaves_no_encoded_slash(raw: str) -> None:
    out = normalize_path(raw, DECODE)
    assert out is not None
    assert "%2f" not in out.lower()
    assert "%5c" not in out.lower()


segment = st.text(alphabet="abcxyz-_~", min_size=1, max_size=8)


@given(segment, st.sampled_from(["..", "%2e%2e", ".%2E", "%2E."]), modes)
def test_climbing_out_lands_on_target(first: str, dots: str, mode: PathNormalization) -> None:
    assert normalize_path(f"/{first}/{dots}/admin", mode) == "/admin"


@given(segment, st.lists(segment, max_size=4), modes)
def test_prefix_is_kept_without_dots(first: str, rest: list[str], mode: PathNormalization) -> None:
    # A path below /<first>/ that climbs nowhere stays below it.
    raw = "/" + first + "/" + "/".join(rest)
    out = normalize_path(raw, mode)
    assert out is not None
    assert out.startswith(f"/{first}/")


@given(paths)
def test_none_only_strips(raw: str) -> None:
    assert normalize_path(raw, NONE) == strip_query(raw)
