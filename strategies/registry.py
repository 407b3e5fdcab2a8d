"""Strategy registry: ``kind`` -> (params model, run function). A plain dict, on purpose.

Adding a strategy: write ``strategies/<family>/<name>.py`` with ``Params`` (a pydantic
model whose ``kind`` is ``Literal["<name>"]``, and whose model-role fields are declared
with ``strategies.protocol.role_field``) and ``async def run(problem, ctx, params)``,
then add ``"<family>.<name>"`` to ``_MODULES``. A module that votes on, scores or
selects more than numbers says so with ``ANSWER_KINDS`` (default: ``("number",)``);
a job asking for another kind is refused with a 422 naming it. Families: ``baselines``,
``budgeted_thinking``, ``verifier_loops``, ``collaboration`` (with the routers),
``tool_use`` (strategies that act through ``ctx.tools``); helpers
they share live in ``strategies.shared``. The API, the CLI and composition pick it up from here.

Composition: a params field typed ``strategies.compose.ChildSpec`` holds another strategy
spec, validated by the same rules at any depth; a bad field deep inside is reported with
its whole path (``strategy.generator.n``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from strategies.protocol import ROLE_MARKER, TOOL_MARKER, AnswerKind, StrategyRun

# One module per line, grouped by family (a subpackage each), so adding a strategy
# touches one line. Kinds are the modules' own ``Params.kind``, not these paths.
_MODULES = [
    "baselines.direct",
    "baselines.self_consistency",
    "budgeted_thinking.elastic",
    "budgeted_thinking.budget_forcing",
    "budgeted_thinking.plan_and_budget",
    "budgeted_thinking.first_finish",
    "verifier_loops.refine",
    "verifier_loops.particle_filter",
    "verifier_loops.beam_search",
    "verifier_loops.rpc",
    "verifier_loops.best_of_n",
    "verifier_loops.genrm",
    "verifier_loops.solve_detect_verify",
    "collaboration.spec_reason",
    "collaboration.glimp_router",
    "collaboration.cascade",
    "collaboration.difficulty_router",
    "collaboration.compute_optimal",
    "tool_use.program_of_thought",
    "tool_use.tool_agent",
    "tool_use.divide_then_aggregate",
]


@dataclass(frozen=True)
class Strategy:
    kind: str
    params: type[BaseModel]
    run: StrategyRun
    doc: str
    answer_kinds: tuple[AnswerKind, ...] = ("number",)
    """The answer kinds it supports (``strategies.protocol.ANSWER_KINDS``)."""


def _entry(module: Any) -> Strategy:
    kind = module.Params.model_fields["kind"].default
    kinds = tuple(getattr(module, "ANSWER_KINDS", ("number",)))
    return Strategy(kind, module.Params, module.run, (module.__doc__ or "").strip(), kinds)


STRATEGIES: dict[str, Strategy] = {}


def _load() -> None:
    for name in _MODULES:
        entry = _entry(importlib.import_module(f"strategies.{name}"))
        STRATEGIES[entry.kind] = entry


class SpecError(ValueError):
    """A strategy spec that does not validate; ``field`` is a dotted path into the spec
    and ``reason`` says what is wrong with it (``message`` is both, for people)."""

    def __init__(
        self,
        message: str,
        field: str | None,
        valid: list[str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.valid = valid
        self.reason = reason or message


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


MAX_SPEC_DEPTH = 8
"""Strategies nested in one spec, the outermost included (``best_of_n`` around
``self_consistency`` is 2). Deeper specs are refused before any is validated: they
multiply cost and, past ~230 levels, overflowed Python's recursion limit."""


def _too_deep(spec: Any) -> str | None:
    """The dotted path (relative to the spec) of the first strategy nested deeper than
    ``MAX_SPEC_DEPTH``, found without recursion."""
    stack: list[tuple[Any, str, int]] = [(spec, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, dict):
            if "kind" in item or "preset" in item:
                depth += 1
                if depth > MAX_SPEC_DEPTH:
                    return where
            stack.extend((v, _join(where, str(k)), depth) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, _join(where, str(i)), depth) for i, v in enumerate(item))
    return None


def parse_spec(spec: Any, *, path: str = "strategy") -> BaseModel:
    """Validate ``{"kind": ..., **params}``; errors name the field (``strategy.n``)."""
    if not isinstance(spec, dict):
        reason = "must be an object with a 'kind'"
        return _fail(path, reason)
    deep = _too_deep(spec)
    if deep is not None:
        return _fail(_join(path, deep), f"strategies nest at most {MAX_SPEC_DEPTH} deep")
    kind = spec.get("kind")
    if kind not in STRATEGIES:
        valid = sorted(STRATEGIES)
        reason = f"unknown strategy {kind!r}; valid strategies: {', '.join(valid)}"
        raise SpecError(reason, _join(path, "kind"), valid, reason)
    try:
        return STRATEGIES[kind].params.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        ctx = first.get("ctx") or {}
        if first["type"] == "child_spec":
            # The child's own path is relative to the field that holds it.
            field = _join(path, where, ctx.get("field") or "")
            reason = ctx["reason"]
            raise SpecError(f"{field}: {reason}", field, ctx.get("valid"), reason) from None
        return _fail(_join(path, where), first["msg"])


def _fail(field: str, reason: str) -> BaseModel:
    shown = field or "strategy"
    raise SpecError(f"{shown}: {reason}", field or None, None, reason)


def is_role_field(field: FieldInfo) -> bool:
    """Whether a params field was declared with ``strategies.protocol.role_field``."""
    return _is_marked(field, ROLE_MARKER)


def roles_used(params: BaseModel) -> set[str]:
    """Model roles a spec may call: every field declared with ``role_field``, whatever
    its name, at any depth (child specs included)."""
    return _marked(params, ROLE_MARKER)


def tools_used(params: BaseModel) -> set[str]:
    """Configured tools a spec may call: every field declared with ``tool_field`` (a
    name or a list of names), at any depth."""
    return _marked(params, TOOL_MARKER)


def _is_marked(field: FieldInfo, marker: str) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get(marker) is True


def _marked(params: BaseModel, marker: str) -> set[str]:
    found: set[str] = set()
    fields = type(params).model_fields
    for name, value in params:
        marked = name in fields and _is_marked(fields[name], marker)
        if marked and isinstance(value, str):
            found.add(value)
        elif marked and isinstance(value, list | tuple):
            found |= {v for v in value if isinstance(v, str)}
        elif isinstance(value, BaseModel):
            found |= _marked(value, marker)
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, BaseModel):
                    found |= _marked(item, marker)
        elif isinstance(value, dict):
            for item in value.values():
                if isinstance(item, BaseModel):
                    found |= _marked(item, marker)
    return found


_load()
