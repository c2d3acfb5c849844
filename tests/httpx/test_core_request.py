"""The unchecked httpcore request builder sets exactly what httpcore's constructors set."""

from __future__ import annotations

import httpcore

from meshlib.httpx._common import core_request


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
