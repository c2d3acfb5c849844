"""VirtualService HTTP routes: the compiled table for a host and its actions."""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from dataclasses import dataclass, field

from meshlib._model.call import Call
from meshlib._model.commands import Reply
from meshlib._model.runtime import Random
from meshlib._policy.faults import FaultPolicy
from meshlib._policy.matching import HttpMatch, MatchKind, match_request
from meshlib._policy.replies import NO_ROUTE_REPLY
from meshlib._policy.retries import DEFAULT_RETRY_POLICY, RetryPolicy

__all__ = [
    "DEFAULT_REDIRECT_CODE",
    "DEFAULT_ROUTE_NAME",
    "LOCATION_HEADER",
    "NO_ROUTE_REPLY",
    "READS_NOTHING",
    "DirectResponse",
    "HeaderOps",
    "HeaderPlan",
    "HeaderRules",
    "Mirror",
    "Redirect",
    "RequestReads",
    "Rewrite",
    "Route",
    "RouteDestination",
    "RouteTable",
    "apply_header_ops",
    "choose_destination",
    "default_route",
    "direct_reply",
    "header_plan",
    "match_route",
    "parse_substitution",
    "redirect_reply",
    "response_header_ops",
    "rewrite_request",
]


@dataclass(frozen=True, slots=True)
class HeaderOps:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderRules:
    request: HeaderOps = HeaderOps()
    response: HeaderOps = HeaderOps()


@dataclass(frozen=True, slots=True)
class RouteDestination:
    host: str
    """Fully qualified (short names already expanded with the rule's namespace)."""
    subset: str | None = None
    port: int | None = None
    weight: int = 100
    headers: HeaderRules | None = None


@dataclass(frozen=True, slots=True)
class Rewrite:
    uri: str | None = None
    uri_regex: tuple[re.Pattern[str], str] | None = None
    authority: str | None = None
    _template: tuple[str | int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        template = () if self.uri_regex is None else parse_substitution(self.uri_regex[1])
        object.__setattr__(self, "_template", template)


@dataclass(frozen=True, slots=True)
class Redirect:
    uri: str | None = None
    prefix_rewrite: str | None = None
    authority: str | None = None
    port: int | None = None
    derive_port: str | None = None
    """``FROM_PROTOCOL_DEFAULT`` or ``FROM_REQUEST_PORT``."""
    scheme: str | None = None
    code: int = 301


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Mirror:
    destination: RouteDestination
    fraction: float = 1.0


@dataclass(frozen=True, slots=True)
class Route:
    name: str = ""
    matches: tuple[HttpMatch, ...] = ()
    """Empty: matches every request (a catch-all)."""
    destinations: tuple[RouteDestination, ...] = ()
    """Weight-0 destinations already dropped when there are several."""
    timeout: float | None = None
    """None = no route timeout (Istio's default)."""
    retries: RetryPolicy = DEFAULT_RETRY_POLICY
    fault: FaultPolicy | None = None
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    headers: HeaderRules | None = None
    mirrors: tuple[Mirror, ...] = ()
    source: str = ""
    """``VirtualService/<namespace>/<name>#http[<index>]`` for explain output."""
    _cumulative: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _plans: dict[int, HeaderPlan] = field(init=False, repr=False, compare=False)
    _route_plan: HeaderPlan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        running = 0
        cumulative: list[int] = []
        for destination in self.destinations:
            running += max(destination.weight, 0)
            cumulative.append(running)
        object.__setattr__(self, "_cumulative", tuple(cumulative))
        # Keyed by identity: the destinations tuple keeps them alive, and an id() probe
        # costs less than hashing a dataclass per request.
        route_rules = self.headers
        object.__setattr__(self, "_route_plan", _plan(route_rules, None))
        object.__setattr__(
            self,
            "_plans",
            {id(d): _plan(route_rules, d.headers) for d in self.destinations},
        )


@dataclass(frozen=True, slots=True)
class RouteTable:
    host: str
    routes: tuple[Route, ...]
    source: str = ""
    """``VirtualService/<namespace>/<name>``; empty for the implicit default route."""
    reads: RequestReads | None = field(init=False, repr=False, compare=False)
    """What choosing a route (and building its upstream request) reads of a request besides
    its host and port; ``None``: more than ``RequestReads`` names (headers, query parameters,
    source labels or namespace), or a route copies parts of the request (redirect, rewrite)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "reads", _reads(self.routes))


@dataclass(frozen=True, slots=True)
class RequestReads:
    """The parts of a request a route table's choice depends on (besides host and port)."""

    path: bool = False
    method: bool = False
    scheme: bool = False
    authority: bool = False


READS_NOTHING = RequestReads()
"""A host without a VirtualService: its implicit route reads nothing of the request."""


def _reads(routes: tuple[Route, ...]) -> RequestReads | None:
    path = method = scheme = authority = False
    for route in routes:
        if route.redirect is not None or route.rewrite is not None:
            return None
        for block in route.matches:
            if (
                block.headers
                or block.without_headers
                or block.query_params
                or block.source_labels
                or block.source_namespace is not None
            ):
                return None
            path = path or block.uri is not None
            method = method or block.method is not None
            scheme = scheme or block.scheme is not None
            authority = authority or block.authority is not None
    if not (path or method or scheme or authority):
        return READS_NOTHING
    return RequestReads(path, method, scheme, authority)


DEFAULT_REDIRECT_CODE = 301
DEFAULT_ROUTE_NAME = "default"
LOCATION_HEADER = "location"
_AUTHORITY_HEADERS = frozenset({":authority", "host"})
_DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}
_FROM_PROTOCOL_DEFAULT = "FROM_PROTOCOL_DEFAULT"
_FROM_REQUEST_PORT = "FROM_REQUEST_PORT"
_EMPTY_OPS = HeaderOps()


