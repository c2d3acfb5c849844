"""String and request matchers of VirtualService ``HTTPMatchRequest``."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from meshlib._model.call import Call


class MatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"
    PRESENT = "present"
    """``{}`` or ``regex: "*"``: the header or parameter is there, whatever its value."""


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: MatchKind
    value: str = ""
    pattern: re.Pattern[str] | None = None
    """Compiled for REGEX (full match); for case-insensitive EXACT/PREFIX too when useful."""
    ignore_case: bool = False
    _folded: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Lower-cased once here so a case-insensitive match lowers only the request side.
        object.__setattr__(self, "_folded", self.value.lower() if self.ignore_case else self.value)
        if self.kind is MatchKind.REGEX and self.pattern is None:
            object.__setattr__(self, "pattern", re.compile(self.value))


@dataclass(frozen=True, slots=True)
class HttpMatch:
    """One ``match`` block: all its set conditions must hold."""

    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()
    """Header names lower case."""
    without_headers: tuple[tuple[str, StringMatch], ...] = ()
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    port: int | None = None
    source_labels: Mapping[str, str] = field(default_factory=dict)
    source_namespace: str | None = None
    gateways: frozenset[str] = frozenset()
    _uri_only: bool = field(init=False, repr=False, compare=False)
    """Only ``uri`` is set (the common block): one string match decides it."""

    def __post_init__(self) -> None:
        only = (
            self.uri is not None
            and self.scheme is None
            and self.method is None
            and self.authority is None
            and not self.headers
            and not self.without_headers
            and not self.query_params
            and self.port is None
            and not self.source_labels
            and self.source_namespace is None
        )
        object.__setattr__(self, "_uri_only", only)


def match_string(m: StringMatch, value: str | None) -> bool:
    """Whether ``value`` satisfies ``m``; ``None`` means absent and never matches."""
    if value is None:
        return False
    kind = m.kind
    if kind is MatchKind.EXACT:
        return (value.lower() if m.ignore_case else value) == m._folded
    if kind is MatchKind.PREFIX:
        return (value.lower() if m.ignore_case else value).startswith(m._folded)
    if kind is MatchKind.REGEX:
        assert m.pattern is not None  # set by __post_init__
        return m.pattern.fullmatch(value) is not None
    return True  # PRESENT


def match_request(m: HttpMatch, call: Call, port: int, path: str | None = None) -> bool:
    """Whether one match block holds for ``call`` on service ``port``.

    ``path`` is the normalized ``:path`` without query when the caller normalized it
    (ISTIO-SEMANTICS 5.4); ``None`` matches on ``call.path_only`` as sent.
    """
    if m._uri_only:
        assert m.uri is not None
        return match_string(m.uri, call.path_only if path is None else path)
    if m.port is not None and m.port != port:
        return False
    # Source filters were applied at compile time for this workload; re-check only what the
    # call itself states, so a call that carries no source information is not rejected.
    if (
        m.source_namespace is not None
        and call.source_namespace is not None
        and call.source_namespace != m.source_namespace
    ):
        return False
    if m.source_labels and call.source_labels:
        labels = call.source_labels
        for key, value in m.source_labels.items():
            if labels.get(key) != value:
                return False
    if m.uri is not None and not match_string(m.uri, call.path_only if path is None else path):
        return False
    if m.method is not None and not match_string(m.method, call.method):
        return False
    if m.scheme is not None and not match_string(m.scheme, call.scheme):
        return False
    if m.authority is not None and not match_string(m.authority, call.authority):
        return False
    if m.headers:
        headers = call.headers
        for name, sm in m.headers:
            if not match_string(sm, headers.get(name)):
                return False
    if m.without_headers:
        headers = call.headers
        for name, sm in m.without_headers:
            header = headers.get(name)
            if sm.kind is MatchKind.PRESENT:
                if header is not None:
                    return False
            # Envoy treats a missing header as "" for inverted value matchers.
            elif match_string(sm, "" if header is None else header):
                return False
    if m.query_params:
        params = parse_query(call.query)
        for name, sm in m.query_params:
            if not match_string(sm, params.get(name)):
                return False
    return True


def parse_query(query: str) -> dict[str, str]:
    """Query parameters, percent-decoded; the first occurrence of a name wins (as in Envoy).

    ``?key`` reads as ``key=""`` so that ``exact: ""`` matches it.
    """
    params: dict[str, str] = {}
    if not query:
        return params
    for part in query.split("&"):
        if not part:
            continue
        raw_name, _, value = part.partition("=")
        name = unquote(raw_name)
        if name not in params:
            params[name] = unquote(value)
    return params
