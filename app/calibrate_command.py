"""``ponder calibrate``: thresholds fitted from recorded journals, written as a preset.

    ponder calibrate glimp_router (--results RESULTS.json | --dataset FILE.jsonl)
        [--arm LABEL | --strategy SPEC] [--tolerance POINTS | --target-large-share S]
        [--live] [--preset NAME] [--tenant T] [--json]
    ponder calibrate difficulty_router (--results ... | --dataset ...) [same options]
    ponder calibrate spec_reason (--results ... | --dataset ...) [same options]
    ponder calibrate compute_optimal --results RESULTS.json [--budget-tokens B]
        [--difficulty easy|normal|hard] [--preset NAME] [--json]

Every input is checked before anything runs; a bad one exits 2 with one message naming
it. See docs/calibration.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core.calibration.fit import (
    Calibration,
    Objective,
    SpecCandidate,
    calibrate_cascade,
    calibrate_difficulty,
    calibrate_glimp,
    calibrate_spec_reason,
)
from core.calibration.replay import ProblemJobs, jobs_by_question, load_sources
from core.calibration.table import choices, choose_arm, probe_params, table_from_results
from core.errors import InvalidInput
from core.presets import save_preset, validate_name
from core.runtime import Runtime
from core.settings import Settings
from core.specs import validate_spec
from evals.arms import parse_arm
from evals.dataset import load_dataset
from evals.results import load_results
from strategies.collaboration.compute_optimal import TableArm
from strategies.collaboration.difficulty_router import Level

FITTED = {
    "glimp_router": calibrate_glimp,
    "difficulty_router": calibrate_difficulty,
    "spec_reason": calibrate_spec_reason,
    "cascade": calibrate_cascade,
}
KINDS = (*FITTED, "compute_optimal")
SHOWN = 20
"""Most candidate rows printed (difficulty_router has one per threshold pair)."""


def add_arguments(cal: argparse.ArgumentParser) -> None:
    cal.add_argument("kind", help=f"what to calibrate: {', '.join(KINDS)}")
    source = cal.add_mutually_exclusive_group()
    source.add_argument(
        "--results", default=None, metavar="RESULTS.json", help="results of `ponder eval`"
    )
    source.add_argument(
        "--dataset", default=None, metavar="FILE.jsonl", help="problems already run as jobs"
    )
    cal.add_argument("--arm", default=None, metavar="LABEL", help="the eval arm to calibrate")
    cal.add_argument("--strategy", default=None, metavar="SPEC", help="base spec (JSON or kind)")
    objective = cal.add_mutually_exclusive_group()
    objective.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        metavar="POINTS",
        help="accuracy points to give up for the cheapest threshold (default 0)",
    )
    objective.add_argument(
        "--target-large-share",
        type=float,
        default=None,
        metavar="S",
        help="glimp_router, spec_reason: most steps (fraction) the large model may write; "
        "cascade: most problems (fraction) escalated",
    )
    cal.add_argument("--live", action="store_true", help="call the model on journal misses")
    cal.add_argument("--budget-tokens", type=int, default=None, metavar="B")
    cal.add_argument("--difficulty", default=None, metavar="LEVEL", help="easy, normal, hard")
    cal.add_argument("--preset", default=None, metavar="NAME", help="write the result as a preset")
    cal.add_argument("--description", default=None)
    cal.add_argument("--tenant", default="default")
    cal.add_argument("--json", action="store_true")


def _check(args: argparse.Namespace) -> None:
    """Everything that can be checked without a database, in the order a user reads it."""
    if args.kind not in KINDS:
        raise InvalidInput(
            f"kind: cannot calibrate {args.kind!r}; choose one of {', '.join(KINDS)}",
            field="kind",
            valid=list(KINDS),
        )
    if args.kind == "compute_optimal":
        if args.results is None:
            raise InvalidInput("results: compute_optimal needs --results", field="results")
        if args.budget_tokens is None and args.preset is None:
            raise InvalidInput(
                "budget_tokens: give --budget-tokens to choose, or --preset to write the table",
                field="budget_tokens",
            )
    elif args.results is None and args.dataset is None:
        raise InvalidInput(f"results: {args.kind} needs --results or --dataset", field="results")
    if args.budget_tokens is not None and args.budget_tokens < 1:
        raise InvalidInput("budget_tokens: must be at least 1", field="budget_tokens")
    if args.difficulty is not None and args.difficulty not in ("easy", "normal", "hard"):
        raise InvalidInput(
            f"difficulty: must be easy, normal or hard, not {args.difficulty!r}",
            field="difficulty",
        )
    if not 0.0 <= args.tolerance <= 100.0:
        raise InvalidInput("tolerance: accuracy points between 0 and 100", field="tolerance")
    share = args.target_large_share
    if share is not None and not 0.0 <= share <= 1.0:
        raise InvalidInput(
            "target_large_share: a fraction between 0 and 1", field="target_large_share"
        )
    if args.preset is not None:
        validate_name(args.preset)


def _read_results(path: str) -> dict[str, Any]:
    try:
        return load_results(Path(path))
    except InvalidInput as exc:
        raise InvalidInput(f"results: {exc.message}", field="results") from None


def _base_spec(args: argparse.Namespace, arms: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The spec to calibrate: --strategy, else --arm, else the first arm of the kind."""
    if args.strategy is not None:
        return parse_arm(args.strategy).params
    labels = [str(a.get("label")) for a in arms]
    if args.arm is not None:
        arm = next((a for a in arms if a.get("label") == args.arm), None)
        if arm is None:
            raise InvalidInput(
                f"arm: no arm {args.arm!r} in the results (arms: {', '.join(labels)})",
                field="arm",
                valid=labels,
            )
        return dict(arm["params"])
    arm = next((a for a in arms if a.get("params", {}).get("kind") == args.kind), None)
    return dict(arm["params"]) if arm is not None else None


