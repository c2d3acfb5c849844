"""Checked by ``mypy --strict`` in the typing session: the public API as users type it."""

from __future__ import annotations

import meshlib
from meshlib.errors import ConfigError, MeshError


def handles_errors() -> str:
    try:
        raise ConfigError([])
    except MeshError as error:
        return str(error)


version: str = meshlib.__version__