@dataclass(frozen=True, slots=True)
class HeaderPlan:
    """Route then destination header operations, merged once at compile time."""

    request: HeaderOps
    response: HeaderOps
    authority: str | None
    """From ``:authority``/``host`` in a request ``set``/``add``: an authority rewrite."""


_NO_HEADER_PLAN = HeaderPlan(_EMPTY_OPS, _EMPTY_OPS, None)


def _merge(first: HeaderOps, second: HeaderOps) -> HeaderOps:
    if not (second.set or second.add or second.remove):
        return first
    overridden = {name for name, _ in second.set}
    return HeaderOps(
        set=tuple(op for op in first.set if op[0] not in overridden) + second.set,
        add=first.add + second.add,
        remove=first.remove + second.remove,
    )


def _plan(route: HeaderRules | None, destination: HeaderRules | None) -> HeaderPlan:
    if route is None and destination is None:
        return _NO_HEADER_PLAN  # most routes: one shared plan, not one per route and destination
    request = _merge(
        route.request if route is not None else _EMPTY_OPS,
        destination.request if destination is not None else _EMPTY_OPS,
    )
    response = _merge(
        route.response if route is not None else _EMPTY_OPS,
        destination.response if destination is not None else _EMPTY_OPS,
    )
    authority: str | None = None
    for name, value in request.add + request.set:  # set after add: the later one wins
        if name in _AUTHORITY_HEADERS:
            authority = value
    if authority is not None:
        request = HeaderOps(
            set=tuple(op for op in request.set if op[0] not in _AUTHORITY_HEADERS),
            add=tuple(op for op in request.add if op[0] not in _AUTHORITY_HEADERS),
            remove=request.remove,
        )
    return HeaderPlan(request, response, authority)


def header_plan(route: Route, destination: RouteDestination | None) -> HeaderPlan:
    """Request ops, response ops and authority rewrite of ``route`` towards ``destination``."""
    if destination is None:
        return route._route_plan
    plan = route._plans.get(id(destination))
    if plan is None:  # a destination that is not this route's: merge on the fly
        plan = _plan(route.headers, destination.headers)
    return plan


def parse_substitution(text: str) -> tuple[str | int, ...]:
    """An RE2 rewrite string as literal pieces and group numbers (``\\1``; ``\\\\`` a backslash)."""
    pieces: list[str | int] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            following = text[index + 1]
            if following.isdigit():
                if literal:
                    pieces.append("".join(literal))
                    literal = []
                pieces.append(int(following))
                index += 2
                continue
            if following == "\\":
                literal.append("\\")
                index += 2
                continue
        literal.append(char)
        index += 1
    if literal:
        pieces.append("".join(literal))
    return tuple(pieces)


def _substitute(template: tuple[str | int, ...], match: re.Match[str]) -> str:
    return "".join(
        piece if isinstance(piece, str) else (match.group(piece) or "") for piece in template
    )


def match_route(
    table: RouteTable, call: Call, port: int, path: str | None = None
) -> tuple[Route, int] | None:
    """The first route with a matching block, and that block's index (-1: no match list).

    ``None`` means no route matched: answer ``NO_ROUTE_REPLY`` (404 NR). ``path`` is the
    normalized path when the caller normalized it (see ``match_request``).
    """
    if path is None:
        path = call.path_only  # once, not once per match block
    for route in table.routes:
        matches = route.matches
        if not matches:
            return route, -1
        for index, block in enumerate(matches):
            if match_request(block, call, port, path):
                return route, index
    return None


def choose_destination(route: Route, rng: Random) -> RouteDestination:
    """One destination at random, in proportion to relative weights (once per request)."""
    destinations = route.destinations
    if len(destinations) == 1:
        return destinations[0]
    if not destinations:
        raise ValueError(f"route {route.name or route.source!r} has no destinations")
    cumulative = route._cumulative
    total = cumulative[-1]
    if total <= 0:  # validation rejects it; stay total rather than divide by zero
        return destinations[rng.randrange(len(destinations))]
    return destinations[bisect_right(cumulative, rng.randrange(total))]


