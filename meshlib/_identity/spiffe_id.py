"""SPIFFE IDs as the SPIFFE ID spec and Istio write them.

Rules (SPIFFE ID spec, section 2): scheme ``spiffe`` in lower case; a trust domain of lower-case
letters, digits, ``.``, ``-`` and ``_``; a path of ``/``-separated non-empty segments of letters,
digits, ``.``, ``-`` and ``_``, none of them ``.`` or ``..``, no trailing slash; no port, user info,
query or fragment; at most 2048 bytes. Istio workloads use the path ``/ns/<ns>/sa/<sa>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SPIFFE_SCHEME", "SpiffeId", "SpiffeIdError"]

SPIFFE_SCHEME = "spiffe://"
MAX_SPIFFE_ID_BYTES = 2048
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class SpiffeIdError(ValueError):
    """The text is not a valid SPIFFE ID (or trust domain, or path segment)."""


def _check_trust_domain(trust_domain: str) -> None:
    if not trust_domain:
        raise SpiffeIdError("SPIFFE ID has an empty trust domain")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise SpiffeIdError(
            f"trust domain {trust_domain!r} may hold only lower-case letters, digits, '.', '-', '_'"
        )


def _check_segment(segment: str) -> None:
    if not segment:
        raise SpiffeIdError("SPIFFE ID path has an empty segment")
    if segment in {".", ".."}:
        raise SpiffeIdError(f"SPIFFE ID path segment {segment!r} is not allowed")
    if not _SEGMENT.fullmatch(segment):
        raise SpiffeIdError(
            f"SPIFFE ID path segment {segment!r} may hold only letters, digits, '.', '-', '_'"
        )


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """``spiffe://<trust_domain><path>``; ``path`` is empty or starts with ``/``."""

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        _check_trust_domain(self.trust_domain)
        if self.path:
            if not self.path.startswith("/"):
                raise SpiffeIdError(f"SPIFFE ID path {self.path!r} must start with '/'")
            for segment in self.path[1:].split("/"):
                _check_segment(segment)
        if len(str(self).encode()) > MAX_SPIFFE_ID_BYTES:
            raise SpiffeIdError(f"SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        if not text.startswith(SPIFFE_SCHEME):
            raise SpiffeIdError(f"{text!r} is not a SPIFFE ID: it must start with 'spiffe://'")
        rest = text[len(SPIFFE_SCHEME) :]
        trust_domain, slash, path = rest.partition("/")
        if any(c in trust_domain for c in ":@"):
            raise SpiffeIdError(f"{text!r}: a SPIFFE ID has no port or user info")
        if slash and not path:
            raise SpiffeIdError(f"{text!r}: a SPIFFE ID has no trailing slash")
        return cls(trust_domain, slash + path)

    @classmethod
    def for_workload(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """Istio's workload identity, ``spiffe://<td>/ns/<ns>/sa/<sa>``."""
        _check_segment(namespace)  # each must be one segment: "a/b" would shift the ns/sa slots
        _check_segment(service_account)
        return cls(trust_domain, f"/ns/{namespace}/sa/{service_account}")

    def __str__(self) -> str:
        return f"{SPIFFE_SCHEME}{self.trust_domain}{self.path}"

    @property
    def uri(self) -> str:
        return str(self)

    @property
    def principal(self) -> str:
        """Istio's principal: the ID without ``spiffe://``."""
        return f"{self.trust_domain}{self.path}"

    @property
    def namespace(self) -> str | None:
        return self._istio_part(1)

    @property
    def service_account(self) -> str | None:
        return self._istio_part(3)

    def _istio_part(self, index: int) -> str | None:
        segments = self.path[1:].split("/")
        if len(segments) == 4 and segments[0] == "ns" and segments[2] == "sa":
            return segments[index]
        return None
