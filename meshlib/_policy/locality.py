"""DestinationRule ``localityLbSetting``: priorities and locality weights, seen from one client.

istiod turns the setting into per-client endpoint priorities and locality weights (pilot's
``loadbalancer.ApplyLocalityLoadBalancer``); Envoy then spills traffic to the next priority as
endpoints are ejected (``balancing.priority_loads``) and, within a priority, picks a locality
by ``weight × availability`` before picking an endpoint. ``plan_localities`` computes the
first part once per cluster build; ``choose_locality`` is the per-request part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshlib._model.endpoint import Endpoint
from meshlib._model.runtime import Random
from meshlib._policy.balancing import (
    LOCALITY_OVERPROVISIONING_FACTOR,
    LocalitySetting,
    weighted_index,
)

__all__ = [
    "LOCALITY_LABEL",
    "NETWORK_LABEL",
    "REGION_LABEL",
    "SUBZONE_LABEL",
    "ZONE_LABEL",
    "LocalityGroup",
    "LocalityPlan",
    "choose_locality",
    "client_priority_values",
    "failover_priority",
    "label_priority",
    "locality_match",
    "plan_localities",
    "proximity",
    "split_locality",
    "topology_labels",
]

REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"
NETWORK_LABEL = "topology.istio.io/network"
LOCALITY_LABEL = "topology.istio.io/locality"
"""The client's own ``region/zone/subzone`` among its labels."""

_FAILOVER_LEVELS = 5
"""``failover`` priorities 0-4 nest under each ``failoverPriority`` priority (istiod's × 5)."""


def split_locality(locality: str) -> tuple[str, str, str]:
    """``region/zone/subzone`` -> its three parts, missing ones empty."""
    parts = locality.split("/", 2)
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def locality_match(locality: str, rule: str) -> bool:
    """istiod's ``LocalityMatch``: a rule's ``*`` or omitted zone/subzone matches anything."""
    region, zone, subzone = split_locality(locality)
    want_region, want_zone, want_subzone = split_locality(rule)
    return (
        want_region in ("*", region)
        and want_zone in ("*", "", zone)
        and want_subzone in ("*", "", subzone)
    )


def proximity(local: str, theirs: str) -> int:
    """istiod's ``LbPriority``: 0 same subzone, 1 same zone, 2 same region, 3 elsewhere."""
    mine, other = split_locality(local), split_locality(theirs)
    for level in range(3):
        if mine[level] != other[level]:
            return 3 - level
    return 0


def failover_priority(local: str, theirs: str, failover: Sequence[tuple[str, str]]) -> int:
    """``proximity``, and 4 for another region that the first ``failover`` rule from the
    client's region does not name (those are tried last)."""
    priority = proximity(local, theirs)
    if priority == 3:
        region = split_locality(local)[0]
        for source, target in failover:
            if source == region:
                if split_locality(theirs)[0] != target:
                    priority = 4
                break
    return priority


def topology_labels(labels: Mapping[str, str], locality: str, network: str = "") -> dict[str, str]:
    """``labels`` plus the topology labels istiod derives from a locality and network."""
    result = dict(labels)
    parts = split_locality(locality)
    for name, value in zip((REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL), parts, strict=True):
        if value:
            result[name] = value
    if network:
        result[NETWORK_LABEL] = network
    return result


def client_priority_values(
    failover_priority: Sequence[str], client_labels: Mapping[str, str]
) -> tuple[tuple[str, str], ...] | None:
    """``failoverPriority`` entries as ``(label, value to match)`` for this client.

    ``label=value`` gives the value; otherwise it is the client's own label (its locality and
    network count as topology labels). ``None`` when the client has no labels at all: istiod
    then ignores ``failoverPriority``.
    """
    labels = topology_labels(client_labels, client_labels.get(LOCALITY_LABEL, ""))
    if not labels:
        return None
    values: list[tuple[str, str]] = []
    for entry in failover_priority:
        parts = entry.split("=")
        name = parts[0]
        values.append((name, parts[1] if len(parts) == 2 else labels.get(name, "")))
    return tuple(values)


def label_priority(labels: Mapping[str, str], values: Sequence[tuple[str, str]]) -> int:
    """0 when every label matches; else ``len(values) - i`` for the first mismatch at ``i``."""
    for index, (name, value) in enumerate(values):
        if labels.get(name, "") != value:
            return len(values) - index
    return 0


@dataclass(frozen=True, slots=True)
class LocalityGroup:
    """The endpoints of one locality within one priority, and that locality's weight."""

    locality: str
    weight: float
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class LocalityPlan:
    """What the locality setting makes of a cluster's endpoints for one client."""

    levels: tuple[tuple[Endpoint, ...], ...]
    """Priorities, most preferred first; none empty (no endpoints: no levels)."""
    groups: tuple[tuple[LocalityGroup, ...], ...] | None = None
    """Per level, its localities (Envoy's locality-weighted balancing); ``None``: off."""
    removed: tuple[Endpoint, ...] = ()
    """Endpoints of localities that ``distribute`` gives no weight: never picked."""

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(endpoint for level in self.levels for endpoint in level)


