"""The compute-optimal table: an eval's arms with their accuracy and mean tokens, overall
and per difficulty bin, as ``strategies.collaboration.compute_optimal.TableArm`` rows.

Read from a ``results.json`` written by ``ponder eval`` (``evals.results``): its
``strategies`` give each arm's label and concrete spec, its ``rows`` the per-problem
outcomes. A row's bin is its ``difficulty_bin`` (``easy``, ``normal`` or ``hard``, which
``ponder eval`` records from its difficulty probe), else a ``difficulty`` field holding a
level name, else its problem's bin in ``settings.difficulty.problems``; rows with bins
also give per-bin rows, and without any the table has overall rows only.

``settings.difficulty`` also says how the eval probed (``probe``, ``probe_role``,
``probe_samples``, ``probe_tokens``, ``temperature``, ``top_logprobs``, ``easy_max``,
``hard_min``): ``probe_params`` hands them to the fitted ``compute_optimal`` spec, so
its serving-time probe bins a new problem as the eval binned the table's problems.
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
PROBE_FIELDS = (
    "probe",
    "probe_role",
    "probe_samples",
    "probe_tokens",
    "temperature",
    "top_logprobs",
    "easy_max",
    "hard_min",
)
"""``compute_optimal``'s probe settings, as ``ponder eval`` records them."""


def _bin(row: Mapping[str, Any], recorded: Mapping[int, Any]) -> Level | None:
    for level in (row.get("difficulty_bin"), row.get("difficulty")):
        if level in LEVELS:
            return cast(Level, level)
    level = recorded.get(int(row.get("problem_index", -1)))
    return cast(Level, level) if level in LEVELS else None


def probe_params(data: Mapping[str, Any]) -> dict[str, Any]:
    """The eval's probe settings as ``compute_optimal`` params ({} when it recorded none)."""
    recorded = (data.get("settings") or {}).get("difficulty") or {}
    return {k: recorded[k] for k in PROBE_FIELDS if recorded.get(k) is not None}


def table_from_results(data: Mapping[str, Any], source_field: str = "results") -> list[TableArm]:
    """Every arm of the results with at least one row, overall then per bin.

    Raises:
        InvalidInput: no arm has rows, or an arm's spec no longer validates.
    """
    arms = {a["label"]: a for a in data.get("strategies") or [] if isinstance(a, dict)}
    probes = ((data.get("settings") or {}).get("difficulty") or {}).get("problems") or []
    recorded = {int(p["problem_index"]): p.get("bin") for p in probes}
    groups: dict[tuple[str, Level | None], list[Mapping[str, Any]]] = defaultdict(list)
    for row in data.get("rows") or []:
        label = row.get("strategy")
        if label not in arms:
            continue
        groups[(label, None)].append(row)
        level = _bin(row, recorded)
        if level is not None:
            groups[(label, level)].append(row)
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


def choices(table: list[TableArm], budget_tokens: int | None) -> dict[str, TableArm | None]:
    """What ``compute_optimal`` runs per bin of the table (``all``: a problem without a
    bin), within ``budget_tokens``; None where no arm fits."""
    levels: list[Level | None] = [None]
    levels += [cast(Level, lvl) for lvl in LEVELS if any(a.bin == lvl for a in table)]
    chosen: dict[str, TableArm | None] = {}
    for level in levels:
        try:
            chosen[level or "all"] = choose(table, budget_tokens, level)
        except NoArmFits:
            chosen[level or "all"] = None
    return chosen
