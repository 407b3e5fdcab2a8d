"""A per-problem difficulty signal for ``ponder eval``: one probe job per problem.

Each problem is probed once, before the arms run, on the small model, by the probe
``compute_optimal`` itself runs at serving time (``difficulty_router``'s ``agreement`` or
``entropy``; same prompt, samples, length, temperature and thresholds), so the bins an
eval measures accuracy in are the bins a fitted ``compute_optimal`` preset later puts a
new problem in. The probe job is an ordinary, journaled job: a ``compute_optimal`` job
whose one table row cannot fit its 1-token budget, so it probes, records ``probe`` and
``difficulty`` in its trace, and runs no arm (it ends ``no_arm_fits``). A replay of the
eval replays the probe jobs strictly: the same values, zero model calls.

The signal (``difficulty`` on every row: agreement = 1 - the leader's share of the
samples' answers, 0 = unanimous; entropy = nats of the first answer token) is per
problem and identical across arms. The bin (``difficulty_bin``: easy / normal / hard)
is the probe's level: value <= ``easy_max`` easy, >= ``hard_min`` hard, normal between
(and when the probe yields no value); a probe job that failed leaves both empty.

Thresholds are fixed — ``difficulty_router``'s defaults unless given — not quantiles of
the dataset: a serving-time probe classifies one problem alone, against fixed numbers,
and the table must have been measured in the same bins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from core.errors import InvalidInput
from evals.backends import Backend, JobRecord
from evals.dataset import Problem
from evals.harness import Progress, bounded
from evals.results import LEVELS
from strategies.collaboration.difficulty_router import DEFAULT_THRESHOLDS

ProbeKind = Literal["agreement", "entropy"]
PROBE_KINDS: tuple[str, ...] = ("agreement", "entropy", "none")
PROGRESS_LABEL = "difficulty probe"


@dataclass(frozen=True)
class ProbeSettings:
    """How the eval probes: what goes to ``settings["difficulty"]`` (less the results)
    and what a fitted ``compute_optimal`` spec copies to probe alike."""

    probe: ProbeKind = "agreement"
    probe_role: str = "small"
    probe_samples: int = 4
    probe_tokens: int = 128
    temperature: float = 0.7
    top_logprobs: int = 10
    easy_max: float | None = None
    hard_min: float | None = None

    def thresholds(self) -> tuple[float, float]:
        easy, hard = DEFAULT_THRESHOLDS[self.probe]
        return (
            easy if self.easy_max is None else self.easy_max,
            hard if self.hard_min is None else self.hard_min,
        )

    def strategy_params(self) -> dict[str, Any]:
        """The ``compute_optimal`` fields that make its runtime probe this one."""
        easy, hard = self.thresholds()
        return {
            "probe": self.probe,
            "probe_role": self.probe_role,
            "probe_samples": self.probe_samples,
            "probe_tokens": self.probe_tokens,
            "temperature": self.temperature,
            "top_logprobs": self.top_logprobs,
            "easy_max": easy,
            "hard_min": hard,
        }

    def job_spec(self) -> dict[str, Any]:
        """The probe job: a ``compute_optimal`` whose only arm never fits (no arm runs)."""
        return {
            "kind": "compute_optimal",
            "arms": [
                {
                    "label": "difficulty probe only (no arm runs)",
                    "spec": {"kind": "direct", "role": self.probe_role},
                    "bin": "hard",
                    "n": 1,
                    "accuracy": 0.0,
                    "mean_tokens": 2.0,
                }
            ],
            "budget_tokens": 1,
            **self.strategy_params(),
        }


def parse_thresholds(text: str | None, probe: str) -> tuple[float | None, float | None]:
    """``--difficulty-thresholds EASY_MAX,HARD_MIN`` (None: the probe's defaults)."""
    if text is None:
        return None, None
    parts = text.split(",")
    try:
        easy, hard = (float(p) for p in parts)
    except ValueError:
        raise InvalidInput(
            f"difficulty_thresholds: give EASY_MAX,HARD_MIN (two numbers), not {text!r}",
            field="difficulty_thresholds",
        ) from None
    if not 0.0 <= easy <= hard:
        raise InvalidInput(
            f"difficulty_thresholds: need 0 <= EASY_MAX <= HARD_MIN, got {easy}, {hard} "
            f"(defaults for {probe}: {DEFAULT_THRESHOLDS.get(probe, (0.0, 0.0))})",
            field="difficulty_thresholds",
        )
    return easy, hard


@dataclass
class Probed:
    """One problem's probe: its job, value and bin (both None when the job failed)."""

    problem_id: str
    problem_index: int
    job_id: str | None
    value: float | None
    bin: str | None
    seen: dict[str, Any] = field(default_factory=dict)
    """What the probe saw: the votes (agreement) or the token (entropy)."""
    error: str | None = None
    live_calls: int = 0
    replayed_calls: int = 0


def read_probe(problem_id: str, index: int, record: JobRecord, *, strict: bool = False) -> Probed:
    """The ``probe`` and ``difficulty`` events of a probe job (or its replay)."""
    usage = record.usage
    live = 0 if strict else int(usage.get("live_calls", 0))
    replayed = int(usage.get("journal_hits", 0))
    events = dict(record.events)
    level = events.get("difficulty", {}).get("level")
    if record.status != "succeeded" or level not in LEVELS:
        error = (record.error or {}).get("message") or f"probe job {record.status}, no level"
        return Probed(
            problem_id, index, record.job_id, None, None,
            error=error, live_calls=live, replayed_calls=replayed,
        )  # fmt: skip
    value = events["difficulty"].get("value")
    seen = {k: v for k, v in events.get("probe", {}).items() if k not in ("probe", "value")}
    return Probed(
        problem_id, index, record.job_id,
        None if value is None else float(value), str(level), seen,
        live_calls=live, replayed_calls=replayed,
    )  # fmt: skip


def _failed(problem_id: str, index: int, job_id: str | None, exc: Exception) -> Probed:
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    return Probed(problem_id, index, job_id, None, None, error=message)


async def probe_problems(
    backend: Backend,
    problems: Sequence[Problem],
    settings: ProbeSettings,
    *,
    seed: int,
    concurrency: int,
    progress: Progress,
) -> list[Probed]:
    """One probe job per problem (seed ``seed + index``, no budget), in index order.

    A probe that fails leaves its problem without a bin (recorded with its error); when
    every probe fails (a server without the role, say) that is bad input, raised before
    any arm runs.
    """
    found: dict[int, Probed] = {}
    progress.start(PROGRESS_LABEL, len(problems))
    spec = settings.job_spec()

    def work(problem: Problem) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            job_id: str | None = None
            try:
                job_id = await backend.submit(problem.question, spec, {}, seed + problem.index)
                record = await backend.run(job_id)
                probed = read_probe(problem.id, problem.index, record)
            except Exception as exc:  # recorded with the probe, not swallowed
                probed = _failed(problem.id, problem.index, job_id, exc)
            found[problem.index] = probed
            progress.advance(PROGRESS_LABEL, probed.bin == "easy")

        return go

    await bounded(concurrency, [work(p) for p in problems])
    probed = [found[i] for i in sorted(found)]
    if probed and all(p.bin is None for p in probed):
        raise InvalidInput(
            f"difficulty_probe: every {settings.probe} probe on role {settings.probe_role!r} "
            f"failed (first: {probed[0].error}); pass --difficulty-probe none to run without",
            field="difficulty_probe",
        )
    return probed


async def replay_probes(
    backend: Backend, previous: Sequence[Mapping[str, Any]], *, concurrency: int,
    progress: Progress,
) -> list[Probed]:  # fmt: skip
    """Each earlier probe job replayed strictly: the same values, zero model calls."""
    found: dict[int, Probed] = {}
    progress.start(PROGRESS_LABEL, len(previous))

    def work(old: Mapping[str, Any]) -> Callable[[], Awaitable[None]]:
        async def go() -> None:
            pid, index = str(old["problem_id"]), int(old["problem_index"])
            job_id: str | None = None
            try:
                if not old.get("job_id"):
                    raise InvalidInput(str(old.get("error") or "no probe job"), field="probe")
                job_id = await backend.replay(str(old["job_id"]), "strict", {})
                probed = read_probe(pid, index, await backend.run(job_id), strict=True)
            except Exception as exc:
                probed = _failed(pid, index, job_id, exc)
            found[index] = probed
            progress.advance(PROGRESS_LABEL, probed.bin == "easy")

        return go

    await bounded(concurrency, [work(p) for p in previous])
    return [found[i] for i in sorted(found)]


def signal_of(probed: Sequence[Probed]) -> dict[int, tuple[float | None, str | None]]:
    """Problem index -> (value, bin), what the harness puts on every arm's row."""
    return {p.problem_index: (p.value, p.bin) for p in probed}


def record(settings: ProbeSettings, probed: Sequence[Probed]) -> dict[str, Any]:
    """``settings["difficulty"]`` of the results and the experiment: how it was probed,
    the thresholds, the bins' sizes, the probe calls and each problem's probe."""
    easy, hard = settings.thresholds()
    counts = {level: sum(p.bin == level for p in probed) for level in LEVELS}
    return {
        **asdict(settings),
        "easy_max": easy,
        "hard_min": hard,
        "bins": {**counts, "unknown": sum(p.bin is None for p in probed)},
        "calls": {
            "live": sum(p.live_calls for p in probed),
            "replayed": sum(p.replayed_calls for p in probed),
        },
        "problems": [asdict(p) for p in probed],
    }


def settings_of(recorded: Mapping[str, Any]) -> ProbeSettings:
    """The probe settings of a recorded ``settings["difficulty"]``."""
    names = set(ProbeSettings.__dataclass_fields__)
    return ProbeSettings(**{k: v for k, v in recorded.items() if k in names})
