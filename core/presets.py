"""Presets: a tenant's named strategy specs, run by name.

A job's strategy may be ``{"preset": "gsm8k-router", ...overrides}``: the preset's spec
with the overrides merged on top (``kind`` cannot change). The job stores the resolved,
concrete spec, so a later change to the preset never changes what an old job replays.
On the OpenAI face, ``ponder/<preset>`` is a model name like ``ponder/<strategy>``.

``ponder calibrate`` writes presets from data; ``PUT /v1/presets/{name}`` writes them
by hand.

Ponder also ships presets (``shipped_presets.json`` beside this module): specs fitted
to the embedded model pair by ``ponder calibrate`` (how, and on which data, is in their
``source`` and in docs/calibration.md). Every tenant sees them; a tenant's own preset of
the same name replaces a shipped one for that tenant; they cannot be deleted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db.models import Preset, utcnow
from core.errors import InvalidInput, NotFound
from core.specs import validate_spec
from strategies.registry import STRATEGIES

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
PRESET_FIELD = "preset"


class PresetNotFound(NotFound):
    code = "preset_not_found"


SHIPPED_FILE = Path(__file__).with_name("shipped_presets.json")


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidInput(
            "a preset name is 1-64 characters of a-z, 0-9, '_', '.', '-', "
            f"starting with a letter or digit; got {name!r}",
            field="name",
        )
    if name in STRATEGIES:
        # ponder/<name> must mean one thing on the OpenAI face.
        raise InvalidInput(f"{name!r} is a strategy's name; choose another", field="name")
    return name


@cache
def _shipped_entries() -> tuple[tuple[str, dict[str, Any]], ...]:
    """The shipped file's presets, each checked like a stored one (name and spec)."""
    entries = json.loads(SHIPPED_FILE.read_text(encoding="utf-8"))
    checked = []
    for name, entry in sorted(entries.items()):
        validate_name(name)
        spec = validate_spec(dict(entry["spec"])).model_dump(mode="json")
        checked.append((name, {**entry, "spec": spec}))
    return tuple(checked)


def shipped_presets(tenant: str) -> list[Preset]:
    """The presets Ponder ships, as (never stored) presets of ``tenant``."""
    presets = []
    for name, entry in _shipped_entries():
        fitted = datetime.fromisoformat(entry["fitted_at"])
        preset = Preset(
            tenant=tenant,
            name=name,
            spec=dict(entry["spec"]),
            description=entry["description"],
            source=dict(entry["source"]),
            created_at=fitted,
            updated_at=fitted,
        )
        preset.shipped = True
        presets.append(preset)
    return presets


async def _stored_preset(session: AsyncSession, tenant: str, name: str) -> Preset | None:
    query = select(Preset).where(Preset.tenant == tenant, Preset.name == name)
    return (await session.execute(query)).scalar_one_or_none()


async def get_preset(session: AsyncSession, tenant: str, name: str) -> Preset | None:
    """The tenant's preset ``name``, else the shipped one, else None."""
    stored = await _stored_preset(session, tenant, name)
    if stored is not None:
        return stored
    return next((p for p in shipped_presets(tenant) if p.name == name), None)


async def list_presets(session: AsyncSession, tenant: str) -> Sequence[Preset]:
    """The tenant's presets and the shipped ones it has not replaced, by name."""
    query = select(Preset).where(Preset.tenant == tenant).order_by(Preset.name)
    stored = list((await session.execute(query)).scalars().all())
    names = {p.name for p in stored}
    shipped = [p for p in shipped_presets(tenant) if p.name not in names]
    return sorted(stored + shipped, key=lambda p: p.name)


async def save_preset(
    sessions: async_sessionmaker[AsyncSession],
    *,
    tenant: str,
    name: str,
    spec: Mapping[str, Any],
    description: str = "",
    source: Mapping[str, Any] | None = None,
) -> tuple[Preset, bool]:
    """Create or replace a preset; returns it and whether it was created. Commits."""
    name = validate_name(name)
    if PRESET_FIELD in spec:
        raise InvalidInput("a preset cannot refer to another preset", field="spec.preset")
    params = validate_spec(dict(spec))
    concrete = params.model_dump(mode="json")
    async with sessions() as session, session.begin():
        preset = await _stored_preset(session, tenant, name)
        created = preset is None
        if preset is None:
            preset = Preset(tenant=tenant, name=name, spec=concrete)
            session.add(preset)
        preset.spec = concrete
        preset.description = description
        preset.source = dict(source) if source is not None else None
        preset.updated_at = utcnow()
        await session.flush()
        return preset, created


async def delete_preset(sessions: async_sessionmaker[AsyncSession], tenant: str, name: str) -> None:
    async with sessions() as session, session.begin():
        preset = await _stored_preset(session, tenant, name)
        if preset is None and any(p.name == name for p in shipped_presets(tenant)):
            raise InvalidInput(
                f"{name!r} is a preset Ponder ships and cannot be deleted; "
                "PUT a preset of that name to replace it for this tenant",
                field="name",
            )
        if preset is None:
            raise PresetNotFound(f"no preset named {name!r}", field="name")
        await session.delete(preset)


async def resolve_strategy(
    sessions: async_sessionmaker[AsyncSession], tenant: str, strategy: Any
) -> Any:
    """The concrete spec for ``strategy``: itself, or its preset with overrides merged."""
    if not isinstance(strategy, Mapping) or PRESET_FIELD not in strategy:
        return strategy
    name = strategy[PRESET_FIELD]
    async with sessions() as session:
        preset = await get_preset(session, tenant, name) if isinstance(name, str) else None
        if preset is None:
            names = [p.name for p in await list_presets(session, tenant)]
            shown = ", ".join(names) or "none"
            raise InvalidInput(
                f"no preset named {name!r} (presets: {shown})",
                field="strategy.preset",
                valid=names,
            )
        spec = dict(preset.spec)
    overrides = {k: v for k, v in strategy.items() if k != PRESET_FIELD}
    if overrides.get("kind", spec["kind"]) != spec["kind"]:
        raise InvalidInput(
            f"preset {name!r} is a {spec['kind']} spec; its kind cannot be overridden",
            field="strategy.kind",
        )
    return {**spec, **overrides}
