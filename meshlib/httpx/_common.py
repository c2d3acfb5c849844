"""What the sync and async httpx drivers share: calls, headers, outcomes, errors, replies."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpcore
import httpx

from meshlib._model.call import NO_LABELS, Call
from meshlib._model.commands import Attempt, Reply
from meshlib._model.outcome import FailureKind, Outcome

__all__ = [
    "EXTENSION",
    "RawHeaders",
    "attempt_timeouts",
    "build_call",
    "core_request",
    "failure_kind",
    "listed_headers",
    "local_response",
    "raise_for",
    "response_info",
    "upstream_headers",
    "with_response_ops",
]

EXTENSION = "meshlib"
"""``response.extensions["meshlib"]``: flags and attempts (Envoy never sends flags to clients)."""
DEFAULT_PORTS: Mapping[str, int] = {"http": 80, "https": 443}
TIMEOUT_KEYS = ("connect", "read", "write", "pool")

_FAILURES: dict[type[BaseException], FailureKind] = {
    httpcore.ConnectError: FailureKind.CONNECT_FAILURE,
    httpcore.ConnectTimeout: FailureKind.CONNECT_FAILURE,
    httpcore.ReadTimeout: FailureKind.TIMEOUT,
    httpcore.WriteTimeout: FailureKind.TIMEOUT,
    httpcore.PoolTimeout: FailureKind.TIMEOUT,
    # Under TLS 1.3 a rejected client certificate also surfaces as one of these two.
    httpcore.RemoteProtocolError: FailureKind.RESET,
    httpcore.ReadError: FailureKind.RESET,
    httpcore.WriteError: FailureKind.RESET,
}

_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.RequestError]], ...] = (
    # Most specific first: the first isinstance match wins.
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
)


class RawHeaders:
    """A HeaderView over httpcore's ``[(name, value)]`` bytes pairs, built without copying."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def get(self, key: str, /) -> str | None:
        wanted = key.lower().encode("ascii")
        values = [v.decode("latin-1") for k, v in self._raw if k.lower() == wanted]
        if not values:
            return None
        return values[0] if len(values) == 1 else ",".join(values)

    def __contains__(self, key: object, /) -> bool:
        if not isinstance(key, str):
            return False
        wanted = key.lower().encode("ascii")
        return any(k.lower() == wanted for k, _ in self._raw)


def build_call(request: httpx.Request) -> Call:
    """The neutral view of an httpx request; raises httpx's own error for an unusable URL."""
    url = request.url
    scheme = url.scheme
    default_port = DEFAULT_PORTS.get(scheme)
    if default_port is None:
        raise httpx.UnsupportedProtocol(
            f"Request URL has an unsupported protocol '{scheme}://'.", request=request
        )
    # raw_host skips IDNA decoding: mesh names are ASCII (an IDNA name stays xn--, as sent).
    host = url.raw_host.decode("ascii")
    if not host:
        raise httpx.UnsupportedProtocol("Request URL is missing a host.", request=request)
    explicit_port = url.port
    port = explicit_port or default_port
    headers = request.headers
    host_header, length = _host_and_length(headers.raw)
    return Call(  # positional, in field order: this runs on every request
        "http",
        request.method,
        scheme,
        host_header or (host if explicit_port is None else f"{host}:{port}"),
        host.lower(),
        port,
        url.raw_path.decode("ascii"),
        headers,
        # Bytes bodies (httpx.ByteStream) can be sent again; iterators and files cannot.
        isinstance(request.stream, httpx.ByteStream),
        None,
        NO_LABELS,
        None,
        length,
    )


def _host_and_length(raw: list[tuple[bytes, bytes]]) -> tuple[str | None, int]:
    # One pass over the raw pairs: cheaper than two Headers.get calls with their case folding.
    host: str | None = None
    length = 0
    for name, value in raw:
        lowered = name.lower()
        if lowered == b"host":
            if host is None:
                host = value.decode("latin-1")
        elif lowered == b"content-length" and value.isdigit():
            length = int(value)
    return host, length


