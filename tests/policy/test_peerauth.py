"""PeerAuthentication resolution (ISTIO-SEMANTICS 4 and 10, case 11)."""

from __future__ import annotations

from typing import Any

import pytest

from meshlib._policy.peerauth import (
    MESH_DEFAULT_MTLS,
    MtlsMode,
    PeerAuthenticationPolicy,
    WorkloadMtls,
    effective_mtls_mode,
    workload_mtls,
)

UNSET, DISABLE, PERMISSIVE, STRICT = (
    MtlsMode.UNSET,
    MtlsMode.DISABLE,
    MtlsMode.PERMISSIVE,
    MtlsMode.STRICT,
)
APP = {"app": "web", "version": "v1"}


def pa(
    name: str,
    namespace: str,
    mode: MtlsMode = UNSET,
    selector: dict[str, str] | None = None,
    **kw: Any,
) -> PeerAuthenticationPolicy:
    return PeerAuthenticationPolicy(name, namespace, mode, selector, **kw)


@pytest.mark.parametrize(
    ("policies", "port", "expected"),
    [
        ([], 8080, PERMISSIVE),
        ([pa("mesh", "istio-system", STRICT)], 8080, STRICT),
        ([pa("mesh", "istio-system", UNSET)], 8080, PERMISSIVE),
        ([pa("mesh", "istio-system", STRICT), pa("ns", "default", PERMISSIVE)], 8080, PERMISSIVE),
        ([pa("mesh", "istio-system", STRICT), pa("ns", "default", UNSET)], 8080, STRICT),
        ([pa("ns", "default", STRICT), pa("w", "default", DISABLE, {"app": "web"})], 8080, DISABLE),
        ([pa("ns", "default", STRICT), pa("w", "default", UNSET, {"app": "web"})], 8080, STRICT),
        # a selector that does not match, or that sits in another namespace, does nothing
        ([pa("ns", "default", STRICT), pa("w", "default", DISABLE, {"app": "db"})], 8080, STRICT),
        ([pa("w", "other", DISABLE, {"app": "web"})], 8080, PERMISSIVE),
        ([pa("ns", "other", STRICT)], 8080, PERMISSIVE),
        # selector policies in the root namespace are ignored
        ([pa("w", "istio-system", STRICT, {"app": "web"})], 8080, PERMISSIVE),
        # an empty selector is no selector
        ([pa("ns", "default", STRICT, {})], 8080, STRICT),
        # port level: only with a selector, overrides per port, UNSET inherits
        (
            [
                pa("ns", "default", STRICT),
                pa("w", "default", UNSET, {"app": "web"}, port_modes={8080: DISABLE}),
            ],
            8080,
            DISABLE,
        ),
        (
            [
                pa("ns", "default", STRICT),
                pa("w", "default", UNSET, {"app": "web"}, port_modes={8080: DISABLE}),
            ],
            9090,
            STRICT,
        ),
        ([pa("w", "default", STRICT, {"app": "web"}, port_modes={8080: UNSET})], 8080, STRICT),
        ([pa("ns", "default", STRICT, port_modes={8080: DISABLE})], 8080, STRICT),
        # several at one level: the oldest, else the first loaded
        ([pa("b", "default", STRICT, order=0), pa("a", "default", DISABLE, order=1)], 1, STRICT),
        (
            [
                pa("new", "default", STRICT, created="2024-02-01T00:00:00Z", order=0),
                pa("old", "default", DISABLE, created="2024-01-01T00:00:00Z", order=1),
            ],
            1,
            DISABLE,
        ),
        (
            [
                pa("unknown", "default", STRICT, order=0),
                pa("dated", "default", DISABLE, created="2024-01-01T00:00:00Z", order=1),
            ],
            1,
            DISABLE,
        ),
        (
            [
                pa("w1", "default", STRICT, {"app": "web"}, order=0),
                pa("w2", "default", DISABLE, {"version": "v1"}, order=1),
            ],
            1,
            STRICT,
        ),
    ],
)
def test_effective_mode(
    policies: list[PeerAuthenticationPolicy], port: int, expected: MtlsMode
) -> None:
    assert effective_mtls_mode(policies, "default", APP, port) is expected


def test_migration_case_11() -> None:
    # PERMISSIVE: both; namespace STRICT: mTLS only; portLevelMtls {8080: DISABLE} reopens 8080.
    assert effective_mtls_mode([], "default", APP, 8080).accepts_plaintext
    strict = [pa("ns", "default", STRICT)]
    assert not effective_mtls_mode(strict, "default", APP, 8080).accepts_plaintext
    reopened = [*strict, pa("w", "default", selector={"app": "web"}, port_modes={8080: DISABLE})]
    assert effective_mtls_mode(reopened, "default", APP, 8080).accepts_plaintext
    assert not effective_mtls_mode(reopened, "default", APP, 8080).accepts_mtls
    assert not effective_mtls_mode(reopened, "default", APP, 9090).accepts_plaintext
    assert effective_mtls_mode(reopened, "default", APP, 9090).accepts_mtls


def test_workload_mtls_reports_deciders() -> None:
    resolved = workload_mtls(
        [
            pa("mesh", "istio-system", STRICT),
            pa("w", "default", UNSET, {"app": "web"}, port_modes={8080: DISABLE, 9090: UNSET}),
        ],
        "default",
        APP,
    )
    assert resolved.mode is STRICT
    assert resolved.decided_by == "istio-system/mesh"
    assert dict(resolved.ports) == {8080: DISABLE}
    assert dict(resolved.port_decided_by) == {8080: "default/w"}
    assert resolved.mode_for(9090) is STRICT


def test_custom_root_namespace() -> None:
    policies = [pa("mesh", "mesh-root", STRICT), pa("w", "mesh-root", DISABLE, {"app": "web"})]
    assert effective_mtls_mode(policies, "default", APP, 1, root_namespace="mesh-root") is STRICT
    assert effective_mtls_mode(policies, "default", APP, 1) is PERMISSIVE


def test_workload_in_root_namespace_ignores_selector_policies() -> None:
    policies = [pa("w", "istio-system", DISABLE, {"app": "web"})]
    assert effective_mtls_mode(policies, "istio-system", APP, 1) is PERMISSIVE


def test_defaults() -> None:
    assert MESH_DEFAULT_MTLS is PERMISSIVE
    assert WorkloadMtls().mode_for(1) is PERMISSIVE
    assert pa("n", "ns").ref == "ns/n"
    assert pa("n", "ns").age_key == (True, "", 0)
