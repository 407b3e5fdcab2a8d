"""The compute-optimal table: an eval's arms with their accuracy and mean tokens, overall
and per difficulty bin, as ``strategies.collaboration.compute_optimal.TableArm`` rows.

Read from a ``results.json`` written by ``ponder eval`` (``evals.results``): its
``strategies`` give each arm's label and concrete spec, its ``rows`` the per-problem
outcomes. Rows carrying a ``difficulty`` field (``easy``, ``normal`` or ``hard``) also
give per-bin rows; without it the table has overall rows only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any, cast

from pydantic import ValidationError

from core.errors import InvalidInput
from strategies.collaboration.compute_optimal import NoArmFits, TableArm, choose
from strategies.collaboration.difficulty_router import Level

LEVELS = ("easy", "normal", "hard")


def table_from_results(data: Mapping[str, Any], source_field: str = "results") -> list[TableArm]:
    """Every arm of the results with at least one row, overall then per bin.

    Raises:
        InvalidInput: no arm has rows, or an arm's spec no longer validates.
    """
    arms = {a["label"]: a for a in data.get("strategies") or [] if isinstance(a, dict)}
    groups: dict[tuple[str, Level | None], list[Mapping[str, Any]]] = defaultdict(list)
    for row in data.get("rows") or []:
        label = row.get("strategy")
        if label not in arms:
            continue
        groups[(label, None)].append(row)
        level = row.get("difficulty")
        if level in LEVELS:
            groups[(label, cast(Level, level))].append(row)
    table: list[TableArm] = []
    for (label, level), rows in groups.items():
        try:
            table.append(
                TableArm(
                    label=label,
                    spec=arms[label]["params"],
                    bin=level,
                    n=len(rows),
                    accuracy=sum(bool(r.get("correct")) for r in rows) / len(rows),
                    mean_tokens=sum(int(r.get("completion_tokens") or 0) for r in rows) / len(rows),
                )
            )
        except ValidationError as exc:
            raise InvalidInput(
                f"{source_field}: arm {label!r} does not validate: {exc.errors()[0]['msg']}",
                field=source_field,
            ) from None
    if not table:
        raise InvalidInput(f"{source_field}: no arm has any row", field=source_field)
    return sorted(table, key=lambda a: (LEVELS.index(a.bin) + 1 if a.bin else 0, a.label))


def choose_arm(table: list[TableArm], budget_tokens: int | None, level: Level | None) -> TableArm:
    """``strategies.collaboration.compute_optimal.choose``, its refusal as a field error."""
    try:
        return choose(table, budget_tokens, level)
    except NoArmFits as exc:
        raise InvalidInput(f"budget_tokens: {exc}", field="budget_tokens") from None
