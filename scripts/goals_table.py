"""Issue 18's goals table: the embedded pair's arms on GSM8K dev 300-499, judged.

    python scripts/goals_table.py docs/results/goals-dev300-399/results.json \\
        docs/results/goals-dev400-499/results.json --db data/ponder.db --plots docs/results/goals

Reads one or more ``results.json`` files written by ``ponder eval`` with the same arms
(each file one run, every arm in it), pools their rows by arm and prints, in Markdown:
each arm's accuracy (95 % Wilson interval), tokens by role, job latency (mean and p50),
and the three goals, each with its numbers, its verdict and the paired per-problem
counts that say where two arms differ. ``--db`` (the database the runs wrote) adds what
the traces say: where the router sent each problem and how each route scored, and
self-consistency's samples: how many each job drew, why it stopped,
how often its first samples agreed, and the stopping rule replayed at several
confidences over the fixed arm's journaled samples (what adaptive sampling would have
saved and cost on exactly those samples). ``--plots DIR`` writes the Pareto plots of the
pooled arms. Nothing here calls a model.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.arms import Arm, make_arm
from evals.plots import write_plots
from evals.results import Row, Summary, load_results, summarize
from evals.stats import mean, percentile
from strategies.baselines.self_consistency import Params as SelfConsistency
from strategies.baselines.self_consistency import ranked, stop_reason
from strategies.shared.answers import answers_equal

LARGE = 'direct role="large"'
ROUTER = "embedded-router"
SMALL = 'direct role="small"'
SC_SPEC = 'role="small" n=8 max_tokens=384 executor="python"'
SC_FIXED = f"self_consistency {SC_SPEC}"
SC_ADAPTIVE = f"{SC_FIXED} adaptive=true batch_size=2"


@dataclass(frozen=True)
class Pooled:
    arm: Arm
    rows: list[Row]
    summary: Summary

    @property
    def mean_latency(self) -> float:
        return mean([r.latency_s for r in self.rows]) or 0.0


def pool(paths: Sequence[Path]) -> dict[str, Pooled]:
    arms: dict[str, Arm] = {}
    rows: dict[str, list[Row]] = {}
    for path in paths:
        data = load_results(path)
        for entry in data["strategies"]:
            arms.setdefault(entry["label"], make_arm(entry["spec"], label=entry["label"]))
        for raw in data["rows"]:
            row = Row.from_json(raw)
            # Problem indices restart at 0 in each file; the id is the problem's own.
            rows.setdefault(row.strategy, []).append(row)
    # An arm with no rows yet (a run still going, or interrupted) is left out, not zero.
    return {
        label: Pooled(arm, rows[label], summarize(arm, rows[label]))
        for label, arm in arms.items()
        if rows.get(label)
    }


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def arm_table(arms: dict[str, Pooled]) -> list[str]:
    lines = [
        "| arm | accuracy % | 95 % CI | mean tokens | by role | mean s | p50 s | p90 s | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, p in arms.items():
        s = p.summary
        roles = ", ".join(f"{role} {v:.0f}" for role, v in s.mean_tokens_by_role.items())
        p50 = percentile([r.latency_s for r in p.rows], 50) or 0.0
        p90 = percentile([r.latency_s for r in p.rows], 90) or 0.0
        lines.append(
            f"| `{label}` | {_pct(s.accuracy)} ({s.correct}/{s.n}) | "
            f"{_pct(s.ci_low)}–{_pct(s.ci_high)} | {s.mean_tokens or 0:.0f} | {roles} | "
            f"{p.mean_latency:.1f} | {p50:.1f} | {p90:.1f} | {s.failed} |"
        )
    return lines


def paired(a: Pooled, b: Pooled) -> str:
    right_a = {r.problem_id for r in a.rows if r.correct}
    right_b = {r.problem_id for r in b.rows if r.correct}
    both = len(right_a & right_b)
    return (
        f"both right {both}, only `{a.arm.label}` {len(right_a - right_b)}, "
        f"only `{b.arm.label}` {len(right_b - right_a)}"
    )


def on_shared(a: Pooled, b: Pooled) -> tuple[Pooled, Pooled]:
    """Both arms on the problems both answered: a goal compares arms on the same problems,
    even while one arm's run is unfinished."""
    shared = {r.problem_id for r in a.rows} & {r.problem_id for r in b.rows}

    def keep(p: Pooled) -> Pooled:
        rows = [r for r in p.rows if r.problem_id in shared]
        return Pooled(p.arm, rows, summarize(p.arm, rows))

    return keep(a), keep(b)


