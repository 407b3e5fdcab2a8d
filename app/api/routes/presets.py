"""/v1/presets: a tenant's named strategy specs (see ``core.presets``)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.deps import State, Tenant
from app.api.schemas import PresetIn, PresetOut
from app.api.services.system import MODEL_PREFIX
from core import presets
from core.db.models import Preset

router = APIRouter(prefix="/v1/presets", tags=["presets"])


def preset_out(preset: Preset) -> PresetOut:
    return PresetOut(
        name=preset.name,
        spec=preset.spec,
        description=preset.description,
        source=preset.source,
        model=MODEL_PREFIX + preset.name,
        shipped=preset.shipped,
        created_at=preset.created_at,
        updated_at=preset.updated_at,
    )


@router.get("", response_model=list[PresetOut])
async def list_presets(state: State, tenant: Tenant) -> list[PresetOut]:
    """The tenant's presets, by name."""
    async with state.sessions() as session:
        return [preset_out(p) for p in await presets.list_presets(session, tenant)]


@router.get("/{name}", response_model=PresetOut)
async def get_preset(name: str, state: State, tenant: Tenant) -> PresetOut:
    presets.validate_name(name)  # 422 before any SQL (a NUL reached PostgreSQL)
    async with state.sessions() as session:
        preset = await presets.get_preset(session, tenant, name)
    if preset is None:
        raise presets.PresetNotFound(f"no preset named {name!r}", field="name")
    return preset_out(preset)


@router.put("/{name}", response_model=PresetOut)
async def put_preset(
    name: str, body: PresetIn, state: State, tenant: Tenant, response: Response
) -> PresetOut:
    """Create (201) or replace (200) a preset. The spec is validated like a job's."""
    preset, created = await presets.save_preset(
        state.sessions, tenant=tenant, name=name, spec=body.spec, description=body.description
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return preset_out(preset)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_preset(name: str, state: State, tenant: Tenant) -> Response:
    presets.validate_name(name)
    await presets.delete_preset(state.sessions, tenant, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
