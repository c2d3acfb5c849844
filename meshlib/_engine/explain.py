"""``mesh.explain``: what the outbound flow would do with one request, and why. Pure.

It walks the same policies in the same order as ``outbound_flow`` (match, redirect or direct
response, fault, weighted destinations, cluster) but sends nothing, draws no random number and
holds no permit, so asking never changes what the mesh does next. Endpoints come from the live
``ClusterState``: the ones outlier detection ejected right now are marked.
"""

from __future__ import annotations

from typing import Any

from meshlib._config.show import to_plain
from meshlib._engine.runtime import PASSTHROUGH_CLUSTER, ClusterTarget, OutboundRuntime
from meshlib._engine.snapshot import MeshSnapshot
from meshlib._model.call import Call
from meshlib._model.commands import Reply
from meshlib._policy.deadlines import overall_deadline
from meshlib._policy.replies import NO_CLUSTER_REPLY
from meshlib._policy.retries import max_tries
from meshlib._policy.routing import (
    NO_ROUTE_REPLY,
    Route,
    RouteDestination,
    apply_header_ops,
    default_route,
    direct_reply,
    match_route,
    redirect_reply,
    response_header_ops,
    rewrite_request,
)

__all__ = [
    "RESULT_DIRECT_RESPONSE",
    "RESULT_NO_ROUTE",
    "RESULT_PASSTHROUGH",
    "RESULT_REDIRECT",
    "RESULT_ROUTED",
    "explain_call",
]

RESULT_ROUTED = "routed"
"""Sent upstream to one of ``destinations``."""
RESULT_NO_ROUTE = "no_route"
"""404 NR: the host has a VirtualService and no route matched."""
RESULT_REDIRECT = "redirect"
RESULT_DIRECT_RESPONSE = "direct_response"
RESULT_PASSTHROUGH = "passthrough"
"""The host is not in the configuration: plain client behaviour (one try, its own errors)."""


def explain_call(
    call: Call,
    runtime: OutboundRuntime,
    *,
    snapshot: MeshSnapshot | None = None,
    caller_timeout: float | None = None,
) -> dict[str, Any]:
    """A JSON-ready account of the decisions for ``call`` (see docs/traffic.md, "Explain")."""
    if snapshot is None:
        snapshot = runtime.snapshot()
    result: dict[str, Any] = {
        "request": {
            "method": call.method,
            "authority": call.authority,
            "host": call.host,
            "port": call.port,
            "path": call.path,
        },
        "generation": snapshot.generation,
        "client": {
            "namespace": snapshot.identity.namespace,
            "labels": dict(snapshot.identity.labels),
            "spiffe_id": snapshot.identity.spiffe_id,
        },
    }
    config = snapshot.lookup_host(call.authority, call.port)
    if config is None:
        result |= {
            "result": RESULT_PASSTHROUGH,
            "service": call.host,
            "virtual_service": None,
            "route": None,
            "reply": None,
            "destinations": [
                {
                    "host": call.host,
                    "subset": None,
                    "port": call.port,
                    "weight": 100,
                    "share": 100.0,
                    "cluster": PASSTHROUGH_CLUSTER,
                    "endpoints": [{"address": call.host, "port": call.port, "ejected": False}],
                }
            ],
            "timeout": _timeout(None, caller_timeout, runtime),
            "retries": None,
            "fault": None,
        }
        return result
    result["service"] = config.host
    table = config.routes
    result["virtual_service"] = table.source if table is not None else None
    if table is None:
        route: Route = default_route(config.host, None)
        match_index = -1
    else:
        matched = match_route(table, call, call.port)
        if matched is None:
            result |= _local(RESULT_NO_ROUTE, NO_ROUTE_REPLY) | {"route": None}
            return result
        route, match_index = matched
    result["route"] = {
        "name": route.name,
        "source": route.source,
        "implicit": table is None,
        "match_index": match_index,
        "match": to_plain(route.matches[match_index]) if match_index >= 0 else None,
    }
    if route.redirect is not None:
        result |= _local(RESULT_REDIRECT, redirect_reply(route, match_index, call))
        return result
    if route.direct_response is not None:
        result |= _local(RESULT_DIRECT_RESPONSE, direct_reply(route))
        return result

    total = sum(max(d.weight, 0) for d in route.destinations) or 1
    result |= {
        "result": RESULT_ROUTED,
        "reply": None,
        "timeout": _timeout(route.timeout, caller_timeout, runtime),
        "retries": to_plain(route.retries) | {"max_tries": max_tries(route.retries)},
        "fault": to_plain(route.fault),
        "destinations": [
            _destination(snapshot, runtime, call, config.host, route, match_index, d, total)
            for d in route.destinations
        ],
    }
    return result


