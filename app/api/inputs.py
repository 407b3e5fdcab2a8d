"""Guards on what a client sends that no field type expresses, each a 422 naming the field.

- ``check_json``: every JSON body. No NUL character in any string or key (PostgreSQL
  cannot store one: the insert failed with a 500), no ``NaN``/``Infinity`` (Python's
  JSON parser accepts them; a budget of ``Infinity`` seconds is no budget), and at most
  ``MAX_JSON_DEPTH`` levels of nesting (deeper bodies made the server recurse until it
  crashed).
- ``Id`` and ``PresetName``: path parameters, so a NUL or other control character in an
  id never reaches SQL.
- ``bounded_datetime``: a timestamp a database and Python can both hold (year 0001 at
  +01:00 overflowed).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import BeforeValidator

from core.errors import InvalidInput
from core.presets import NAME

MAX_JSON_DEPTH = 32
"""Nesting levels of any JSON body (a strategy spec has its own, smaller limit)."""

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"

Id = Annotated[
    str, Path(pattern=ID_PATTERN, description="An id as the API returned it.", examples=["0f3c"])
]
PresetName = Annotated[
    str, Path(pattern=NAME.pattern, description="Lower-case letters, digits, `_.-`.")
]


def check_json(value: Any, field: str = "") -> None:
    """Raise ``InvalidInput`` naming the first offending field (``strategy.n``)."""
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidInput(
                f"{where or 'body'}: nested more than {MAX_JSON_DEPTH} levels deep",
                field=where or "body",
            )
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidInput(
                    f"{where or 'body'}: must not contain the NUL character (\\u0000)",
                    field=where or "body",
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput(
                    f"{where or 'body'}: must be a finite number, not {item}",
                    field=where or "body",
                )
        elif isinstance(item, dict):
            for key, child in item.items():
                path = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and "\x00" in key:
                    raise InvalidInput(
                        f"{where or 'body'}: a key contains the NUL character (\\u0000)",
                        field=where or "body",
                    )
                stack.append((child, path, depth + 1))
        elif isinstance(item, list):
            for index, child in enumerate(item):
                stack.append((child, f"{where}.{index}" if where else str(index), depth + 1))


def _iso_only(value: Any) -> Any:
    # Pydantic also reads a bare number as Unix time; the schema promises ISO 8601.
    if isinstance(value, str) and re.fullmatch(r"[\d.eE+-]*", value.strip()):
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only)]
"""A query parameter's date-time, ISO 8601 only."""

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def bounded_datetime(value: datetime | None, field: str) -> datetime | None:
    """``value`` in UTC (no zone means UTC), refused outside 1970-9999."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        in_utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        in_utc = None
    if in_utc is None or not EARLIEST <= in_utc < LATEST:
        raise InvalidInput(
            f"{field} must lie between {EARLIEST.date()} and {LATEST.date()}", field=field
        )
    return in_utc
