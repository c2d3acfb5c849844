"""Read Istio YAML/JSON from files, folders or text into typed resources and located issues.

Loading never stops at the first problem: every document is read and every problem becomes a
``ConfigIssue`` naming the file, the document, ``Kind/namespace/name`` and the dotted field. Kinds
meshlib does not handle are counted and skipped, never an error (a folder of Kubernetes manifests
loads as is).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic_core import ErrorDetails, ValidationError

from meshlib._config.issues import ConfigIssue, Severity
from meshlib._config.resources import API_VERSIONS, RESOURCE_MODELS
from meshlib._config.validate import validate_resource
from meshlib.errors import ConfigError

if TYPE_CHECKING:
    from meshlib._config.resources import SpecModel

__all__ = [
    "CODE_API_VERSION",
    "CODE_DUPLICATE",
    "CODE_SCHEMA",
    "CODE_SYNTAX",
    "CODE_UNREADABLE",
    "CONFIG_SUFFIXES",
    "NOT_AN_OBJECT",
    "LoadResult",
    "LoadedResource",
    "load_paths",
    "load_text",
]

CONFIG_SUFFIXES = frozenset({".yaml", ".yml", ".json"})

CODE_UNREADABLE = "meshlib.unreadable"
"""A path that does not exist or cannot be read (callers may treat it apart, e.g. during reload)."""
CODE_SYNTAX = "meshlib.syntax"
CODE_SCHEMA = "meshlib.schema"
CODE_API_VERSION = "meshlib.api-version"
CODE_DUPLICATE = "meshlib.duplicate"

NOT_AN_OBJECT = "(not a Kubernetes object)"
"""The ``skipped`` key of documents with none of apiVersion, kind, metadata and spec."""
_OBJECT_KEYS = frozenset({"apiVersion", "kind", "metadata", "spec"})

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_STR_TAG = "tag:yaml.org,2002:str"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _SafeLoader(_BaseLoader):  # type: ignore[misc]  # PyYAML is untyped here
    """PyYAML's safe loader, refusing duplicate keys as Kubernetes does (PyYAML would silently
    keep the last ``route:`` of an ``http`` entry)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # ``<<``: merged keys may be overridden, PyYAML resolves them
            if type(key_node) is yaml.ScalarNode and key_node.tag == _STR_TAG:
                key: Any = key_node.value  # the common case, without constructing it twice
            else:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool):
                    continue  # PyYAML itself refuses unhashable keys, below
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return dict(super().construct_mapping(node, deep=deep))

    def document(self, node: yaml.Node) -> Any:
        """The Python value of one composed document.

        Plain maps, lists and strings (nearly all of a config) are built here directly;
        anything else (numbers, merge keys, explicit tags) goes through PyYAML's constructor.
        Aliases share one object, as with PyYAML, and a recursive one is refused.
        """
        done: dict[int, Any] = {}
        active: set[int] = set()

        def build(node: yaml.Node) -> Any:
            kind = type(node)
            if kind is yaml.ScalarNode:
                return node.value if node.tag == _STR_TAG else self.construct_object(node, True)
            key = id(node)
            if key in done:
                return done[key]
            if key in active:
                raise yaml.constructor.ConstructorError(
                    None, None, "recursive alias", node.start_mark
                )
            active.add(key)
            value: Any
            if kind is yaml.SequenceNode and node.tag == _SEQ_TAG:
                value = [build(item) for item in node.value]
            elif kind is yaml.MappingNode and node.tag == _MAP_TAG and not _merges(node):
                value = {}
                for key_node, value_node in node.value:
                    item_key = build(key_node)
                    try:
                        present = item_key in value
                    except TypeError:
                        raise yaml.constructor.ConstructorError(
                            None, None, "found unhashable key", key_node.start_mark
                        ) from None
                    if present:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {item_key!r}", key_node.start_mark
                        )
                    value[item_key] = build(value_node)
            else:
                value = self.construct_object(node, deep=True)
            active.discard(key)
            done[key] = value
            return value

        try:
            return build(node)
        finally:
            # PyYAML's per-document memo (construct_document resets it the same way).
            self.constructed_objects: dict[Any, Any] = {}
            self.recursive_objects: dict[Any, Any] = {}


def _merges(node: yaml.Node) -> bool:
    return any(key.tag == _MERGE_TAG for key, _value in node.value)


