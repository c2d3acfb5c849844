"""Istio's host-name rules: short-name expansion, wildcards, authorities and exportTo."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from meshlib._engine.snapshot import service_aliases, split_authority, wildcard_keys

DEFAULT_DOMAIN_SUFFIX = "svc.cluster.local"
ROOT_NAMESPACE = "istio-system"
DEFAULT_TRUST_DOMAIN = "cluster.local"
EXPORT_ALL = "*"
EXPORT_OWN = "."
EXPORT_NONE = "~"

__all__ = [
    "DEFAULT_DOMAIN_SUFFIX",
    "DEFAULT_TRUST_DOMAIN",
    "ROOT_NAMESPACE",
    "expand_host",
    "is_ip",
    "is_visible",
    "is_wildcard",
    "normalize_export_to",
    "service_aliases",
    "spiffe_id",
    "split_authority",
    "wildcard_covers",
    "wildcard_keys",
]


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def expand_host(host: str, namespace: str, domain_suffix: str = DEFAULT_DOMAIN_SUFFIX) -> str:
    """Fully qualify ``host`` the way istiod does for a rule living in ``namespace``.

    Only dot-less names are expanded (``reviews.prod`` is left alone, like Istio); the result
    is lower case because DNS names and Envoy virtual hosts compare case-insensitively.
    """
    host = host.strip().lower()
    if not host or host == "*" or "." in host or is_ip(host):
        return host
    return f"{host}.{namespace}.{domain_suffix}"


def is_wildcard(host: str) -> bool:
    return host.startswith("*")


def wildcard_covers(pattern: str, host: str) -> bool:
    """Whether Istio host ``pattern`` (``*``, ``*.example.com`` or exact) covers ``host``."""
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        suffix = pattern[1:]
        if host.startswith("*"):
            return host[1:].endswith(suffix)
        return host.endswith(suffix) and len(host) > len(suffix)
    return pattern == host


def normalize_export_to(export_to: Iterable[str] | None) -> frozenset[str]:
    """Empty or absent exportTo means exported everywhere."""
    values = frozenset(export_to or ())
    return values or frozenset({EXPORT_ALL})


def is_visible(
    export_to: Iterable[str] | None, resource_namespace: str, client_namespace: str
) -> bool:
    """Whether a rule in ``resource_namespace`` applies to a client in ``client_namespace``."""
    values = normalize_export_to(export_to)
    if EXPORT_NONE in values:
        return False
    if EXPORT_ALL in values or client_namespace in values:
        return True
    return EXPORT_OWN in values and resource_namespace == client_namespace


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
