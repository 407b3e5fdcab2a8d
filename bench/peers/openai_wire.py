"""LiteLLM's proxy beside Ponder on the OpenAI wire, in front of one simulator.

Both speak ``POST /v1/chat/completions``, as the simulator does. Four targets answer the
same request body through one keep-alive httpx client, one request at a time,
round-robin, so that machine noise hits them alike:

  raw       the simulator itself: the floor
  litellm   LiteLLM's proxy from the peers' venv (``litellm --config``, 1 worker, no
            database), one model pointed at the simulator
  serve     ``ponder serve`` on SQLite with the folder broker, model ``ponder/direct``
  postgres  ``ponder serve`` on PostgreSQL + Redis (its Celery worker), ``ponder/direct``

Two comparisons come out of it. Per model call: LiteLLM's overhead (proxy − raw, and
its SDK's ``acompletion`` − raw from ``litellm_peer.py`` in the peers' venv) beside
Ponder's journaled call (``bench/call_overhead.py`` on PostgreSQL, same run): what each
adds to one upstream call. Per request: the proxy's answer beside the OpenAI face's,
what a client of a drop-in endpoint waits. A target that cannot start is reported as
skipped with its reason; the others are still measured.

    python bench/peers/openai_wire.py [--requests 200] [--calls 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parents[1]
for _path in (str(BENCH), str(BENCH.parent)):
    if _path not in sys.path:
        sys.path.append(_path)  # appended: shadows nothing already importable

import api_load  # noqa: E402
import call_overhead  # noqa: E402
from _shared import free_port, percentile, temp_database  # noqa: E402

HERE = Path(__file__).resolve().parent
PEERS_VENV = BENCH.parent / ".bench-peers"
# LiteLLM's proxy refuses to start without one; clients send it as their bearer token.
MASTER_KEY = "sk-bench-master"
MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]
WARMUP = 20


class Skipped(Exception):
    """A target that could not start here; the message says why."""


@dataclass
class Target:
    name: str
    label: str
    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise Skipped(f"exited with code {proc.returncode}: {tail[0][:160]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise Skipped(f"{url} did not answer within {timeout:g} s")


def _peer_version(venv: Path, package: str) -> str:
    python = venv / "bin" / "python"
    code = f"from importlib.metadata import version; print(version({package!r}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or "?"


@contextmanager
def litellm_proxy(sim_url: str, workdir: Path, venv: Path = PEERS_VENV) -> Iterator[Target]:
    """LiteLLM's proxy (from ``venv``) on a free port, model ``sim`` = the simulator."""
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        raise Skipped(f"litellm not installed in {venv} (see bench/README.md)")
    version = _peer_version(venv, "litellm")
    # JSON is YAML: the config needs no YAML writer in Ponder's venv.
    config = workdir / "litellm.yaml"
    model = {"model": "openai/sim", "api_base": f"{sim_url}/v1", "api_key": "sk-sim"}
    config.write_text(json.dumps({"model_list": [{"model_name": "sim", "litellm_params": model}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "LITELLM_"))}
    # No database; the packaged model cost map instead of a fetch from GitHub at start.
    env |= {"LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    port = free_port()
    log = workdir / "litellm.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
             "--num_workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/health/liveliness", proc, log, timeout=120)
        yield Target(
            "litellm",
            f"LiteLLM {version} proxy (1 worker, no database)",
            url,
            "sim",
            {"Authorization": f"Bearer {MASTER_KEY}"},
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def ponder_openai_face(sim_url: str, database: str, workdir: Path) -> Iterator[Target]:
    """``ponder serve`` (``bench/api_load.py``'s) on SQLite or on PostgreSQL + Redis.

    The only Ponder-specific start-up here: a shared OpenAI-face benchmark, should
    ``bench/`` gain one, replaces this function and keeps the rest of the rotation."""
    data = workdir / database
    data.mkdir()
    with ExitStack() as stack:
        env: dict[str, str] = {}
        label = "`ponder serve`, SQLite + folder broker"
        if database == "postgres":
            import redis

            try:
                redis.Redis.from_url(api_load.REDIS_DB).flushdb()
                pg = stack.enter_context(temp_database())
            except Exception as exc:
                raise Skipped(f"{type(exc).__name__}: {exc}"[:200]) from exc
            env = {"PONDER_DATABASE_URL": pg, "PONDER_BROKER_URL": api_load.REDIS_DB}
            label = "`ponder serve`, PostgreSQL + Redis + Celery"
        try:
            url = stack.enter_context(api_load.serve(sim_url, env, data))
        except RuntimeError as exc:
            raise Skipped(str(exc)[:200]) from exc
        name = "serve" if database == "sqlite" else database
        yield Target(name, f"Ponder `ponder/direct`, {label}", url, "ponder/direct")


def _request(http: httpx.Client, target: Target) -> float:
    body = {"model": target.model, "messages": MESSAGES, "max_tokens": 64}
    started = time.perf_counter()
    response = http.post(f"{target.url}/v1/chat/completions", json=body, headers=target.headers)
    response.raise_for_status()
    answer = response.json()["choices"][0]["message"]["content"]
    elapsed = (time.perf_counter() - started) * 1000
    if not answer:
        raise RuntimeError(f"{target.name}: an empty answer")
    return elapsed


def interleaved(
    http: httpx.Client, targets: list[Target], requests: int, warmup: int = WARMUP
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Samples per target, and why a target left the rotation (a failed request ends
    its measurement, not the others'; the raw call's failure ends them all)."""
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    failed: dict[str, str] = {}
    for i in range(warmup + requests):
        for target in targets:
            if target.name in failed:
                continue
            try:
                elapsed = _request(http, target)
            except (httpx.HTTPError, LookupError, ValueError, RuntimeError) as exc:
                if target.name == "raw":
                    raise
                failed[target.name] = f"failed at request {i + 1}: {exc}"[:200]
                continue
            if i >= warmup:
                samples[target.name].append(elapsed)
    return samples, failed


def _summary(values: list[float], raw: list[float]) -> dict[str, float]:
    p50, p99 = statistics.median(values), percentile(values, 0.99)
    raw50, raw99 = statistics.median(raw), percentile(raw, 0.99)
    return {
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "p50_over_raw_ms": round(p50 - raw50, 2),
        "p99_over_raw_ms": round(p99 - raw99, 2),
    }


def _journaled_call(calls: int) -> dict[str, Any]:
    try:
        table = call_overhead.run(calls, database="postgres")
    except Exception as exc:
        return {"skipped": f"{type(exc).__name__}: {exc}"[:200]}
    journal = table["journal"]
    return {
        "database": "postgres",
        "calls": calls,
        "p50_over_raw_ms": journal["p50_over_raw_ms"],
        "p99_over_raw_ms": journal["p99_over_raw_ms"],
    }


def _litellm_sdk(sim_url: str, calls: int, venv: Path = PEERS_VENV) -> dict[str, Any]:
    """``litellm_peer.py`` in the peers' venv: LiteLLM's SDK call over a raw call."""
    python = venv / "bin" / "python"
    if not (venv / "bin" / "litellm").exists():
        return {"skipped": f"litellm not installed in {venv} (see bench/README.md)"}
    command = [str(python), "litellm_peer.py", "--sim", sim_url, "--calls", str(calls)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=HERE)
    except subprocess.TimeoutExpired:
        return {"skipped": "timed out after 600 s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"skipped": why[:200]}
    sdk: dict[str, Any] = json.loads(lines[-1])["sdk"]
    return sdk


def run(sim_url: str, requests: int = 200, calls: int = 2000) -> dict[str, Any]:
    """Ponder's journaled call and LiteLLM's SDK call first (each alone), then every
    target, round-robin."""
    journaled = _journaled_call(calls)
    sdk = _litellm_sdk(sim_url, calls)
    raw = Target("raw", "raw call to the simulator", sim_url, "sim")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        targets = [raw]
        starters: list[tuple[str, str, Callable[[], AbstractContextManager[Target]]]] = [
            ("litellm", "LiteLLM proxy", lambda: litellm_proxy(sim_url, Path(tmp))),
            ("serve", "Ponder on `ponder serve` (SQLite)",
             lambda: ponder_openai_face(sim_url, "sqlite", Path(tmp))),
            ("postgres", "Ponder on PostgreSQL + Redis",
             lambda: ponder_openai_face(sim_url, "postgres", Path(tmp))),
        ]  # fmt: skip
        for name, label, start in starters:
            try:
                targets.append(stack.enter_context(start()))
            except Skipped as exc:
                rows.append({"name": name, "label": label, "skipped": str(exc)})
        with httpx.Client(timeout=60) as http:
            samples, failed = interleaved(http, targets, requests)
    measured = [
        {"name": t.name, "label": t.label, "skipped": failed[t.name]}
        if t.name in failed
        else {"name": t.name, "label": t.label, **_summary(samples[t.name], samples["raw"])}
        for t in targets
    ]
    order = ["raw", "litellm", "serve", "postgres"]
    rows = sorted(measured + rows, key=lambda r: order.index(r["name"]))
    return {
        "requests": requests,
        "warmup": WARMUP,
        "journaled_call": journaled,
        "litellm_sdk_call": sdk,
        "rows": rows,
    }


def table_lines(result: dict[str, Any]) -> list[str]:
    """Two groups: the overhead per model call, then the whole request (and its overhead)."""
    rows = {r["name"]: r for r in result["rows"]}
    lines = [
        f"POST /v1/chat/completions, {result['requests']} sequential requests per target, "
        "round-robin; requests: ms (+ over raw)"
    ]

    def line(figure: str, p50: str, p99: str) -> None:
        lines.append(f"{figure:<52}{p50:>17}{p99:>17}")

    def over(row: dict[str, Any]) -> tuple[str, str]:
        return f"{row['p50_over_raw_ms']:+.2f} ms", f"{row['p99_over_raw_ms']:+.2f} ms"

    def request(row: dict[str, Any]) -> tuple[str, str]:
        return (
            f"{row['p50_ms']:.2f} ({row['p50_over_raw_ms']:+.2f})",
            f"{row['p99_ms']:.2f} ({row['p99_over_raw_ms']:+.2f})",
        )

    raw = rows["raw"]
    line("raw call to the simulator", f"{raw['p50_ms']:.2f} ms", f"{raw['p99_ms']:.2f} ms")
    journal = result["journaled_call"]
    Cells = Callable[[dict[str, Any]], tuple[str, str]]
    figures: list[tuple[str, dict[str, Any], Cells]] = [
        ("per call: LiteLLM proxy over raw", rows["litellm"], over),
        ("per call: LiteLLM SDK (acompletion) over raw", result["litellm_sdk_call"], over),
        ("per call: Ponder journaled call over raw (PG)", journal, over),
        ("request: LiteLLM proxy (1 worker, no database)", rows["litellm"], request),
        ("request: Ponder ponder/direct, serve (SQLite)", rows["serve"], request),
        ("request: Ponder ponder/direct, PG+Redis+Celery", rows["postgres"], request),
    ]
    for figure, row, cells in figures:
        if "skipped" in row:
            litellm = row is rows["litellm"] or row is result["litellm_sdk_call"]
            prefix = "peer skipped" if litellm else "skipped"
            lines.append(f"{figure:<52}{prefix}: {row['skipped']}")
        else:
            line(figure, *cells(row))
    if "skipped" not in rows["litellm"]:
        lines.append(f"({rows['litellm']['label']}; SDK and Ponder's call: {journal.get('calls')}"
                     " calls each, litellm_peer.py and bench/call_overhead.py)")  # fmt: skip
    return lines


def main() -> None:
    from core.simulator.config import Rule, SimulatorConfig
    from core.simulator.server import Simulator

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = SimulatorConfig(models=["sim"], rules=[Rule(replies=["The answer is 5."])])
    with Simulator(config) as sim:
        result = run(sim.url, args.requests, args.calls)
    if args.json:
        json.dump(result, sys.stdout)
        return
    print("\n".join(table_lines(result)))


if __name__ == "__main__":
    main()
