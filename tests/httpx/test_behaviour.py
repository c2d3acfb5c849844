"""Istio behaviour through the httpx drivers, sync and async, against real uvicorn upstreams."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx
import pytest
from httpx_upstreams import FakeClock, Upstream, make_runtime, run_requests, service_entry

from meshlib._engine.runtime import OutboundRuntime
from meshlib._model.call import Call
from meshlib.httpx import AsyncMeshTransport, MeshTransport

HOST = "reviews.default.svc.cluster.local"
URL = "http://reviews:9080"


def both(upstreams: dict[str, Upstream]) -> str:
    return service_entry(
        HOST,
        [(upstreams["v1"].port, {"version": "v1"}), (upstreams["v2"].port, {"version": "v2"})],
    )


def rule(spec: str) -> str:
    return f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
{spec}"""


SUBSETS = """  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def vs(http: str) -> str:
    return f"""
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
{http}"""


def responses(results: list[httpx.Response | BaseException]) -> list[httpx.Response]:
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, httpx.Response)]


def flags(response: httpx.Response) -> tuple[str, ...]:
    info: dict[str, Any] = response.extensions["meshlib"]
    return tuple(info["flags"])


def state_of(runtime: OutboundRuntime, subset: str | None = None) -> Any:
    target = runtime.cluster_for(runtime.snapshot(), HOST, subset, 9080, "reviews")
    assert target is not None
    return target.state


# ------------------------------------------------------------------------------- routing


def test_weighted_split_90_10(kind: str, upstreams: dict[str, Upstream]) -> None:
    # 10,000 draws of the same split run through the flow in tests/engine; here 1,000 real
    # requests: Binomial(1000, 0.1) has sd 0.95 %, so ±4 % is a >4-sd bound.
    http = """  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}"""
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http), seed=11)
    results = responses(run_requests(kind, runtime, [("GET", f"{URL}/", {})] * 1000, concurrency=4))
    names = Counter(r.json()["name"] for r in results)
    assert names["v1"] + names["v2"] == 1000
    assert abs(names["v2"] / 1000 - 0.10) <= 0.04


def test_end_user_jason_goes_to_v2(kind: str, upstreams: dict[str, Upstream]) -> None:
    http = """  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]"""
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http))
    requests = [("GET", f"{URL}/", {"headers": {"end-user": "jason"}})] * 10
    requests += [("GET", f"{URL}/", {"headers": {"end-user": "Jason"}})] * 10
    results = responses(run_requests(kind, runtime, requests))
    assert {r.json()["name"] for r in results[:10]} == {"v2"}
    assert {r.json()["name"] for r in results[10:]} == {"v1"}
    seen = results[0].json()
    assert seen["headers"]["host"] == "reviews:9080"  # the logical authority, not the IP
    assert seen["headers"]["x-envoy-attempt-count"] == "1"


def test_rewrite_and_header_operations(kind: str, upstreams: dict[str, Upstream]) -> None:
    http = """  - match: [{uri: {prefix: /api}}]
    rewrite: {uri: /v2, authority: ratings}
    headers:
      request: {set: {x-set: "1"}, add: {x-add: "2"}, remove: [x-gone]}
      response: {set: {x-resp: "3"}, remove: [x-upstream]}
    route: [{destination: {host: reviews, subset: v1}}]"""
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http))
    (response,) = responses(
        run_requests(
            kind,
            runtime,
            [("GET", f"{URL}/api/x?q=1", {"headers": {"x-gone": "a", "x-set": "old"}})],
        )
    )
    seen = response.json()
    assert (seen["path"], seen["query"]) == ("/v2/x", "q=1")
    assert seen["headers"]["host"] == "ratings"
    assert seen["headers"]["x-set"] == "1"
    assert seen["headers"]["x-add"] == "2"
    assert "x-gone" not in seen["headers"]
    assert response.headers["x-resp"] == "3"
    assert "x-upstream" not in response.headers


def test_no_route_is_404_nr(kind: str, upstreams: dict[str, Upstream]) -> None:
    http = "  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: reviews}}]"
    runtime = make_runtime(both(upstreams) + vs(http))
    (response,) = responses(run_requests(kind, runtime, [("GET", f"{URL}/other", {})]))
    assert response.status_code == 404
    assert flags(response) == ("NR",)
    assert response.extensions["meshlib"]["local_reply"] is True


# -------------------------------------------------------------------------------- faults


def test_fault_delay_and_abort_fractions(kind: str, upstreams: dict[str, Upstream]) -> None:
    http = """  - fault:
      delay: {fixedDelay: 7s, percentage: {value: 50}}
      abort: {httpStatus: 500, percentage: {value: 10}}
    route: [{destination: {host: reviews, subset: v1}}]"""
    slept: list[float] = []
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http), seed=5, sleep=slept.append)
    n = 600
    results = responses(run_requests(kind, runtime, [("GET", f"{URL}/", {})] * n, concurrency=4))
    delayed = [r for r in results if "DI" in flags(r)]
    aborted = [r for r in results if "FI" in flags(r)]
    assert len(slept) == len(delayed)
    assert set(slept) == {7.0}
    assert abs(len(delayed) / n - 0.5) <= 0.08
    assert abs(len(aborted) / n - 0.1) <= 0.05
    assert {r.status_code for r in aborted} == {500}
    assert {r.text for r in aborted} == {"fault filter abort"}
    assert upstreams["v1"].state.requests == n - len(aborted)


# ---------------------------------------------------------------------- timeouts, retries


def test_route_timeout_gives_504_ut(kind: str, upstreams: dict[str, Upstream]) -> None:
    http = "  - timeout: 0.5s\n    route: [{destination: {host: reviews, subset: v1}}]"
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http))
    (response,) = responses(run_requests(kind, runtime, [("GET", f"{URL}/delay/2", {})]))
    assert response.status_code == 504
    assert response.text == "upstream request timeout"
    assert flags(response) == ("UT",)


def test_callers_own_timeout_raises_httpx_error(kind: str, upstreams: dict[str, Upstream]) -> None:
    runtime = make_runtime(both(upstreams) + rule(SUBSETS))
    (result,) = run_requests(kind, runtime, [("GET", f"{URL}/delay/2", {"timeout": 0.3})])
    assert isinstance(result, httpx.ReadTimeout)


@pytest.mark.parametrize("retry_on", ["5xx", "retriable-status-codes,503"])
def test_flaky_upstream_succeeds_on_third_attempt(
    kind: str, upstreams: dict[str, Upstream], retry_on: str
) -> None:
    http = f"""  - retries: {{attempts: 3, retryOn: "{retry_on}"}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]"""
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http))
    upstreams["v1"].state.fail_first["/flaky"] = 2
    (response,) = responses(run_requests(kind, runtime, [("GET", f"{URL}/flaky", {})]))
    assert response.status_code == 200
    assert response.json()["headers"]["x-envoy-attempt-count"] == "3"
    assert response.extensions["meshlib"]["attempts"] == 3
    assert upstreams["v1"].state.requests == 3


def test_default_retries_on_refused_connections(kind: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    runtime = make_runtime(service_entry(HOST, [(closed_port, {})]))
    (response,) = responses(run_requests(kind, runtime, [("GET", f"{URL}/", {})]))
    assert response.status_code == 503
    assert flags(response) == ("UF", "URX")
    assert response.extensions["meshlib"]["attempts"] == 3
    assert response.text.startswith("upstream connect error or disconnect/reset before headers")


def test_streamed_request_body_is_sent_once(kind: str, upstreams: dict[str, Upstream]) -> None:
    http = """  - retries: {attempts: 3, retryOn: "5xx"}
    route: [{destination: {host: reviews, subset: v1}}]"""
    runtime = make_runtime(both(upstreams) + rule(SUBSETS) + vs(http))
    upstreams["v1"].state.fail_first["/echo"] = 1
    if kind == "sync":

        def body() -> Iterator[bytes]:
            yield b"part1-"
            yield b"part2"

        with httpx.Client(transport=MeshTransport(runtime)) as client:
            response = client.post(f"{URL}/echo", content=body())
            bytes_ok = client.post(f"{URL}/echo", content=b"bytes")
    else:

        async def go() -> tuple[httpx.Response, httpx.Response]:
            async def body() -> Any:
                yield b"part1-"
                yield b"part2"

            async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime)) as client:
                first = await client.post(f"{URL}/echo", content=body())
                second = await client.post(f"{URL}/echo", content=b"bytes")
                return first, second

        response, bytes_ok = asyncio.run(go())
    assert response.status_code == 503  # not replayable: the first answer stands
    assert bytes_ok.status_code == 200
    assert bytes_ok.json()["body"] == "bytes"


# ------------------------------------------------------------------- limits and outliers


def test_circuit_breaker_overflows_with_503_uo(kind: str, upstreams: dict[str, Upstream]) -> None:
    policy = """  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
