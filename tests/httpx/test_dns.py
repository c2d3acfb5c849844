"""DnsResolver: answers off the request path, refreshed, used by the transports."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from httpx_upstreams import NAMESPACE, Upstream, run_requests

from meshlib._config.source import ConfigSource
from meshlib._engine.runtime import build_runtime
from meshlib.httpx import DnsResolver, explain_request
from meshlib.httpx._dns import system_resolve

WAIT = 10.0


class Answers:
    """A resolve function: fixed answers, a failure for unknown names, signals each round."""

    def __init__(self, answers: dict[str, tuple[str, ...]]) -> None:
        self.answers = answers
        self.calls: list[str] = []
        self.called = threading.Event()

    def __call__(self, name: str) -> tuple[str, ...]:
        self.calls.append(name)
        self.called.set()
        if name not in self.answers:
            raise OSError(f"no such name: {name}")
        return self.answers[name]


def test_system_resolve_prefers_ipv4() -> None:
    assert system_resolve("localhost") == ("127.0.0.1",)
    assert system_resolve("::1") == ("::1",)


def test_first_ask_queues_the_name_and_the_thread_answers() -> None:
    answers = Answers({"svc.test": ("127.0.0.1",)})
    with DnsResolver(interval=60.0, resolve=answers) as resolver:
        assert resolver.addresses("svc.test") is None
        assert answers.called.wait(WAIT)
        for _ in range(1000):  # the answer lands right after the call returns
            if resolver.addresses("svc.test") is not None:
                break
            answers.called.wait(0.01)
        assert resolver.addresses("svc.test") == ("127.0.0.1",)
        assert resolver.version == 1


def test_refresh_keeps_the_last_good_answer_on_failure() -> None:
    answers = Answers({"svc.test": ("10.0.0.1",)})
    # No background thread: every refresh below is the test's own, so each sees the change.
    resolver = DnsResolver(interval=60.0, resolve=answers, background=False)
    try:
        resolver.addresses("svc.test")
        resolver.addresses("gone.test")
        resolver.refresh()
        assert resolver.addresses("svc.test") == ("10.0.0.1",)
        del answers.answers["svc.test"]
        failures = resolver.failures
        assert resolver.refresh() is False
        assert resolver.failures > failures
        assert resolver.addresses("svc.test") == ("10.0.0.1",)
        answers.answers["svc.test"] = ("10.0.0.2", "10.0.0.3")
        assert resolver.refresh() is True
        assert resolver.addresses("svc.test") == ("10.0.0.2", "10.0.0.3")
    finally:
        resolver.close()
    assert resolver.addresses("new.test") is None  # closed: nothing more is queued


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream("dns")
    server.start()
    yield server
    server.stop()


def test_requests_reach_every_resolved_address(kind: str, upstream: Upstream) -> None:
    config = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext, namespace: {NAMESPACE}}}
spec:
  hosts: [ext.test]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: {upstream.port}, name: http, protocol: HTTP}}]
"""
    answers = Answers({"ext.test": ("127.0.0.1",)})
    with DnsResolver(interval=60.0, resolve=answers) as resolver:
        runtime = build_runtime(
            ConfigSource.from_text(config, namespace=NAMESPACE), resolver=resolver
        )
        url = f"http://ext.test:{upstream.port}/"
        resolver.addresses("ext.test")
        resolver.refresh()
        view = explain_request(runtime, "GET", url)
        assert [e["address"] for e in view["destinations"][0]["endpoints"]] == ["127.0.0.1"]
        results = run_requests(kind, runtime, [("GET", url, {})] * 3)
        assert [r.status_code for r in results if isinstance(r, httpx.Response)] == [200] * 3
