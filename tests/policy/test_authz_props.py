"""Properties of the AuthorizationPolicy matchers and of the candidate index."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlib._model import Peer
from meshlib._policy import authz
from meshlib._policy.authz import (
    Action,
    AuthorizationPolicy,
    Authorizer,
    AuthzRequest,
    build_policy,
    compile_values,
)
from meshlib._policy.paths import PathNormalization, normalize_path


def reference(pattern: str, value: str | None) -> bool:
    """Istio's string match, written the obvious way."""
    if value is None:
        return False
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


text = st.text(alphabet="ab*/", max_size=5)
patterns = st.lists(text.filter(bool), min_size=1, max_size=4)


@given(patterns, st.one_of(st.none(), text))
def test_matcher_agrees_with_reference(values: list[str], value: str | None) -> None:
    expected = any(reference(p, value) for p in values)
    assert compile_values(values).matches(value) is expected


@given(patterns, st.one_of(st.none(), text))
def test_fast_path_agrees_with_matcher(values: list[str], value: str | None) -> None:
    # The evaluation loop's inlined exact/prefix/suffix steps must agree with matches().
    rule = {"to": [{"operation": {"methods": values}}]}
    p = build_policy("p", "ns", rules=[rule])
    request = AuthzRequest(method=value or "", http=True)
    expected = compile_values(values).matches(value or "")
    assert Authorizer([p]).check(request).allowed is expected


@given(patterns, text)
def test_hosts_fold_case(values: list[str], value: str) -> None:
    matcher = compile_values(values, fold=True)
    assert matcher.matches(value.upper().lower()) is compile_values(
        [v.lower() for v in values]
    ).matches(value.lower())


def test_non_string_values_never_match_string_patterns() -> None:
    assert not compile_values(["a*", "*b"]).matches(5)
    assert compile_values(["*"]).matches(5)


# Admin DENY cannot be bypassed: whatever the path, if the backend would see /admin..., deny.
TOKENS = ["/", "//", ".", "..", "admin", "public", "\\", "%2e", "%61", "%2F", "?", "#", "ADMIN"]
paths = st.lists(st.sampled_from(TOKENS), max_size=10).map(lambda t: "/" + "".join(t))


@given(paths, st.sampled_from(list(PathNormalization)))
def test_admin_deny_follows_normalization(path: str, mode: PathNormalization) -> None:
    deny = build_policy(
        "d", "ns", action="DENY", rules=[{"to": [{"operation": {"paths": ["/admin*"]}}]}]
    )
    normalized = normalize_path(path, mode)
    assert normalized is not None
    denied = not Authorizer([deny], mode).check(AuthzRequest(path=path)).allowed
    assert denied is normalized.startswith("/admin")


# ------------------------------------------------------------------------------ index = scan
PRINCIPALS = [f"cluster.local/ns/{ns}/sa/{sa}" for ns in ("a", "b") for sa in ("x", "y")]
SOURCE_FIELDS = {
    "principals": st.lists(
        st.sampled_from([*PRINCIPALS, "*", "cluster.local/ns/a/*"]), min_size=1, max_size=2
    ),
    "notPrincipals": st.lists(st.sampled_from(PRINCIPALS), min_size=1, max_size=2),
    "namespaces": st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2),
    "serviceAccounts": st.lists(st.sampled_from(["a/x", "b/y", "x"]), min_size=1, max_size=2),
}
OPERATION_FIELDS = {
    "methods": st.lists(st.sampled_from(["GET", "POST", "P*"]), min_size=1, max_size=2),
    "paths": st.lists(st.sampled_from(["/a", "/b", "/a*", "*"]), min_size=1, max_size=2),
    "notPaths": st.lists(st.sampled_from(["/a", "/b*"]), min_size=1, max_size=2),
    "ports": st.lists(st.sampled_from(["80", "81"]), min_size=1, max_size=2),
    "hosts": st.lists(st.sampled_from(["h", "H:80"]), min_size=1, max_size=2),
}


def clause(fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields).filter(bool)