"""
    runtime = make_runtime(both(upstreams) + rule(policy + SUBSETS))
    requests: list[tuple[str, str, dict[str, Any]]] = [("GET", f"{URL}/delay/0.05", {})] * 20
    results = responses(run_requests(kind, runtime, requests, concurrency=3))
    codes = Counter(r.status_code for r in results)
    assert set(codes) <= {200, 503}
    assert 2 <= codes[200] <= 19
    assert codes[503] >= 1
    for response in results:
        if response.status_code == 503:
            assert flags(response) == ("UO",)
            assert response.headers["x-envoy-overloaded"] == "true"
    assert state_of(runtime).limiter.active == 0


OUTLIERS = """  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
"""
NO_RETRIES = "  - retries: {attempts: 0}\n    route: [{destination: {host: reviews}}]"


def test_failing_endpoint_is_ejected_and_returns(kind: str, upstreams: dict[str, Upstream]) -> None:
    clock = FakeClock()
    runtime = make_runtime(both(upstreams) + rule(OUTLIERS) + vs(NO_RETRIES), clock=clock)
    upstreams["v1"].state.always_status = 500
    results = responses(run_requests(kind, runtime, [("GET", f"{URL}/", {})] * 30))
    assert upstreams["v1"].state.requests == 1  # one 500 ejects it
    assert Counter(r.status_code for r in results) == {500: 1, 200: 29}
    clock.advance(31.0)  # past baseEjectionTime, at the next 1 s sweep
    upstreams["v1"].state.always_status = None
    results = responses(run_requests(kind, runtime, [("GET", f"{URL}/", {})] * 30))
    assert {r.status_code for r in results} == {200}
    assert upstreams["v1"].state.requests > 1


def test_all_endpoints_ejected_is_503_uh(kind: str, upstreams: dict[str, Upstream]) -> None:
    clock = FakeClock()
    runtime = make_runtime(both(upstreams) + rule(OUTLIERS) + vs(NO_RETRIES), clock=clock)
    upstreams["v1"].state.always_status = 500
    upstreams["v2"].state.always_status = 500
    results = responses(run_requests(kind, runtime, [("GET", f"{URL}/", {})] * 5))
    assert [r.status_code for r in results[:2]] == [500, 500]
    for response in results[2:]:
        assert response.status_code == 503
        assert response.text == "no healthy upstream"
        assert flags(response) == ("UH",)


# ---------------------------------------------------------------------- streams and errors


def test_streaming_response_releases_on_close(kind: str, upstreams: dict[str, Upstream]) -> None:
    policy = "  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: 1}}\n"
    runtime = make_runtime(both(upstreams) + rule(policy + SUBSETS))
    state = state_of(runtime)
    if kind == "sync":
        with httpx.Client(transport=MeshTransport(runtime)) as client:
            with client.stream("GET", f"{URL}/stream") as response:
                assert state.limiter.active == 1
                chunks = list(response.iter_bytes())
            assert state.limiter.active == 0
            with client.stream("GET", f"{URL}/stream") as response:
                assert state.limiter.active == 1  # closed before reading: released below
            assert state.limiter.active == 0
    else:

        async def go() -> list[bytes]:
            async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime)) as client:
                async with client.stream("GET", f"{URL}/stream") as response:
                    assert state.limiter.active == 1
                    got = [chunk async for chunk in response.aiter_bytes()]
                assert state.limiter.active == 0
                async with client.stream("GET", f"{URL}/stream") as response:
                    assert state.limiter.active == 1
                assert state.limiter.active == 0
                return got

        chunks = asyncio.run(go())
    assert b"".join(chunks) == b"chunk0;chunk1;chunk2;chunk3;chunk4;"


def test_async_cancellation_releases_every_permit(upstreams: dict[str, Upstream]) -> None:
    policy = """  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 5}}
