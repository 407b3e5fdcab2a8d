"""The client's response models (``ponder_client.models``) mirror ``app.api.schemas``
rather than import it (the module's docstring says why); this keeps them the same."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from app.api import experiment_schemas, schemas
from ponder_client import models

MIRRORED = [
    "JobOut", "JobPage", "TraceOut", "JournalSummary", "JournalEntryOut", "DiffOut",
    "Divergence", "CallSide", "Deltas", "CallComparison", "StrategyOut", "PresetOut",
]  # fmt: skip
MIRRORED_EXPERIMENTS = ["ExperimentOut", "ExperimentPage", "ExperimentRows"]
"""Each with the models it nests (arms, summaries, rows), compared through its schema."""
WORDING = {"title", "description", "examples", "default", "required"}
"""What may differ: documentation, and the defaults that let an older server's answer
(a field it does not send yet) still parse."""
LIMITS = {"minLength", "maxLength", "pattern", "minimum", "maximum"}
"""The server's input limits, which its experiment row and dataset responses share with
the request models they extend: the client does not re-check a response against them."""


def shape(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: shape(v)
            for k, v in node.items()
            if k not in WORDING | LIMITS and (k, v) != ("additionalProperties", False)
        }
    if isinstance(node, list):
        return [shape(v) for v in node]
    return node


@pytest.mark.parametrize(
    ("module", "name"),
    [(schemas, n) for n in MIRRORED] + [(experiment_schemas, n) for n in MIRRORED_EXPERIMENTS],
)
def test_the_client_model_has_the_api_schema_fields_and_types(module: Any, name: str) -> None:
    server: type[BaseModel] = getattr(module, name)
    client: type[BaseModel] = getattr(models, name)
    assert shape(client.model_json_schema()) == shape(server.model_json_schema())


def test_every_response_model_of_the_jobs_api_is_mirrored() -> None:
    """A new response model in the API's jobs, traces, catalogue or presets routes must
    be added to the client (or named here as not a client's business)."""
    not_for_the_client = {"PoolOut", "EndpointOut", "BreakerReportOut", "Readiness", "Check",
                          "JobLinks", "ErrorOut", "ErrorDetail"}  # fmt: skip
    responses = {
        name
        for name, value in vars(schemas).items()
        if isinstance(value, type) and issubclass(value, BaseModel)
        and value.__module__ == schemas.__name__ and name.endswith(("Out", "Page", "Summary"))
    }  # fmt: skip
    assert responses - not_for_the_client <= set(MIRRORED)


def test_every_response_model_of_the_experiments_api_is_mirrored() -> None:
    """Compared by name: a response model nested in one the client mirrors, or a new top
    one, that the client lacks fails here."""
    responses = {
        name
        for name, value in vars(experiment_schemas).items()
        if isinstance(value, type) and issubclass(value, BaseModel)
        and value.__module__ == experiment_schemas.__name__
        and not name.endswith(("Create", "In")) and not name.startswith("_")
    }  # fmt: skip
    assert responses <= set(vars(models)), responses - set(vars(models))


def test_a_field_the_server_adds_later_is_ignored() -> None:
    page: dict[str, object] = {"items": [], "next_cursor": None, "total": 3}
    assert models.JobPage.model_validate(page).next_cursor is None