@dataclass(frozen=True, slots=True)
class LoadedResource:
    """One Istio resource as loaded: typed ``spec``, resolved namespace, where it came from."""

    kind: str
    api_version: str
    name: str
    namespace: str
    spec: SpecModel
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    file: str
    document: int
    """0-based index of the YAML document within ``file``."""
    creation_timestamp: str | None = None
    """As written (RFC 3339); Istio breaks ties between conflicting resources by age."""
    item: int | None = None
    """Index in ``items`` when the document is a ``kind: List``."""

    @property
    def ref(self) -> str:
        """``Kind/namespace/name``, the form used in issues."""
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class LoadResult:
    resources: tuple[LoadedResource, ...] = ()
    """Resources without errors, in file order (files sorted, documents in order)."""
    skipped: Mapping[str, int] = field(default_factory=dict)
    """Kind -> number of documents of kinds meshlib does not read."""
    issues: tuple[ConfigIssue, ...] = ()

    @property
    def errors(self) -> tuple[ConfigIssue, ...]:
        return tuple(i for i in self.issues if i.severity is Severity.ERROR)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise ``ConfigError`` listing every issue (warnings included) if any is an error."""
        if not self.ok:
            raise ConfigError(self.issues)


def load_paths(
    paths: Sequence[str | Path],
    default_namespace: str,
    *,
    validate: bool = True,
    cooperative: bool = False,
) -> LoadResult:
    """Load files and folders (recursively: ``*.yaml``, ``*.yml``, ``*.json``, sorted).

    ``validate`` also applies Istio's single-resource rules (``validate.validate_resource``); a
    resource with an error is then left out of ``resources``, as istiod would refuse it.
    ``cooperative`` (hot reload in a background thread) offers the GIL to other threads after
    every document, so that requests served meanwhile are not held up for a switch interval.
    """
    builder = _Builder(default_namespace, validate, cooperative)
    for path in paths:
        for file in _files(Path(path), builder):
            try:
                raw = file.read_bytes()
            except OSError as exc:
                builder.unreadable(str(file), exc)
                continue
            builder.add_text(raw, str(file))
    return builder.result()


def load_text(
    text: str | bytes, name: str, default_namespace: str, *, validate: bool = True
) -> LoadResult:
    """Load in-memory configuration; ``name`` stands for the file name in issues (a ``.json``
    name selects JSON, anything else YAML)."""
    builder = _Builder(default_namespace, validate)
    builder.add_text(text, name)
    return builder.result()


def _files(path: Path, builder: _Builder) -> Iterator[Path]:
    if path.is_dir():
        found: list[Path] = []
        for root, dirs, names in os.walk(path, followlinks=True):
            # Hidden entries are skipped: a ConfigMap volume holds every file twice, once through
            # the visible symlink and once under its hidden ``..<timestamp>`` folder.
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(
                Path(root, n)
                for n in names
                if not n.startswith(".") and Path(n).suffix.lower() in CONFIG_SUFFIXES
            )
        yield from sorted(found)
    elif path.exists():
        yield path
    else:
        builder.unreadable(str(path), FileNotFoundError("no such file or directory"))


class _Builder:
    def __init__(self, default_namespace: str, validate: bool, cooperative: bool = False) -> None:
        self.default_namespace = default_namespace
        self.validate = validate
        self.cooperative = cooperative
        self.resources: list[LoadedResource] = []
        self.skipped: Counter[str] = Counter()
        self.issues: list[ConfigIssue] = []
        self.seen: dict[tuple[str, str, str], LoadedResource] = {}

    def result(self) -> LoadResult:
        return LoadResult(
            tuple(self.resources), dict(sorted(self.skipped.items())), tuple(self.issues)
        )

    def unreadable(self, file: str, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        self.issues.append(
            ConfigIssue(
                Severity.ERROR, f"cannot read: {reason.lower()}", file=file, code=CODE_UNREADABLE
            )
        )

    def error(self, message: str, file: str, document: int | None, **kw: str) -> None:
        self.issues.append(ConfigIssue(Severity.ERROR, message, file=file, document=document, **kw))

    def add_text(self, text: str | bytes, file: str) -> None:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                self.error(f"not UTF-8 text (byte {exc.start})", file, None, code=CODE_SYNTAX)
                return
        if file.lower().endswith(".json"):
            try:
                documents: list[Any] = [json.loads(text)]
            except json.JSONDecodeError as exc:
                self.error(
                    f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                    file,
                    None,
                    code=CODE_SYNTAX,
                )
                return
            for index, document in enumerate(documents):
                self.add_document(document, file, index)
            return
        index = 0
        loader = _SafeLoader(text)
        try:
            while loader.check_node():
                self.add_document(loader.document(loader.get_node()), file, index)
                index += 1
                if self.cooperative:
                    time.sleep(0)  # releases the GIL: a waiting request thread runs now
        except yaml.YAMLError as exc:
            self.error(_yaml_message(exc), file, index, code=CODE_SYNTAX)
        finally:
            loader.dispose()

    def add_document(self, document: Any, file: str, index: int) -> None:
        if document is None:  # an empty document, e.g. after a trailing ``---``
            return
        if not isinstance(document, dict):
            self.error("expected a mapping (a Kubernetes object)", file, index, code=CODE_SCHEMA)
            return
        if document.get("kind") == "List" and "items" in document:
            items = document["items"]
            if not isinstance(items, list):
                self.error("expected a list", file, index, field="items", code=CODE_SCHEMA)
                return
            for position, item in enumerate(items):
                if isinstance(item, dict):
                    self.add_object(item, file, index, position)
                else:
                    self.error(
                        "expected a mapping (a Kubernetes object)",
                        file,
                        index,
                        field=f"items[{position}]",
                        code=CODE_SCHEMA,
                    )
            return
        self.add_object(document, file, index, None)

    def add_object(self, obj: dict[Any, Any], file: str, index: int, item: int | None) -> None:
        prefix = "" if item is None else f"items[{item}]."
        if obj.keys().isdisjoint(_OBJECT_KEYS):
            # Another tool's YAML next to the manifests (Helm values, test cases): no object.
            self.skipped[NOT_AN_OBJECT] += 1
            return
        envelope: dict[str, str] = {}
        for key in ("apiVersion", "kind"):
            value = obj.get(key)
            if isinstance(value, str) and value:
                envelope[key] = value
            else:
                message = "missing required field" if value in (None, "") else "expected a string"
                self.error(message, file, index, field=prefix + key, code=CODE_SCHEMA)
        if len(envelope) != 2:
            return
        kind, api_version = envelope["kind"], envelope["apiVersion"]
        accepted = API_VERSIONS.get(kind)
        if accepted is None:
            self.skipped[kind] += 1
            return
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        namespace = meta.get("namespace") or self.default_namespace
        name = meta.get("name")
        ref = f"{kind}/{namespace}/{name if isinstance(name, str) and name else '<unnamed>'}"
        if api_version not in accepted:
            group = api_version.partition("/")[0]
            if all(group != a.partition("/")[0] for a in accepted):
                # Same kind name, another API group (e.g. App Mesh's VirtualService): not Istio's.
                self.skipped[f"{kind} ({api_version})"] += 1
                return
            self.error(
                f"unsupported apiVersion '{api_version}' for {kind} "
                f"(expected one of {', '.join(sorted(accepted))})",
                file,
                index,
                resource=ref,
                field=prefix + "apiVersion",
                code=CODE_API_VERSION,
            )
            return
        nameless = not isinstance(name, str) or not name
        if nameless:
            self.error(
                "missing required field",
                file,
                index,
                resource=ref,
                field=prefix + "metadata.name",
                code=CODE_SCHEMA,
            )
        try:
            model = RESOURCE_MODELS[kind].model_validate(obj)
        except ValidationError as exc:
            for detail in exc.errors(include_url=False):
                path, message = describe_error(detail)
                self.error(
                    message, file, index, resource=ref, field=prefix + path, code=CODE_SCHEMA
                )
            if self.validate and not nameless:
                self.validate_repaired(kind, obj, exc, file, index, item, str(namespace), str(name))
            return
        if nameless:
            return
        metadata = model.metadata
        resource = LoadedResource(
            kind=kind,
            api_version=api_version,
            name=str(name),
            namespace=str(metadata.namespace or self.default_namespace),
            spec=model.spec,  # type: ignore[arg-type]  # subclasses narrow it; never None
            labels=dict(metadata.labels or {}),
            annotations=dict(metadata.annotations or {}),
            file=file,
            document=index,
            creation_timestamp=_timestamp(metadata.creation_timestamp),
            item=item,
        )
        identity = (kind, resource.namespace, resource.name)
        first = self.seen.get(identity)
        if first is not None:
            self.error(
                f"duplicate resource: already defined in {first.file} (document {first.document})",
                file,
                index,
                resource=resource.ref,
                code=CODE_DUPLICATE,
            )
            return
        self.seen[identity] = resource
        if self.validate:
            found = validate_resource(resource)
            self.issues.extend(_prefixed(i, prefix) for i in found)
            if any(i.severity is Severity.ERROR for i in found):
                return
        self.resources.append(resource)

    def validate_repaired(
        self,
        kind: str,
        obj: dict[Any, Any],
        exc: ValidationError,
        file: str,
        index: int,
        item: int | None,
        namespace: str,
        name: str,
    ) -> None:
        """Report Istio's rules too for a document with schema errors: drop the offending fields
        and validate what is left (the resource itself stays out of the result)."""
        repaired: Any = copy.deepcopy(obj)
        dropped: list[str] = []
        # Deepest first, so that popping a list item never shifts a location still to drop.
        for detail in sorted(
            exc.errors(include_url=False), key=lambda d: _sort_key(d["loc"]), reverse=True
        ):
            loc = [p for p in detail["loc"] if p != "[key]"]
            dropped.append(format_path(_drop(repaired, loc)))
        try:
            model = RESOURCE_MODELS[kind].model_validate(repaired)
        except ValidationError:  # pragma: no cover - dropping never adds an error; be safe
            return
        stand_in = LoadedResource(
            kind=kind,
            api_version=model.api_version,
            name=name,
            namespace=namespace,
            spec=model.spec,  # type: ignore[arg-type]  # subclasses narrow it; never None
            labels={},
            annotations=dict(model.metadata.annotations or {}),
            file=file,
            document=index,
            item=item,
        )
        prefix = "" if item is None else f"items[{item}]."
        # A rule about a field that contains a dropped one (``total destination weight = 0``
        # after a bad weight was dropped), or lies inside one, would only echo the schema error.
        self.issues.extend(
            _prefixed(i, prefix)
            for i in validate_resource(stand_in)
            if not any(_within(d, i.field) or _within(i.field, d) for d in dropped)
        )


def _sort_key(loc: Sequence[int | str]) -> tuple[tuple[int, int | str], ...]:
    # Locations mix ints and strings; compare them position by position without a TypeError.
    return tuple((0, p) if isinstance(p, int) else (1, p) for p in loc)


def _within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith((ancestor + ".", ancestor + "["))


def _drop(tree: Any, loc: Sequence[int | str]) -> Sequence[int | str]:
    """Delete the value at ``loc`` (a pydantic-core error location) from nested dicts and lists;
    returns the location of what was removed (the whole list when an item was popped, since the
    indexes after it moved)."""
    *parents, last = loc
    try:
        for key in parents:
            tree = tree[key]
        del tree[last]
    except (KeyError, IndexError, TypeError):  # pragma: no cover - validation read these keys
        return loc
    return loc[:-1] if isinstance(tree, list) else loc


def _prefixed(issue: ConfigIssue, prefix: str) -> ConfigIssue:
    if not prefix:
        return issue
    return replace(issue, field=prefix + issue.field)


def _timestamp(value: object) -> str | None:
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        text = str(value.isoformat())
        return text.replace("+00:00", "Z")
    return str(value)


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"YAML syntax error: {problem}"
    return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {problem}"


_TYPE_MESSAGES = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected a boolean",
    "bool_parsing": "expected a boolean",
    "dict_type": "expected a mapping",
    "dataclass_type": "expected a mapping",
    "list_type": "expected a list",
    "missing": "missing required field",
}


def describe_error(detail: ErrorDetails) -> tuple[str, str]:
    """A pydantic-core error as (dotted field path, human message)."""
    loc = list(detail["loc"])
    kind = detail["type"]
    ctx = detail.get("ctx") or {}
    about_key = bool(loc) and loc[-1] == "[key]"
    if about_key:
        loc.pop()
    path = format_path(loc)
    if kind == "unexpected_keyword_argument":
        return path, f"unknown field '{loc[-1]}'"
    if kind == "literal_error":
        return path, f"unknown value {detail['input']!r}: expected {ctx.get('expected', '')}"
    if kind == "value_error":
        message = str(ctx.get("error", detail["msg"]))
    else:
        message = _TYPE_MESSAGES.get(kind, detail["msg"])
    if about_key:
        message = f"invalid key {loc[-1]!r}: {message}"
    return path, message


def format_path(loc: Sequence[int | str]) -> str:
    """``("spec", "http", 0, "route")`` -> ``spec.http[0].route``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
