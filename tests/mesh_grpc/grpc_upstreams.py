"""Helpers of the gRPC behavioural suite: real grpc servers on 127.0.0.1 with mTLS, runtimes,
runners for the sync and grpc.aio mesh channels.

Services use bytes (JSON) messages through ``grpc.method_handlers_generic_handler``: no protoc
step. Every server is stopped through its handle; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from meshlib._config.source import ConfigSource
from meshlib._engine.runtime import OutboundRuntime, TelemetryHooks, build_runtime
from meshlib._identity.grpc_credentials import grpc_server_credentials
from meshlib._identity.rotation import RotatingIdentity
from meshlib._model.runtime import SystemRandom
from meshlib.grpc import MeshChannel
from meshlib.grpc.aio import MeshAioChannel

NAMESPACE = "default"
SERVICE = "test.Reviews"
HOST = "reviews.default.svc.cluster.local"
TARGET = "reviews:9080"
GET = f"/{SERVICE}/Get"
STREAM = f"/{SERVICE}/Stream"
COLLECT = f"/{SERVICE}/Collect"
CHAT = f"/{SERVICE}/Chat"
STOP_GRACE = 0.5
WAIT = 10.0
TLS_LABEL = "security.istio.io/tlsMode"


@dataclass
class UpstreamState:
    """What a server saw, and how it should misbehave."""

    name: str
    requests: int = 0
    fail_first: int = 0
    """Answer UNAVAILABLE (trailers-only) to this many calls first."""
    always_code: grpc.StatusCode | None = None
    abandoned: int = 0
    """Waits cut short because the client went away."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _seen(state: UpstreamState, context: grpc.ServicerContext) -> dict[str, Any]:
    metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
    peer = dict(context.auth_context()).get("peer_spiffe_id", [b""])[0].decode()
    return {"name": state.name, "metadata": metadata, "peer": peer}


def _gate(state: UpstreamState, context: grpc.ServicerContext) -> None:
    with state.lock:
        state.requests += 1
        failing = state.fail_first > 0
        if failing:
            state.fail_first -= 1
        code = state.always_code
    if failing:
        context.abort(grpc.StatusCode.UNAVAILABLE, "flaky")
    if code is not None:
        context.abort(code, "always failing")


def _idle(state: UpstreamState, context: grpc.ServicerContext, seconds: float) -> None:
    """Wait ``seconds``, or until the client went away (bounded either way)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not context.is_active():
            with state.lock:
                state.abandoned += 1
            return
        time.sleep(0.01)


def handlers(state: UpstreamState) -> grpc.GenericRpcHandler:
    def get(request: bytes, context: grpc.ServicerContext) -> bytes:
        _gate(state, context)
        asked = json.loads(request or b"{}")
        _idle(state, context, float(asked.get("delay", 0)))
        return json.dumps(_seen(state, context)).encode()

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        _gate(state, context)
        asked = json.loads(request or b"{}")
        count = int(asked.get("count", 5))
        pause = float(asked.get("pause", 0))
        _idle(state, context, float(asked.get("first", 0)))  # no headers until the first message
        for index in range(count):
            if pause:
                time.sleep(pause)
            if not context.is_active():
                return
            yield b"%d" % index

    def collect(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        _gate(state, context)
        words = list(requests)
        # ``sleep:S`` among the requests: answer S seconds after the request stream ended.
        for word in words:
            if word.startswith(b"sleep:"):
                _idle(state, context, float(word[6:]))
        return b"|".join(words)

    def chat(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        _gate(state, context)
        tail = (0, 0.0)
        for message in requests:
            if message.startswith(b"tail:"):
                # ``tail:N:P``: once the request stream ends, N more messages, P seconds apart.
                count, _, pause = message[5:].partition(b":")
                tail = (int(count), float(pause))
            else:
                yield state.name.encode() + b":" + message
        for _ in range(tail[0]):
            _idle(state, context, tail[1])
            if not context.is_active():
                return
            yield b"tick"

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Get": grpc.unary_unary_rpc_method_handler(get),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Collect": grpc.stream_unary_rpc_method_handler(collect),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )


class Upstream:
    """A grpc server with rotating mTLS server credentials on an ephemeral 127.0.0.1 port."""

    def __init__(self, name: str, identity: RotatingIdentity, *, interceptors: Any = ()) -> None:
        self.state = UpstreamState(name)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16), interceptors=list(interceptors)
        )
        self.server.add_generic_rpc_handlers((handlers(self.state),))
        self.port = self.server.add_secure_port("127.0.0.1:0", grpc_server_credentials(identity))

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=STOP_GRACE).wait(WAIT)


def service_entry(endpoints: list[tuple[int, dict[str, str]]], *, port: int = 9080) -> str:
    """A MESH_INTERNAL STATIC ServiceEntry with mesh (mTLS) endpoints on 127.0.0.1."""
    items = "\n".join(
        f"  - address: 127.0.0.1\n    ports: {{grpc: {p}}}\n"
        f"    labels: {json.dumps({**labels, TLS_LABEL: 'istio'})}"
        for p, labels in endpoints
    )
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: {NAMESPACE}}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: {port}, name: grpc, protocol: GRPC}}
  endpoints:
{items}
"""


