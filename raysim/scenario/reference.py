"""The scenario schema as a markdown reference (`raysim reference`, docs/scenario.md).

Generated from the pydantic models in `raysim.scenario.schema`, so the reference cannot drift from
what a scenario accepts: every key with its type, default, bounds and meaning.

    >>> print(scenario_reference().splitlines()[0])
    # Scenario reference
"""

from __future__ import annotations

import typing
from typing import Any, Callable, cast

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from raysim.scenario.schema import Scenario

HEADER = """# Scenario reference

Every key a scenario YAML file accepts, generated from the schema (`raysim reference` prints
it; `tests/scenario/test_reference.py` checks that this file is current). Unknown keys are errors;
`--set a.b=value` overrides any key, the value parsed as YAML. Which server modes, topologies,
placements and clocks combine with which features is one table: [modes.md](modes.md). Sections
are listed as dotted paths: `data.partition.alpha` is

```yaml
data:
  partition:
    alpha: 0.5
```
"""


def _type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(_type(a) for a in inner)
        return f"{text} or null" if len(inner) < len(args) else text
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"map of {_type(args[0])} to {_type(args[1])}"
    return getattr(tp, "__name__", str(tp))


def _bounds(field: FieldInfo) -> str:
    # pydantic keeps Field(ge=..., ...) as one constraint object each in `metadata`.
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "length >="}
    return ", ".join(f"{sign} {getattr(m, attr)}" for m in field.metadata
                     for attr, sign in signs.items() if getattr(m, attr, None) is not None)


def _default(field: FieldInfo) -> str:
    # The schema's factories take no arguments (pydantic also allows one of the validated data).
    value = cast(Callable[[], Any], field.default_factory)() if field.default_factory is not None else field.default
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def _is_section(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def _sections(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    out = [(prefix, model)]
    for name, field in model.model_fields.items():
        if _is_section(field):
            out += _sections(cast(type[BaseModel], field.annotation), f"{prefix}.{name}" if prefix else name)
    return out


def undocumented() -> list[str]:
    """Keys of the schema without a description (the reference needs one for each)."""
    return [f"{path + '.' if path else ''}{name}" for path, model in _sections(Scenario, "")
            for name, field in model.model_fields.items() if not _is_section(field) and not field.description]


def scenario_reference() -> str:
    """The whole reference as markdown: one table per section."""
    parts = [HEADER]
    for path, model in _sections(Scenario, ""):
        parts.append(f"## `{path}`" if path else "## top level")
        doc = (model.__doc__ or "").strip().splitlines()[0] if path else "Name, seed and length of the run."
        parts.append(doc)
        parts.append("| key | type | default | bounds | meaning |\n| --- | --- | --- | --- | --- |")
        rows = [f"| `{name}` | {_type(f.annotation)} | {_default(f)} | {_bounds(f)} | {f.description or ''} |"
                for name, f in model.model_fields.items() if not _is_section(f)]
        parts[-1] += "\n" + "\n".join(rows)
    return "\n\n".join(parts) + "\n"
