"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis):
generated requests, valid and invalid, against a real uvicorn server on SQLite with the
simulator as the model. Every answer must be a non-5xx that the schema documents (status,
content type, headers, body). Bounded: a fixed number of examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.api.executor import InProcessExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core.db.migrate import upgrade
from core.simulator.config import Rule
from core.simulator.server import Simulator
from tests.fixtures.api import ApiServer, make_key
from tests.fixtures.runtime import simulator_settings
from tests.integration.test_api_jobs import script

EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The server's URL and a tenant key (once a key exists, every /v1 call needs one)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{tmp / 'ponder.db'}"
    upgrade(url)
    key = make_key(url, "fuzz")
    with Simulator(script(Rule(replies=["The answer is 5."]))) as simulator:
        settings_ = simulator_settings(simulator.url, url, tmp)
        api = ApiSettings(_env_file=None, chat_timeout_s=5)  # type: ignore[call-arg]
        app = create_app(settings_, executor=InProcessExecutor(), api_settings=api)
        with ApiServer(app) as server:
            yield server.url, key


# The schema as the app publishes it at /openapi.json (building the app opens nothing).
schema = schemathesis.openapi.from_dict(create_app(executor=InProcessExecutor()).openapi())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_answers_match_the_schema(api: tuple[str, str], case: Any) -> None:
    url, key = api
    case.call_and_validate(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        # A schema cannot say which strategy specs, preset names or models exist, so a
        # schema-valid request may rightly be a 422; every other check applies.
        excluded_checks=[positive_data_acceptance],
    )
