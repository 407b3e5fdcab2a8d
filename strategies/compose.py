"""Composition by wrapping: a params field that holds another strategy's spec.

    class Params(BaseModel):
        kind: Literal["best_of_n"] = "best_of_n"
        generator: ChildSpec | None = None   # e.g. {"kind": "elastic", ...}

    result = await ctx.run(params.generator, problem)   # runs in a child span

The child is validated by the registry's own rules when the parent is, so a bad field at
any depth is reported with its full path (``strategy.generator.n``), and the roles it
uses count towards the job's roles. The registry is imported lazily: strategy modules
import this one, and the registry imports every strategy module.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError


def _validate_child(value: Any) -> BaseModel:
    from strategies.registry import STRATEGIES, SpecError, parse_spec

    if isinstance(value, BaseModel) and getattr(value, "kind", None) in STRATEGIES:
        return value
    try:
        return parse_spec(value, path="")
    except SpecError as exc:
        raise PydanticCustomError(
            "child_spec",
            "{reason}",
            {"reason": exc.reason, "field": exc.field or "", "valid": exc.valid},
        ) from None


def _dump_child(spec: BaseModel) -> dict[str, Any]:
    return spec.model_dump(mode="json")


ChildSpec = Annotated[
    BaseModel,
    PlainValidator(_validate_child),
    PlainSerializer(_dump_child, return_type=dict),
    WithJsonSchema(
        {
            "type": "object",
            "required": ["kind"],
            "properties": {"kind": {"type": "string"}},
            "description": "A child strategy spec: {'kind': <strategy>, ...its params}.",
        }
    ),
]
"""A params field holding another strategy's spec."""
