"""Route selection, weighted destinations, rewrites, redirects and direct responses."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._model import Call, SystemRandom
from meshlib._policy.matching import HttpMatch, MatchKind, StringMatch
from meshlib._policy.retries import DEFAULT_RETRY_POLICY
from meshlib._policy.routing import (
    NO_ROUTE_REPLY,
    DirectResponse,
    HeaderOps,
    HeaderRules,
    Redirect,
    Rewrite,
    Route,
    RouteDestination,
    RouteTable,
    apply_header_ops,
    choose_destination,
    default_route,
    direct_reply,
    match_route,
    parse_substitution,
    redirect_reply,
    response_header_ops,
    rewrite_request,
)


class Headers:
    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._values = {k.lower(): v for k, v in items}

    def get(self, key: str, /) -> str | None:
        return self._values.get(key.lower())

    def __contains__(self, key: object, /) -> bool:
        return isinstance(key, str) and key.lower() in self._values


def make_call(
    path: str = "/",
    *,
    headers: Iterable[tuple[str, str]] = (),
    authority: str = "reviews:9080",
    scheme: str = "http",
    port: int = 9080,
) -> Call:
    return Call(
        protocol="http",
        method="GET",
        scheme=scheme,
        authority=authority,
        host=authority.partition(":")[0],
        port=port,
        path=path,
        headers=Headers(headers),
    )


class ScriptedRandom:
    """Answers from fixed lists; fails the test if a value is drawn that was not scripted."""

    def __init__(self, floats: Iterable[float] = (), ints: Iterable[int] = ()) -> None:
        self._floats = list(floats)
        self._ints = list(ints)

    def random(self) -> float:
        return self._floats.pop(0)

    def randrange(self, stop: int, /) -> int:
        value = self._ints.pop(0)
        assert 0 <= value < stop
        return value


def prefix(value: str) -> HttpMatch:
    return HttpMatch(uri=StringMatch(MatchKind.PREFIX, value))


def exact(value: str) -> HttpMatch:
    return HttpMatch(uri=StringMatch(MatchKind.EXACT, value))


V1 = RouteDestination("reviews.default.svc.cluster.local", subset="v1")
V2 = RouteDestination("reviews.default.svc.cluster.local", subset="v2")
V3 = RouteDestination("reviews.default.svc.cluster.local", subset="v3")


# --- match_route --------------------------------------------------------------------------


def test_first_matching_route_and_block_index() -> None:
    jason = HttpMatch(headers=(("end-user", StringMatch(MatchKind.EXACT, "jason")),))
    test_route = Route(name="jason", matches=(exact("/never"), jason), destinations=(V2,))
    default = Route(name="default", destinations=(V1,))
    unreachable = Route(name="late", destinations=(V3,))
    table = RouteTable("reviews", (test_route, default, unreachable))
    assert match_route(table, make_call(headers=[("end-user", "jason")]), 9080) == (test_route, 1)
    assert match_route(table, make_call(headers=[("end-user", "Jason")]), 9080) == (default, -1)


def test_no_route_matches() -> None:
    table = RouteTable("reviews", (Route(matches=(prefix("/api"),), destinations=(V1,)),))
    assert match_route(table, make_call("/web"), 9080) is None
    assert match_route(table, make_call("/web"), 9080, path="/api/x") is not None
    assert NO_ROUTE_REPLY.status == 404
    assert NO_ROUTE_REPLY.flags == ("NR",)
    assert NO_ROUTE_REPLY.body == ""


# --- choose_destination -------------------------------------------------------------------


def test_single_destination_draws_nothing() -> None:
    assert choose_destination(Route(destinations=(V1,)), ScriptedRandom()) is V1


def test_weights_are_relative_and_proportional() -> None:
    route = Route(destinations=(RouteDestination("a", weight=9), RouteDestination("b", weight=1)))
    rng = SystemRandom(7)
    draws = 10_000
    counts = Counter(choose_destination(route, rng).host for _ in range(draws))
    assert abs(counts["a"] / draws - 0.9) < 0.02


@given(st.lists(st.integers(min_value=0, max_value=20), min_size=2, max_size=6))
def test_every_draw_maps_to_its_weight_exactly(weights: list[int]) -> None:
    route = Route(
        destinations=tuple(RouteDestination(str(i), weight=w) for i, w in enumerate(weights))
    )
    total = sum(weights)
    if total == 0:
        picked = choose_destination(route, ScriptedRandom(ints=[len(weights) - 1]))
        assert picked.host == str(len(weights) - 1)
        return
    rng = ScriptedRandom(ints=range(total))
    counts = Counter(choose_destination(route, rng).host for _ in range(total))
    assert counts == Counter({str(i): w for i, w in enumerate(weights) if w})


def test_route_without_destinations_cannot_choose() -> None:
    with pytest.raises(ValueError, match="no destinations"):
        choose_destination(Route(name="redirect"), ScriptedRandom())


# --- rewrite_request ----------------------------------------------------------------------


def test_no_rewrite_keeps_target() -> None:
    assert rewrite_request(Route(destinations=(V1,)), -1, make_call("/a")) == (None, None)


def test_uri_rewrite_replaces_matched_prefix_and_keeps_query() -> None:
    route = Route(matches=(prefix("/api/v1"),), rewrite=Rewrite(uri="/v2"), destinations=(V1,))
    assert rewrite_request(route, 0, make_call("/api/v1/users?id=3")) == ("/v2/users?id=3", None)


def test_uri_rewrite_replaces_whole_path_for_exact_and_regex() -> None:
    regex = HttpMatch(uri=StringMatch(MatchKind.REGEX, "/catalog[0-9]+"))
    route = Route(matches=(exact("/old"), regex), rewrite=Rewrite(uri="/new"), destinations=(V1,))
    assert rewrite_request(route, 0, make_call("/old")) == ("/new", None)
    assert rewrite_request(route, 1, make_call("/catalog12?x")) == ("/new?x", None)


def test_uri_rewrite_without_uri_match_replaces_leading_slash() -> None:
    rewrite = Rewrite(uri="/v2/")
    catch_all = Route(rewrite=rewrite, destinations=(V1,))
    assert rewrite_request(catch_all, -1, make_call("/users")) == ("/v2/users", None)
    header_only = Route(matches=(HttpMatch(port=9080),), rewrite=rewrite, destinations=(V1,))
    assert rewrite_request(header_only, 0, make_call("/users")) == ("/v2/users", None)
    present = Route(
        matches=(HttpMatch(uri=StringMatch(MatchKind.PRESENT)),),
        rewrite=rewrite,
        destinations=(V1,),
    )
    assert rewrite_request(present, 0, make_call("/users")) == ("/v2/users", None)


def test_uri_rewrite_uses_normalized_path() -> None:
    route = Route(matches=(prefix("/admin"),), rewrite=Rewrite(uri="/a"), destinations=(V1,))
    assert rewrite_request(route, 0, make_call("/x/../admin/b?q"), path="/admin/b") == (
        "/a/b?q",
        None,
    )


def test_regex_rewrite_is_global_with_groups() -> None:
    rewrite = Rewrite(uri_regex=(re.compile(r"/z2m(/|$)(.*)"), r"/\2"))
    route = Route(matches=(prefix("/z2m"),), rewrite=rewrite, destinations=(V1,))
    assert rewrite_request(route, 0, make_call("/z2m/devices?all")) == ("/devices?all", None)
    dashes = Rewrite(uri_regex=(re.compile("-"), "_"))
    assert rewrite_request(Route(rewrite=dashes), -1, make_call("/a-b-c")) == ("/a_b_c", None)
    optional = Rewrite(uri_regex=(re.compile("/(x)?y"), r"/[\1]"))
    assert rewrite_request(Route(rewrite=optional), -1, make_call("/y")) == ("/[]", None)


def test_authority_rewrite() -> None:
    only_authority = Route(rewrite=Rewrite(authority="ratings.prod"), destinations=(V1,))
    assert rewrite_request(only_authority, -1, make_call("/a")) == (None, "ratings.prod")
    both = Route(rewrite=Rewrite(uri="/b", authority="x"), matches=(exact("/a"),))
    assert rewrite_request(both, 0, make_call("/a")) == ("/b", "x")


def test_host_header_operations_rewrite_authority() -> None:
    route_rules = HeaderRules(
        request=HeaderOps(set=((":authority", "route.example"), ("x-a", "1")))
    )
    dest = RouteDestination(
        "d", headers=HeaderRules(request=HeaderOps(add=(("host", "dest.example"),)))
    )
    route = Route(headers=route_rules, destinations=(dest, V1))
    assert rewrite_request(route, -1, make_call(), dest) == (None, "route.example")
    assert rewrite_request(route, -1, make_call(), V1) == (None, "route.example")
    assert apply_header_ops(route, dest) == HeaderOps(set=(("x-a", "1"),))
    dest_set = RouteDestination("d", headers=HeaderRules(request=HeaderOps(set=(("host", "d2"),))))
    route2 = Route(headers=route_rules, destinations=(dest_set,), rewrite=Rewrite(uri="/n"))
    assert rewrite_request(route2, -1, make_call("/o"), dest_set) == ("/no", "d2")


def test_parse_substitution() -> None:
    assert parse_substitution(r"/\1/x\\y\z\\") == ("/", 1, "/x\\y\\z\\")
    assert parse_substitution("\\") == ("\\",)
    assert parse_substitution("") == ()


# --- header operations --------------------------------------------------------------------


def test_route_then_destination_header_operations() -> None:
    route_rules = HeaderRules(
        request=HeaderOps(
            set=(("x-a", "route"), ("x-b", "route")), add=(("x-c", "1"),), remove=("x-d",)
        ),
        response=HeaderOps(set=(("x-r", "route"),)),
    )
    dest_rules = HeaderRules(
        request=HeaderOps(set=(("x-a", "dest"),), add=(("x-c", "2"),), remove=("x-e",)),
        response=HeaderOps(remove=("x-r",)),
    )
    dest = RouteDestination("d", headers=dest_rules)
    route = Route(headers=route_rules, destinations=(dest,))
    ops = apply_header_ops(route, dest)
    assert ops.set == (("x-b", "route"), ("x-a", "dest"))
    assert ops.add == (("x-c", "1"), ("x-c", "2"))
    assert ops.remove == ("x-d", "x-e")
    assert response_header_ops(route, dest) == HeaderOps(set=(("x-r", "route"),), remove=("x-r",))
    foreign = RouteDestination("other", headers=dest_rules)  # not one of the route's
    assert apply_header_ops(route, foreign) == ops
    assert response_header_ops(route, None) == route_rules.response
    assert apply_header_ops(Route(destinations=(V1,)), V1) == HeaderOps()


# --- redirect -----------------------------------------------------------------------------


def redirect_location(redirect: Redirect, call: Call, matches: tuple[HttpMatch, ...] = ()) -> str:
    reply = redirect_reply(Route(matches=matches, redirect=redirect), 0 if matches else -1, call)
    assert reply.status == redirect.code
    assert reply.body == ""
    ((name, value),) = reply.headers
    assert name == "location"
    return value


def test_redirect_uri_keeps_query_unless_it_has_one() -> None:
    call = make_call("/v1/bookRatings?id=1")
    assert (
        redirect_location(Redirect(uri="/v1/ratings"), call)
        == "http://reviews:9080/v1/ratings?id=1"
    )
    assert redirect_location(Redirect(uri="/r?x=2"), call) == "http://reviews:9080/r?x=2"
    assert Redirect(uri="/r").code == 301


def test_redirect_prefix_rewrite() -> None:
    call = make_call("/old/page?q")
    location = redirect_location(Redirect(prefix_rewrite="/new"), call, (prefix("/old"),))
    assert location == "http://reviews:9080/new/page?q"
    assert (
        redirect_location(Redirect(prefix_rewrite="/n/"), make_call("/p"))
        == "http://reviews:9080/n/p"
    )
    whole = redirect_location(Redirect(prefix_rewrite="/n"), make_call("/p"), (exact("/p"),))
    assert whole == "http://reviews:9080/n"


def test_redirect_authority_port_and_scheme() -> None:
    call = make_call("/a")
    assert redirect_location(Redirect(authority="new.example"), call) == "http://new.example/a"
    assert redirect_location(Redirect(port=8443), call) == "http://reviews:8443/a"
    from_request = Redirect(authority="n", derive_port="FROM_REQUEST_PORT")
    assert redirect_location(from_request, call) == "http://n:9080/a"
    default = Redirect(scheme="https", derive_port="FROM_PROTOCOL_DEFAULT")
    assert redirect_location(default, call) == "https://reviews/a"
    https = Redirect(scheme="https", code=308)
    assert redirect_location(https, make_call("/a", authority="web:80")) == "https://web/a"
    assert redirect_location(https, make_call("/a", authority="web:8080")) == "https://web:8080/a"
    assert redirect_location(https, make_call("/a", authority="web")) == "https://web/a"
    assert (
        redirect_location(Redirect(port=1), make_call("/", authority="[::1]:80"))
        == "http://[::1]:1/"
    )
    assert (
        redirect_location(Redirect(port=2), make_call("/", authority="[::1]")) == "http://[::1]:2/"
    )
    assert redirect_location(Redirect(port=3), make_call("/", authority="[::1")) == "http://[::1:3/"
    assert redirect_location(Redirect(port=4), make_call("/", authority="h:x")) == "http://h:x:4/"


def test_non_redirect_route_has_no_redirect_reply() -> None:
    with pytest.raises(ValueError, match="not a redirect"):
        redirect_reply(Route(destinations=(V1,)), -1, make_call())


# --- direct response and defaults ---------------------------------------------------------


def test_direct_reply_with_route_response_headers() -> None:
    rules = HeaderRules(
        response=HeaderOps(set=(("content-type", "text/plain"),), add=(("x", "1"),))
    )
    route = Route(direct_response=DirectResponse(503, b"down"), headers=rules)
    reply = direct_reply(route)
    assert (reply.status, reply.body, reply.flags) == (503, "down", ())
    assert tuple(reply.headers) == (("content-type", "text/plain"), ("x", "1"))
    assert direct_reply(Route(direct_response=DirectResponse(200, b"\xff"))).body == "\ufffd"


def test_route_without_direct_response() -> None:
    with pytest.raises(ValueError, match="no directResponse"):
        direct_reply(Route(destinations=(V1,)))


def test_default_route() -> None:
    route = default_route("reviews.default.svc.cluster.local", 9080)
    assert route.matches == ()
    assert route.timeout is None
    assert route.retries is DEFAULT_RETRY_POLICY
    (destination,) = route.destinations
    assert (destination.host, destination.port, destination.subset) == (
        "reviews.default.svc.cluster.local",
        9080,
        None,
    )
    assert default_route("reviews.default.svc.cluster.local", 9080) is route
    assert match_route(RouteTable("r", (route,)), make_call(), 9080) == (route, -1)