def _matched_prefix(route: Route, match_index: int) -> str | None:
    """The prefix a ``rewrite.uri`` replaces: the block's uri prefix, ``/`` without a uri
    match (Istio programs ``prefix: /``), ``None`` for exact and regex (the whole path)."""
    if match_index < 0 or match_index >= len(route.matches):
        return "/"
    uri = route.matches[match_index].uri
    if uri is None:
        return "/"
    if uri.kind is MatchKind.PREFIX:
        return uri.value
    if uri.kind is MatchKind.PRESENT:
        return "/"
    return None


def _with_query(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path


def rewrite_request(
    route: Route,
    match_index: int,
    call: Call,
    destination: RouteDestination | None = None,
    path: str | None = None,
) -> tuple[str | None, str | None]:
    """The rewritten request target (with the query) and authority; ``None`` keeps the caller's.

    ``destination`` lets header operations on ``:authority``/``host`` rewrite the authority;
    ``path`` is the normalized path when the caller normalized it.
    """
    plan = header_plan(route, destination)
    rewrite = route.rewrite
    if rewrite is None:
        return None, plan.authority
    authority = rewrite.authority if rewrite.authority is not None else plan.authority
    current = call.path_only if path is None else path
    if rewrite.uri_regex is not None:
        pattern = rewrite.uri_regex[0]
        template = rewrite._template
        new_path = pattern.sub(lambda m: _substitute(template, m), current)
    elif rewrite.uri is not None:
        prefix = _matched_prefix(route, match_index)
        new_path = rewrite.uri if prefix is None else rewrite.uri + current[len(prefix) :]
    else:
        return None, authority
    return _with_query(new_path, call.query), authority


def _split_authority(authority: str) -> tuple[str, str]:
    """Host and port text of an authority (``[v6]:port`` aware); port ``""`` when absent."""
    if authority.startswith("["):
        end = authority.find("]")
        if end >= 0:
            rest = authority[end + 1 :]
            return authority[: end + 1], rest[1:] if rest.startswith(":") else ""
        return authority, ""
    host, sep, port = authority.rpartition(":")
    if not sep or not port.isdigit():
        return authority, ""
    return host, port


def redirect_reply(route: Route, match_index: int, call: Call) -> Reply:
    """The 3xx answer of a ``redirect`` route, ``Location`` built as Envoy does.

    Authority replaces the whole host (port included); ``port``/``derivePort`` then set the
    port (``FROM_PROTOCOL_DEFAULT`` omits it); a scheme change drops a default port.
    ``uri`` replaces the path (the query is kept unless ``uri`` has one); ``prefixRewrite``
    replaces the matched prefix.
    """
    redirect = route.redirect
    if redirect is None:
        raise ValueError(f"route {route.name or route.source!r} is not a redirect")
    scheme = redirect.scheme or call.scheme
    host, port = _split_authority(redirect.authority or call.authority)
    if redirect.port is not None:
        port = str(redirect.port)
    elif redirect.derive_port == _FROM_REQUEST_PORT:
        port = str(call.port)
    elif redirect.derive_port == _FROM_PROTOCOL_DEFAULT or (
        scheme != call.scheme and port and int(port) == _DEFAULT_PORTS.get(call.scheme)
    ):
        port = ""
    if redirect.uri is not None:
        target = redirect.uri if "?" in redirect.uri else _with_query(redirect.uri, call.query)
    elif redirect.prefix_rewrite is not None:
        prefix = _matched_prefix(route, match_index) or call.path_only
        target = _with_query(redirect.prefix_rewrite + call.path_only[len(prefix) :], call.query)
    else:
        target = _with_query(call.path_only, call.query)
    location = f"{scheme}://{host}:{port}{target}" if port else f"{scheme}://{host}{target}"
    return Reply(redirect.code, headers=((LOCATION_HEADER, location),))


def direct_reply(route: Route) -> Reply:
    """The ``directResponse`` answer, with the route's response header ``set``/``add``.

    ``Reply.body`` is text: a binary body is decoded as UTF-8 with replacement characters.
    """
    direct = route.direct_response
    if direct is None:
        raise ValueError(f"route {route.name or route.source!r} has no directResponse")
    response = route._route_plan.response
    return Reply(
        direct.status,
        direct.body.decode("utf-8", "replace"),
        headers=response.set + response.add,
    )


def apply_header_ops(route: Route, destination: RouteDestination | None) -> HeaderOps:
    """Request header operations for an Attempt: route ops, then the destination's.

    ``:authority``/``host`` operations are left out: ``rewrite_request`` returns them as
    the authority rewrite.
    """
    return header_plan(route, destination).request


def response_header_ops(route: Route, destination: RouteDestination | None) -> HeaderOps:
    """Response header operations for Deliver: route ops, then the destination's."""
    return header_plan(route, destination).response


@functools.lru_cache(maxsize=1024)
def default_route(host: str, port: int | None) -> Route:
    """The implicit route of a host with no VirtualService (ISTIO-SEMANTICS 1.2 step 1).

    One destination, Istio's default retries, no timeout. Cached: the same frozen value
    serves every request to the host.
    """
    return Route(
        name=DEFAULT_ROUTE_NAME,
        destinations=(RouteDestination(host=host, port=port),),
        retries=DEFAULT_RETRY_POLICY,
    )