def virtual_service(http: str) -> str:
    """The ``reviews`` VirtualService with these ``http`` routes (YAML, indented by two)."""
    return f"""
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
{http}"""


def wait_until(check: Any) -> bool:
    """Poll ``check`` for at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def make_runtime(
    text: str,
    identity: RotatingIdentity | None,
    *,
    seed: int = 7,
    clock: Any = None,
    sleep: Any = None,
    inherited_deadline: Any = None,
    hooks: TelemetryHooks | None = None,
) -> OutboundRuntime:
    source = ConfigSource.from_text(text, namespace=NAMESPACE, workload="productpage")
    kwargs: dict[str, Any] = {
        "rng": SystemRandom(seed),
        "clock": clock,
        "inherited_deadline": inherited_deadline,
    }
    if hooks is not None:
        kwargs["hooks"] = hooks
    if sleep is not None:
        kwargs["sleep"] = sleep

        async def async_sleep(seconds: float) -> None:
            sleep(seconds)

        kwargs["async_sleep"] = async_sleep
    return build_runtime(source, identity, **kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.value = 1000.0
        self.lock = threading.Lock()

    def now(self) -> float:
        with self.lock:
            return self.value

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.value += seconds


Request = tuple[dict[str, Any], dict[str, Any]]
"""(JSON request body, call kwargs: timeout, metadata, ...)."""


def run_calls(
    kind: str, runtime: OutboundRuntime, calls: list[Request], *, concurrency: int = 1
) -> list[dict[str, Any] | BaseException]:
    """Unary ``Get`` calls through one mesh channel of ``kind``; answers decoded from JSON."""
    if kind == "sync":
        return _run_sync(runtime, calls, concurrency)
    return asyncio.run(_run_aio(runtime, calls, concurrency))


def _run_sync(
    runtime: OutboundRuntime, calls: list[Request], concurrency: int
) -> list[dict[str, Any] | BaseException]:
    results: list[dict[str, Any] | BaseException] = [RuntimeError("not run")] * len(calls)
    with MeshChannel(runtime, TARGET) as channel:
        get = channel.unary_unary(GET)

        def one(index: int) -> None:
            body, kwargs = calls[index]
            try:
                results[index] = json.loads(get(json.dumps(body).encode(), **kwargs))
            except Exception as error:
                results[index] = error

        if concurrency == 1:
            for index in range(len(calls)):
                one(index)
        else:
            with futures.ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(one, range(len(calls))))
    return results


async def _run_aio(
    runtime: OutboundRuntime, calls: list[Request], concurrency: int
) -> list[dict[str, Any] | BaseException]:
    results: list[dict[str, Any] | BaseException] = [RuntimeError("not run")] * len(calls)
    async with MeshAioChannel(runtime, TARGET) as channel:
        get = channel.unary_unary(GET)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(len(calls)):
            queue.put_nowait(index)

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                body, kwargs = calls[index]
                try:
                    results[index] = json.loads(await get(json.dumps(body).encode(), **kwargs))
                except Exception as error:
                    results[index] = error

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results