def plan_localities(
    endpoints: Sequence[Endpoint],
    local: str,
    setting: LocalitySetting | None,
    *,
    failover: bool,
    weighted: bool = True,
) -> LocalityPlan:
    """Priorities and locality weights for ``endpoints`` as seen from locality ``local``.

    ``failover`` says whether outlier detection is configured (istiod programs priorities only
    then); ``weighted`` is False for consistent hashing, which ignores locality weights. No
    setting means the mesh default: enabled, proximity priorities.
    """
    members = tuple(endpoints)
    if not members:
        return LocalityPlan(())
    if setting is not None and not setting.enabled:
        return LocalityPlan((members,))
    if setting is not None and setting.distribute:
        return _distribute(members, local, setting.distribute, weighted)
    if not failover:
        return LocalityPlan((members,))
    explicit = setting is not None and bool(setting.failover or setting.failover_priority)
    priorities = _priorities(members, local, setting)
    levels = tuple(
        tuple(e for e, p in zip(members, priorities, strict=True) if p == level)
        for level in sorted(set(priorities))
    )
    groups = None
    if explicit and weighted:
        # istiod turns locality-weighted balancing on with explicit failover settings; each
        # locality weighs the sum of its endpoints' weights.
        groups = tuple(
            tuple(
                LocalityGroup(name, float(sum(e.weight for e in members_)), members_)
                for name, members_ in _by_locality(level).items()
            )
            for level in levels
        )
    return LocalityPlan(levels, groups)


def _priorities(
    members: tuple[Endpoint, ...], local: str, setting: LocalitySetting | None
) -> list[int]:
    failover = setting.failover if setting is not None else ()
    values = setting.failover_priority_values if setting is not None else None
    if setting is not None and setting.failover_priority:
        by_label = (
            [label_priority(_labels(e), values) for e in members]
            if values is not None
            else [0] * len(members)
        )
        if not failover:
            return by_label
        return [
            p * _FAILOVER_LEVELS + _closeness(local, e.locality, failover)
            for p, e in zip(by_label, members, strict=True)
        ]
    return [_closeness(local, e.locality, failover) for e in members]


def _closeness(local: str, theirs: str, failover: Sequence[tuple[str, str]]) -> int:
    # The client's locality unknown (no label): nothing is closer than anything else.
    return failover_priority(local, theirs, failover) if local else 0


def _labels(endpoint: Endpoint) -> dict[str, str]:
    return topology_labels(endpoint.labels, endpoint.locality, endpoint.network)


def _by_locality(members: Sequence[Endpoint]) -> dict[str, tuple[Endpoint, ...]]:
    grouped: dict[str, list[Endpoint]] = {}
    for endpoint in members:
        grouped.setdefault("/".join(split_locality(endpoint.locality)), []).append(endpoint)
    return {name: tuple(group) for name, group in grouped.items()}


def _distribute(
    members: tuple[Endpoint, ...],
    local: str,
    rules: Sequence[tuple[str, Mapping[str, int]]],
    weighted: bool,
) -> LocalityPlan:
    """istiod's ``applyLocalityWeights``: the first rule ``from`` the client's locality gives
    each ``to`` pattern its share, split between the localities it matches by their endpoint
    weights (rounded up); localities no pattern matches get nothing."""
    localities = _by_locality(members)
    weights = {name: float(sum(e.weight for e in group)) for name, group in localities.items()}
    rule = next((to for source, to in rules if locality_match(local, source)), None)
    if rule is not None:
        unclaimed = dict(weights)
        shares: dict[str, float] = {}
        # Validation rejects overlapping patterns; most specific first keeps any overlap stable.
        for pattern, share in sorted(rule.items(), key=lambda item: _specificity(item[0])):
            claimed = [name for name in unclaimed if locality_match(name, pattern)]
            total = sum(unclaimed[name] for name in claimed)
            for name in claimed:
                shares[name] = float(math.ceil(unclaimed.pop(name) * share / total))
        weights = shares
    kept = [name for name in localities if name in weights]
    removed = tuple(e for name, group in localities.items() if name not in weights for e in group)
    level = tuple(e for name in kept for e in localities[name])
    if not level:
        return LocalityPlan((), removed=removed)
    groups = None
    if weighted:
        groups = (tuple(LocalityGroup(name, weights[name], localities[name]) for name in kept),)
    return LocalityPlan((level,), groups, removed)


def _specificity(pattern: str) -> tuple[int, str]:
    return (-sum(1 for part in split_locality(pattern) if part not in ("", "*")), pattern)


def choose_locality(groups: Sequence[LocalityGroup], healthy: Sequence[int], rng: Random) -> int:
    """A locality index drawn by ``weight × min(1, 1.4 × healthy / total)``; -1 if none has any.

    ``healthy`` counts each group's usable endpoints now (all of them when nothing is ejected).
    """
    effective = [
        group.weight * min(1.0, LOCALITY_OVERPROVISIONING_FACTOR * count / len(group.endpoints))
        for group, count in zip(groups, healthy, strict=True)
    ]
    return weighted_index(effective, rng.random() * sum(effective))