def _acc(p: Pooled) -> float:
    return p.summary.accuracy or 0.0


def _tokens(p: Pooled) -> float:
    return p.summary.mean_tokens or 0.0


def goals(arms: dict[str, Pooled]) -> list[str]:
    lines = ["| goal | numbers | met |", "|---|---|---|"]
    if {LARGE, ROUTER} <= arms.keys():
        router, large = on_shared(arms[ROUTER], arms[LARGE])
        gap = round(100 * (_acc(router) - _acc(large)), 6)
        ratio = round(router.mean_latency / large.mean_latency, 6)
        p50 = (percentile([r.latency_s for r in router.rows], 50) or 0.0) / (
            percentile([r.latency_s for r in large.rows], 50) or 1.0
        )
        met = gap >= -3 and ratio <= 0.8
        lines.append(
            f"| (a) `{ROUTER}` within 3 points of large-only (`{LARGE}`) at ≤ 0.8× its "
            f"wall time | {router.summary.n} problems: {gap:+.1f} points; {ratio:.2f}× mean "
            f"job time ({p50:.2f}× p50) | {'met' if met else 'missed'} |"
        )
    for small_arm in (SC_FIXED, SC_ADAPTIVE):
        if {SMALL, small_arm} <= arms.keys():
            voted, small = on_shared(arms[small_arm], arms[SMALL])
            gain = round(100 * (_acc(voted) - _acc(small)), 6)
            ratio = round(_tokens(voted) / _tokens(small), 6)
            met = gain >= 15 and ratio <= 3
            lines.append(
                f"| (b) `{small_arm}` ≥ 15 points over `{SMALL}` at ≤ 3× its tokens | "
                f"{voted.summary.n} problems: {gain:+.1f} points; {ratio:.2f}× tokens | "
                f"{'met' if met else 'missed'} |"
            )
    if {SC_FIXED, SC_ADAPTIVE} <= arms.keys():
        adaptive, fixed = on_shared(arms[SC_ADAPTIVE], arms[SC_FIXED])
        saved = round(1 - _tokens(adaptive) / _tokens(fixed), 6)
        gap = round(100 * (_acc(adaptive) - _acc(fixed)), 6)
        met = saved >= 0.4 and gap >= -2
        lines.append(
            f"| (c) adaptive self-consistency ≥ 40 % fewer tokens than fixed at n=8, within "
            f"2 points | {adaptive.summary.n} problems: {100 * saved:.1f} % fewer tokens; "
            f"{gap:+.1f} points | {'met' if met else 'missed'} |"
        )
    lines.append("")
    for a, b in ((ROUTER, LARGE), (SC_FIXED, SMALL), (SC_ADAPTIVE, SMALL), (SC_ADAPTIVE, SC_FIXED)):
        if {a, b} <= arms.keys():
            lines.append(f"- Paired, `{a}` against `{b}`: {paired(*on_shared(arms[a], arms[b]))}.")
    return lines


def _events(db: sqlite3.Connection, job_id: str, name: str) -> list[dict[str, Any]]:
    query = "select attributes from spans where job_id = ? and kind = 'event' and name = ?"
    query += " order by seq"
    return [json.loads(a) for (a,) in db.execute(query, (job_id, name))]