def _problems_from_results(data: dict[str, Any]) -> list[ProblemJobs]:
    grouped: dict[str, tuple[int, str, list[str]]] = {}
    for row in data.get("rows") or []:
        _, _, jobs = grouped.setdefault(
            str(row["problem_id"]), (int(row.get("problem_index", 0)), str(row["expected"]), [])
        )
        if row.get("job_id"):
            jobs.append(str(row["job_id"]))
    ordered = sorted(grouped.items(), key=lambda item: item[1][0])
    return [ProblemJobs(pid, expected, tuple(jobs)) for pid, (_, expected, jobs) in ordered]


async def _from_dataset(
    rt: Runtime, args: argparse.Namespace
) -> tuple[list[ProblemJobs], dict[str, Any] | None]:
    try:
        dataset = load_dataset(Path(args.dataset))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"dataset: cannot read {args.dataset}: {exc}", field="dataset") from None
    if not dataset.problems:
        raise InvalidInput(f"dataset: {args.dataset} has no valid problem", field="dataset")
    found = await jobs_by_question(rt, args.tenant, (p.question for p in dataset.problems))
    problems = [
        ProblemJobs(p.id, p.answer, tuple(j.id for j in found[p.question.strip()]))
        for p in dataset.problems
    ]
    if args.strategy is not None:
        return problems, parse_arm(args.strategy).params
    of_kind = [j for jobs in found.values() for j in jobs if j.strategy.get("kind") == args.kind]
    newest = max(of_kind, key=lambda j: (j.created_at, j.id), default=None)
    return problems, dict(newest.strategy) if newest is not None else None


async def run(args: argparse.Namespace, settings: Settings) -> int:
    _check(args)
    if args.kind == "compute_optimal":
        return await _compute_optimal(args, settings)
    data = _read_results(args.results) if args.results is not None else None
    base = None
    if data is not None:
        base = _base_spec(args, list(data.get("strategies") or []))
    source_field = "results" if data is not None else "dataset"
    objective = Objective(
        tolerance=args.tolerance / 100.0,
        target_large_share=args.target_large_share,
        live=args.live,
    )
    async with Runtime(settings) as probe_rt:
        if data is not None:
            problems = _problems_from_results(data)
        else:
            problems, base = await _from_dataset(probe_rt, args)
        sources, skipped = await load_sources(
            probe_rt, problems, kind=args.kind, source_field=source_field
        )
        if base is None:
            raise InvalidInput(
                f"strategy: no {args.kind} jobs in the {source_field} to take the spec from; "
                "give --strategy (or --arm)",
                field="strategy",
            )
        roles = {b["pool"] for s in sources for b in s.roles.values()}
    # A strict calibration never calls a model, so it starts none.
    async with Runtime(settings, roles=roles if args.live else None) as rt:
        if args.live:
            await rt.check_pools(sorted(roles))
        calibration = await FITTED[args.kind](
            rt,
            sources,
            base,
            objective,
            tenant=args.tenant,
            source_field=source_field,
            skipped=skipped,
        )
        preset = None
        if args.preset is not None:
            summary = calibration.to_json()
            origin = {
                "calibrated_from": args.results or args.dataset,
                **{k: summary[k] for k in ("kind", "fitted", "defaults", "accuracy")},
                **{k: summary[k] for k in ("problems", "objective", "live_calls")},
                "candidates": len(calibration.candidates),
            }
            await save_preset(
                rt.sessions,
                tenant=args.tenant,
                name=args.preset,
                spec=calibration.spec,
                description=args.description or _describe(calibration),
                source=origin,
            )
            preset = args.preset
    _print_calibration(calibration, preset, args.json)
    return 0


