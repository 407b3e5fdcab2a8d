"""Presets over the API: create, run by name (REST and the OpenAI face), override,
replace, delete — scoped to the tenant, validated like any spec."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.executor import InProcessExecutor
from app.api.main import create_app
from app.api.settings import ApiSettings
from core import presets
from core.db.engine import make_async_engine, make_sessionmaker
from core.errors import InvalidInput
from core.simulator.config import Rule
from core.simulator.server import Simulator
from tests.fixtures.api import ApiServer
from tests.fixtures.runtime import simulator_settings
from tests.integration.test_api_jobs import script, submit, wait_done


@pytest.fixture
def client(
    simulator: Simulator, sqlite_database_url: str, tmp_path: Path
) -> Iterator[httpx.Client]:
    settings = simulator_settings(simulator.url, sqlite_database_url, tmp_path)
    api = ApiSettings(_env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, executor=InProcessExecutor(), api_settings=api)
    with ApiServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


SPEC = {"kind": "self_consistency", "n": 3, "role": "large", "temperature": 0.5}


def test_a_preset_runs_by_name_with_overrides(client: httpx.Client, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    created = client.put("/v1/presets/sc-large", json={"spec": SPEC, "description": "3 votes"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["model"] == "ponder/sc-large"
    # Stored concrete: every parameter filled in, so later default changes don't move it.
    assert body["spec"]["n"] == 3 and body["spec"]["adaptive"] is False

    job = wait_done(client, submit(client, strategy={"preset": "sc-large"})["id"])
    assert job["status"] == "succeeded"
    assert job["strategy"]["n"] == 3 and job["strategy"]["role"] == "large"
    assert simulator.stats.by_model == {"sim-large": 1}

    job = wait_done(client, submit(client, strategy={"preset": "sc-large", "n": 2})["id"])
    assert job["strategy"]["n"] == 2 and job["strategy"]["temperature"] == 0.5

    replaced = client.put("/v1/presets/sc-large", json={"spec": {**SPEC, "n": 5}})
    assert replaced.status_code == 200 and replaced.json()["spec"]["n"] == 5
    mine = [p["name"] for p in client.get("/v1/presets").json() if not p["shipped"]]
    assert mine == ["sc-large"]


def test_the_openai_face_lists_and_runs_presets(client: httpx.Client, simulator: Simulator) -> None:
    simulator.set_config(script(Rule(replies=["The answer is 5."])))
    client.put("/v1/presets/cheap", json={"spec": {"kind": "direct", "max_tokens": 32}})
    models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "ponder/cheap" in models and "ponder/direct" in models
    answer = client.post(
        "/v1/chat/completions",
        json={"model": "ponder/cheap", "messages": [{"role": "user", "content": "2+3?"}]},
    )
    assert answer.status_code == 200, answer.text
    job = client.get(f"/v1/jobs/{answer.json()['id']}").json()
    assert job["strategy"]["kind"] == "direct" and job["strategy"]["max_tokens"] == 32


def test_bad_presets_are_refused_naming_the_field(client: httpx.Client) -> None:
    def error(response: httpx.Response) -> tuple[int, str]:
        return response.status_code, response.json()["error"]["field"]

    assert error(client.put("/v1/presets/x", json={"spec": {"kind": "direct", "n": 3}})) == (
        422,
        "strategy.n",
    )
    assert error(client.put("/v1/presets/direct", json={"spec": {"kind": "direct"}})) == (
        422,
        "name",
    )
    assert error(client.put("/v1/presets/Bad Name", json={"spec": {"kind": "direct"}})) == (
        422,
        "name",
    )
    unknown = client.post("/v1/jobs", json={"question": "q", "strategy": {"preset": "nope"}})
    assert error(unknown) == (422, "strategy.preset")
    client.put("/v1/presets/d", json={"spec": {"kind": "direct"}})
    other_kind = client.post(
        "/v1/jobs", json={"question": "q", "strategy": {"preset": "d", "kind": "self_consistency"}}
    )
    assert error(other_kind) == (422, "strategy.kind")
    bad_override = client.post(
        "/v1/jobs", json={"question": "q", "strategy": {"preset": "d", "max_tokens": 0}}
    )
    assert error(bad_override) == (422, "strategy.max_tokens")
    assert client.get("/v1/jobs").json()["items"] == []  # nothing half-written
    assert client.delete("/v1/presets/d").status_code == 204
    assert error(client.delete("/v1/presets/d")) == (404, "name")
    assert error(client.get("/v1/presets/d")) == (404, "name")


async def test_presets_belong_to_their_tenant(sqlite_database_url: str) -> None:
    engine = make_async_engine(sqlite_database_url)
    sessions = make_sessionmaker(engine)
    try:
        await presets.save_preset(sessions, tenant="a", name="mine", spec={"kind": "direct"})
        assert await presets.resolve_strategy(sessions, "a", {"preset": "mine"}) == {
            "kind": "direct",
            "role": "small",
            "max_tokens": 512,
            "temperature": 0.0,
            "top_p": None,
            "system": None,
        }
        with pytest.raises(InvalidInput) as refused:
            await presets.resolve_strategy(sessions, "b", {"preset": "mine"})
        assert refused.value.field == "strategy.preset"
        async with sessions() as session:
            assert [p.name for p in await presets.list_presets(session, "b") if not p.shipped] == []
    finally:
        await engine.dispose()


def test_shipped_presets_serve_every_tenant_and_a_tenant_may_replace_them(
    client: httpx.Client, simulator: Simulator
) -> None:
    shipped = [p for p in client.get("/v1/presets").json() if p["shipped"]]
    assert shipped, "core/shipped_presets.json ships no preset"
    for preset in shipped:
        # Fitted, not hand-set: the source names the data and the command.
        assert preset["source"]["dataset"] and preset["source"]["command"].startswith("ponder ")
        assert presets.validate_name(preset["name"]) == preset["name"]
    first = shipped[0]
    name = first["name"]
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models[f"ponder/{name}"]["owned_by"] == "ponder"
    assert client.get(f"/v1/presets/{name}").json() == first

    # A job by name runs the shipped spec, stored concrete.
    job = submit(client, strategy={"preset": name})
    assert job["strategy"] == first["spec"]
    wait_done(client, job["id"])

    # Not deletable; a tenant's own preset of that name replaces it, and deleting that
    # brings the shipped one back.
    refused = client.delete(f"/v1/presets/{name}")
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "name"
    mine = client.put(f"/v1/presets/{name}", json={"spec": {"kind": "direct"}})
    assert mine.status_code == 201 and mine.json()["shipped"] is False
    assert client.get(f"/v1/presets/{name}").json()["spec"]["kind"] == "direct"
    assert [p["name"] for p in client.get("/v1/presets").json()].count(name) == 1
    assert client.delete(f"/v1/presets/{name}").status_code == 204
    assert client.get(f"/v1/presets/{name}").json() == first
