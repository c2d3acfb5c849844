"""Envoy's generated hash cookie (consistentHash.httpCookie with a ttl)."""

from __future__ import annotations

import httpx
from hypothesis import given
from hypothesis import strategies as st

from meshlib._model.call import Call
from meshlib._model.runtime import SystemRandom
from meshlib._policy.balancing import ConsistentHash, generated_cookie, hash_key_for

NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,15}", fullmatch=True)
PATHS = st.none() | st.from_regex(r"/[a-z0-9/]{0,12}", fullmatch=True)


def call_with_cookie(header: str) -> Call:
    return Call("http", "GET", "http", "a", "a", 80, "/", httpx.Headers({"cookie": header}))


@given(NAMES, PATHS, st.integers(min_value=0, max_value=10**6), st.integers(min_value=0))
def test_the_cookie_a_client_sends_back_hashes_like_the_generated_one(
    name: str, path: str | None, ttl: int, seed: int
) -> None:
    policy = ConsistentHash(http_cookie_name=name, http_cookie_path=path, http_cookie_ttl=ttl)
    generated = generated_cookie(policy, SystemRandom(seed))
    assert generated is not None
    key, set_cookie = generated
    # A browser or httpx sends back only name=value (the part before the first ';').
    assert hash_key_for(policy, call_with_cookie(set_cookie.split(";", 1)[0])) == key
    attributes = [part.strip() for part in set_cookie.split(";")[1:]]
    assert attributes[-1] == "HttpOnly"
    assert (f"Max-Age={ttl}" in attributes) == (ttl > 0)  # ttl 0: a session cookie
    assert (f"Path={path}" in attributes) == bool(path)


def test_envoys_format_and_no_cookie_without_a_ttl() -> None:
    policy = ConsistentHash(http_cookie_name="user", http_cookie_path="/api", http_cookie_ttl=60)
    generated = generated_cookie(policy, SystemRandom(3))
    assert generated is not None
    value = generated[1]
    assert value.startswith('user="')
    assert value.endswith('"; Max-Age=60; Path=/api; HttpOnly')
    assert len(value.split('"')[1]) == 16  # 64 random bits in hex
    with_attributes = ConsistentHash(
        http_cookie_name="s",
        http_cookie_ttl=0,
        http_cookie_attributes=(("SameSite", "Strict"), ("Secure", "")),
    )
    generated = generated_cookie(with_attributes, SystemRandom(3))
    assert generated is not None
    assert generated[1].endswith('"; SameSite=Strict; Secure; HttpOnly')
    assert generated_cookie(ConsistentHash(http_cookie_name="user"), SystemRandom(3)) is None
    assert generated_cookie(ConsistentHash(http_header_name="x"), SystemRandom(3)) is None
