"""API keys as an operator manages them: ``ponder keys create / list / revoke`` against the
database a real API server (uvicorn, in its own process) reads, with the simulator as the
pool. With the key cache off (``PONDER_API_KEY_CACHE_S=0``) a revoked key is refused on the
very next request; by default, within the cache's 2 s (tests/unit/test_key_cache.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Column, MetaData, String, Table

from core.db.engine import make_async_engine, make_engine, make_sessionmaker
from core.db.migrate import upgrade
from core.db.models import UTCDateTime
from core.keys import Principal, hash_key, list_keys, new_key, principal_for_key
from core.simulator.config import Rule, SimulatorConfig
from core.simulator.server import Simulator
from tests.fixtures.processes import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(simulator: Simulator, tmp_path: Path) -> dict[str, str]:
    simulator.set_config(
        SimulatorConfig(models=["sim-small"], rules=[Rule(replies=["The answer is 5."])])
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    return {
        **base,
        "PONDER_DATA_DIR": str(tmp_path / "data"),
        "PONDER_POOLS__SMALL__ENDPOINTS": json.dumps([simulator.url]),
        "PONDER_POOLS__SMALL__MODEL": "sim-small",
        "PONDER_POOLS__SMALL__KIND": "simulator",
        "PONDER_API_EXECUTOR": "in-process",
        "PONDER_API_KEY_CACHE_S": "0",
    }


def ponder(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.api.main:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(f"{url}/healthz", proc, log_path)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def create(env: dict[str, str], tenant: str) -> tuple[str, str]:
    made = ponder(env, "keys", "create", "--tenant", tenant)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    listed = json.loads(ponder(env, "keys", "list", "--tenant", tenant, "--json").stdout)
    return key, listed[-1]["id"]


def test_revoked_key_is_refused_on_the_next_request(server: str, env: dict[str, str]) -> None:
    acme_key, acme_id = create(env, "acme")
    globex_key, _ = create(env, "globex")
    acme = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {acme_key}"})
    globex = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {globex_key}"})
    with acme, globex:
        job = acme.post("/v1/jobs", json={"question": "2 + 3?", "strategy": "direct"})
        assert job.status_code == 202, job.text
        assert acme.get("/v1/jobs").status_code == 200

        revoked = ponder(env, "keys", "revoke", acme_id)
        assert revoked.returncode == 0, revoked.stderr
        assert f"key {acme_id} of 'acme' revoked" in revoked.stderr

        refused = acme.get("/v1/jobs")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert acme.get(f"/v1/jobs/{job.json()['id']}").status_code == 401
        # Other keys are untouched.
        assert globex.get("/v1/jobs").status_code == 200

    listed = json.loads(ponder(env, "keys", "list", "--json").stdout)
    assert [(k["tenant"], k["revoked"] is not None) for k in listed] == [
        ("acme", True),
        ("globex", False),
    ]
    assert set(listed[0]) == {"id", "tenant", "created", "revoked", "scope"}
    assert acme_key not in json.dumps(listed) and globex_key not in json.dumps(listed)


def test_list_never_shows_a_key(env: dict[str, str]) -> None:
    key, key_id = create(env, "acme")
    human = ponder(env, "keys", "list")
    assert human.returncode == 0, human.stderr
    assert key_id in human.stdout and "acme" in human.stdout
    assert key not in human.stdout + human.stderr
    assert json.loads(ponder(env, "keys", "list", "--tenant", "nobody", "--json").stdout) == []


def test_revoke_unknown_id_exits_2_with_one_message(env: dict[str, str]) -> None:
    create(env, "acme")
    done = ponder(env, "keys", "revoke", "0123456789abcdef")
    assert done.returncode == 2
    assert done.stderr == (
        "ponder: no API key with id '0123456789abcdef' (`ponder keys list` shows the ids)\n"
    )


def test_revoking_twice_keeps_the_first_date_and_warns_when_none_is_left(
    env: dict[str, str],
) -> None:
    _, key_id = create(env, "acme")
    first = ponder(env, "keys", "revoke", key_id)
    assert first.returncode == 0, first.stderr
    assert "no active key is left" in first.stderr
    when = json.loads(ponder(env, "keys", "list", "--json").stdout)[0]["revoked"]
    again = ponder(env, "keys", "revoke", key_id)
    assert again.returncode == 0 and "already revoked" in again.stderr
    assert json.loads(ponder(env, "keys", "list", "--json").stdout)[0]["revoked"] == when


def test_revoking_the_last_key_does_not_reopen_the_api(server: str, env: dict[str, str]) -> None:
    """Once a key has existed the API needs one: revoking them all refuses everyone,
    rather than falling back to the keyless, open mode of a fresh install."""
    key, key_id = create(env, "acme")
    assert ponder(env, "keys", "revoke", key_id).returncode == 0
    with httpx.Client(base_url=server) as anonymous:
        assert anonymous.get("/v1/jobs").status_code == 401
        with_revoked = anonymous.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert with_revoked.status_code == 401
        sdk_style = anonymous.get("/v1/models", headers={"Authorization": "Bearer sk-anything"})
        assert sdk_style.status_code == 401


def test_keys_created_before_scopes_become_tenant_keys(empty_database_url: str) -> None:
    """Migration 0006 adds the scope: every key that existed is a ``tenant`` key."""
    old_key = new_key()
    upgrade(empty_database_url, "0005")
    before = Table(  # api_keys as 0005 left it: no scope column
        "api_keys",
        MetaData(),
        Column("id", String(32), primary_key=True),
        Column("tenant", String(64)),
        Column("key_hash", String(128)),
        Column("created_at", UTCDateTime()),
        Column("revoked_at", UTCDateTime(), nullable=True),
    )
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                before.insert().values(
                    id="old",
                    tenant="acme",
                    key_hash=hash_key(old_key),
                    created_at=datetime.now(UTC),
                )
            )
    finally:
        engine.dispose()
    upgrade(empty_database_url)

    async def read() -> tuple[Principal | None, list[str]]:
        async_engine = make_async_engine(empty_database_url)
        try:
            sessions = make_sessionmaker(async_engine)
            async with sessions() as session:
                principal = await principal_for_key(session, old_key)
            return principal, [k.scope for k in await list_keys(sessions)]
        finally:
            await async_engine.dispose()

    principal, scopes = asyncio.run(read())
    assert principal == Principal("acme", "tenant") and not principal.admin
    assert scopes == ["tenant"]