"""
    runtime = make_runtime(both(upstreams) + rule(policy + SUBSETS))
    state = state_of(runtime)

    async def go() -> None:
        transport = AsyncMeshTransport(runtime)
        async with httpx.AsyncClient(transport=transport) as client:
            sending = asyncio.create_task(client.get(f"{URL}/delay/5"))
            queued = asyncio.create_task(client.get(f"{URL}/delay/5"))
            for _ in range(500):
                if state.limiter.active == 1 and state.limiter.pending == 1:
                    break
                await asyncio.sleep(0.01)
            assert (state.limiter.active, state.limiter.pending) == (1, 1)
            queued.cancel()
            sending.cancel()
            for task in (queued, sending):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert (state.limiter.active, state.limiter.pending) == (0, 0)
            response = await client.get(f"{URL}/")  # the cluster still works
            assert response.status_code == 200

    asyncio.run(go())


def test_outside_the_mesh_is_plain_httpx(kind: str, upstreams: dict[str, Upstream]) -> None:
    runtime = make_runtime(both(upstreams))
    direct = f"http://127.0.0.1:{upstreams['v2'].port}/plain"
    (response,) = responses(run_requests(kind, runtime, [("GET", direct, {})]))
    assert response.json()["name"] == "v2"
    assert "x-envoy-attempt-count" not in response.json()["headers"]
    (error,) = run_requests(kind, runtime, [("GET", "http://unknown-host.invalid/", {})])
    assert isinstance(error, httpx.ConnectError)


def test_headers_h11_refuses_fail_as_with_bare_httpx(
    kind: str, upstreams: dict[str, Upstream]
) -> None:
    # The transport hands h11 headers it has checked itself: what it cannot vouch for must
    # still reach h11 and fail there, with bare httpx's exception and message.
    runtime = make_runtime(both(upstreams))
    odd_but_legal = {"x-tabs": "a b\tc", "x-utf8": "café".encode(), "content-length": "2"}
    evil = {"x-evil": "a\r\nInjected: 1"}
    ok, refused = run_requests(
        kind,
        runtime,
        [("POST", f"{URL}/h", {"headers": odd_but_legal, "content": b"hi"}),
         ("GET", f"{URL}/h", {"headers": evil})],
    )  # fmt: skip
    assert isinstance(ok, httpx.Response), ok
    seen = ok.json()["headers"]
    assert (seen["x-tabs"], seen["x-utf8"], seen["content-length"]) == ("a b\tc", "café", "2")
    with httpx.Client() as bare, pytest.raises(httpx.LocalProtocolError) as expected:
        bare.get(f"http://127.0.0.1:{upstreams['v1'].port}/h", headers=evil)
    assert isinstance(refused, httpx.LocalProtocolError)
    assert str(refused) == str(expected.value)


def test_bad_url_and_closed_transport(upstreams: dict[str, Upstream]) -> None:
    runtime = make_runtime(both(upstreams))
    transport = MeshTransport(runtime)
    with pytest.raises(httpx.UnsupportedProtocol):
        transport.handle_request(httpx.Request("GET", "ftp://reviews/"))
    transport.close()
    with pytest.raises(RuntimeError, match="closed"):
        transport.handle_request(httpx.Request("GET", f"{URL}/"))

    async def go() -> None:
        transport = AsyncMeshTransport(runtime)
        with pytest.raises(httpx.UnsupportedProtocol):
            await transport.handle_async_request(httpx.Request("GET", "ftp://reviews/"))
        await transport.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await transport.handle_async_request(httpx.Request("GET", f"{URL}/"))

    asyncio.run(go())


def test_connections_are_reused(kind: str, upstreams: dict[str, Upstream]) -> None:
    runtime = make_runtime(
        both(upstreams)
        + rule(SUBSETS)
        + vs("  - route: [{destination: {host: reviews, subset: v1}}]")
    )
    if kind == "sync":
        with httpx.Client(transport=MeshTransport(runtime)) as client:
            for _ in range(20):
                client.get(f"{URL}/")
            transport = client._transport
            assert isinstance(transport, MeshTransport)
            assert transport.connection_count == 1
    else:

        async def go() -> int:
            transport = AsyncMeshTransport(runtime)
            async with httpx.AsyncClient(transport=transport) as client:
                for _ in range(20):
                    await client.get(f"{URL}/")
                return transport.connection_count

        assert asyncio.run(go()) == 1


def _alive(kind: type) -> int:
    # Tracked objects, collectable or not: with the cyclic GC off, garbage stays counted.
    return sum(1 for item in gc.get_objects() if type(item) is kind)


def test_a_finished_response_leaves_no_garbage_of_the_mesh(
    kind: str, upstreams: dict[str, Upstream]
) -> None:
    """httpx's response and its bound stream refer to each other, so they wait for the cyclic
    GC; the mesh's own request (its Call, the upstream response) must be freed at once."""
    runtime = make_runtime(both(upstreams) + rule(SUBSETS))
    count = 20
    gc.collect()
    gc.disable()
    try:
        before = (_alive(Call), _alive(httpcore.Response))
        if kind == "sync":
            with httpx.Client(transport=MeshTransport(runtime)) as client:
                for number in range(count):
                    with client.stream("GET", f"{URL}/stream") as response:
                        if number % 2:  # read to the end, or closed unread
                            response.read()
                with pytest.raises(httpx.StreamConsumed):
                    list(response.stream)  # the body itself refuses a second reading
                after = (_alive(Call), _alive(httpcore.Response))
        else:

            async def go() -> tuple[int, int]:
                async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime)) as client:
                    for number in range(count):
                        async with client.stream("GET", f"{URL}/stream") as response:
                            if number % 2:
                                await response.aread()
                    with pytest.raises(httpx.StreamConsumed):
                        [chunk async for chunk in response.stream]  # type: ignore[union-attr]
                    return _alive(Call), _alive(httpcore.Response)

            after = asyncio.run(go())
    finally:
        gc.enable()
    assert after[0] - before[0] <= 1
    assert after[1] - before[1] <= 1


