"""One problem found in the configuration, located precisely enough to fix it."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    severity: Severity
    message: str
    file: str = ""
    document: int | None = None
    """0-based index of the YAML document within the file."""
    resource: str = ""
    """``Kind/namespace/name``."""
    field: str = ""
    """Dotted path inside the resource, e.g. ``spec.http[0].route[1].weight``."""
    code: str = ""
    """Stable identifier of the rule, e.g. ``IST0101`` style or ``meshlib.unknown-subset``."""

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.document is not None:
            where += f" (document {self.document})"
        parts = [f"{where}: {self.severity.value}"]
        if self.resource:
            parts.append(self.resource)
        if self.field:
            parts.append(self.field)
        return ": ".join(parts) + f": {self.message}"
