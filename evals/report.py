"""An eval's outputs: ``results.json`` (raw numbers and rows), ``report.md`` and the plots."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from evals.plots import AXES, write_plots
from evals.results import EvalRun, Summary

COLUMNS = (
    "strategy",
    "n",
    "accuracy",
    "95% CI",
    "mean tokens",
    "tokens by role",
    "of which reasoning",
    "p50 s",
    "p90 s",
    "mean cost",
    "cost-of-pass",
    "failed",
    "exhausted",
)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _money(value: float | None, known: bool = True) -> str:
    """A cost: "n/a" when unknown (a pool without prices), "–" when there is none."""
    if not known:
        return "n/a"
    if value is None:
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.6f}"


def table_rows(summaries: list[Summary]) -> list[list[str]]:
    rows = []
    for s in summaries:
        by_role = ", ".join(f"{role} {v:.1f}" for role, v in s.mean_tokens_by_role.items())
        ci = "–" if s.ci_low is None else f"{_pct(s.ci_low)} – {_pct(s.ci_high)}"
        rows.append(
            [
                s.strategy,
                str(s.n),
                _pct(s.accuracy),
                ci,
                _num(s.mean_tokens),
                by_role or "–",
                _num(s.mean_reasoning_tokens),
                _num(s.latency_p50, 2),
                _num(s.latency_p90, 2),
                _money(s.mean_cost, s.cost_known),
                _money(s.cost_of_pass, s.cost_known),
                str(s.failed),
                str(s.budget_exhausted),
            ]
        )
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def _settings_lines(run: EvalRun) -> list[str]:
    s = run.settings
    lines = []
    if s.get("dataset"):
        skipped = f", {len(run.bad_lines)} bad lines skipped" if run.bad_lines else ""
        lines.append(
            f"- dataset: `{s['dataset']}` (sha256 {str(s.get('dataset_sha256', ''))[:12]}), "
            f"{run.problems} problems{skipped}"
        )
    lines.append(f"- run by: {s.get('backend', '?')}")
    budget = s.get("budget") or {}
    if budget:
        lines.append(
            f"- budget per job: {budget.get('max_tokens')} tokens ({s.get('budget_rule')})"
        )
    else:
        lines.append("- budget per job: none")
    if run.pilot:
        means = ", ".join(f"{k} {v:.1f}" for k, v in run.pilot["mean_tokens"].items())
        lines.append(
            f"- pilot: first {run.pilot['problems']} problems without a budget, mean tokens: "
            f"{means} (its jobs: `pilot` in results.json)"
        )
    lines.append(f"- seed {s.get('seed')} (+ problem index), concurrency {s.get('concurrency')}")
    live, replayed = run.calls()
    lines.append(f"- model calls: {live} live, {replayed} replayed from journals")
    probe = s.get("difficulty")
    if probe:
        bins = probe.get("bins") or {}
        counts = ", ".join(f"{bins.get(k, 0)} {k}" for k in ("easy", "normal", "hard"))
        if bins.get("unknown"):
            counts += f", {bins['unknown']} unknown (probe failed)"
        plive, preplayed = run.probe_calls()
        lines.append(
            f"- difficulty: {probe.get('probe')} probe on {probe.get('probe_role')}, easy <= "
            f"{probe.get('easy_max')}, hard >= {probe.get('hard_min')}: {counts}; probe calls: "
            f"{plive} live, {preplayed} replayed (not in the calls above)"
        )
    if run.replay_of:
        r = run.replay_of
        lines.append(
            f"- replay of `{r.get('name')}` ({r.get('results')}); changes: "
            f"{json.dumps(r.get('changes') or {})}"
        )
    if run.interrupted:
        done = len(run.rows)
        lines.append(
            f"- **interrupted**: {done} of {run.problems * len(run.arms)} jobs finished; "
            "the numbers cover those only"
        )
    return lines


def markdown(run: EvalRun) -> str:
    summaries = run.summaries()
    out = [f"# Eval `{run.name}`", "", f"{run.created_at}", "", *_settings_lines(run), ""]
    out += _md_table(list(COLUMNS), table_rows(summaries))
    out += [
        "",
        "Accuracy with a 95% Wilson interval. Tokens are completion (generated) tokens per "
        "problem; reasoning tokens are a part of them. Cost comes from the pools' prices; "
        "cost-of-pass = mean cost / accuracy, the expected cost of one correct answer (∞ "
        "when none is correct); n/a when a pool has no prices.",
    ]
    if any(r.parent_job_id and r.wall_s is None for r in run.rows):
        out += [
            "",
            "Latency of a live replay is its own wall time, in which journal hits take no "
            "time: a lower bound on what a fresh run would take.",
        ]
    binned = run.by_difficulty()
    if binned:
        out += ["", "## By difficulty", ""]
        out += _md_table(
            ["strategy", "bin", "n", "accuracy", "mean tokens"],
            [[b["strategy"], b["bin"], str(b["n"]), _pct(b["accuracy"]), _num(b["mean_tokens"])]
             for b in binned],
        )  # fmt: skip
        out += [
            "",
            "Bins from each problem's difficulty probe (`difficulty`, `difficulty_bin` on "
            "the rows; the probe jobs in `settings.difficulty`): `ponder calibrate "
            "compute_optimal --results results.json --budget-tokens B` chooses an arm per bin.",
        ]
    if run.original:
        out += ["", "## Compared with the original run", ""]
        header = ["strategy", "accuracy", "original", "mean tokens", "original", "mean cost"]
        pairs = []
        for new, old in zip(summaries, run.original, strict=False):
            pairs.append(
                [new.strategy, _pct(new.accuracy), _pct(old.accuracy), _num(new.mean_tokens),
                 _num(old.mean_tokens),
                 f"{_money(new.mean_cost, new.cost_known)} "
                 f"({_money(old.mean_cost, old.cost_known)})"]
            )  # fmt: skip
        out += _md_table(header, pairs)
    failed = [r for r in run.rows if r.status != "succeeded"]
    if failed:
        out += ["", f"## Failed jobs ({len(failed)}, counted as incorrect)", ""]
        out += _md_table(
            ["problem", "strategy", "job", "status", "error"],
            [
                [r.problem_id, r.strategy, r.job_id or "–", r.status,
                 f"{(r.error or {}).get('code', '')}: {(r.error or {}).get('message', '')}"[:300]]
                for r in sorted(failed, key=lambda r: (r.strategy, r.problem_index))
            ],
        )  # fmt: skip
    if run.bad_lines:
        out += ["", f"## Skipped dataset lines ({len(run.bad_lines)})", ""]
        out += [f"- line {b['line']}: {b['reason']}" for b in run.bad_lines[:50]]
    out += ["", "## Pareto plots", ""]
    out += [f"![{a.label}]({a.file})" for a in AXES]
    out += [
        "",
        "Every row of `results.json` keeps its job id: `ponder trace <job id>` opens its trace.",
        "",
    ]
    return "\n".join(out)


def _write_atomic(path: Path, text: str) -> None:
    """A reader (or a Ctrl-C mid-write) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_results(run: EvalRun, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    _write_atomic(path, json.dumps(run.to_json(), indent=1, allow_nan=False) + "\n")
    return path


def write_all(run: EvalRun, out: Path) -> list[Path]:
    """results.json, report.md and the three Pareto plots."""
    paths = [write_results(run, out)]
    report = out / "report.md"
    _write_atomic(report, markdown(run))
    paths.append(report)
    paths += write_plots(run.summaries(), out, f"{run.name}: accuracy vs spend")
    return paths