# --------------------------------------------------------------------------- hash cookies


def test_generated_hash_cookie_keeps_a_client_on_one_endpoint(
    kind: str, upstreams: dict[str, Upstream]
) -> None:
    # consistentHash.httpCookie with a ttl: the first response sets the cookie (Envoy's
    # generated cookie), the client's cookie jar sends it back, every later request hashes to
    # the endpoint of the first one.
    runtime = make_runtime(
        both(upstreams)
        + rule(
            "  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n"
            "        httpCookie: {name: sticky, path: /, ttl: 3600s}"
        )
    )

    def names(client_responses: list[httpx.Response]) -> list[str]:
        return [r.headers["x-upstream"] for r in client_responses]

    def sync_session() -> list[httpx.Response]:
        with httpx.Client(transport=MeshTransport(runtime)) as client:
            return [client.get(f"{URL}/") for _ in range(8)]

    async def async_session() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime)) as client:
            return [await client.get(f"{URL}/") for _ in range(8)]

    first_upstreams = set()
    # 16 clients: each sticks to its endpoint; all 16 on one endpoint has odds of 2**-15.
    for _ in range(16):
        session = sync_session() if kind == "sync" else asyncio.run(async_session())
        set_cookie = session[0].headers["set-cookie"]
        assert set_cookie.startswith('sticky="')
        assert set_cookie.endswith("; Max-Age=3600; Path=/; HttpOnly")
        assert all("set-cookie" not in r.headers for r in session[1:])  # sent back: no new one
        assert len(set(names(session))) == 1
        first_upstreams.add(names(session)[0])
    assert first_upstreams == {"v1", "v2"}


