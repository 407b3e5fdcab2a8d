"""/v1/experiments: eval runs stored as data (``ponder eval`` writes them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.deps import Session, State, Tenant
from app.api.experiment_schemas import (
    ExperimentCreate,
    ExperimentOut,
    ExperimentPage,
    ExperimentRows,
    RowsCreate,
)
from app.api.inputs import Id
from app.api.services import experiments

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])


@router.get("", response_model=ExperimentPage)
async def list_experiments(
    session: Session,
    state: State,
    tenant: Tenant,
    cursor: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> ExperimentPage:
    """Newest first, each with its arms' summaries; follow `next_cursor` for older pages."""
    size = min(limit or state.api.page_size, state.api.max_page_size)
    items, next_cursor = await experiments.list_experiments(
        session, tenant, limit=size, cursor=cursor
    )
    return ExperimentPage(items=items, next_cursor=next_cursor)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ExperimentOut)
async def create_experiment(
    body: ExperimentCreate, state: State, tenant: Tenant, response: Response
) -> ExperimentOut:
    """An experiment and its arms, without rows yet (`ponder eval --url` posts them as
    each arm finishes)."""
    created = await experiments.create(state, tenant, body)
    response.headers["Location"] = created.links.self
    return created


@router.get("/{experiment_id}", response_model=ExperimentOut)
async def get_experiment(experiment_id: Id, session: Session, tenant: Tenant) -> ExperimentOut:
    """Per arm: accuracy with its Wilson 95% interval, tokens, latency, cost."""
    return await experiments.read(session, tenant, experiment_id)


@router.get("/{experiment_id}/rows", response_model=ExperimentRows)
async def experiment_rows(experiment_id: Id, session: Session, tenant: Tenant) -> ExperimentRows:
    """The arms × problems grid: one row per arm and problem, with its job."""
    return await experiments.grid(session, tenant, experiment_id)


@router.post("/{experiment_id}/rows", response_model=ExperimentOut)
async def add_rows(
    experiment_id: Id, body: RowsCreate, state: State, tenant: Tenant
) -> ExperimentOut:
    """Store rows (a row stored before for its arm and problem is replaced); the
    summary is recomputed from every stored row."""
    return await experiments.add_rows(state, tenant, experiment_id, body)
