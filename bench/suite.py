"""``ponder bench``: the whole benchmark suite in one run, one table, one JSON file.

Every figure is measured side by side in the same run against the simulator, and
reported with its baseline (a ratio or a difference), never alone:

  call        pool client + journal vs raw httpx, per model call  (bench/call_overhead.py)
  job         a `direct` job via REST + Celery + Redis + PostgreSQL vs the model call
              alone                                                (bench/job_overhead.py)
  throughput  sustained jobs/s and jobs lost (must be 0)           (bench/worker_throughput.py)
  fanout      `self_consistency` n=16 vs one sample on a batching simulator (bench/fanout.py)
  sse         commit -> arrival delay of trace events over SSE     (bench/sse_delay.py)
  load        1,000 submissions from 32 and 128 clients to `ponder serve` on SQLite and on
              PostgreSQL + Redis: errors, p50/p99, jobs lost        (bench/api_load.py)
  peers       OptiLLM and its_hub next to Ponder; LiteLLM's proxy beside Ponder's journaled
              call and its OpenAI face, with --peers   (bench/peers/compare.py, openai_wire.py)

The scripts need a checkout (they use tests/fixtures) and the services of the test suite:
PostgreSQL at 127.0.0.1:5432 (db ``test``) and Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.settings import Settings

BENCH = Path(__file__).resolve().parent
SECTIONS = ("call", "job", "throughput", "fanout", "sse", "load", "peers")

# (quick, full) sizes of each section.
SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "call": ({"calls": 300}, {"calls": 2000}),
    "job": ({"jobs": 30}, {"jobs": 200}),
    "throughput": ({"latency_jobs": 10, "jobs": 100}, {"latency_jobs": 50, "jobs": 500}),
    "fanout": ({"n": 16, "reps": 3}, {"n": 16, "reps": 7}),
    "sse": ({"events": 30}, {"events": 100}),
    "load": ({"jobs": 200, "levels": (32,)}, {"jobs": 1000, "levels": (32, 128)}),
    "peers": (
        {"n": 8, "reps": 5, "requests": 50, "calls": 300},
        {"n": 8, "reps": 10, "requests": 200, "calls": 2000},
    ),
}


def add_arguments(bench: argparse.ArgumentParser) -> None:
    """The arguments of ``ponder bench`` (``app.cli.COMMANDS`` loads this module lazily:
    ``app`` never imports ``bench``)."""
    bench.add_argument("--quick", action="store_true", help="small sizes: about a minute")
    bench.add_argument("--json", action="store_true", help="print the JSON, not the table")
    bench.add_argument(
        "--peers",
        action="store_true",
        help="also run OptiLLM, its_hub and LiteLLM (.bench-peers venv)",
    )
    bench.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        default=None,
        metavar="SECTION",
        help=f"run only these sections (repeatable): {', '.join(SECTIONS)}",
    )
    bench.add_argument(
        "--out", default=None, metavar="FILE.json", help="default: DATA_DIR/bench/<time>.json"
    )


def _sections(args: argparse.Namespace) -> list[str]:
    chosen = list(args.only) if args.only else [s for s in SECTIONS if s != "peers"]
    if args.peers and "peers" not in chosen:
        chosen.append("peers")
    return [s for s in SECTIONS if s in chosen]


def _runners() -> dict[str, Callable[..., dict[str, Any]]]:
    # The scripts import each other as top-level modules (``_shared``), as they do when
    # run as ``python bench/NAME.py``; imported here, late, so ``ponder --help`` stays fast.
    for path in (str(BENCH), str(BENCH.parent)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import api_load
    import call_overhead
    import fanout
    import job_overhead
    import sse_delay
    import worker_throughput
    from peers import compare

    def throughput(**kw: Any) -> dict[str, Any]:
        result: dict[str, Any] = asyncio.run(worker_throughput.run(**kw))
        return result

    return {
        "call": lambda **kw: {
            "database": "postgres",
            **call_overhead.run(database="postgres", **kw),
        },
        "job": job_overhead.run,
        "throughput": throughput,
        "fanout": fanout.run,
        "sse": sse_delay.run,
        "load": api_load.run,
        "peers": compare.run,
    }


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the chosen sections, print the table (or JSON), write the JSON file."""
    sections = _sections(args)
    runners = _runners()
    started = time.monotonic()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "sections": {},
    }
    for name in sections:
        size = SIZES[name][0 if args.quick else 1]
        t0 = time.monotonic()
        print(f"bench: {name} {size} ...", file=sys.stderr, flush=True)
        try:
            result = runners[name](**size)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.monotonic() - t0, 1)
        report["sections"][name] = result
    report["seconds"] = round(time.monotonic() - started, 1)
    out = Path(args.out) if args.out else _default_out(settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(report))
    else:
        print("\n".join(table(report)))
        print(f"\nJSON: {out}")
    failed = any("error" in r for r in report["sections"].values())
    section = report["sections"].get("throughput", {})
    lost = sum(section.get(k, {}).get("lost", 0) for k in ("throughput", "threads"))
    return 1 if failed or lost else 0


