"""Log lines carry the ids bound where they were written, as JSON or as text."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from core.logs import LogSettings, bound, configure_logging, current_ids

log = logging.getLogger("ponder.test")


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_bound_ids_and_nothing_unknown(restore_root: None) -> None:
    out = io.StringIO()
    configure_logging(LogSettings(format="json"), stream=out)
    log.info("before")
    with bound(job_id="j1", tenant="acme"):
        log.warning("claimed %s", "it")
        with bound(request_id="r9"):
            log.info("inner")
    log.info("after")
    before, claimed, inner, after = lines(out)
    assert before == {"time": before["time"], "level": "INFO", "logger": "ponder.test",
                      "message": "before"}  # fmt: skip
    assert claimed["message"] == "claimed it" and claimed["level"] == "WARNING"
    assert (claimed["job_id"], claimed["tenant"]) == ("j1", "acme")
    assert "request_id" not in claimed
    assert (inner["job_id"], inner["request_id"]) == ("j1", "r9")
    assert "job_id" not in after and current_ids() == {}


def test_concurrent_tasks_keep_their_own_ids(restore_root: None) -> None:
    out = io.StringIO()
    configure_logging(LogSettings(format="json"), stream=out)

    async def job(job_id: str) -> None:
        with bound(job_id=job_id):
            await asyncio.sleep(0)
            log.info("step")
            await asyncio.sleep(0)
            log.info("done")

    async def both() -> None:
        await asyncio.gather(job("a"), job("b"))

    asyncio.run(both())
    seen = [(x["job_id"], x["message"]) for x in lines(out)]
    assert sorted(seen) == [("a", "done"), ("a", "step"), ("b", "done"), ("b", "step")]


def test_text_lines_append_the_ids_and_exceptions_keep_their_traceback(
    restore_root: None,
) -> None:
    out = io.StringIO()
    configure_logging(LogSettings(format="text"), stream=out)
    with bound(job_id="j2"):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    text = out.getvalue()
    assert " ERROR MainProcess ponder.test: failed job_id=j2\n" in text
    assert "ValueError: boom" in text


def test_an_unknown_id_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown log ids"), bound(user="x"):
        pass
