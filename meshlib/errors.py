"""Exceptions meshlib raises to its users."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshlib._config.issues import ConfigIssue

__all__ = ["ConfigError", "IdentityError", "MeshError"]


class MeshError(Exception):
    """Base class of every error meshlib raises."""


class ConfigError(MeshError):
    """The Istio configuration could not be loaded; ``issues`` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        lines = [str(issue) for issue in self.issues]
        super().__init__("\n".join(lines) if lines else "invalid configuration")


class IdentityError(MeshError):
    """A certificate, key or trust bundle is missing, unreadable or does not fit together."""
