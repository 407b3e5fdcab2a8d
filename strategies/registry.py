"""Strategy registry: ``kind`` -> (params model, run function). A plain dict, on purpose.

Adding a strategy: write ``strategies/<name>.py`` with ``Params`` (a pydantic model whose
``kind`` is ``Literal["<name>"]``) and ``async def run(problem, ctx, params)``, then add
one line to ``STRATEGIES``. The API, the CLI and composition pick it up from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from strategies import direct, self_consistency
from strategies.protocol import StrategyRun


@dataclass(frozen=True)
class Strategy:
    kind: str
    params: type[BaseModel]
    run: StrategyRun
    doc: str


def _entry(module: Any) -> Strategy:
    kind = module.Params.model_fields["kind"].default
    return Strategy(kind, module.Params, module.run, (module.__doc__ or "").strip())


STRATEGIES: dict[str, Strategy] = {s.kind: s for s in map(_entry, [direct, self_consistency])}


class SpecError(ValueError):
    """A strategy spec that does not validate; ``field`` is a dotted path into the spec."""

    def __init__(self, message: str, field: str | None, valid: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.valid = valid


def parse_spec(spec: dict[str, Any], *, path: str = "strategy") -> BaseModel:
    """Validate ``{"kind": ..., **params}``; errors name the field (``strategy.n``)."""
    if not isinstance(spec, dict):
        raise SpecError(f"{path} must be an object with a 'kind'", path)
    kind = spec.get("kind")
    if kind not in STRATEGIES:
        valid = sorted(STRATEGIES)
        message = f"unknown strategy {kind!r}; valid strategies: {', '.join(valid)}"
        raise SpecError(message, f"{path}.kind", valid)
    try:
        return STRATEGIES[kind].params.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        field = f"{path}.{where}" if where else path
        raise SpecError(f"{field}: {first['msg']}", field) from None


def roles_used(params: BaseModel) -> set[str]:
    """Model roles a spec may call: every string field named ``role`` or ``*_role``,
    at any depth (child specs included)."""
    roles: set[str] = set()
    for name, value in params:
        if isinstance(value, str) and (name == "role" or name.endswith("_role")):
            roles.add(value)
        elif isinstance(value, BaseModel):
            roles |= roles_used(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, BaseModel):
                    roles |= roles_used(item)
    return roles
