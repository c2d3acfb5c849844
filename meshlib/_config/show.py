"""The compiled view of one host as a stable, JSON-ready dict, with every default explicit.

Used by ``meshlib show`` and by ``mesh.explain``. Keys are the compiled dataclass field names;
durations are float seconds; sets are sorted lists.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import Any

from meshlib._engine.snapshot import HostConfig, MeshSnapshot, split_authority
from meshlib._policy.balancing import DEFAULT_LOAD_BALANCER
from meshlib._policy.limits import DEFAULT_CONNECTION_POOL
from meshlib._policy.locality import LOCALITY_LABEL, plan_localities
from meshlib._policy.retries import BACKOFF_CAP_FACTOR, DEFAULT_RETRY_POLICY
from meshlib._policy.routing import Route, RouteTable
from meshlib._policy.traffic import DestinationPolicy, TrafficPolicy, resolve_policy

__all__ = ["AUTO_TLS", "NO_SUBSET", "effective_policy", "snapshot_to_dict", "to_plain"]

NO_SUBSET = ""
"""Key of the host-wide (no subset) entry in ``policies``."""
AUTO_TLS = "auto"
"""No ``tls`` block: Istio's auto-mTLS (mesh mTLS to workloads that have it, else plaintext)."""
_BLOCKS = ("connection_pool", "outlier_detection", "load_balancer", "tls", "retry_budget")


def to_plain(value: object) -> Any:
    """Compiled values -> JSON-ready data (dicts, lists, str, numbers, bool, None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")  # precomputed hot-path helpers, not configuration
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(to_plain(v) for v in value)
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    return value


def effective_policy(
    policy: DestinationPolicy | None, subset: str | None, port: int | None
) -> dict[str, Any]:
    """ISTIO-SEMANTICS 2.2 for display: port-level replaces top-level; subset blocks override."""
    top = policy.traffic_policy if policy is not None else None
    chosen: dict[str, object] = dict.fromkeys(_BLOCKS)
    origin = dict.fromkeys(_BLOCKS, "default")
    for name, layer in (("trafficPolicy", top), ("subset", _subset_policy(policy, subset))):
        if layer is None:
            continue
        selected, label = _port_level(layer, name, port)
        for block in _BLOCKS:
            value = getattr(selected, block)
            if value is not None:
                chosen[block], origin[block] = value, label
    resolved = {
        "connection_pool": to_plain(chosen["connection_pool"] or DEFAULT_CONNECTION_POOL),
        "outlier_detection": to_plain(chosen["outlier_detection"]),
        "load_balancer": to_plain(chosen["load_balancer"] or DEFAULT_LOAD_BALANCER),
        "tls": to_plain(chosen["tls"]) if chosen["tls"] is not None else AUTO_TLS,
        "retry_budget": to_plain(chosen["retry_budget"]),
    }
    resolved["from"] = origin
    return resolved


def _port_level(layer: TrafficPolicy, name: str, port: int | None) -> tuple[TrafficPolicy, str]:
    # A port-level entry replaces its whole layer: the blocks it omits are defaults.
    level = layer.port_level.get(port) if port is not None else None
    if level is None:
        return layer, name
    return level, f"{name}.portLevelSettings[{port}]"


def _subset_policy(policy: DestinationPolicy | None, subset: str | None) -> TrafficPolicy | None:
    if policy is None or subset is None:
        return None
    found = policy.subsets.get(subset)
    return found.traffic_policy if found is not None else None


def _locality_view(
    snapshot: MeshSnapshot, config: HostConfig, subset: str | None, port: int
) -> dict[str, Any]:
    """The locality priorities and weights this workload gives the configured endpoints."""
    resolved = resolve_policy(config.destination, subset, port)
    balancer = resolved.load_balancer
    plan = plan_localities(
        config.endpoints_for(subset, port),
        snapshot.identity.labels.get(LOCALITY_LABEL, ""),
        balancer.locality,
        failover=resolved.outlier_detection is not None,
        weighted=balancer.consistent_hash is None,
    )
    return {
        "priorities": [[str(e) for e in level] for level in plan.levels],
        "locality_weights": None
        if plan.groups is None
        else [{g.locality: g.weight for g in level} for level in plan.groups],
        "dropped": [str(e) for e in plan.removed],
    }


def _route(route: Route) -> dict[str, Any]:
    plain: dict[str, Any] = to_plain(route)
    total = sum(d.weight for d in route.destinations) or 1
    for dest in plain["destinations"]:
        dest["share"] = round(100.0 * dest["weight"] / total, 4)
    retries = plain["retries"]
    retries["backoff_max"] = route.retries.backoff_base * BACKOFF_CAP_FACTOR
    return plain


def _routes(table: RouteTable | None, host: str) -> dict[str, Any]:
    if table is None:
        implicit = Route(name="default", source="implicit default route (no VirtualService)")
        plain = _route(implicit)
        plain["destinations"] = [
            {
                "host": host,
                "subset": None,
                "port": None,
                "weight": 100,
                "headers": None,
                "share": 100.0,
            }
        ]
        return {"source": "", "implicit": True, "routes": [plain]}
    return {"source": table.source, "implicit": False, "routes": [_route(r) for r in table.routes]}


def snapshot_to_dict(snapshot: MeshSnapshot, host: str, port: int | None = None) -> dict[str, Any]:
    """Everything meshlib will do for calls to ``host`` from this workload."""
    config = snapshot.lookup_host(host, port)
    name, authority_port = split_authority(host)
    port = port or authority_port
    if config is None:
        config = HostConfig(host=name, generation=snapshot.generation)
    service = config.service
    ports = [p.number for p in service.ports] if service is not None else []
    policy = config.destination
    subsets: dict[str, Any] = {}
    names = [NO_SUBSET, *(policy.subsets if policy is not None else ())]
    for subset in names:
        per_port = {
            str(p): effective_policy(policy, subset or None, p) for p in (ports or [port or 0])
        }
        entry: dict[str, Any] = {
            "labels": dict(policy.subsets[subset].labels) if subset and policy else {},
            "policy_by_port": per_port,
            "endpoints": {
                str(p): [to_plain(e) for e in config.endpoints_for(subset or None, p)]
                for p in (ports or [0])
            },
            "locality": {
                str(p): _locality_view(snapshot, config, subset or None, p) for p in (ports or [0])
            },
        }
        subsets[subset] = entry
    return {
        "query": host,
        "host": config.host,
        "known": config is not None
        and (service is not None or policy is not None or config.routes is not None),
        "generation": snapshot.generation,
        "client": to_plain(snapshot.identity) | {"spiffe_id": snapshot.identity.spiffe_id},
        "service": to_plain(service) if service is not None else None,
        "routes": _routes(config.routes, config.host),
        "destination_rule": {
            "source": policy.source if policy is not None else "",
            "traffic_policy": to_plain(policy.traffic_policy) if policy is not None else None,
        },
        "subsets": subsets,
        "default_retry_policy": to_plain(DEFAULT_RETRY_POLICY),
    }
