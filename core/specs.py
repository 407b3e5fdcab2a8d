"""A strategy spec checked before a job is created: its params, and its roles' pools.

``strategies.registry.parse_spec`` knows the strategies but not the API's errors (it
sits below ``core``); ``validate_spec`` turns its ``SpecError`` into ``InvalidInput``
(a 422). ``resolve_roles`` binds the roles the parsed spec uses to configured pools.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel

from core.errors import InvalidInput
from core.pools.client import PoolClient
from strategies.protocol import TOOL_MARKER
from strategies.registry import SpecError, parse_spec, roles_used, tools_used


def validate_spec(spec: dict[str, Any]) -> BaseModel:
    """Parse a strategy spec, turning a spec error into the API's ``InvalidInput``."""
    try:
        return parse_spec(spec)
    except SpecError as exc:
        raise InvalidInput(exc.message, field=exc.field, valid=exc.valid) from None


def resolve_roles(
    params: BaseModel, pools: Mapping[str, PoolClient], overrides: Mapping[str, str] | None = None
) -> dict[str, dict[str, str]]:
    """Bind each role the spec uses to a configured pool: ``{role: {pool, model}}``.

    Overrides map a strategy role to another *configured* pool name — never a URL.
    The model name is stored with the job so that strict replay needs no pool at all.
    """
    overrides = dict(overrides or {})
    bound: dict[str, dict[str, str]] = {}
    for role in sorted(roles_used(params) | set(overrides)):
        pool_name = overrides.get(role, role)
        if pool_name not in pools:
            configured = ", ".join(sorted(pools)) or "none"
            raise InvalidInput(
                f"role '{role}' needs pool '{pool_name}', which is not configured "
                f"(configured: {configured})",
                field=f"roles.{role}",
            )
        bound[role] = {"pool": pool_name, "model": pools[pool_name].settings.model}
    return bound


def check_tools(params: BaseModel, configured: Collection[str]) -> None:
    """Refuse a spec naming a tool that is not configured, naming the field that names it."""
    missing = sorted(tools_used(params) - set(configured))
    if not missing:
        return
    field = "strategy"
    for name, info in type(params).model_fields.items():
        extra = info.json_schema_extra
        value = getattr(params, name)
        named = (
            {value}
            if isinstance(value, str)
            else set(value or [])
            if isinstance(value, list)
            else set()
        )
        if isinstance(extra, dict) and extra.get(TOOL_MARKER) and named & set(missing):
            field = f"strategy.{name}"
            break
    listed = ", ".join(sorted(configured)) or "none"
    raise InvalidInput(
        f"tool {missing[0]!r} is not configured (configured: {listed})",
        field=field,
        valid=sorted(configured),
    )
