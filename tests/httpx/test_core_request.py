"""The unchecked httpcore request builder sets exactly what httpcore's constructors set."""

from __future__ import annotations

from collections.abc import Sequence

import h11
import httpcore
import pytest
from h11._headers import Headers as H11Headers
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlib._model.commands import Attempt
from meshlib._model.endpoint import Endpoint
from meshlib.httpx._common import _CHECKED, core_request, listed_headers, upstream_headers


def test_same_attributes_as_the_checked_constructors() -> None:
    headers = [(b"Host", b"reviews"), (b"x-envoy-attempt-count", b"1")]
    stream = [b"body"]
    extensions = {"timeout": {"read": 1.0}, "sni_hostname": "reviews"}
    fast = core_request(b"GET", b"https", b"10.0.0.1", 9080, b"/x?y=1", headers, stream, extensions)
    checked = httpcore.Request(
        b"GET",
        httpcore.URL(scheme=b"https", host=b"10.0.0.1", port=9080, target=b"/x?y=1"),
        headers=headers,
        content=stream,
        extensions=extensions,
    )
    assert vars(fast.url) == vars(checked.url)
    assert vars(fast).keys() == vars(checked).keys()
    for name in ("method", "headers", "stream", "extensions"):
        assert getattr(fast, name) == getattr(checked, name), name
    assert fast.url == checked.url


# --- upstream_headers: what it hands h11 is what h11 would have made of the list itself -----

_NAME_BYTES = st.sampled_from(
    [b"a", b"Z", b"-", b"_", b"~", b"!", b"0", b" ", b":", b"\x00", b"\r", b"\n", b"\x7f", b"\xe9"]
)
_VALUE_BYTES = st.sampled_from(
    [b"a", b"1", b" ", b"\t", b",", b"\x00", b"\r", b"\n", b"\x0b", b"\x01", b"\x7f", b"\xff"]
)
_KNOWN_NAMES = [b"Host", b"content-length", b"Content-Length", b"transfer-encoding", b"X-Custom"]
_NAMES = st.one_of(st.sampled_from(_KNOWN_NAMES), st.lists(_NAME_BYTES, max_size=6).map(b"".join))
_VALUES = st.one_of(
    st.sampled_from([b"5", b"05", b"5, 5", b"5,6", b"", b"chunked", b"x" * 21, b"1" * 21]),
    st.lists(_VALUE_BYTES, max_size=8).map(b"".join),
)
_HEADER_LISTS = st.lists(st.tuples(_NAMES, _VALUES), max_size=5)
_TEXT = st.sampled_from(
    ["x-custom", "Content-Length", "host", "x-set", "bad name", "authorization"]
)
_TEXT_VALUES = st.sampled_from(["1", "a b", " padded", "a\r\nb", "", "é", "secret"])
_OPS = st.lists(st.tuples(_TEXT, _TEXT_VALUES), max_size=2)


def _h11_view(headers: Sequence[tuple[bytes, bytes]]) -> object:
    """What h11 makes of ``headers``: its triples (raw name, name, value), or its error."""
    try:
        normalized = h11.Request(method=b"GET", target=b"/", headers=headers, http_version=b"1.0")
    except h11.LocalProtocolError as error:
        return ("refused", str(error))
    parsed = normalized.headers
    pairs = zip(parsed.raw_items(), parsed, strict=True)
    return [(raw, name, value) for (raw, _), (name, value) in pairs]


def _attempt(
    set_headers: list[tuple[str, str]] = [],  # noqa: B006 - read only
    add_headers: list[tuple[str, str]] = [],  # noqa: B006
    remove_headers: list[str] = [],  # noqa: B006
    authority: str | None = None,
) -> Attempt:
    return Attempt(
        Endpoint("10.0.0.1", 9080),
        1,
        None,
        set_headers=set_headers,
        add_headers=add_headers,
        remove_headers=remove_headers,
        authority=authority,
    )


@settings(max_examples=500, deadline=None)
@given(
    _HEADER_LISTS,
    _OPS,
    _OPS,
    st.lists(_TEXT, max_size=2),
    st.sampled_from([None, "ratings", "bad host\r"]),
)
def test_upstream_headers_are_what_h11_makes_of_the_list(
    raw: list[tuple[bytes, bytes]],
    set_headers: list[tuple[str, str]],
    add_headers: list[tuple[str, str]],
    remove_headers: list[str],
    authority: str | None,
) -> None:
    attempt = _attempt(set_headers, add_headers, remove_headers, authority)
    try:
        listed = listed_headers(raw, attempt)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):  # the same refusal either way
            upstream_headers(raw, attempt)
        return
    headers = upstream_headers(raw, attempt)
    if isinstance(headers, list):
        assert headers == listed  # handed over as the plain list: h11 judges it itself
        return
    assert isinstance(headers, H11Headers)
    # h11 takes its own Headers as they are: they must be what it would have built.
    assert _h11_view(headers) == _h11_view(listed)


def test_usual_headers_are_vouched_for_and_doubtful_ones_left_to_h11() -> None:
    usual = [
        (b"Host", b"reviews"),
        (b"Accept", b"*/*"),
        (b"Content-Length", b"12"),
        (b"x-gone", b"1"),
        (b"x-b3-tags", b"a b\tc"),
    ]
    attempt = _attempt([("x-envoy-attempt-count", "1")], [("x-add", "2")], ["X-Gone"], "ratings")
    headers = upstream_headers(usual, attempt)
    assert isinstance(headers, H11Headers)
    assert headers.raw_items() == [
        (b"Host", b"ratings"),
        (b"Accept", b"*/*"),
        (b"Content-Length", b"12"),
        (b"x-b3-tags", b"a b\tc"),
        (b"x-envoy-attempt-count", b"1"),
        (b"x-add", b"2"),
    ]
    assert next(iter(headers)) == (b"host", b"ratings")
    for doubtful in (
        [(b"x-evil", b"a\r\nInjected: 1")],
        [(b"bad name", b"1")],
        [(b"x", b" padded")],
        [(b"Transfer-Encoding", b"chunked")],
        [(b"Content-Length", b"1, 1")],
        [(b"Content-Length", b"1"), (b"content-length", b"1")],
        [(b"Content-Length", b"1" * 21)],
    ):
        assert upstream_headers(doubtful, _attempt()) == doubtful
    assert isinstance(upstream_headers([], _attempt([("x-evil", "a\nb")])), list)
    assert isinstance(upstream_headers([], _attempt(add_headers=[("x-evil", "a\nb")])), list)
    assert isinstance(upstream_headers([], _attempt(authority="a\r\nb")), list)


def test_credentials_are_not_remembered() -> None:
    secret = (b"Authorization", b"Bearer one-time-token")
    assert isinstance(upstream_headers([secret, (b"Accept", b"*/*")], _attempt()), H11Headers)
    assert secret not in _CHECKED
    assert (b"Accept", b"*/*") in _CHECKED


def test_the_memory_starts_again_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("meshlib.httpx._common._CHECKED_LIMIT", 2)
    _CHECKED.clear()
    for number in range(5):
        upstream_headers([(b"x-request-id", str(number).encode())], _attempt())
        assert len(_CHECKED) <= 2
    assert (b"x-request-id", b"4") in _CHECKED