def unanimous_prefix(answers: Sequence[str | None], k: int) -> bool:
    """The first ``k`` samples all ran and printed one answer: what the Beta rule needs
    (4 of 4 at confidence 0.95) to stop at ``k``."""
    head = list(answers[:k])
    return len(head) == k and None not in head and len(set(head)) == 1


def routing_report(arms: dict[str, Pooled], db_path: Path) -> list[str]:
    """What the router's traces say: where each problem went, how each route scored, how
    often the routed program failed to run, and (paired) which route large-only beat it on."""
    if ROUTER not in arms:
        return []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    large = {r.problem_id: r for r in arms[LARGE].rows} if LARGE in arms else {}
    routed: Counter[str] = Counter()
    right: Counter[str] = Counter()
    only_large: Counter[str] = Counter()
    only_router: Counter[str] = Counter()
    failed_runs = 0
    no_answer = 0
    for row in arms[ROUTER].rows:
        if not row.job_id:
            continue
        level = _events(db, row.job_id, "difficulty")
        if not level:
            continue
        route = str(level[-1]["level"])
        routed[route] += 1
        right[route] += row.correct
        failed_runs += sum(not e["ok"] for e in _events(db, row.job_id, "execution"))
        no_answer += row.answer is None
        other = large.get(row.problem_id)
        if other is not None:
            only_large[route] += other.correct and not row.correct
            only_router[route] += row.correct and not other.correct
    total = sum(routed.values())
    if not total:
        return []
    routes = ", ".join(
        f"{k} {v} ({right[k]} right; only large-only right {only_large[k]}, "
        f"only the router {only_router[k]})"
        for k, v in routed.most_common()
    )
    return [
        f"`{ROUTER}`, {total} jobs from their traces:",
        f"- routes: {routes}",
        f"- program runs that failed (a repair round follows): {failed_runs}; "
        f"jobs with no answer: {no_answer}",
        "",
    ]


