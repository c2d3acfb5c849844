"""docs/configuration.md cannot drift: its reference block is generated from the models.

Regenerate after changing ``resources.py`` or ``validate.NOT_ENFORCED``:
``python tests/config_plane/test_docs.py``.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

from meshlib._config import resources
from meshlib._config.edge import EdgeModel
from meshlib._config.validate import NOT_ENFORCED

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED REFERENCE (tests/config_plane/test_docs.py) -->"
END = "<!-- END GENERATED REFERENCE -->"


def _models(annotation: object) -> list[type[EdgeModel]]:
    if isinstance(annotation, type) and issubclass(annotation, EdgeModel):
        return [annotation]
    found: list[type[EdgeModel]] = []
    for arg in typing.get_args(annotation):
        found += _models(arg)
    return found


def _type_name(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map {_type_name(args[0])} to {_type_name(args[1])}"
    if origin is typing.Literal:
        return " / ".join(str(a) for a in typing.get_args(annotation))
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def spec_models() -> list[type[EdgeModel]]:
    """Every model reachable from the resources' specs, in first-reached order."""
    order: list[type[EdgeModel]] = []
    pending: list[object] = [
        model.model_fields["spec"].annotation for model in resources.RESOURCE_MODELS.values()
    ]
    queue: list[type[EdgeModel]] = [m for a in pending for m in _models(a)]
    while queue:
        model = queue.pop(0)
        if model in order:
            continue
        order.append(model)
        for info in model.model_fields.values():
            queue += _models(info.annotation)
    return order


def render_reference() -> str:
    lines = [BEGIN, "", "### Field reference", ""]
    lines.append(
        "Every field meshlib accepts, per Istio message (YAML keys are the lowerCamelCase "
        "proto names; unknown keys are errors)."
    )
    for model in spec_models():
        lines += ["", f"#### {model.__name__}", "", "| field | type |", "|---|---|"]
        for name, info in model.model_fields.items():
            alias = info.alias or resources.camel(name)
            lines.append(f"| `{alias}` | {_type_name(info.annotation)} |")
    lines += ["", "### Accepted, not enforced by meshlib", ""]
    lines.append(
        "These fields load and validate but change nothing in meshlib's behaviour "
        "(`meshlib validate` reports each use as a `meshlib.not-enforced` warning):"
    )
    lines.append("")
    lines += [f"- `{entry}`" for entry in sorted(NOT_ENFORCED)]
    lines += ["", END]
    return "\n".join(lines)


def test_reference_block_is_current() -> None:
    text = DOC.read_text()
    assert BEGIN in text
    assert END in text
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert block == render_reference(), "run: python tests/config_plane/test_docs.py"


def test_every_field_of_every_model_is_documented() -> None:
    text = DOC.read_text()
    for model in spec_models():
        assert f"#### {model.__name__}" in text
        for name, info in model.model_fields.items():
            assert f"`{info.alias or resources.camel(name)}`" in text, (model.__name__, name)
    for kind in resources.RESOURCE_MODELS:
        assert f"## {kind}" in text


def test_every_not_enforced_entry_is_listed() -> None:
    text = DOC.read_text()
    assert all(f"`{entry}`" in text for entry in NOT_ENFORCED)


def main() -> None:
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + render_reference() + text[end:])


if __name__ == "__main__":
    main()
