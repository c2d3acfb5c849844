"""Mesh-wide settings (Istio's MeshConfig) reach the snapshot: root namespace, path
normalization, CUSTOM providers, case-insensitive paths; defaults are Istio's."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlib._config.compile import compile_snapshot
from meshlib._config.compile_security import CODE_AUTHZ_PROVIDER
from meshlib._config.source import ConfigSource, MeshSettings
from meshlib._policy.authz import AuthzRequest
from meshlib._policy.paths import PathNormalization
from meshlib._policy.peerauth import MtlsMode
from meshlib.errors import ConfigError

from .conftest import load

ROOT_RULES = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: everything, namespace: mesh-root}
spec:
  host: "*.svc.cluster.local"
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: mesh-root}
spec: {mtls: {mode: STRICT}}
"""

ADMIN_DENIED = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin/*]}}]}]
"""

CUSTOM = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  action: CUSTOM
  provider: {name: ext-authz}
  rules: [{to: [{operation: {paths: [/private/*]}}]}]
"""


def test_defaults_are_istios() -> None:
    settings = MeshSettings()
    assert settings.root_namespace == "istio-system"
    assert settings.path_normalization is PathNormalization.BASE
    assert dict(settings.custom_providers) == {}
    assert settings.case_insensitive_paths is False


@pytest.mark.parametrize(("root", "applies"), [("mesh-root", True), ("istio-system", False)])
def test_root_namespace_scopes_destination_rules_and_peer_authentication(
    root: str, applies: bool
) -> None:
    snapshot, issues = compile_snapshot(load(ROOT_RULES), namespace="default", root_namespace=root)
    assert issues == []
    found = snapshot.lookup_host("reviews.default.svc.cluster.local")
    assert (found is not None and found.destination is not None) is applies
    mtls = snapshot.peer_authentication
    assert mtls is not None
    assert (mtls.mode is MtlsMode.STRICT) is applies


def _denied(path: str, **settings: object) -> bool:
    snapshot, issues = compile_snapshot(
        load(ADMIN_DENIED),
        namespace="default",
        **settings,  # type: ignore[arg-type]
    )
    assert issues == []
    assert snapshot.authorization is not None
    return not snapshot.authorization.check(AuthzRequest(method="GET", path=path)).allowed


def test_path_normalization_reaches_the_authorizer() -> None:
    assert _denied("/public/../admin/x")  # BASE resolves dot segments
    assert not _denied("//admin/x")
    assert _denied("//admin/x", path_normalization=PathNormalization.MERGE_SLASHES)


def test_case_insensitive_paths_reach_the_authorizer() -> None:
    assert not _denied("/ADMIN/x")
    assert _denied("/ADMIN/x", case_insensitive_paths=True)


def test_custom_providers_reach_the_authorizer() -> None:
    asked: list[str] = []

    def provider(request: AuthzRequest) -> bool:
        asked.append(request.path)
        return False

    snapshot, issues = compile_snapshot(
        load(CUSTOM), namespace="default", custom_providers={"ext-authz": provider}
    )
    assert issues == []
    assert snapshot.authorization is not None
    assert not snapshot.authorization.check(AuthzRequest(method="GET", path="/private/a")).allowed
    assert snapshot.authorization.check(AuthzRequest(method="GET", path="/public")).allowed
    assert asked == ["/private/a"]
    _, missing = compile_snapshot(load(CUSTOM), namespace="default")
    assert [i.code for i in missing] == [CODE_AUTHZ_PROVIDER]


def test_config_source_threads_settings(tmp_path: Path) -> None:
    def allow(_request: AuthzRequest) -> bool:
        return True

    with pytest.raises(ConfigError, match="no callable for CUSTOM provider 'ext-authz'"):
        ConfigSource.from_text(CUSTOM, namespace="default")
    with ConfigSource.from_text(
        CUSTOM, namespace="default", custom_providers={"ext-authz": allow}
    ) as source:
        assert source.snapshot.authorization is not None
    (tmp_path / "mesh.yaml").write_text(ROOT_RULES + "---\n" + ADMIN_DENIED)
    with ConfigSource.from_paths(
        [tmp_path],
        namespace="default",
        root_namespace="mesh-root",
        path_normalization=PathNormalization.MERGE_SLASHES,
        case_insensitive_paths=True,
    ) as source:
        snapshot = source.snapshot
        assert snapshot.peer_authentication is not None
        assert snapshot.peer_authentication.mode is MtlsMode.STRICT
        assert snapshot.authorization is not None
        request = AuthzRequest(method="GET", path="//ADMIN/x")
        assert not snapshot.authorization.check(request).allowed
