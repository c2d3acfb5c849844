"""The outbound flow: one generator that orders the policies for one client request.

A driver runs it::

    flow = outbound_flow(call, runtime, caller_timeout=...)
    try:
        command = next(flow)
        while not final:
            ...perform command...; command = flow.send(outcome_or_none)
        conclude(flow)          # after the final command: the flow ends
        ...deliver, reply or raise...
    finally:
        flow.close()            # releases every permit still held (errors, cancellation)

Commands: ``Send`` (answer with the Outcome), ``Sleep``, ``WaitSlot`` (answer ``None`` once
admitted, or an Outcome with ``FailureKind.TIMEOUT`` after giving up), ``Reply`` and
``Deliver`` (final), ``Fail`` (final: raise the I/O library's own error). After a ``Send``
whose response is not delivered, the driver closes that response before the next command.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

from meshlib._engine.clusters import ClusterState
from meshlib._engine.runtime import (
    PASSTHROUGH_CLUSTER,
    ClusterTarget,
    OutboundRuntime,
    RequestRecord,
)
from meshlib._engine.snapshot import MeshSnapshot
from meshlib._model.call import Call
from meshlib._model.commands import Attempt, Deliver, Reply, Send, Sleep
from meshlib._model.endpoint import Endpoint
from meshlib._model.outcome import Classification, FailureKind, Outcome
from meshlib._policy.balancing import ConsistentHash, generated_cookie, hash_key_for
from meshlib._policy.classify import classify, effective_status
from meshlib._policy.deadlines import attempt_timeout, overall_deadline, remaining_ms_header
from meshlib._policy.faults import decide_abort, decide_delay
from meshlib._policy.limits import Admission
from meshlib._policy.replies import (
    FLAG_DOWNSTREAM_TERMINATED,
    FLAG_FAULT_DELAY,
    FLAG_OVERFLOW,
    FLAG_RETRY_LIMIT,
    FLAG_UPSTREAM_TIMEOUT,
    NO_CLUSTER_REPLY,
    NO_HEALTHY_UPSTREAM_REPLY,
    OVERFLOW_REPLY,
    UPSTREAM_TIMEOUT_BODY,
    UPSTREAM_TIMEOUT_REPLY,
    for_grpc,
    reply_for_failure,
    with_flag,
)
from meshlib._policy.retries import RetryPolicy, backoff, max_tries, should_retry
from meshlib._policy.routing import (
    NO_ROUTE_REPLY,
    READS_NOTHING,
    HeaderOps,
    Route,
    RouteDestination,
    RouteTable,
    choose_destination,
    default_route,
    direct_reply,
    header_plan,
    match_route,
    redirect_reply,
    rewrite_request,
)

__all__ = [
    "ATTEMPT_COUNT_HEADER",
    "DEADLINE_SLACK",
    "EXPECTED_TIMEOUT_HEADER",
    "MAX_KEYED_ROUTINGS",
    "Fail",
    "FlowCommand",
    "WaitSlot",
    "conclude",
    "outbound_flow",
]

ATTEMPT_COUNT_HEADER = "x-envoy-attempt-count"
EXPECTED_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"
SET_COOKIE_HEADER = "set-cookie"
DEADLINE_SLACK = 0.001
"""A timeout that fires this close to the deadline counts as the deadline (timer jitter)."""
MAX_KEYED_ROUTINGS = 1024
"""Routing decisions kept per configuration generation for requests that share their key."""
_CONNECTION_CLOSE = ("connection", "close")
_NOT_SENT = frozenset({FailureKind.CONNECT_FAILURE, FailureKind.RESET_BEFORE_REQUEST})


@dataclass(frozen=True, slots=True, eq=False)
class WaitSlot:
    """All connections of the cluster are busy: wait in its FIFO until a slot is handed over.

    The driver calls ``cluster.wait_for_slot(wake)`` and waits at most ``timeout`` seconds
    (``None``: until handed a slot). It answers ``None`` once admitted; on timeout it calls
    ``cluster.cancel_wait(waiter)`` (if that returns False the slot arrived meanwhile: answer
    ``None``) and answers ``Outcome(failure=FailureKind.TIMEOUT)``. If the driver itself is
    cancelled while waiting, it must ``cancel_wait`` and, when that returns False, ``release``.
    """

    cluster: ClusterState
    timeout: float | None


@dataclass(frozen=True, slots=True, eq=False)
class Fail:
    """Final: raise the I/O library's own error, as a plain client would.

    Used outside the mesh (pass-through: the caller sees exactly what plain httpx raises,
    ``exception`` being the last Send's) and when the caller's own timeout expired first.
    """

    outcome: Outcome


FlowCommand = Send | Sleep | Reply | Deliver | WaitSlot | Fail
Shape = tuple[
    tuple[tuple[str, str], ...],
    tuple[tuple[str, str], ...],
    tuple[str, ...],
    str | None,
    str | None,
]
"""What every attempt of a request sends: headers to set, add, remove; path; authority."""
Flow = Generator[FlowCommand, Outcome | None, None]


class _Request:
    """Per-request bookkeeping of the flow; once delivered, also the completion handle the
    driver calls when the response stream ends (exactly once)."""

    __slots__ = (
        "attempts",
        "call",
        "called",
        "cluster",
        "done",
        "endpoint",
        "flags",
        "kept_endpoint",
        "kept_retry",
        "retry_held",
        "runtime",
        "service",
        "slot_held",
        "start",
        "state",
    )

    def __init__(self, call: Call, runtime: OutboundRuntime, start: float) -> None:
        self.call = call
        self.runtime = runtime
        self.start = start
        self.service = call.host
        self.cluster = ""
        self.state: ClusterState | None = None
        self.endpoint: Endpoint | None = None
        """The endpoint of the attempt in flight (its balancer load is held)."""
        self.slot_held = False
        self.retry_held = False
        self.attempts = 0
        self.flags: tuple[str, ...] = ()
        self.done = False
        self.called = False
        self.kept_endpoint: Endpoint | None = None
        self.kept_retry = False

    def end_attempt(self) -> None:
        """Give back what one attempt holds: balancer load, request slot, retry slot."""
        state = self.state
        if state is None:
            return
        endpoint = self.endpoint
        slot = self.slot_held
        retry = self.retry_held
        if endpoint is not None or slot or retry:
            self.endpoint = None
            self.slot_held = self.retry_held = False
            state.end(endpoint, slot=slot, retry=retry)

    def handover(self) -> _Request:
        """Deliver: the delivered attempt's permits move from the flow to this handle."""
        self.kept_endpoint = self.endpoint
        self.kept_retry = self.retry_held
        self.endpoint = None
        self.slot_held = self.retry_held = False
        return self

    def __call__(self, outcome: Outcome) -> None:
        """The completion: the delivered response stream ended (or was closed)."""
        if self.called:
            return
        self.called = True
        state = self.state
        endpoint = self.kept_endpoint
        if state is not None and endpoint is not None:  # pass-through holds nothing
            # A delivered attempt was admitted: it holds its request slot.
            state.end(endpoint, slot=True, retry=self.kept_retry)
        flags = self.flags
        if outcome.failure is FailureKind.TIMEOUT and outcome.detail == UPSTREAM_TIMEOUT_BODY:
            # The mesh cut a delivered stream at its deadline: Envoy's UT, as for a 504.
            flags = (*flags, FLAG_UPSTREAM_TIMEOUT)
        self.report(outcome.status, flags, endpoint, outcome.grpc_status, outcome.response_bytes)

    def report(
        self,
        status: int,
        flags: tuple[str, ...],
        endpoint: Endpoint | None = None,
        grpc_status: int | None = None,
        response_bytes: int = 0,
    ) -> None:
        if self.done:
            return
        self.done = True
        hook = self.runtime.hooks.on_request
        if hook is not None:
            hook(
                RequestRecord(  # positional, in field order: this runs on every request
                    self.call,
                    self.service,
                    self.cluster,
                    status,
                    flags,
                    self.attempts,
                    endpoint,
                    self.start,
                    self.runtime.clock.now(),
                    grpc_status,
                    response_bytes,
                )
            )


def conclude(flow: Flow) -> None:
    """End ``flow`` after its final command (``Deliver``, ``Reply``, ``Fail``).

    Resuming it lets it return; closing it would raise GeneratorExit in its frame, and that
    exception's machinery was several per cent of the native code a call touches
    (``bench_cachegrind.py --footprint``). A delivered response keeps its permits in the
    Deliver's completion, not in the flow.
    """
    if next(flow, None) is not None:  # pragma: no cover - a flow bug; fail loudly
        raise RuntimeError("the outbound flow went on after its final command")


def _final(request: _Request, reply: Reply) -> Reply:
    """A local reply carrying the flags gathered so far (DI...), reported once."""
    for flag in request.flags:
        reply = with_flag(reply, flag)
    if request.call.protocol == "grpc":
        reply = for_grpc(reply)
    request.report(
        reply.status,
        reply.flags,
        grpc_status=reply.grpc_status,
        response_bytes=len(reply.body.encode()) if reply.body else 0,
    )
    return reply


def outbound_flow(
    call: Call,
    runtime: OutboundRuntime,
    *,
    caller_timeout: float | None = None,
    inherited_deadline: float | None = None,
    snapshot: MeshSnapshot | None = None,
) -> Flow:
    """The commands for one outbound request (DESIGN.md section 2(c)).

    ``caller_timeout`` is the caller's own budget (httpx read timeout, gRPC deadline) in
    seconds; ``inherited_deadline`` an absolute deadline carried from an inbound request.
    """
    request = _Request(call, runtime, runtime.clock.now())
    # Routing reads no clock and takes no permit: it runs here, and a driver's first next()
    # starts with the fault decision (one generator level less on every command).
    routing = _routing(call, runtime, runtime.snapshot() if snapshot is None else snapshot)
    if routing.passthrough:
        return _passthrough(call, request, caller_timeout)
    return _routed(call, runtime, request, routing, caller_timeout, inherited_deadline)


class _Destined:
    """One destination of a route: its cluster and what every attempt to it sends."""

    __slots__ = ("carried", "consistent", "response_ops", "shape", "target")

    def __init__(
        self,
        target: ClusterTarget | None,
        shape: Shape,
        response_ops: HeaderOps,
        consistent: ConsistentHash | None,
    ) -> None:
        self.target = target
        """``None``: the subset is not defined (503 NC)."""
        self.shape = shape
        self.response_ops = response_ops
        self.consistent = consistent
        """The cluster's consistent hash: its key is read from each request."""
        self.carried: tuple[Sequence[tuple[str, str]], Shape] | None = None
        """The last constant the telemetry's headers hook returned, and the shape with it in
        front (one pair, so that a thread never reads one with the other's shape)."""


class _Routing:
    """What routing decides for a Call under one snapshot: nothing in it is drawn at random.

    Kept, with each destination's :class:`_Destined` once drawn, for as long as the runtime's
    dict of decisions for the snapshot and DNS answers stays the same: on a Call that a driver
    sends again (``Call.memo``), and in that dict for requests that agree on everything their
    host's route table reads.
    """

    __slots__ = ("destined", "match_index", "passthrough", "reply", "route", "service", "snapshot")

    def __init__(
        self,
        snapshot: MeshSnapshot,
        service: str,
        route: Route | None,
        match_index: int,
        reply: Reply | None,
    ) -> None:
        self.snapshot = snapshot
        self.passthrough = route is None and reply is None
        """Outside the mesh: behave like the plain client."""
        self.service = service
        self.route = route
        self.match_index = match_index
        self.reply = reply
        """A local answer that involves no destination: no route, a redirect, a direct response."""
        self.destined: dict[int, _Destined] = {}
        """Per destination (by identity), filled as they are drawn."""


def _routing(call: Call, runtime: OutboundRuntime, snapshot: MeshSnapshot) -> _Routing:
    # A new dict whenever the snapshot or the DNS answers change: a decision held against this
    # one is current exactly while it is the same dict (per runtime, so per cluster registry).
    decided = runtime.routings(snapshot)
    memo = call.memo
    if memo is not None and memo.basis is decided and type(held := memo.value) is _Routing:
        return held
    # 1. The host decides everything else; one snapshot for the whole request.
    config = snapshot.lookup_host(call.authority, call.port)
    table = None if config is None else config.routes
    reads = READS_NOTHING if table is None else table.reads
    if config is None:
        routing = _Routing(snapshot, call.host, None, -1, None)
    elif reads is None:  # the choice reads headers or the like: routed afresh each time
        routing = _route(call, snapshot, config.host, table)
    else:
        # Keyed by every part of the request the choice (and the destinations' clusters and
        # upstream requests) depends on: requests with the same key share one decision.
        key = (
            config.host,
            call.port,
            call.host,
            call.path_only if reads.path else None,
            call.method if reads.method else None,
            call.scheme if reads.scheme else None,
            call.authority if reads.authority else None,
        )
        found = decided.get(key)
        if type(found) is _Routing:
            routing = found
        else:
            routing = _route(call, snapshot, config.host, table)
            if len(decided) < MAX_KEYED_ROUTINGS:  # many distinct paths: keep the first ones
                decided[key] = routing
    if memo is not None:
        memo.basis = decided
        memo.value = routing
    return routing


def _route(call: Call, snapshot: MeshSnapshot, service: str, table: RouteTable | None) -> _Routing:
    # Routes carry destination, timeout, retries and faults, so they are matched first.
    if table is None:
        route: Route = default_route(service, None)
        match_index = -1
    else:
        matched = match_route(table, call, call.port)
        if matched is None:
            return _Routing(snapshot, service, None, -1, NO_ROUTE_REPLY)
        route, match_index = matched
    # Redirects and direct responses are local answers: no destination is involved.
    reply = None
    if route.redirect is not None:
        reply = redirect_reply(route, match_index, call)
    elif route.direct_response is not None:
        reply = direct_reply(route)
    return _Routing(snapshot, service, route, match_index, reply)


def _destine(
    call: Call,
    runtime: OutboundRuntime,
    routing: _Routing,
    route: Route,
    destination: RouteDestination,
) -> _Destined:
    port = destination.port or call.port
    dns_name = call.host if destination.host == routing.service else destination.host
    target = runtime.cluster_for(
        routing.snapshot, destination.host, destination.subset, port, dns_name
    )
    plan = header_plan(route, destination)
    if route.rewrite is None:
        path, authority = None, plan.authority
    else:
        path, authority = rewrite_request(route, routing.match_index, call, destination)
    ops = plan.request
    close = target is not None and target.close_connections
    set_headers = (*ops.set, _CONNECTION_CLOSE) if close else ops.set
    consistent = None if target is None else target.policy.load_balancer.consistent_hash
    shape = (set_headers, ops.add, ops.remove, path, authority)
    return _Destined(target, shape, plan.response, consistent)


def _routed(
    call: Call,
    runtime: OutboundRuntime,
    request: _Request,
    routing: _Routing,
    caller_timeout: float | None,
    inherited_deadline: float | None,
) -> Flow:
    """A request to a host in the mesh: a local answer, or the attempts and a Deliver."""
    clock = runtime.clock
    rng = runtime.rng
    delivered: Deliver | None = None
    try:
        request.service = routing.service
        if routing.reply is not None:
            yield _final(request, routing.reply)
            return
        route = routing.route
        assert route is not None

        # 2. Faults come before admission: an injected abort spends no pool budget and no
        # outlier statistics (Envoy's fault filter runs before the router).
        now = request.start
        fault = route.fault
        if fault is not None:
            delay = decide_delay(fault, rng)
            if delay is not None:
                request.flags = (FLAG_FAULT_DELAY,)
                yield Sleep(delay)
                now = clock.now()
            abort = decide_abort(fault, rng, grpc=call.protocol == "grpc")
            if abort is not None:
                yield _final(request, abort)
                return

        # The route timeout starts when routing starts, after the fault delay.
        deadline = overall_deadline(now, route.timeout, None, inherited_deadline)
        # The caller's clock started before any fault delay.
        caller_deadline = None if caller_timeout is None else request.start + caller_timeout
        if caller_deadline is not None and (deadline is None or caller_deadline < deadline):
            deadline = caller_deadline
        else:
            caller_deadline = None  # the mesh's deadline binds: expiry is a 504 UT

        # 3. One weighted destination per request: retries stay inside it.
        destination = choose_destination(route, rng)
        known = routing.destined
        destined = known.get(id(destination))  # the route (in the snapshot) keeps it alive
        if destined is None:
            destined = known[id(destination)] = _destine(call, runtime, routing, route, destination)
        target = destined.target
        if target is None:
            yield _final(request, NO_CLUSTER_REPLY)
            return
        request.service = target.service
        request.cluster = target.name
        request.state = target.state
        shape = destined.shape
        propagate = runtime.hooks.outbound_headers
        if propagate is not None:
            # Trace context and request id of the inbound request being served; first, so that
            # a route's own header `set` still wins.
            carried = propagate(request.start, deadline)
            if carried:
                kept = destined.carried
                if kept is not None and kept[0] is carried:
                    shape = kept[1]
                else:
                    shape = ((*carried, *shape[0]), shape[1], shape[2], shape[3], shape[4])
                    if type(carried) is tuple:  # the hook's constant (a list is per request)
                        destined.carried = (carried, shape)
        response_ops = destined.response_ops
        consistent = destined.consistent
        hash_key = None if consistent is None else hash_key_for(consistent, call)
        if (
            hash_key is None
            and consistent is not None
            and (cookie := generated_cookie(consistent, rng)) is not None
        ):
            hash_key, set_cookie = cookie
            response_ops = HeaderOps(
                response_ops.set,
                (*response_ops.add, (SET_COOKIE_HEADER, set_cookie)),
                response_ops.remove,
            )

        shadows = (
            _shadows(runtime, routing.snapshot, route, call, now, deadline, shape)
            if route.mirrors
            else ()
        )

        # 4. The attempt loop.
        delivered = yield from _attempts(
            call,
            runtime,
            request,
            target,
            route.retries,
            now,
            deadline,
            caller_deadline,
            hash_key,
            # Consistent hashing wants the same host again; others prefer untried hosts.
            route.retries.retry_ignore_previous_hosts and consistent is None,
            shape,
            response_ops,
            shadows,
        )
    except GeneratorExit:
        # Closed before an answer reached the caller: the caller went away (Envoy's DC).
        request.report(0, (*request.flags, FLAG_DOWNSTREAM_TERMINATED))
        raise
    finally:
        # Whatever an unfinished attempt still holds goes back (errors, cancellation).
        request.end_attempt()
    if delivered is not None:
        # Yielded here, outside every handler: a driver that closes the flow after a Deliver
        # instead of concluding it (an error while building its response) reports no DC for
        # an answer it got. The Deliver already owns the attempt's permits.
        yield delivered


def _attempts(
    call: Call,
    runtime: OutboundRuntime,
    request: _Request,
    target: ClusterTarget,
    policy: RetryPolicy,
    now: float,
    deadline: float | None,
    caller_deadline: float | None,
    hash_key: int | None,
    exclude_tried: bool,
    shape: Shape,
    response_ops: HeaderOps,
    shadows: tuple[Attempt, ...],
) -> Generator[FlowCommand, Outcome | None, Deliver | None]:
    # A plain tuple rather than a template Attempt: frozen dataclasses cost µs to build.
    set_headers = shape[0]
    clock = runtime.clock
    rng = runtime.rng
    state = target.state
    protocol = call.protocol
    tries = max_tries(policy)
    per_try = policy.per_try_timeout
    tried: list[Endpoint] = []
    on_attempt = runtime.hooks.on_attempt
    mtls = runtime.mtls_available
    number = 0
    while True:
        number += 1
        if number > 1:  # the first attempt starts at the ``now`` routing started with
            now = clock.now()
        timeout = attempt_timeout(now, deadline, per_try)
        if deadline is not None and now >= deadline:
            yield _expired(request, caller_deadline)
            return None

        # Limits before the endpoint: an overflow is answered at once and never retried. Then
        # only non-ejected endpoints (ejection happens in record below, at the same lock).
        # Admission, pick and the balancer's load count share one lock round-trip.
        exclude = tried if exclude_tried else ()
        admission, endpoint = state.begin(rng, hash_key, exclude, now)
        if admission is Admission.OVERFLOW:
            yield _final(request, OVERFLOW_REPLY)
            return None
        if admission is Admission.QUEUED:
            waited = yield WaitSlot(state, timeout)
            if waited is not None:
                yield _expired(request, caller_deadline)
                return None
            now = clock.now()
            timeout = attempt_timeout(now, deadline, per_try)
            endpoint = state.pick_and_start(rng, hash_key, exclude, now)
        request.slot_held = True
        if endpoint is None:
            yield _final(request, NO_HEALTHY_UPSTREAM_REPLY)
            return None
        request.endpoint = endpoint
        request.attempts = number
        tried.append(endpoint)
        headers = (*set_headers, (ATTEMPT_COUNT_HEADER, str(number)))
        expected = remaining_ms_header(now, None if timeout is None else now + timeout)
        if expected is not None:
            headers = (*headers, (EXPECTED_TIMEOUT_HEADER, expected))
        attempt = _attempt(target, endpoint, number, timeout, headers, shape, mtls)
        outcome = yield Send(attempt, shadows) if number == 1 else Send(attempt)
        if outcome is None:  # pragma: no cover - a driver bug; fail loudly
            raise RuntimeError("the driver answered Send without an Outcome")

        # Classified once: retries, outlier detection and metrics read the same verdict.
        classification = classify(outcome, protocol)
        now = clock.now()
        state.record(endpoint, classification, effective_status(outcome, protocol), now)
        if on_attempt is not None:
            on_attempt(call, attempt, outcome, classification)
        failed = outcome.failure is not FailureKind.NONE
        if (
            outcome.failure is FailureKind.TIMEOUT
            and deadline is not None
            and now >= deadline - DEADLINE_SLACK
        ):
            # The overall deadline, not the per-try timeout: no more retries.
            request.end_attempt()
            yield _expired(request, caller_deadline)
            return None

        retry = classification is not Classification.SUCCESS and should_retry(
            policy, outcome, classification, protocol, request_sent=outcome.failure not in _NOT_SENT
        )
        extra: tuple[str, ...] = ()
        if retry and not call.body_replayable:
            retry = False  # a streamed body was consumed by this attempt
        elif retry and number >= tries:
            retry = False
            extra = (FLAG_RETRY_LIMIT,)
        elif retry and deadline is not None and now >= deadline:
            # Envoy's timer would have fired before this answer: no time left to retry.
            yield _expired(request, caller_deadline)
            return None
        if retry:
            if request.retry_held:  # the previous retry's slot ends with its attempt
                request.retry_held = False
                state.release_retry()
            if state.try_acquire_retry():
                # The attempt is over: give back its permits before waiting for the next one.
                request.end_attempt()
                request.retry_held = True
            else:
                extra = (FLAG_OVERFLOW,)
                retry = False
        if retry:
            pause = backoff(policy, number, rng)
            if deadline is not None and now + pause >= deadline:
                # The deadline fires during the backoff: wait it out, then 504 as Envoy does.
                yield Sleep(max(deadline - now, 0.0))
                request.end_attempt()
                yield _expired(request, caller_deadline)
                return None
            yield Sleep(pause)
            continue

        # Final: the last upstream answer (or failure), with URX/UO when retries stopped.
        if extra:
            request.flags = (*request.flags, *extra)
        if failed:
            request.end_attempt()
            yield _final(request, reply_for_failure(outcome))
            return None
        return Deliver(
            outcome,
            request.handover(),
            request.flags,
            response_ops.set,
            response_ops.add,
            response_ops.remove,
        )


def _shadows(
    runtime: OutboundRuntime,
    snapshot: MeshSnapshot,
    route: Route,
    call: Call,
    now: float,
    deadline: float | None,
    shape: Shape,
) -> tuple[Attempt, ...]:
    """Envoy's request mirroring: a copy for each mirror its percentage draws, to an endpoint of
    the mirror's cluster. Fire and forget: no admission, no retries, the answer is dropped (and
    the caller never waits). A streamed body cannot be read twice: such requests are not
    mirrored. Current Istio keeps the Host as it is (older ones appended ``-shadow``)."""
    if not call.body_replayable:
        return ()
    rng = runtime.rng
    shadows: list[Attempt] = []
    for mirror in route.mirrors:
        if mirror.fraction < 1.0 and rng.random() >= mirror.fraction:
            continue
        destination = mirror.destination
        port = destination.port or call.port
        target = runtime.cluster_for(
            snapshot, destination.host, destination.subset, port, destination.host
        )
        if target is None:
            continue  # an undefined subset: Envoy has no cluster to mirror to either
        endpoint = target.state.pick(rng, now=now)
        if endpoint is None:
            continue
        timeout = attempt_timeout(now, deadline, None)
        shadows.append(
            _attempt(target, endpoint, 1, timeout, shape[0], shape, runtime.mtls_available)
        )
    return tuple(shadows)


def _attempt(
    target: ClusterTarget,
    endpoint: Endpoint,
    number: int,
    timeout: float | None,
    set_headers: tuple[tuple[str, str], ...],
    shape: Shape,
    mtls: bool,
) -> Attempt:
    tls, peers = target.endpoint_tls(endpoint, mtls)
    # Positional: keyword passing costs µs on this path (order as declared in Attempt).
    return Attempt(
        endpoint,
        number,
        timeout,
        set_headers,
        shape[1],
        shape[2],
        shape[3],
        shape[4],
        target.name,
        tls,
        peers,
        None if tls else target.origination,
        target.connection,
    )


def _expired(request: _Request, caller_deadline: float | None) -> Reply | Fail:
    """The deadline passed: the caller's own (raise its library's timeout) or the mesh's (504)."""
    request.end_attempt()
    if caller_deadline is not None:
        request.report(0, request.flags)
        return Fail(Outcome(failure=FailureKind.TIMEOUT, detail="caller timeout"))
    return _final(request, UPSTREAM_TIMEOUT_REPLY)


def _passthrough(call: Call, request: _Request, caller_timeout: float | None) -> Flow:
    """Outside the mesh: behave like the plain client (one try, its errors)."""
    request.cluster = PASSTHROUGH_CLUSTER
    endpoint = Endpoint(address=call.host, port=call.port)
    request.attempts = 1
    try:
        outcome = yield Send(
            Attempt(
                endpoint=endpoint, number=1, timeout=caller_timeout, cluster=PASSTHROUGH_CLUSTER
            )
        )
    except GeneratorExit:
        request.report(0, (FLAG_DOWNSTREAM_TERMINATED,))
        raise
    if outcome is None:  # pragma: no cover - a driver bug; fail loudly
        raise RuntimeError("the driver answered Send without an Outcome")
    if outcome.failure is not FailureKind.NONE:
        request.report(0, ())
        yield Fail(outcome)
        return
    request.endpoint = endpoint
    yield Deliver(outcome, request.handover())
