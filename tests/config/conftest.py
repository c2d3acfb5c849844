"""Helpers for the validation tests: build a resource from a spec and list its issues."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from meshlib._config import resources as r
from meshlib._config.issues import ConfigIssue, Severity
from meshlib._config.loader import LoadedResource
from meshlib._config.validate import CODE_NOT_ENFORCED, validate_resource

SPECS: dict[str, type[r.SpecModel]] = {
    "VirtualService": r.VirtualServiceSpec,
    "DestinationRule": r.DestinationRuleSpec,
    "ServiceEntry": r.ServiceEntrySpec,
    "WorkloadEntry": r.WorkloadEntrySpec,
    "PeerAuthentication": r.PeerAuthenticationSpec,
    "AuthorizationPolicy": r.AuthorizationPolicySpec,
}

Issues = Callable[..., list[tuple[str, str]]]


def issues_of(
    kind: str,
    spec: Mapping[str, Any],
    *,
    namespace: str = "default",
    annotations: Mapping[str, str] | None = None,
) -> list[ConfigIssue]:
    res = LoadedResource(
        kind=kind,
        api_version="v1",
        name="x",
        namespace=namespace,
        spec=SPECS[kind].model_validate(spec),
        labels={},
        annotations=dict(annotations or {}),
        file="f.yaml",
        document=0,
    )
    found = validate_resource(res)
    for issue in found:
        assert (issue.file, issue.document, issue.resource) == (
            "f.yaml",
            0,
            f"{kind}/{namespace}/x",
        )
    return found


@pytest.fixture
def errors() -> Issues:
    """``errors(kind, spec)`` -> [(field, message)] of the ERROR issues."""

    def run(kind: str, spec: Mapping[str, Any], **kw: Any) -> list[tuple[str, str]]:
        return [
            (i.field, i.message)
            for i in issues_of(kind, spec, **kw)
            if i.severity is Severity.ERROR
        ]

    return run


@pytest.fixture
def warnings() -> Issues:
    """``warnings(kind, spec)`` -> [(field, message)] of the warnings other than not-enforced."""

    def run(kind: str, spec: Mapping[str, Any], **kw: Any) -> list[tuple[str, str]]:
        return [
            (i.field, i.message)
            for i in issues_of(kind, spec, **kw)
            if i.severity is Severity.WARNING and i.code != CODE_NOT_ENFORCED
        ]

    return run


@pytest.fixture
def not_enforced() -> Issues:
    """``not_enforced(kind, spec)`` -> [(field, message)] of the not-enforced warnings."""

    def run(kind: str, spec: Mapping[str, Any], **kw: Any) -> list[tuple[str, str]]:
        return [
            (i.field, i.message) for i in issues_of(kind, spec, **kw) if i.code == CODE_NOT_ENFORCED
        ]

    return run
