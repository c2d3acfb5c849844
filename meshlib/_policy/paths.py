"""Request path normalization as Istio configures Envoy (``meshConfig.pathNormalization``).

Authorization must see the path the backend will interpret, or ``/public/../admin``,
``/%61dmin`` and ``//admin`` slip past a rule on ``/admin`` (ISTIO-SEMANTICS 5.4). The order
follows Envoy's connection manager: unescape ``%2F``/``%5C`` (DECODE_AND_MERGE_SLASHES only),
then canonicalize (decode unreserved escapes, ``\\`` to ``/``, RFC 3986 dot-segment removal),
then merge slashes.

Paths stay **case-sensitive**, as in Istio: a DENY on ``/admin*`` does not cover ``/ADMIN``;
whether ``/ADMIN`` reaches the same handler is the backend's business. ``Authorizer`` offers
``case_insensitive_paths`` for backends that fold case.

One pass only, as in Envoy: ``%%36%31`` becomes ``%61`` and is not decoded again (``%25`` is
never decoded), so a result can still hold an escape that a second pass would decode.
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "DEFAULT_PATH_NORMALIZATION",
    "PathNormalization",
    "normalize_path",
    "parse_path_normalization",
    "strip_query",
]


class PathNormalization(enum.Enum):
    NONE = "NONE"
    BASE = "BASE"
    MERGE_SLASHES = "MERGE_SLASHES"
    DECODE_AND_MERGE_SLASHES = "DECODE_AND_MERGE_SLASHES"


DEFAULT_PATH_NORMALIZATION = PathNormalization.BASE
"""Istio's ``DEFAULT`` is ``BASE``."""

# Unreserved characters (RFC 3986 2.3): escapes of these name the same resource decoded.
_UNRESERVED = frozenset("-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_ESCAPED_SLASH = re.compile(r"%(2[Ff]|5[Cc])")
_NUL = re.compile(r"%00")
_SLASHES = re.compile(r"/{2,}")


def parse_path_normalization(name: str) -> PathNormalization:
    """The mode for a ``meshConfig`` value; ``DEFAULT`` is ``BASE``; ``ValueError`` otherwise."""
    key = name.strip().upper()
    if key == "DEFAULT":
        return DEFAULT_PATH_NORMALIZATION
    try:
        return PathNormalization(key)
    except ValueError:
        choices = ", ".join(["DEFAULT", *(m.value for m in PathNormalization)])
        raise ValueError(
            f"unknown path normalization {name!r}; expected one of {choices}"
        ) from None


def strip_query(target: str) -> str:
    """The path of a request target: query and fragment removed."""
    if "?" in target:
        target = target.partition("?")[0]
    if "#" in target:
        target = target.partition("#")[0]
    return target


def normalize_path(path: str, mode: PathNormalization) -> str | None:
    """The path authorization and routing match on; ``None`` means reject with 400.

    ``path`` is the request target as sent; its query and fragment are removed first.
    """
    path = strip_query(path)
    if mode is PathNormalization.NONE:
        return path
    if "%" in path:
        if _NUL.search(path):
            return None
        if mode is PathNormalization.DECODE_AND_MERGE_SLASHES:
            path = _ESCAPED_SLASH.sub(_decode_slash, path)
        path = _ESCAPE.sub(_decode_unreserved, path)
    if "\\" in path:
        path = path.replace("\\", "/")
    if "." in path:
        path = _remove_dot_segments(path)
    if mode is not PathNormalization.BASE and "//" in path:
        path = _SLASHES.sub("/", path)
    return path


def _decode_slash(match: re.Match[str]) -> str:
    return "/" if match.group(1) in ("2F", "2f") else "\\"


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0)


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 5.2.4 over segments; a path that does not start with "/" ("*", absolute-form
    # targets) is left alone, as Envoy only canonicalizes origin-form paths.
    if not path.startswith("/"):
        return path
    segments = path[1:].split("/")
    last = len(segments) - 1
    out: list[str] = []
    for index, segment in enumerate(segments):
        if segment == ".":
            if index == last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if index == last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)
