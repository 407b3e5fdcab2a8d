"""``ponder eval``: arguments in, backend chosen, run, outputs and the table out.

Exit codes: 0 done (failed jobs are results, counted as incorrect), 2 bad input or
configuration — checked before any job is written — and 130 interrupted (partial
results written). SIGTERM (``docker stop``, ``kill``, a job scheduler's time limit)
interrupts like Ctrl-C does: a background or containerised eval, which may not get
SIGINT at all, keeps what it finished.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

from core import presets
from core.budget import parse_budget
from core.errors import InvalidInput
from core.runtime import Runtime
from core.settings import Settings
from core.specs import resolve_roles, validate_spec
from evals import console
from evals.arms import Arm, Presets, parse_arms, preset_names
from evals.backends import Backend, LocalBackend, RestBackend
from evals.dataset import Dataset, load_dataset
from evals.difficulty import PROBE_KINDS, ProbeSettings, parse_thresholds
from evals.experiments import ExperimentStore, LocalStore, RestStore
from evals.results import EvalRun, load_results
from evals.runs import Options, evaluate, replay, replay_plan
from ponder_client import AsyncPonderClient


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def _check_numbers(args: argparse.Namespace) -> None:
    for flag, value in (("limit", args.limit), ("concurrency", args.concurrency),
                        ("pilot", args.pilot)):  # fmt: skip
        if value is not None and value < 1:
            raise InvalidInput(f"--{flag} must be at least 1, got {value}", field=flag)
    if args.budget_tokens is not None:
        parse_budget({"max_tokens": args.budget_tokens})
    tokens = args.difficulty_probe_tokens
    if not 1 <= tokens <= 4096:
        raise InvalidInput(
            f"--difficulty-probe-tokens must be 1 to 4096, got {tokens}",
            field="difficulty_probe_tokens",
        )


def has_small_role(settings: Settings) -> bool:
    """A ``small`` pool is configured, or none is and the embedded models include one."""
    if settings.pools:
        return "small" in settings.pools
    return settings.embedded.enabled and "small" in settings.embedded.roles


def _probe(args: argparse.Namespace, settings: Settings) -> ProbeSettings | None:
    """``--difficulty-probe``; by default agreement when this process has a ``small``
    role (with ``--url`` the server's roles are unknown here: none unless asked)."""
    kind = args.difficulty_probe
    thresholds = args.difficulty_thresholds
    if kind is None:
        kind = "agreement" if not args.url and has_small_role(settings) else "none"
    if kind not in PROBE_KINDS:
        raise InvalidInput(
            f"--difficulty-probe must be one of {', '.join(PROBE_KINDS)}, not {kind!r}",
            field="difficulty_probe",
            valid=list(PROBE_KINDS),
        )
    if kind == "none":
        if thresholds is not None:
            raise InvalidInput(
                "--difficulty-thresholds needs a --difficulty-probe", field="difficulty_thresholds"
            )
        return None
    easy, hard = parse_thresholds(thresholds, kind)
    tokens = args.difficulty_probe_tokens
    return ProbeSettings(probe=kind, easy_max=easy, hard_min=hard, probe_tokens=tokens)


def _load(args: argparse.Namespace) -> Dataset | None:
    """The dataset, or None when ``--on-bad-line reject`` found bad lines (reported)."""
    path = Path(args.dataset)
    try:
        dataset = load_dataset(path, limit=args.limit)
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read dataset {path}: {exc}", field="dataset") from None
    if dataset.bad_lines:
        console.print_bad_lines(str(path), dataset.bad_lines)
        count = len(dataset.bad_lines)
        if args.on_bad_line == "reject":
            console.note(
                f"ponder: {count} bad line(s) in {path}; nothing was run (--on-bad-line reject)"
            )
            return None
        console.note(f"ponder: skipped {count} bad line(s) in {path}")
    if not dataset.problems:
        raise InvalidInput(f"{path} holds no valid problem", field="dataset")
    return dataset


async def _presets(args: argparse.Namespace, settings: Settings) -> Presets:
    """The presets ``--strategy`` names resolve among: the server's for its key's tenant
    (``--url``), else the local database's for tenant "default" (where ``ponder
    calibrate --preset`` writes); shipped ones included, a stored one replacing its
    namesake."""
    if args.url:
        timeout = httpx.Timeout(60.0, connect=5.0)
        async with AsyncPonderClient(args.url, args.api_key or None, timeout=timeout) as client:
            return await RestBackend(client).presets()
    async with Runtime(settings) as rt, rt.sessions() as session:  # no pools: presets only
        return {p.name: dict(p.spec) for p in await presets.list_presets(session, "default")}


@asynccontextmanager
async def _backend(
    args: argparse.Namespace,
    settings: Settings,
    arms: list[Arm],
    probe: ProbeSettings | None = None,
) -> AsyncIterator[tuple[Backend, ExperimentStore, str]]:
    """The backend, checked: pools answer (in-process) or the server does (``--url``);
    and where the run is stored as an experiment (the same database or server).
    ``probe``: its role is needed too."""
    if args.url:
        timeout = httpx.Timeout(60.0, connect=5.0)
        # No --api-key: the client reads PONDER_API_KEY.
        async with AsyncPonderClient(args.url, args.api_key or None, timeout=timeout) as client:
            rest = RestBackend(client)
            kinds = await rest.check()
            unknown = sorted({str(a.params["kind"]) for a in arms} - set(kinds))
            if unknown:
                raise InvalidInput(
                    f"the server at {args.url} has no strategy {', '.join(unknown)}",
                    field="strategy.kind",
                )
            yield rest, RestStore(client), args.url
        return
    roles: set[str] = set()
    for arm in arms:
        roles |= arm.roles
    if probe is not None:
        roles.add(probe.probe_role)
    async with Runtime(settings, roles=roles or None) as rt:
        await rt.check_pools(roles)
        for arm in arms:  # a role without a pool is bad input, before any job is written
            resolve_roles(validate_spec(arm.params), rt.pools)
        if probe is not None:
            resolve_roles(validate_spec(probe.job_spec()), rt.pools)
        pools = ", ".join(f"{r}={p.settings.model}" for r, p in sorted(rt.pools.items()))
        described = f"in-process (pools: {pools or 'none: journals only'})"
        yield LocalBackend(rt), LocalStore(rt.sessions), described


def _options(
    args: argparse.Namespace,
    settings: Settings,
    name: str,
    backend: str,
    probe: ProbeSettings | None = None,
) -> Options:
    out = Path(args.out) if args.out else settings.data_dir / "evals" / name
    return Options(
        out=out,
        name=name,
        backend=backend,
        concurrency=args.concurrency,
        budget_tokens=args.budget_tokens,
        match_budget=args.match_budget,
        pilot=args.pilot,
        seed=args.seed,
        difficulty=probe,
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """The ``ponder eval`` command (``app.cli`` builds ``args``); SIGTERM cancels it as
    Ctrl-C does, so the partial results are written."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    terminated = asyncio.Event()

    def terminate() -> None:
        terminated.set()
        if task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, terminate)
        handled = True
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here (not main thread)
        handled = False
    try:
        return await _run(args, settings)
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise  # Ctrl-C: asyncio.run turns it into KeyboardInterrupt
        console.note("ponder: terminated before the eval started; nothing was written")
        return 130
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    _check_numbers(args)
    if bool(args.replay) == bool(args.dataset):
        raise InvalidInput("give either --dataset or --replay", field="dataset")
    if args.replay:
        if args.strategy or args.budget_tokens or args.match_budget or args.limit:
            raise InvalidInput(
                "--replay takes the strategies, budget and problems of the earlier eval; "
                "change parameters with -p key=value",
                field="replay",
            )
        if args.difficulty_probe or args.difficulty_thresholds:
            raise InvalidInput(
                "--replay replays the earlier eval's difficulty probes (strictly); "
                "--difficulty-probe and --difficulty-thresholds are for a new eval",
                field="difficulty_probe",
            )
        return await _replay(args, settings)
    if args.param:
        raise InvalidInput("-p is for --replay; put parameters in --strategy", field="param")
    probe = _probe(args, settings)
    dataset = _load(args)
    if dataset is None:
        return 2
    wanted = preset_names(args.strategy)
    arms = parse_arms(args.strategy, await _presets(args, settings) if wanted else None)
    name = args.name or f"{dataset.path.stem}-{_stamp()}"
    async with _backend(args, settings, arms, probe) as (backend, store, described):
        options = _options(args, settings, name, described, probe)
        progress = console.BarProgress()
        try:
            with progress:
                result = await evaluate(backend, dataset, arms, options, progress, store)
        except asyncio.CancelledError:
            return _interrupted(options.out)
    return _finish(result, options.out)


def _is_results_file(replay: str) -> bool:
    return replay.endswith(".json") or "/" in replay or Path(replay).is_file()


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    if not _is_results_file(args.replay):
        return await _replay_experiment(args, settings)
    source = Path(args.replay)
    previous = load_results(source)
    arms, changes, _ = replay_plan(previous, args.param)  # validates -p before any job
    live_arms = [
        Arm(a.label, a.spec, {**a.params, **changes[a.label]}, a.roles)
        for a in arms
        if a.label in changes
    ]
    name = args.name or f"{previous.get('name', source.parent.name)}-replay-{_stamp()}"
    # A strict replay needs no model at all: only the arms with changes start pools.
    async with _backend(args, settings, live_arms) as (backend, store, described):
        options = _options(args, settings, name, described)
        progress = console.BarProgress()
        try:
            with progress:
                result = await replay(
                    backend, previous, source, args.param, options, progress, store
                )
        except asyncio.CancelledError:
            return _interrupted(options.out)
    return _finish(result, options.out)


async def _replay_experiment(args: argparse.Namespace, settings: Settings) -> int:
    """``--replay EXPERIMENT_ID``: every job replayed strictly, with the what-if ``-p``
    changes: zero model calls, and no pool is started. A row whose what-if needs a call
    the journal lacks fails, and is counted and listed as failed."""
    async with _backend(args, settings, []) as (backend, store, described):
        previous = await store.load(args.replay)
        replay_plan(previous, args.param)  # validates -p before any job
        name = args.name or f"{previous['name']}-replay-{_stamp()}"
        options = _options(args, settings, name, described)
        progress = console.BarProgress()
        source = f"experiment {previous['experiment_id']}"
        try:
            with progress:
                result = await replay(
                    backend, previous, source, args.param, options, progress, store,
                    what_if="strict",
                )  # fmt: skip
        except asyncio.CancelledError:
            return _interrupted(options.out)
    return _finish(result, options.out)


def _interrupted(out: Path) -> int:
    console.note(f"ponder: interrupted; partial results in {out}")
    return 130


def _finish(run: EvalRun, out: Path) -> int:
    console.print_table(run)
    console.note(f"report: {out / 'report.md'} · rows and job ids: {out / 'results.json'}")
    if run.experiment_id:
        failed = sum(r.status != "succeeded" for r in run.rows)
        console.note(
            f"experiment: {run.experiment_id} (GET /v1/experiments/{run.experiment_id}; "
            f"dashboard #/experiments/{run.experiment_id})"
            + (f" · {failed} row(s) failed, listed in the report" if failed else "")
        )
    return 0
