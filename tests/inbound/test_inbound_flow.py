"""The pure inbound flow: peer check, trace hooks, authorization, delivered path, completion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._engine.inbound import (
    BAD_PATH_BODY,
    DETAILS_BAD_PATH,
    DETAILS_EXEMPT,
    DETAILS_MTLS_REQUIRED,
    GRPC_INVALID_ARGUMENT,
    GRPC_PERMISSION_DENIED,
    GRPC_UNAUTHENTICATED,
    MTLS_REQUIRED_BODY,
    ExemptPaths,
    InboundHooks,
    InboundRecord,
    inbound_flow,
    rbac_details,
)
from meshlib._engine.snapshot import MeshIdentity, MeshSnapshot
from meshlib._model.call import Call, Peer
from meshlib._policy.authz import DENY_BODY, Authorizer, Decision, build_policy
from meshlib._policy.paths import PathNormalization, normalize_path
from meshlib._policy.peerauth import MtlsMode, WorkloadMtls

WEB = "spiffe://cluster.local/ns/default/sa/web"
ADMIN = "spiffe://cluster.local/ns/default/sa/admin"


class Headers:
    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self.values = {k.lower(): v for k, v in (values or {}).items()}

    def get(self, key: str, /) -> str | None:
        return self.values.get(key.lower())

    def __contains__(self, key: object, /) -> bool:
        return isinstance(key, str) and key.lower() in self.values


def call(
    path: str = "/",
    *,
    spiffe_id: str | None = WEB,
    method: str = "GET",
    port: int = 9080,
    protocol: str = "http",
) -> Call:
    peer = Peer(spiffe_id=spiffe_id, address="10.0.0.1", port=5000, mtls=spiffe_id is not None)
    return Call(
        protocol=protocol,
        method=method,
        scheme="https",
        authority="reviews:9080",
        host="reviews",
        port=port,
        path=path,
        headers=Headers(),
        peer=peer,
    )


def policies(*specs: dict[str, Any]) -> Authorizer:
    built = [
        build_policy(
            spec.get("name", f"p{index}"),
            "default",
            action=spec.get("action", "ALLOW"),
            rules=spec.get("rules", [{}]),
        )
        for index, spec in enumerate(specs)
    ]
    return Authorizer(built, spec_mode(specs))


def spec_mode(specs: tuple[dict[str, Any], ...]) -> PathNormalization:
    for spec in specs:
        if "normalization" in spec:
            return PathNormalization(spec["normalization"])
    return PathNormalization.BASE


def snapshot(
    authorizer: Authorizer | None = None,
    mode: MtlsMode | None = None,
    ports: Mapping[int, MtlsMode] | None = None,
) -> MeshSnapshot:
    mtls = None
    if mode is not None:
        mtls = WorkloadMtls(mode=mode, ports=dict(ports or {}), decided_by="default/default")
    return MeshSnapshot.build(
        1,
        MeshIdentity(namespace="default", service_account="reviews"),
        (),
        authorization=authorizer,
        peer_authentication=mtls,
    )


READERS = policies(
    {
        "name": "readers",
        "rules": [
            {
                "from": [{"source": {"principals": ["cluster.local/ns/default/sa/web"]}}],
                "to": [{"operation": {"paths": ["/public*", "/reviews/*"]}}],
            },
            {
                "from": [{"source": {"principals": ["cluster.local/ns/default/sa/admin"]}}],
            },
        ],
    },
    {
        "name": "no-delete",
        "action": "DENY",
        "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}],
    },
)


class Recorder:
    def __init__(self) -> None:
        self.records: list[InboundRecord] = []
        self.events: list[str] = []

    def hooks(self) -> InboundHooks:
        def extract(c: Call, now: float) -> object:
            self.events.append(f"extract {c.path} {now}")
            return ("token", c.path)

        def detach(token: object) -> None:
            self.events.append(f"detach {token!r}")

        return InboundHooks(on_request=self.records.append, extract=extract, detach=detach)


def test_allowed_request_is_delivered_unchanged() -> None:
    flow = inbound_flow(call("/reviews/1"), snapshot(READERS), now=1.0)
    assert flow.allowed
    assert flow.path is None
    assert flow.decision is not None
    assert flow.decision.policy == "default/readers"


def test_no_policy_allows_everything_and_still_extracts() -> None:
    rec = Recorder()
    flow = inbound_flow(call("/x", spiffe_id=None), snapshot(), now=1.0, hooks=rec.hooks())
    assert flow.allowed
    assert flow.decision is None
    assert rec.events == ["extract /x 1.0"]
    record = flow.finish(3.5, 204)
    assert record is not None
    assert (record.status, record.duration, record.mtls) == (204, 2.5, False)
    assert rec.events[-1] == "detach ('token', '/x')"
    assert rec.records == [record]


@pytest.mark.parametrize(
    ("path", "spiffe_id", "method", "allowed", "policy"),
    [
        ("/reviews/1", WEB, "GET", True, "default/readers"),
        ("/public/../admin", WEB, "GET", False, ""),
        ("/public/%2e%2e/admin", WEB, "GET", False, ""),
        ("/public/%2E%2E/admin", WEB, "GET", False, ""),
        ("/%61dmin", WEB, "GET", False, ""),
        ("//admin", WEB, "GET", False, ""),
        ("/admin?/public", WEB, "GET", False, ""),
        ("/admin#/public", WEB, "GET", False, ""),
        ("/public\\..\\admin", WEB, "GET", False, ""),
        ("/PUBLIC/x", WEB, "GET", False, ""),
        ("/admin", ADMIN, "GET", True, "default/readers"),
        ("/admin", ADMIN, "DELETE", False, "default/no-delete"),
        ("/reviews/1", None, "GET", False, ""),
    ],
)
def test_authorization_table(
    path: str, spiffe_id: str | None, method: str, allowed: bool, policy: str
) -> None:
    flow = inbound_flow(call(path, spiffe_id=spiffe_id, method=method), snapshot(READERS), now=0)
    assert flow.allowed is allowed
    assert flow.decision is not None
    assert flow.decision.policy == policy
    if not allowed:
        assert (flow.status, flow.body, flow.grpc_status) == (403, DENY_BODY, None)
        assert flow.details.startswith("rbac_access_denied_matched_policy[")
        assert flow.path is None


def test_normalized_path_is_what_is_delivered_with_its_query() -> None:
    flow = inbound_flow(
        call("/public/x/../about?q=1#frag", spiffe_id=WEB), snapshot(READERS), now=0
    )
    assert flow.allowed
    assert flow.path == "/public/about?q=1"
    flow = inbound_flow(call("/public/%61bout", spiffe_id=WEB), snapshot(READERS), now=0)
    assert flow.path == "/public/about"
    flow = inbound_flow(call("/public/about?x=/../"), snapshot(READERS), now=0)
    assert flow.path is None  # only the query has dots: nothing to rewrite


def test_merge_slashes_mode_is_the_authorizers() -> None:
    merging = policies({"normalization": "MERGE_SLASHES", "rules": [{}]})
    flow = inbound_flow(call("//a//b"), snapshot(merging), now=0)
    assert flow.path == "/a/b"


def test_bad_path_is_400_before_anything_else() -> None:
    rec = Recorder()
    flow = inbound_flow(
        call("/a%00b", spiffe_id=None), snapshot(READERS, MtlsMode.STRICT), now=0, hooks=rec.hooks()
    )
    assert (flow.allowed, flow.status, flow.body, flow.details) == (
        False,
        400,
        BAD_PATH_BODY,
        DETAILS_BAD_PATH,
    )
    assert rec.events == []  # nothing extracted for a malformed request
    grpc = inbound_flow(call("/a%00b", protocol="grpc"), snapshot(), now=0)
    assert grpc.grpc_status == GRPC_INVALID_ARGUMENT


def test_strict_refuses_plaintext_before_extracting() -> None:
    rec = Recorder()
    flow = inbound_flow(
        call("/reviews/1", spiffe_id=None),
        snapshot(READERS, MtlsMode.STRICT),
        now=0,
        hooks=rec.hooks(),
    )
    assert (flow.allowed, flow.status, flow.body, flow.details) == (
        False,
        403,
        MTLS_REQUIRED_BODY,
        DETAILS_MTLS_REQUIRED,
    )
    assert flow.decision is None
    assert rec.events == []
    record = flow.finish(1.0)
    assert record is not None
    assert (record.status, record.details) == (403, DETAILS_MTLS_REQUIRED)
    assert rec.events == []  # no token: nothing to detach
    grpc = inbound_flow(
        call(spiffe_id=None, protocol="grpc"), snapshot(None, MtlsMode.STRICT), now=0
    )
    assert grpc.grpc_status == GRPC_UNAUTHENTICATED


def test_port_level_mode_overrides_the_workload_mode() -> None:
    snap = snapshot(None, MtlsMode.STRICT, {8081: MtlsMode.PERMISSIVE})
    assert inbound_flow(call(spiffe_id=None, port=8081), snap, now=0).allowed
    assert not inbound_flow(call(spiffe_id=None, port=9080), snap, now=0).allowed
    assert inbound_flow(call(spiffe_id=WEB, port=9080), snap, now=0).allowed


def test_disable_ignores_a_client_certificate() -> None:
    c = call("/reviews/1", spiffe_id=WEB)
    flow = inbound_flow(c, snapshot(READERS, MtlsMode.DISABLE), now=0)
    assert not flow.allowed  # the principal is not known on a DISABLE port
    assert c.peer is not None
    assert c.peer.spiffe_id is None
    assert c.peer.address == "10.0.0.1"


def test_exempt_paths_skip_peer_authentication_and_authorization() -> None:
    exempt = ExemptPaths.of(["/healthz", "/ready/*"])
    snap = snapshot(READERS, MtlsMode.STRICT)
    for path in ("/healthz", "/ready/db", "/./healthz?x=1"):
        flow = inbound_flow(call(path, spiffe_id=None), snap, now=0, exempt=exempt)
        assert flow.allowed, path
        assert flow.details == DETAILS_EXEMPT
        assert flow.decision is None
    for path in ("/healthz/x", "/ready", "/HEALTHZ"):
        assert not inbound_flow(call(path, spiffe_id=None), snap, now=0, exempt=exempt).allowed


def test_exempt_paths_parse() -> None:
    exempt = ExemptPaths.of(["/a", "/b/*"])
    assert bool(exempt)
    assert not ExemptPaths.of([])
    assert 3 not in exempt
    assert exempt.describe() == "/a, /b/*"
    with pytest.raises(ValueError, match="must start with '/'"):
        ExemptPaths.of(["healthz"])


def test_grpc_denial_is_permission_denied() -> None:
    flow = inbound_flow(call("/pkg.Svc/Admin", protocol="grpc"), snapshot(READERS), now=0)
    assert (flow.status, flow.grpc_status) == (403, GRPC_PERMISSION_DENIED)
    record_hooks = Recorder()
    flow.hooks = record_hooks.hooks()
    record = flow.finish(1.0, grpc_status=GRPC_PERMISSION_DENIED, flags=("X",))
    assert record is not None
    assert (record.grpc_status, record.flags) == (GRPC_PERMISSION_DENIED, ("X",))


def test_finish_once_and_detach_without_recording() -> None:
    events: list[object] = []
    hooks = InboundHooks(extract=lambda c, now: "t", detach=events.append)
    flow = inbound_flow(call("/reviews/1"), snapshot(READERS), now=0, hooks=hooks)
    assert flow.finish(1.0, 200) is None  # no on_request: nothing recorded
    assert events == ["t"]
    assert flow.finish(2.0, 500) is None
    assert events == ["t"]


def test_detach_runs_even_when_recording_fails() -> None:
    events: list[object] = []

    def boom(record: InboundRecord) -> None:
        raise RuntimeError("sink down")

    hooks = InboundHooks(on_request=boom, extract=lambda c, now: "t", detach=events.append)
    flow = inbound_flow(call("/reviews/1"), snapshot(READERS), now=0, hooks=hooks)
    with pytest.raises(RuntimeError):
        flow.finish(1.0, 200)
    assert events == ["t"]


def test_rbac_details() -> None:
    assert rbac_details(Decision(False)) == "rbac_access_denied_matched_policy[none]"
    decision = Decision(False, policy="prod/deny-all", rule=2)
    assert (
        rbac_details(decision)
        == "rbac_access_denied_matched_policy[ns[prod]-policy[deny-all]-rule[2]]"
    )


def test_source_ip_reaches_authorization() -> None:
    blocks = policies({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]})
    assert inbound_flow(call(), snapshot(blocks), now=0, source_ip="10.1.2.3").allowed
    assert not inbound_flow(call(), snapshot(blocks), now=0, source_ip="192.168.0.1").allowed


SEGMENT = st.sampled_from(
    ["a", "admin", "public", ".", "..", "%2e", "%2E%2e", "%61dmin", "", "x%2Fy"]
)


@given(st.lists(SEGMENT, max_size=6), st.sampled_from(["", "?q=/admin", "#/public"]))
def test_delivered_path_is_the_path_authorization_matched(segments: list[str], tail: str) -> None:
    raw = "/" + "/".join(segments) + tail
    flow = inbound_flow(call(raw, spiffe_id=ADMIN), snapshot(READERS), now=0)
    normalized = normalize_path(raw, PathNormalization.BASE)
    assert normalized is not None
    delivered = (flow.path or raw).partition("#")[0].partition("?")[0]
    assert flow.allowed
    assert delivered == normalized