def _describe(calibration: Calibration) -> str:
    fitted = ", ".join(f"{k}={v}" for k, v in calibration.chosen.values.items())
    accuracy = calibration.chosen.accuracy or 0.0
    return f"{calibration.kind} calibrated: {fitted} ({100 * accuracy:.1f}% on the set)"


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if pct else f"{value:.1f}"


def _print_calibration(calibration: Calibration, preset: str | None, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**calibration.to_json(), "preset": preset}, default=str))
        return
    names = list(calibration.chosen.values)
    header = [*names, "coverage", "accuracy", "mean tokens", "large tokens", "large share"]
    if calibration.kind == "spec_reason":
        header += ["accepted", "latency ms"]
    print("  ".join(f"{h:>12}" for h in header))
    shown = calibration.candidates
    if len(shown) > SHOWN:
        # The best by the objective's order, then the chosen one, in threshold order.
        ranked = sorted(shown, key=lambda c: (-(c.accuracy or 0.0), c.mean_tokens or 0.0))
        keep = {id(c) for c in ranked[: SHOWN - 1]} | {id(calibration.chosen)}
        shown = [c for c in shown if id(c) in keep]
    for c in shown:
        mark = " *" if c is calibration.chosen else ""
        cells = [f"{c.values[n]:.4g}" for n in names] + [
            f"{c.covered}/{c.problems}",
            _fmt(c.accuracy, pct=True),
            _fmt(c.mean_tokens),
            _fmt(c.mean_large_tokens),
            _fmt(c.large_share, pct=True),
        ]
        if isinstance(c, SpecCandidate):
            cells += [_fmt(c.acceptance, pct=True), _fmt(c.mean_latency_ms)]
        print("  ".join(f"{x:>12}" for x in cells) + mark)
    if len(shown) < len(calibration.candidates):
        print(f"({len(calibration.candidates) - len(shown)} more candidates; --json lists all)")
    fitted = ", ".join(f"{k}={v:.4g}" for k, v in calibration.chosen.values.items())
    was = ", ".join(f"{k}={v:.4g}" for k, v in calibration.defaults.items())
    print(f"fitted {fitted} (was {was}) on {calibration.problems} problems", end="")
    if calibration.skipped:
        print(f"; {len(calibration.skipped)} without journaled jobs skipped", end="")
    print(f"; model calls: {calibration.live_calls} live")
    if preset is not None:
        print(f'preset {preset!r} written: {{"preset": "{preset}"}} or model ponder/{preset}')


async def _compute_optimal(args: argparse.Namespace, settings: Settings) -> int:
    data = _read_results(args.results)
    table = table_from_results(data)
    level: Level | None = args.difficulty
    chosen: TableArm | None = None
    per_bin: dict[str, TableArm | None] = {}
    if args.budget_tokens is not None:
        chosen = choose_arm(table, args.budget_tokens, level)
        if level is None:
            per_bin = choices(table, args.budget_tokens)
    # The table, the budget, and the eval's probe settings: served, it probes each
    # problem as the eval did and runs the bin's choice.
    spec = {
        "kind": "compute_optimal",
        "arms": [a.model_dump(mode="json") for a in table],
        "budget_tokens": args.budget_tokens,
        "difficulty": level,
        **probe_params(data),
    }
    validate_spec(spec)
    preset = None
    if args.preset is not None:
        async with Runtime(settings) as rt:
            await save_preset(
                rt.sessions,
                tenant=args.tenant,
                name=args.preset,
                spec=spec,
                description=args.description or f"compute-optimal table of {args.results}",
                source={"calibrated_from": args.results},
            )
        preset = args.preset
    if args.json:
        print(
            json.dumps(
                {
                    "chosen": chosen.model_dump(mode="json") if chosen else None,
                    "choices": {b: a.label if a else None for b, a in per_bin.items()},
                    "table": [a.model_dump(mode="json") for a in table],
                    "spec": spec,
                    "preset": preset,
                }
            )
        )
        return 0
    for arm in table:
        mark = " *" if chosen is not None and arm == chosen else ""
        print(
            f"{arm.bin or 'all':>7}  {100 * arm.accuracy:5.1f}%  {arm.mean_tokens:8.1f} tok  "
            f"n={arm.n:<4} {arm.label}{mark}"
        )
    if chosen is not None:
        where = f"{level} problems" if level else "a problem"
        print(f"best for {where} within {args.budget_tokens} tokens: {chosen.label}")
    for bin_, arm_ in per_bin.items():
        if bin_ != "all":
            label = arm_.label if arm_ is not None else "no arm fits"
            print(f"best for {bin_} problems within {args.budget_tokens} tokens: {label}")
    if preset is not None:
        print(f'preset {preset!r} written: {{"preset": "{preset}"}} or model ponder/{preset}')
    return 0