def _local(kind: str, reply: Reply) -> dict[str, Any]:
    return {
        "result": kind,
        "reply": {
            "status": reply.status,
            "flags": list(reply.flags),
            "body": reply.body,
            "headers": [list(pair) for pair in reply.headers],
        },
        "destinations": [],
        "timeout": None,
        "retries": None,
        "fault": None,
    }


def _timeout(
    route_timeout: float | None, caller_timeout: float | None, runtime: OutboundRuntime
) -> dict[str, Any]:
    # The earliest of the route's, the caller's and an inherited deadline wins (as in the flow).
    inherited = runtime.inherited_deadline() if runtime.inherited_deadline is not None else None
    now = runtime.clock.now()
    deadline = overall_deadline(now, route_timeout, caller_timeout, inherited)
    return {
        "route": route_timeout,
        "caller": caller_timeout,
        "inherited": None if inherited is None else max(inherited - now, 0.0),
        "effective": None if deadline is None else max(deadline - now, 0.0),
    }


def _destination(
    snapshot: MeshSnapshot,
    runtime: OutboundRuntime,
    call: Call,
    service_host: str,
    route: Route,
    match_index: int,
    destination: RouteDestination,
    total: int,
) -> dict[str, Any]:
    port = destination.port or call.port
    dns_name = call.host if destination.host == service_host else destination.host
    target = runtime.cluster_for(snapshot, destination.host, destination.subset, port, dns_name)
    path, authority = rewrite_request(route, match_index, call, destination)
    entry: dict[str, Any] = {
        "host": destination.host,
        "subset": destination.subset,
        "port": port,
        "weight": destination.weight,
        "share": round(100.0 * max(destination.weight, 0) / total, 4),
        "rewrite": {"path": path, "authority": authority},
        "request_headers": to_plain(apply_header_ops(route, destination)),
        "response_headers": to_plain(response_header_ops(route, destination)),
    }
    if target is None:
        # The subset is not defined by any DestinationRule: every request gets 503 NC.
        reply = NO_CLUSTER_REPLY
        entry |= {
            "cluster": None,
            "reply": {"status": reply.status, "flags": list(reply.flags)},
            "endpoints": [],
        }
        return entry
    entry |= _cluster(target, runtime)
    return entry


_DROPPED = {"priority": None, "locality_weight": None, "warmup_factor": None}
"""Placement of an endpoint that ``distribute`` leaves out: it is never picked."""


def _cluster(target: ClusterTarget, runtime: OutboundRuntime) -> dict[str, Any]:
    state = target.state
    ejected = {endpoint.key: until for endpoint, until in state.ejected()}
    placement = state.placement(runtime.clock.now())
    endpoints = []
    for endpoint in (*state.endpoints, *state.removed):
        tls, peers = target.endpoint_tls(endpoint, runtime.mtls_available)
        until = ejected.get(endpoint.key)
        endpoints.append(
            {
                "address": endpoint.address,
                "port": endpoint.port,
                "labels": dict(endpoint.labels),
                "weight": endpoint.weight,
                "locality": endpoint.locality,
                "ejected": until is not None,
                "ejected_until": until,
                "mtls": tls,
                "expected_peers": sorted(peers),
                # Locality priority (0 first), the locality's share of it in percent and the
                # slow-start weight factor: why this endpoint gets more or less traffic.
                **placement.get(endpoint.key, _DROPPED),
            }
        )
    policy = target.policy
    limiter = state.limiter
    return {
        "cluster": target.name,
        "reply": None,
        "endpoints": endpoints,
        "tls_mode": target.tls_mode or "auto",
        "tls_origination": to_plain(target.origination),
        "connection_pool": to_plain(policy.connection_pool),
        "outlier_detection": to_plain(policy.outlier_detection),
        "load_balancer": to_plain(policy.load_balancer),
        "retry_budget": to_plain(policy.retry_budget),
        "connect_timeout": target.connection.connect_timeout,
        "in_flight": {
            "active": limiter.active,
            "pending": limiter.pending,
            "retries": limiter.retries,
            "overflows": limiter.overflows,
        },
    }