# ------------------------------------------------------------------------------ mirroring


def test_mirror_sends_a_copy_and_the_caller_gets_the_primary(
    kind: str, upstreams: dict[str, Upstream]
) -> None:
    runtime = make_runtime(
        both(upstreams)
        + rule(SUBSETS)
        + vs(
            "  - route: [{destination: {host: reviews, subset: v1}}]\n"
            "    mirror: {host: reviews, subset: v2}"
        )
    )
    results = responses(run_requests(kind, runtime, [("POST", f"{URL}/m", {"content": b"x"})] * 5))
    assert {r.headers["x-upstream"] for r in results} == {"v1"}
    assert upstreams["v1"].state.requests == 5
    # The copies are fire and forget: they arrive when they arrive (bounded wait).
    deadline = time.monotonic() + 10
    while upstreams["v2"].state.requests < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstreams["v2"].state.requests == 5


def test_a_failing_mirror_never_reaches_the_caller(
    kind: str, upstreams: dict[str, Upstream], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshlib.httpx")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: every copy fails to connect
    runtime = make_runtime(
        both(upstreams)
        + "\n---\n"
        + service_entry("dead.default.svc.cluster.local", [(port, {})])
        + rule(SUBSETS)
        + vs(
            "  - route: [{destination: {host: reviews, subset: v1}}]\n"
            "    mirror: {host: dead.default.svc.cluster.local, port: {number: 9080}}"
        )
    )
    results = responses(run_requests(kind, runtime, [("GET", f"{URL}/", {})] * 3))
    assert [r.status_code for r in results] == [200, 200, 200]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not failed_mirrors(caplog):
        time.sleep(0.02)
    assert failed_mirrors(caplog)  # the copies were sent, failed, and stayed quiet


def failed_mirrors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("mirror to")]
