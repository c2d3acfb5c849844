"""PeerAuthentication: which inbound connections a workload accepts (ISTIO-SEMANTICS 4).

Levels, each overriding the one before unless its mode is UNSET: the mesh default
(PERMISSIVE), the root namespace's policy without selector, the workload namespace's policy
without selector, then a policy of that namespace whose selector matches the workload (a
selector policy in the root namespace is ignored, as in Istio). Port-level modes apply only
from the workload policy and override its mode for that port; UNSET there inherits.

When several policies compete at one level, Istio keeps the oldest. Resources carry
``creation_timestamp`` only when written in the YAML; policies with one sort before those
without, and load order breaks the remaining ties (first loaded wins), which callers report.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshlib._policy.authz import DEFAULT_ROOT_NAMESPACE

__all__ = [
    "MESH_DEFAULT_MTLS",
    "MtlsMode",
    "PeerAuthenticationPolicy",
    "WorkloadMtls",
    "effective_mtls_mode",
    "workload_mtls",
]


class MtlsMode(enum.Enum):
    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"

    @property
    def accepts_plaintext(self) -> bool:
        return self is not MtlsMode.STRICT

    @property
    def accepts_mtls(self) -> bool:
        return self is not MtlsMode.DISABLE


MESH_DEFAULT_MTLS = MtlsMode.PERMISSIVE


@dataclass(frozen=True, slots=True)
class PeerAuthenticationPolicy:
    name: str
    namespace: str
    mode: MtlsMode = MtlsMode.UNSET
    selector: Mapping[str, str] | None = None
    """``matchLabels``; ``None`` or empty: the whole namespace (or mesh, in the root one)."""
    port_modes: Mapping[int, MtlsMode] = field(default_factory=dict)
    """``portLevelMtls`` by workload port; honoured only with a selector."""
    created: str | None = None
    """``metadata.creationTimestamp`` as written (RFC 3339), if any."""
    order: int = 0
    """Load order: the tie-breaker when creation times are unknown."""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def age_key(self) -> tuple[bool, str, int]:
        """Sorts oldest first: known creation time before unknown, then load order."""
        return (self.created is None, self.created or "", self.order)


@dataclass(frozen=True, slots=True)
class WorkloadMtls:
    """The resolved mTLS modes of one workload: a default and per-port overrides."""

    mode: MtlsMode = MESH_DEFAULT_MTLS
    ports: Mapping[int, MtlsMode] = field(default_factory=dict)
    decided_by: str = ""
    """``namespace/name`` of the policy that set ``mode``; empty for the mesh default."""
    port_decided_by: Mapping[int, str] = field(default_factory=dict)

    def mode_for(self, port: int) -> MtlsMode:
        """The mode for a workload port (never UNSET)."""
        return self.ports.get(port, self.mode)


def _level(
    policies: Iterable[PeerAuthenticationPolicy], namespace: str, selected: bool
) -> list[PeerAuthenticationPolicy]:
    return sorted(
        (p for p in policies if p.namespace == namespace and bool(p.selector) is selected),
        key=lambda p: p.age_key,
    )


def workload_mtls(
    policies: Iterable[PeerAuthenticationPolicy],
    namespace: str,
    labels: Mapping[str, str],
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> WorkloadMtls:
    """Resolve the modes of the workload ``labels`` in ``namespace``."""
    candidates = tuple(policies)
    mode = MESH_DEFAULT_MTLS
    decided_by = ""
    chosen: list[PeerAuthenticationPolicy] = []
    for level_namespace in (root_namespace, namespace):
        level = _level(candidates, level_namespace, selected=False)
        if level:
            chosen.append(level[0])
    workload = [
        p
        for p in _level(candidates, namespace, selected=True)
        if namespace != root_namespace
        and p.selector is not None
        and all(labels.get(k) == v for k, v in p.selector.items())
    ]
    if workload:
        chosen.append(workload[0])
    for policy in chosen:
        if policy.mode is not MtlsMode.UNSET:
            mode = policy.mode
            decided_by = policy.ref
    ports: dict[int, MtlsMode] = {}
    port_decided_by: dict[int, str] = {}
    if workload:
        policy = workload[0]
        for port, port_mode in policy.port_modes.items():
            if port_mode is not MtlsMode.UNSET:
                ports[port] = port_mode
                port_decided_by[port] = policy.ref
    return WorkloadMtls(
        mode=mode,
        ports=MappingProxyType(ports),
        decided_by=decided_by,
        port_decided_by=MappingProxyType(port_decided_by),
    )


def effective_mtls_mode(
    policies: Iterable[PeerAuthenticationPolicy],
    namespace: str,
    labels: Mapping[str, str],
    port: int,
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> MtlsMode:
    """The mode a workload applies to inbound connections on ``port`` (never UNSET)."""
    return workload_mtls(policies, namespace, labels, root_namespace=root_namespace).mode_for(port)
