"""The edge models' base (``meshlib._config.edge``): validation by pydantic-core, frozen records."""

from __future__ import annotations

import copy
import pickle
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic_core import ValidationError

from meshlib._config.edge import Before, EdgeModel, Strict, camel, field


def _positive(value: object) -> object:
    if isinstance(value, int) and value <= 0:
        raise ValueError("expected a positive integer")
    return value


class Leaf(EdgeModel):
    name: str | None = None
    count: Annotated[int, Before(_positive)] | None = None
    enabled: Annotated[bool, Strict()] | None = None
    note: Annotated[str, "other metadata is ignored"] | None = None


class Tree(EdgeModel):
    kind: str
    mode: Literal["A", "B"] | None = None
    leaf: Leaf = field(default_factory=Leaf)
    leaves: list[Leaf] | None = None
    by_name: dict[str, Leaf] | None = None
    either: int | str | None = None
    extra_data: Any = field(default=None, exclude=True)
    child: Tree | None = None

    @classmethod
    def before_validation(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("leaf", 0) is None:
            return {**data, "leaf": {}}
        return data


def test_camel_case_and_snake_case_keys_both_read() -> None:
    tree = Tree.model_validate({"kind": "k", "byName": {"a": {"name": "x"}}})
    assert tree.by_name == {"a": Leaf(name="x")}
    assert Tree.model_validate({"kind": "k", "by_name": {}}).by_name == {}
    assert Tree.model_fields["by_name"].alias == "byName" == camel("by_name")


def test_nested_lists_mappings_and_self_reference() -> None:
    tree = Tree.model_validate(
        {"kind": "k", "leaves": [{"count": "3"}], "child": {"kind": "c", "child": {"kind": "d"}}}
    )
    assert tree.leaves == [Leaf(count=3)]
    assert tree.child is not None
    assert tree.child.child == Tree(kind="d")
    assert tree.leaf == Leaf()  # the factory's default


def test_errors_name_the_location_and_keep_pydantic_core_types() -> None:
    with pytest.raises(ValidationError) as caught:
        Tree.model_validate(
            {
                "mode": "C",
                "leaves": [{"count": -1}, 3],
                "leaf": {"enabled": "yes", "bogus": 1},
                "either": [],
            }
        )
    assert caught.value.title == "Tree"
    found = {(e["loc"], e["type"]) for e in caught.value.errors()}
    assert found == {
        (("kind",), "missing"),
        (("mode",), "literal_error"),
        (("leaves", 0, "count"), "value_error"),
        (("leaves", 1), "dataclass_type"),
        (("leaf", "enabled"), "bool_type"),
        (("leaf", "bogus"), "unexpected_keyword_argument"),
        (("either", "int"), "int_type"),
        (("either", "str"), "string_type"),
    }


def test_before_validation_sees_the_raw_input() -> None:
    raw = {"name": 1}
    assert Leaf.before_validation(raw) is raw  # the default leaves the input alone
    assert Tree.model_validate({"kind": "k", "leaf": None}).leaf == Leaf()
    with pytest.raises(ValidationError):
        Tree.model_validate({"kind": "k", "leaf": 0})


def test_keyword_construction_validates() -> None:
    assert Leaf(count=2).count == 2
    with pytest.raises(ValidationError):
        Leaf(count=0)
    with pytest.raises(ValidationError):
        Tree()  # a required field


def test_frozen() -> None:
    leaf = Leaf(name="a")
    with pytest.raises(AttributeError, match="frozen"):
        leaf.name = "b"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del leaf.name  # type: ignore[misc]
    assert not hasattr(leaf, "__dict__")  # slotted


def test_equality_hash_and_repr() -> None:
    assert Leaf(name="a") == Leaf.model_validate({"name": "a"})
    assert Leaf(name="a") != Leaf(name="b")
    assert Leaf() != Tree(kind="k")
    assert hash(Leaf(name="a", count=1)) == hash(Leaf(name="a", count=1))
    assert repr(Leaf(name="a")) == "Leaf(name='a')"


def test_copy_and_pickle_keep_the_values() -> None:
    tree = Tree.model_validate({"kind": "k", "leaves": [{"name": "x"}]})
    assert copy.deepcopy(tree) == tree
    assert copy.copy(tree) == tree
    assert pickle.loads(pickle.dumps(tree)) == tree


def test_dump() -> None:
    tree = Tree.model_validate({"kind": "k", "byName": {"a": {"count": 1}}, "extraData": 5})
    assert tree.extra_data == 5
    assert tree.model_dump(by_alias=True, exclude_none=True) == {
        "kind": "k",
        "leaf": {},
        "byName": {"a": {"count": 1}},
    }
    dumped = tree.model_dump(exclude={"leaf", "child"})
    assert "leaf" not in dumped
    assert "child" not in dumped
    assert dumped["by_name"] == {"a": {"name": None, "count": 1, "enabled": None, "note": None}}
    assert "extra_data" not in dumped


def test_field_information() -> None:
    assert Tree.model_fields["kind"].required
    assert not Tree.model_fields["leaf"].required
    assert Tree.model_fields["leaf"].annotation is Leaf
    assert list(Tree.model_fields)[:3] == ["kind", "mode", "leaf"]


def test_a_subclass_may_narrow_a_field() -> None:
    class Base(EdgeModel):
        value: Leaf | None = None

    class Narrow(Base):
        value: Leaf = field(default_factory=Leaf)

    assert Narrow().value == Leaf()
    assert Narrow.model_validate({"value": {"name": "n"}}).value == Leaf(name="n")
    assert Base.model_validate({}).value is None


def test_an_unsupported_annotation_is_a_clear_error() -> None:
    class Odd(EdgeModel):
        value: bytes | None = None

    with pytest.raises(TypeError, match="no schema for the annotation"):
        Odd.model_validate({})


_LEAVES = st.builds(
    dict,
    name=st.none() | st.text(max_size=5),
    count=st.none() | st.integers(min_value=1, max_value=10**6),
    enabled=st.none() | st.booleans(),
)


@given(st.lists(_LEAVES, max_size=4), st.none() | st.sampled_from(["A", "B"]))
def test_dump_then_validate_round_trips(leaves: list[dict[str, Any]], mode: str | None) -> None:
    tree = Tree.model_validate({"kind": "k", "mode": mode, "leaves": leaves})
    assert Tree.model_validate(tree.model_dump(by_alias=True)) == tree
    assert Tree.model_validate(tree.model_dump(by_alias=True, exclude_none=True)) == tree