rules = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(
            clause(SOURCE_FIELDS).map(lambda s: {"source": s}), min_size=1, max_size=2
        ),
        "to": st.lists(
            clause(OPERATION_FIELDS).map(lambda o: {"operation": o}), min_size=1, max_size=2
        ),
        "when": st.lists(
            st.sampled_from(
                [
                    {"key": "request.headers[x]", "values": ["1"]},
                    {"key": "source.namespace", "values": ["a"]},
                    {"key": "destination.port", "notValues": ["81"]},
                ]
            ),
            min_size=1,
            max_size=2,
        ),
    },
)
policies = st.lists(
    st.tuples(
        st.sampled_from(["ALLOW", "DENY", "AUDIT"]),
        st.one_of(st.none(), st.lists(rules, max_size=3)),
    ),
    max_size=6,
).map(
    lambda specs: [
        build_policy(f"p{i}", "a", action=action, rules=r) for i, (action, r) in enumerate(specs)
    ]
)
requests = st.builds(
    AuthzRequest,
    peer=st.one_of(
        st.none(), st.sampled_from(PRINCIPALS).map(lambda p: Peer(f"spiffe://{p}", mtls=True))
    ),
    host=st.sampled_from(["h", "H:80", "other"]),
    port=st.sampled_from([80, 81]),
    method=st.sampled_from(["GET", "POST", "PUT"]),
    path=st.sampled_from(["/a", "/b", "/ab", "/c"]),
    headers=st.sampled_from([{}, {"x": "1"}]),
    http=st.booleans(),
)


def scan(policies: list[AuthorizationPolicy], request: AuthzRequest) -> tuple[bool, str]:
    """Istio's decision by a plain walk over every policy."""
    facts = Authorizer([])._facts(request)
    assert facts is not None

    def first(action: Action) -> str | None:
        for p in policies:
            if p.action is action and authz._first_match(p, facts, request, request.http) >= 0:
                return p.ref
        return None

    denied = first(Action.DENY)
    if denied:
        return False, denied
    if not any(p.action is Action.ALLOW for p in policies):
        return True, ""
    allowed = first(Action.ALLOW)
    return allowed is not None, allowed or ""


@settings(max_examples=300)
@given(policies, requests)
def test_index_agrees_with_scan(policies: list[AuthorizationPolicy], request: AuthzRequest) -> None:
    decision = Authorizer(policies).check(request)
    assert (decision.allowed, decision.policy) == scan(policies, request)


def test_identity_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authz, "_IDENTITY_CACHE_SIZE", 2)
    allow = build_policy("p", "ns", rules=[{"from": [{"source": {"namespaces": ["n3"]}}]}])
    authorizer = Authorizer([allow])
    results = [
        authorizer.check(AuthzRequest(peer=Peer(f"spiffe://td/ns/n{i}/sa/s"))).allowed
        for i in range(5)
    ]
    assert results == [False, False, False, True, False]
    assert len(authorizer._identities) <= 2


prefix_rules = st.fixed_dictionaries(
    {
        "to": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "paths": st.lists(
                        st.sampled_from(["/a", "/a*", "/ab*", "/b*", "*.c"]), min_size=1, max_size=2
                    ),
                    "methods": st.lists(
                        st.sampled_from(["P*", "G*", "GET"]), min_size=1, max_size=2
                    ),
                },
            )
            .filter(bool)
            .map(lambda o: {"operation": o}),
            min_size=1,
            max_size=2,
        )
    }
)
prefix_policies = st.lists(
    st.tuples(st.sampled_from(["ALLOW", "DENY"]), st.lists(prefix_rules, min_size=1, max_size=2)),
    min_size=1,
    max_size=6,
).map(
    lambda specs: [build_policy(f"p{i}", "a", action=a, rules=r) for i, (a, r) in enumerate(specs)]
)
prefix_requests = st.builds(
    AuthzRequest,
    method=st.sampled_from(["GET", "POST", "PUT"]),
    path=st.sampled_from(["/a", "/ab", "/abc", "/b", "/x.c", "/"]),
)


@settings(max_examples=300)
@given(prefix_policies, prefix_requests)
def test_prefix_index_agrees_with_scan(
    policies: list[AuthorizationPolicy], request: AuthzRequest
) -> None:
    decision = Authorizer(policies).check(request)
    assert (decision.allowed, decision.policy) == scan(policies, request)