def upstream_headers(
    raw: list[tuple[bytes, bytes]], attempt: Attempt
) -> Sequence[tuple[bytes, bytes]]:
    """The request headers for one attempt: remove, then set (overwrite), then add (Envoy).

    As h11's own ``Headers`` when every header is one h11 would take as it is, else the plain
    list (``listed_headers``). h11 validates and normalises a list of headers on every request:
    a Python function, two regular expressions and a lowercased copy per header, about 2 µs each
    on the bench machine (8 to 10 headers a request). Its own ``Headers`` it takes as they are,
    as its parser hands them over. Here a header is checked the same way the first time it
    comes and remembered (credentials excepted). What this does not vouch for (an illegal
    character, ``transfer-encoding``, a listed or repeated ``content-length``) goes to h11 in
    the plain list, so that h11 refuses or normalises it inside httpcore, with the errors bare
    httpx raises.
    """
    if _H11_HEADERS is None:  # pragma: no cover - another h11 layout
        return listed_headers(raw, attempt)
    checked = _CHECKED
    own = []
    for text in attempt.set_headers:
        item = _checked_text(text)
        if item is None:
            return listed_headers(raw, attempt)
        own.append(item)
    drop = {item[1] for item in own}
    for name in attempt.remove_headers:
        drop.add(_name(name).lower())
    items = []
    authority = attempt.authority
    if authority is not None:
        drop.add(b"host")
        host = _check(b"Host", authority.encode("ascii"))
        if host is None:
            return listed_headers(raw, attempt)
        items.append(host)
    for pair in raw:
        item = checked.get(pair) or _remember(checked, pair, *pair)
        if item is None:
            return listed_headers(raw, attempt)
        if item[1] not in drop:
            items.append(item)
    items += own
    for text in attempt.add_headers:
        item = _checked_text(text)
        if item is None:
            return listed_headers(raw, attempt)
        items.append(item)
    headers = _h11_headers(items)
    return listed_headers(raw, attempt) if headers is None else headers


def _h11_headers(items: list[_Checked]) -> Sequence[tuple[bytes, bytes]] | None:
    """h11's ``Headers`` of ``items``; ``None`` with more than one ``content-length``, which h11
    merges when equal and refuses otherwise."""
    lengths = 0
    for item in items:
        if item[1] == _CONTENT_LENGTH:
            lengths += 1
    return _H11_HEADERS(items) if lengths < 2 else None


def listed_headers(raw: list[tuple[bytes, bytes]], attempt: Attempt) -> list[tuple[bytes, bytes]]:
    """``upstream_headers`` as a plain list, which h11 checks and normalises itself."""
    encoded = [(_name(name), value.encode("latin-1")) for name, value in attempt.set_headers]
    drop = {name.lower() for name, _ in encoded}
    for name in attempt.remove_headers:
        drop.add(_name(name).lower())
    authority = attempt.authority
    if authority is not None:
        drop.add(b"host")
    headers = [item for item in raw if item[0].lower() not in drop]
    if authority is not None:
        headers.insert(0, (b"Host", authority.encode("ascii")))
    headers += encoded
    for name, value in attempt.add_headers:
        headers.append((_name(name), value.encode("latin-1")))
    return headers


_NAMES: dict[str, bytes] = {}
_NAME_CACHE_LIMIT = 4096
"""Header names come from configuration and telemetry: a few dozen; the cap is a safeguard."""


def _name(name: str) -> bytes:
    encoded = _NAMES.get(name)
    if encoded is None:
        encoded = name.encode("latin-1")
        if len(_NAMES) < _NAME_CACHE_LIMIT:
            _NAMES[name] = encoded
    return encoded


_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
"""A header name (RFC 9110 token), as h11 checks it."""
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
"""A header value as h11 checks it: no NUL or whitespace but spaces and tabs inside."""
_CONTENT_LENGTH = b"content-length"
_CONTENT_LENGTH_MAX_DIGITS = 20  # h11's bound
_TRANSFER_ENCODING = b"transfer-encoding"
_Checked = tuple[bytes, bytes, bytes]
"""h11's form of one header: (raw name, lowercased name, value)."""
_CHECKED: dict[tuple[bytes, bytes], _Checked] = {}
"""The caller's headers checked already, by (name, value)."""
_CHECKED_TEXT: dict[tuple[str, str], _Checked] = {}
"""The mesh's own (route and telemetry) headers checked already, by their text. Apart from
``_CHECKED``: a text key equal in hash to a bytes key would compare str with bytes."""
_CHECKED_LIMIT = 1024
"""Most headers repeat from request to request; unique ones (request ids, trace context) are
checked each time they come and make the memory start again once it is full."""
_UNREMEMBERED = frozenset((b"authorization", b"proxy-authorization", b"cookie"))
"""Credentials are checked every time, never kept beyond their request."""


def _h11_headers_class() -> Any:
    # h11 takes a request's headers as they are when they come as its own ``Headers``; a
    # list it checks and normalises again, header by header, on every request.
    try:
        from h11._headers import Headers
    except ImportError:  # pragma: no cover - another h11 layout: httpcore's own path
        return None
    return Headers


_H11_HEADERS: Any = _h11_headers_class()


def _check(name: bytes, value: bytes) -> _Checked | None:
    """h11's triple for one header, or ``None`` where h11 itself should judge it."""
    if _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
        return None
    lower = name.lower()
    if lower == _TRANSFER_ENCODING:
        return None
    if lower == _CONTENT_LENGTH and (
        # One plain number is what h11 keeps as it is; a list it merges.
        not value.isdigit() or len(value) > _CONTENT_LENGTH_MAX_DIGITS
    ):
        return None
    return (name, lower, value)


