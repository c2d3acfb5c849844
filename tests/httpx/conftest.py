"""Fixtures of the httpx behavioural suite: real upstreams on 127.0.0.1, stopped by their handle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from httpx_upstreams import Upstream


@pytest.fixture(scope="session")
def upstreams() -> Iterator[dict[str, Upstream]]:
    started = {name: Upstream(name) for name in ("v1", "v2", "bad")}
    try:
        for upstream in started.values():
            upstream.start()
        yield started
    finally:
        for upstream in started.values():
            upstream.stop()


@pytest.fixture(autouse=True)
def _reset(upstreams: dict[str, Upstream]) -> None:
    for upstream in upstreams.values():
        with upstream.state.lock:
            upstream.state.requests = 0
            upstream.state.fail_first.clear()
            upstream.state.always_status = None


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)
