"""The base of the CRD models: frozen, slotted classes that pydantic-core validates.

pydantic's own Python layer (its schema generator, field machinery and plugin loader) costs about
6 MB in every process that imports it; the CRD models need none of its generality: every field is
an optional scalar, list, mapping, literal or nested model. So a model here declares its fields as
annotations, and this module turns them into a pydantic-core schema on first validation, one
validator per validated class with its nested models shared as definitions. Errors are
pydantic-core's own (``ValidationError``, the same types, locations and messages), except that an
unknown field is ``unexpected_keyword_argument``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Collection
from typing import Annotated, Any, ClassVar, Literal, Union, dataclass_transform

from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

__all__ = ["Before", "EdgeModel", "FieldInfo", "Strict", "camel", "field"]


def camel(name: str) -> str:
    """lowerCamelCase YAML key of a snake_case proto field (``consecutive_5xx_errors`` ->
    ``consecutive5xxErrors``; a trailing ``_`` that avoids a Python keyword is dropped)."""
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class Before:
    """``Annotated`` marker: ``function`` sees the raw input before the type's own check; a
    ``ValueError`` it raises is reported as a ``value_error`` at the field."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.function = function


class Strict:
    """``Annotated`` marker: no coercion (``"yes"`` is not a boolean)."""

    __slots__ = ()


_REQUIRED: Any = object()


class FieldInfo:
    """One declared field: its name, YAML key and default."""

    __slots__ = ("_owner", "alias", "default", "default_factory", "exclude", "name")

    def __init__(
        self,
        owner: type[EdgeModel],
        name: str,
        default: Any,
        default_factory: Callable[[], Any] | None,
        exclude: bool,
    ) -> None:
        self._owner = owner
        self.name = name
        self.alias = camel(name)
        self.default = default
        self.default_factory = default_factory
        self.exclude = exclude

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED and self.default_factory is None

    @property
    def annotation(self) -> Any:
        """The resolved type (``StringMatch | None``)."""
        return _hints(self._owner)[self.name]


class _FieldSpec:
    __slots__ = ("default", "default_factory", "exclude")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | None, exclude: bool):
        self.default = default
        self.default_factory = default_factory
        self.exclude = exclude


def field(
    *,
    default: Any = _REQUIRED,
    default_factory: Callable[[], Any] | None = None,
    exclude: bool = False,
) -> Any:
    """A field with a factory for its default, or one left out of ``model_dump``."""
    return _FieldSpec(default, default_factory, exclude)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
class _EdgeMeta(type):
    def __new__(
        mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any
    ) -> _EdgeMeta:
        inherited: dict[str, FieldInfo] = {}
        for base in reversed(bases):
            inherited.update(getattr(base, "model_fields", {}))
        declared: dict[str, tuple[Any, Callable[[], Any] | None, bool]] = {}
        for field_name, annotation in namespace.get("__annotations__", {}).items():
            if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
                continue
            value = namespace.pop(field_name, _REQUIRED)
            if isinstance(value, _FieldSpec):
                declared[field_name] = (value.default, value.default_factory, value.exclude)
            else:
                declared[field_name] = (value, None, False)
        # A subclass that narrows an inherited field (a kind's ``spec``) reuses its slot.
        namespace["__slots__"] = tuple(n for n in declared if n not in inherited)
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        fields = dict(inherited)
        for field_name, (default, factory, exclude) in declared.items():
            fields[field_name] = FieldInfo(cls, field_name, default, factory, exclude)  # type: ignore[arg-type]
        cls.model_fields = fields  # type: ignore[attr-defined]
        return cls


class EdgeModel(metaclass=_EdgeMeta):
    """A frozen record of optional fields, validated from YAML data by ``model_validate``."""

    __slots__ = ()

    model_fields: ClassVar[dict[str, FieldInfo]]
    """Every field (inherited ones too), in declaration order."""

    def __init__(self, **values: Any) -> None:
        if values or _has_required(type(self)):
            _validator(type(self)).validate_python(values, self_instance=self)
            return
        for info in type(self).model_fields.values():  # all defaults: nothing to check
            default = info.default_factory() if info.default_factory else info.default
            object.__setattr__(self, info.name, default)

    @classmethod
    def model_validate(cls, data: Any) -> typing.Self:
        """Validate YAML data (keys in camelCase or snake_case); raises ``ValidationError``."""
        result: typing.Self = _validator(cls).validate_python(data)
        return result

    @classmethod
    def before_validation(cls, data: Any) -> Any:
        """Adjust the raw input before its fields are checked (subclasses override)."""
        return data

    def model_dump(
        self,
        *,
        by_alias: bool = False,
        exclude_none: bool = False,
        exclude: Collection[str] = (),
    ) -> dict[str, Any]:
        """The fields as plain data, recursively; ``exclude`` names fields of this model only."""
        out: dict[str, Any] = {}
        for info in type(self).model_fields.values():
            value = getattr(self, info.name)
            if info.exclude or info.name in exclude or (exclude_none and value is None):
                continue
            out[info.alias if by_alias else info.name] = _dump(value, by_alias, exclude_none)
        return out

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in type(self).model_fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, EdgeModel)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={value!r}"
            for name in type(self).model_fields
            if (value := getattr(self, name)) is not None
        )
        return f"{type(self).__name__}({shown})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (type(self), dict(zip(type(self).model_fields, self._values(), strict=True))),
        )