def _remember(memory: dict[Any, _Checked], key: Any, name: bytes, value: bytes) -> _Checked | None:
    item = _check(name, value)
    if item is not None and item[1] not in _UNREMEMBERED:
        if len(memory) >= _CHECKED_LIMIT:
            memory.clear()
        memory[key] = item
    return item


def _checked_text(text: tuple[str, str]) -> _Checked | None:
    item = _CHECKED_TEXT.get(text)
    if item is None:
        item = _remember(_CHECKED_TEXT, text, _name(text[0]), text[1].encode("latin-1"))
    return item


def core_request(
    method: bytes,
    scheme: bytes,
    host: bytes,
    port: int,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    stream: Any,
    extensions: dict[str, Any],
) -> httpcore.Request:
    """``httpcore.Request(method, httpcore.URL(...), ...)`` without its argument checks.

    Every argument is already bytes of the right shape; httpcore's ``enforce_*`` checks cost
    ~6 µs per request (one isinstance chain per header). The attributes set are exactly the
    ones its constructors set (tests/httpx compare both ways against the installed httpcore).
    """
    url = _new_url()
    url.scheme = scheme
    url.host = host
    url.port = port
    url.target = target
    request = _new_request()
    request.method = method
    request.url = url
    request.headers = headers  # type: ignore[assignment]  # upstream_headers: maybe h11's own
    request.stream = stream
    request.extensions = extensions
    return request


def _new_url() -> httpcore.URL:
    return httpcore.URL.__new__(httpcore.URL)


def _new_request() -> httpcore.Request:
    return httpcore.Request.__new__(httpcore.Request)


def with_response_ops(
    raw: list[tuple[bytes, bytes]],
    set_ops: Sequence[tuple[str, str]],
    add_ops: Sequence[tuple[str, str]],
    remove: Sequence[str],
) -> list[tuple[bytes, bytes]]:
    if not (set_ops or add_ops or remove):
        return raw
    drop = {name.lower().encode("latin-1") for name in remove}
    drop.update(name.lower().encode("latin-1") for name, _ in set_ops)
    headers = [item for item in raw if item[0].lower() not in drop]
    for name, value in (*set_ops, *add_ops):
        headers.append((name.encode("latin-1"), value.encode("latin-1")))
    return headers


def attempt_timeouts(
    caller: Mapping[str, float | None] | None,
    limit: float | None,
    connect_limit: float | None = None,
) -> Mapping[str, float | None]:
    """httpcore's timeout extension: the caller's, each capped by the attempt's limit (and the
    connect phase also by the cluster's ``connectTimeout``)."""
    if limit is None and connect_limit is None:
        return caller if caller is not None else {}
    result: dict[str, float | None] = {}
    for key in TIMEOUT_KEYS:
        value = caller.get(key) if caller is not None else None
        cap = limit
        if key == "connect" and connect_limit is not None and (cap is None or connect_limit < cap):
            cap = connect_limit
        if cap is not None and (value is None or value > cap):
            value = max(cap, 0.0)
        result[key] = value
    return result


def failure_kind(error: BaseException) -> FailureKind | None:
    """The Outcome failure for an httpcore error; ``None``: not a network failure (re-raise)."""
    kind = _FAILURES.get(type(error))
    if kind is not None:
        return kind
    for cls, mapped in _FAILURES.items():
        if isinstance(error, cls):
            return mapped
    return None


def raise_for(
    error: BaseException | None, request: httpx.Request, outcome: Outcome | None = None
) -> None:
    """Raise what plain httpx would raise for ``error`` (or a read timeout for an expiry)."""
    if error is not None:
        for cls, mapped in _HTTPX_ERRORS:
            if isinstance(error, cls):
                raise mapped(str(error), request=request) from error
        raise error
    detail = outcome.detail if outcome is not None and outcome.detail else "timed out"
    raise httpx.ReadTimeout(detail, request=request)


def response_info(
    flags: tuple[str, ...], *, attempts: int, endpoint: str | None, local: bool
) -> dict[str, Any]:
    return {"flags": flags, "attempts": attempts, "endpoint": endpoint, "local_reply": local}


def local_response(reply: Reply, attempts: int, endpoint: str | None) -> httpx.Response:
    """Envoy's local reply as an httpx response (text/plain body, Istio headers)."""
    body = reply.body.encode("utf-8")
    headers: list[tuple[bytes, bytes]] = []
    if body:
        headers.append((b"content-type", b"text/plain"))
    headers.append((b"content-length", str(len(body)).encode("ascii")))
    headers.extend(_encode(reply.headers))
    return httpx.Response(
        reply.status,
        headers=headers,
        content=body,
        extensions={
            EXTENSION: response_info(reply.flags, attempts=attempts, endpoint=endpoint, local=True)
        },
    )


def _encode(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
