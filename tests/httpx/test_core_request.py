"""The unchecked httpcore request builder sets exactly what httpcore's constructors set."""

from __future__ import annotations

from collections.abc import Sequence

import h11
import httpcore
from h11._headers import Headers as H11Headers
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlib.httpx._common import checked_headers, core_request


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


# --- checked_headers: what it hands h11 is what h11 would have made of the list itself ------

_NAME_BYTES = st.sampled_from(
    [b"a", b"Z", b"-", b"_", b"~", b"!", b"0", b" ", b":", b"\x00", b"\r", b"\n", b"\x7f", b"\xe9"]
)
_VALUE_BYTES = st.sampled_from(
    [b"a", b"1", b" ", b"\t", b",", b"\x00", b"\r", b"\n", b"\x0b", b"\x01", b"\x7f", b"\xff"]
)
_NAMES = st.one_of(
    st.sampled_from(
        [b"Host", b"content-length", b"Content-Length", b"transfer-encoding", b"X-Custom"]
    ),
    st.lists(_NAME_BYTES, max_size=6).map(b"".join),
)
_VALUES = st.one_of(
    st.sampled_from([b"5", b"05", b"5, 5", b"5,6", b"", b"chunked", b"x" * 21, b"1" * 21]),
    st.lists(_VALUE_BYTES, max_size=8).map(b"".join),
)
_HEADER_LISTS = st.lists(st.tuples(_NAMES, _VALUES), max_size=5)


def _h11_view(headers: Sequence[tuple[bytes, bytes]]) -> object:
    """What h11 makes of ``headers``: its triples (raw name, name, value), or its error."""
    try:
        normalized = h11.Request(method=b"GET", target=b"/", headers=headers, http_version=b"1.0")
    except h11.LocalProtocolError as error:
        return ("refused", str(error))
    parsed = normalized.headers
    pairs = zip(parsed.raw_items(), parsed, strict=True)
    return [(raw, name, value) for (raw, _), (name, value) in pairs]


@settings(max_examples=400, deadline=None)
@given(_HEADER_LISTS)
def test_checked_headers_agree_with_h11(headers: list[tuple[bytes, bytes]]) -> None:
    checked = checked_headers(headers)
    if checked is headers:
        return  # handed over as the plain list: h11 checks it itself
    assert isinstance(checked, H11Headers)
    # h11 takes its own Headers as they are: they must be what it would have built.
    assert _h11_view(checked) == _h11_view(headers)


def test_usual_headers_are_vouched_for_and_doubtful_ones_left_to_h11() -> None:
    usual = [
        (b"Host", b"reviews"),
        (b"Accept", b"*/*"),
        (b"Content-Length", b"12"),
        (b"x-envoy-attempt-count", b"1"),
        (b"x-b3-tags", b"a b\tc"),
    ]
    checked = checked_headers(usual)
    assert isinstance(checked, H11Headers)
    assert checked.raw_items() == usual
    assert next(iter(checked)) == (b"host", b"reviews")
    for doubtful in (
        [(b"x-evil", b"a\r\nInjected: 1")],
        [(b"bad name", b"1")],
        [(b"x", b" padded")],
        [(b"Transfer-Encoding", b"chunked")],
        [(b"Content-Length", b"1, 1")],
        [(b"Content-Length", b"1"), (b"content-length", b"1")],
        [(b"Content-Length", b"1" * 21)],
    ):
        assert checked_headers(doubtful) is doubtful