def _rebuild(cls: type[EdgeModel], values: dict[str, Any]) -> EdgeModel:
    instance = cls.__new__(cls)
    for name, value in values.items():
        object.__setattr__(instance, name, value)
    return instance


def _dump(value: Any, by_alias: bool, exclude_none: bool) -> Any:
    if isinstance(value, EdgeModel):
        return value.model_dump(by_alias=by_alias, exclude_none=exclude_none)
    if isinstance(value, list):
        return [_dump(item, by_alias, exclude_none) for item in value]
    if isinstance(value, dict):
        return {key: _dump(item, by_alias, exclude_none) for key, item in value.items()}
    return value


def _has_required(cls: type[EdgeModel]) -> bool:
    return any(info.required for info in cls.model_fields.values())


def _hints(cls: type[EdgeModel]) -> dict[str, Any]:
    hints: dict[str, Any] | None = cls.__dict__.get("_edge_hints")
    if hints is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        type.__setattr__(cls, "_edge_hints", hints)
    return hints


def _validator(cls: type[EdgeModel]) -> SchemaValidator:
    validator: SchemaValidator | None = cls.__dict__.get("_edge_validator")
    if validator is None:
        definitions: dict[type[EdgeModel], cs.CoreSchema] = {}
        _define(cls, definitions)
        schema = cs.definitions_schema(_reference(cls), list(definitions.values()))
        validator = SchemaValidator(schema, cs.CoreConfig(title=cls.__name__))
        type.__setattr__(cls, "_edge_validator", validator)
    return validator


# ``validate_by_name`` is pydantic-core's current key, ``populate_by_name`` the older one; each
# version reads its own and ignores the other.
_BY_NAME: Any = {"validate_by_name": True, "validate_by_alias": True, "populate_by_name": True}


def _ref(cls: type[EdgeModel]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _reference(cls: type[EdgeModel]) -> cs.CoreSchema:
    return cs.definition_reference_schema(_ref(cls))


def _define(cls: type[EdgeModel], definitions: dict[type[EdgeModel], cs.CoreSchema]) -> None:
    definitions[cls] = {"type": "any"}  # placeholder: a model that nests itself stops here
    hints = _hints(cls)
    arguments = []
    for info in cls.model_fields.values():
        schema = _schema(hints[info.name], definitions)
        if info.default_factory is not None:
            schema = cs.with_default_schema(schema, default_factory=info.default_factory)
        elif info.default is not _REQUIRED:
            schema = cs.with_default_schema(schema, default=info.default)
        arguments.append(cs.dataclass_field(info.name, schema, validation_alias=info.alias))
    schema = cs.dataclass_schema(
        cls,
        cs.dataclass_args_schema(cls.__name__, arguments, extra_behavior="forbid"),
        list(cls.model_fields),
        slots=True,
        frozen=True,
        config=_BY_NAME,
    )
    if cls.before_validation.__func__ is not EdgeModel.before_validation.__func__:  # type: ignore[attr-defined]
        schema = cs.no_info_before_validator_function(cls.before_validation, schema)
    schema["ref"] = _ref(cls)
    definitions[cls] = schema


def _schema(annotation: Any, definitions: dict[type[EdgeModel], cs.CoreSchema]) -> cs.CoreSchema:
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is Annotated:
        schema = _schema(arguments[0], definitions)
        for marker in annotation.__metadata__:
            if isinstance(marker, Strict):
                schema = {**schema, "strict": True}
            elif isinstance(marker, Before):
                schema = cs.no_info_before_validator_function(marker.function, schema)
        return schema
    if origin is Union or origin is types.UnionType:
        members = [a for a in arguments if a is not type(None)]
        inner = (
            _schema(members[0], definitions)
            if len(members) == 1
            else cs.union_schema([_schema(m, definitions) for m in members])
        )
        return cs.nullable_schema(inner) if len(members) < len(arguments) else inner
    if origin is Literal:
        return cs.literal_schema(list(arguments))
    if origin is list:
        return cs.list_schema(_schema(arguments[0], definitions))
    if origin is dict:
        return cs.dict_schema(
            _schema(arguments[0], definitions), _schema(arguments[1], definitions)
        )
    if isinstance(annotation, type) and issubclass(annotation, EdgeModel):
        if annotation not in definitions:
            _define(annotation, definitions)
        return _reference(annotation)
    scalar = _SCALARS.get(annotation)
    if scalar is None:
        raise TypeError(f"no schema for the annotation {annotation!r}")
    return scalar()


_SCALARS: dict[Any, Callable[[], cs.CoreSchema]] = {
    Any: cs.any_schema,
    str: cs.str_schema,
    int: cs.int_schema,
    float: cs.float_schema,
    bool: cs.bool_schema,
}