def _default_out(settings: Settings) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(settings.data_dir) / "bench" / f"{stamp}.json"


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def table(report: dict[str, Any]) -> list[str]:
    """The report as text: one line per figure, each next to its baseline."""
    s = report["sections"]
    lines = [
        f"ponder bench ({report['mode']}, {report['started']}, {report['seconds']} s); "
        "2 shared cores: figures are noisy",
        f"{'section':<11}{'figure':<52}{'p50':>17}{'p99':>17}",
    ]

    def row(section: str, figure: str, p50: str, p99: str = "") -> None:
        lines.append(f"{section:<11}{figure:<52}{p50:>17}{p99:>17}")

    for name, result in s.items():
        if "error" in result:
            row(name, f"error: {result['error']}"[:52], "")
            continue
        if name == "call":
            raw = result["raw"]
            row(
                name,
                f"raw httpx, zero-latency sim ({result['database']})",
                _ms(raw["p50_ms"]),
                _ms(raw["p99_ms"]),
            )
            for way, label in (("pool", "pool client"), ("journal", "pool client + journal")):
                r = result[way]
                row(
                    "",
                    f"{label}: + over raw (x raw p50)",
                    f"{r['p50_over_raw_ms']:+.2f} ({r['p50_ratio']:.2f}x)",
                    f"{r['p99_over_raw_ms']:+.2f}",
                )
        elif name == "job":
            call, job, over = result["model_call"], result["job"], result["overhead"]
            row(
                name,
                f"model call alone (raw httpx), {result['jobs']} jobs",
                _ms(call["p50_ms"]),
                _ms(call["p99_ms"]),
            )
            row(
                "",
                "`direct` job REST+Celery+Redis+PG, submit->done",
                _ms(job["p50_ms"]),
                _ms(job["p99_ms"]),
            )
            row("", "  difference (job - call)", _ms(over["p50_ms"]), _ms(over["p99_ms"]))
            if "job_long_poll" in result:
                lp, olp = result["job_long_poll"], result["overhead_long_poll"]
                row(
                    "",
                    "  the same, one long poll (GET ?wait=30)",
                    _ms(lp["p50_ms"]),
                    _ms(lp["p99_ms"]),
                )
                row("", "  difference (long poll - call)", _ms(olp["p50_ms"]), _ms(olp["p99_ms"]))
            for label, key in (
                ("    of which: POST answered (202)", "accepted"),
                ("    of which: row insert -> finish (server clock)", "insert_to_finish"),
            ):
                if key in result:
                    row("", label, _ms(result[key]["p50_ms"]), _ms(result[key]["p99_ms"]))
        elif name == "throughput":
            thr, lat = result["throughput"], result["latency"]
            row(
                name,
                f"enqueue->finished, 1 process, {lat['jobs']} jobs",
                _ms(lat["p50_ms"]),
                f"p90 {lat['p90_ms']:.1f} ms",
            )
            row(
                "",
                f"{thr['jobs']} jobs at once, {thr['processes']} prefork processes: jobs/s",
                f"{thr['jobs_per_s']:.1f}/s",
                f"lost {thr['lost']}",
            )
            threads = result.get("threads")
            if threads is not None:
                row(
                    "",
                    f"{threads['jobs']} jobs at once, {threads['processes']} processes x "
                    f"{threads['threads']} threads: jobs/s",
                    f"{threads['jobs_per_s']:.1f}/s",
                    f"lost {threads['lost']}",
                )
            for label, run in (("prefork", thr), ("threads", threads)):
                cpu = (run or {}).get("cpu_ms_per_job")
                if cpu:
                    parts = [f"{k} {v:.1f}" for k, v in cpu.items() if v >= 0.05]
                    row("", f"  CPU ms/job ({label}): " + ", ".join(parts), "", "")
        elif name == "fanout":
            for mode, r in result.items():
                if not isinstance(r, dict):
                    continue
                label = "choices batched (vLLM-like)" if r["batch_n"] else "choices one by one"
                row(
                    name if mode == "batched" else "",
                    f"sc n={r['n']} vs 1 sample, {label}",
                    f"{r['fan_out_ms']:.0f}/{r['one_sample_ms']:.0f} ms",
                    f"{r['ratio']:.2f}x",
                )
            lat = result["batched"]["latency"]
            lines.append(
                f"{'':<11}  (simulator latency model, not an engine: ttft {lat['ttft_ms']:g} ms,"
                f" {lat['per_token_ms']:g} ms/token, slowdown {lat['concurrency_slowdown']:g}"
                "/other request; medians)"
            )
        elif name == "sse":
            for i, r in enumerate(result["rows"]):
                row(
                    name if i == 0 else "",
                    f"commit->SSE arrival, 1 event/{r['spacing_ms']:g} ms "
                    f"(first: {r['first_ms']:.0f} ms)",
                    _ms(r["p50_ms"]),
                    _ms(r["p99_ms"]),
                )
            first = result["rows"][0]
            how = (
                f"pushed: pg_notify on commit wakes the stream; safety poll every "
                f"{first['poll_max_s']:g} s"
                if first.get("pushed")
                else f"spans table polled every {first['poll_min_s']:g} s, x1.5 per empty poll"
                f" up to {first['poll_max_s']:g} s"
            )
            lines.append(f"{'':<11}  ({how}; first = after 0.5 s quiet)")
        elif name == "load":
            import api_load

            lines.append(f"{name:<11}`ponder serve`, zero-latency sim, POST /v1/jobs back to back")
            lines.extend(f"{'':<11}{line}" for line in api_load.table_lines(result))
        elif name == "peers":
            sys.path.insert(0, str(BENCH))
            from peers.compare import table_lines

            lines.append(
                f"{name:<11}zero-latency sim, raw p50 {result['raw_call_p50_ms']} ms; "
                "wall = median; ovh/call = (wall - calls x raw) / calls"
            )
            lines.extend(f"{'':<11}{line}" for line in table_lines(result))
    return lines