def sampling_report(arms: dict[str, Pooled], db_path: Path) -> list[str]:
    """What the self-consistency jobs' traces say: samples drawn, why they stopped, and
    (fixed n=8, whose 8 samples are one request) how often the first 4 agreed, i.e. how
    often an adaptive run could have stopped there."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    lines = []
    for label in (SC_FIXED, SC_ADAPTIVE):
        if label not in arms:
            continue
        drawn: Counter[int] = Counter()
        stopped: Counter[str] = Counter()
        leaders: Counter[int] = Counter()
        abstained = 0
        first4 = 0
        covered = 0
        right = 0
        for row in arms[label].rows:
            if not row.job_id:
                continue
            job_id = row.job_id
            vote = _events(db, job_id, "vote")
            samples = _events(db, job_id, "sample")
            if not vote:
                continue
            drawn[vote[-1]["samples"]] += 1
            stopped[vote[-1]["stopped"]] += 1
            votes = vote[-1]["votes"] or {}
            leaders[max(votes.values(), default=0)] += 1
            answers = [s.get("answer") for s in sorted(samples, key=lambda s: s["index"])]
            abstained += sum(a is None for a in answers)
            first4 += unanimous_prefix(answers, 4)
            covered += any(answers_equal(a, row.expected) for a in votes)
            right += row.correct
        total = sum(drawn.values())
        if not total:
            continue
        samples_drawn = sum(k * v for k, v in drawn.items())
        lines.append(f"`{label}`, {total} jobs from their traces:")
        lines.append(
            f"- samples drawn: {', '.join(f'{k}: {v}' for k, v in sorted(drawn.items()))} "
            f"(mean {samples_drawn / max(total, 1):.2f}); stopped: "
            f"{', '.join(f'{k} {v}' for k, v in stopped.most_common())}"
        )
        lines.append(
            f"- the leading answer's votes: "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(leaders.items()))}; samples that "
            f"abstained (the program failed or printed no number): {abstained} of "
            f"{samples_drawn} ({100 * abstained / max(samples_drawn, 1):.1f} %)"
        )
        lines.append(
            f"- the right answer among the samples: {covered} of {total} jobs "
            f"({100 * covered / max(total, 1):.1f} %); the vote picked it in {right}"
        )
        lines.append(
            f"- first 4 samples all ran and agreed: {first4} of {total} jobs "
            f"({100 * first4 / max(total, 1):.1f} %)"
        )
    return lines


def adaptive_on_fixed_samples(
    answers: Sequence[str | None], params: SelfConsistency
) -> tuple[int, str | None]:
    """What adaptive self-consistency would have drawn and answered had its batches been
    these samples, in order: (samples drawn, the vote's leader)."""
    drawn = 0
    while drawn < len(answers):
        drawn = min(drawn + params.batch_size, len(answers))
        if stop_reason(*_tally(answers[:drawn]), drawn, params) is not None:
            break
    order = ranked(*_tally(answers[:drawn]))
    return drawn, order[0][0] if order else None


def stopping_what_if(
    arms: dict[str, Pooled], db_path: Path, confidences: Sequence[float] = (0.95, 0.9, 0.8, 0.7)
) -> list[str]:
    """The Beta stopping rule replayed over the fixed arm's journaled samples (batches of
    2, in the order they were drawn), per confidence: samples kept, the tokens that saves
    (completion tokens taken as proportional to samples) and the accuracy. Zero model
    calls, and paired exactly: every threshold sees the same samples."""
    if SC_FIXED not in arms:
        return []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    jobs: list[tuple[list[str | None], str]] = []
    for row in arms[SC_FIXED].rows:
        samples = _events(db, row.job_id, "sample") if row.job_id else []
        if len(samples) == 8:
            ordered = sorted(samples, key=lambda s: s["index"])
            jobs.append(([s.get("answer") for s in ordered], row.expected))
    if not jobs:
        return []
    lines = [
        f"The stopping rule over `{SC_FIXED}`'s samples ({len(jobs)} jobs, batches of 2):",
        "",
        "| confidence | mean samples | tokens saved | accuracy % |",
        "|---|---|---|---|",
    ]
    for confidence in (*confidences, None):
        drawn = right = 0
        for answers, expected in jobs:
            if confidence is None:
                used, order = len(answers), ranked(*_tally(answers))
                leader = order[0][0] if order else None
            else:
                params = SelfConsistency(n=8, adaptive=True, batch_size=2, confidence=confidence)
                used, leader = adaptive_on_fixed_samples(answers, params)
            drawn += used
            right += leader is not None and answers_equal(leader, expected)
        name = f"{confidence:.2f}" if confidence is not None else "fixed (all 8)"
        lines.append(
            f"| {name} | {drawn / len(jobs):.2f} | {100 * (1 - drawn / (8 * len(jobs))):.1f} % "
            f"| {100 * right / len(jobs):.1f} |"
        )
    return lines


def _tally(answers: Sequence[str | None]) -> tuple[Counter[str], dict[str, int]]:
    votes: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is not None:
            votes[answer] += 1
            first_seen.setdefault(answer, i)
    return votes, first_seen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files (one per run)")
    parser.add_argument("--db", type=Path, help="the SQLite database the runs wrote")
    parser.add_argument("--plots", type=Path, help="write the pooled Pareto plots here")
    args = parser.parse_args(argv)
    arms = pool(args.results)
    print("\n".join(arm_table(arms)))
    print()
    print("\n".join(goals(arms)))
    if args.db is not None:
        print()
        print("\n".join(routing_report(arms, args.db) + sampling_report(arms, args.db)))
        print()
        print("\n".join(stopping_what_if(arms, args.db)))
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        n = max((p.summary.n for p in arms.values()), default=0)
        write_plots([p.summary for p in arms.values()], args.plots, f"GSM8K dev, {n} problems")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
