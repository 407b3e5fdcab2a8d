"""Terminal output of ``ponder eval``: a live progress bar per strategy, then the table.

Progress and notes go to stderr, the table to stdout, so ``ponder eval ... > table.txt``
keeps just the table.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichBar
from rich.table import Table

from evals.dataset import BadLine
from evals.report import COLUMNS, table_rows
from evals.results import EvalRun

out = Console(soft_wrap=True, width=200 if not Console().is_terminal else None)
err = Console(stderr=True, highlight=False, soft_wrap=True)

SHOWN_BAD_LINES = 20


class BarProgress:
    """One bar per strategy with the running accuracy; plain lines when not a terminal."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.live = enabled and err.is_terminal
        self.quiet = not enabled
        self._bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("correct {task.fields[correct]}"),
            TimeElapsedColumn(),
            console=err,
            disable=not self.live,
        )
        self._tasks: dict[str, TaskID] = {}
        self._correct: dict[str, int] = {}
        self._done: dict[str, int] = {}
        self._total: dict[str, int] = {}

    def __enter__(self) -> BarProgress:
        self._bar.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.__exit__(exc_type, exc, tb)

    def start(self, label: str, total: int) -> None:
        self._correct[label], self._done[label], self._total[label] = 0, 0, total
        self._tasks[label] = self._bar.add_task(label, total=total, correct=0)
        if not self.live and not self.quiet:
            err.print(f"{label}: {total} problems…")

    def advance(self, label: str, correct: bool) -> None:
        self._correct[label] += int(correct)
        self._done[label] += 1
        self._bar.update(self._tasks[label], advance=1, correct=self._correct[label])
        if not self.live and not self.quiet and self._done[label] == self._total[label]:
            err.print(f"{label}: done, {self._correct[label]}/{self._total[label]} correct")


def print_bad_lines(path: str, bad: list[BadLine]) -> None:
    for line in bad[:SHOWN_BAD_LINES]:
        err.print(f"ponder: {path}:{line.line}: {line.reason}", markup=False)
    if len(bad) > SHOWN_BAD_LINES:
        err.print(f"ponder: … and {len(bad) - SHOWN_BAD_LINES} more bad lines", markup=False)


def print_table(run: EvalRun) -> None:
    table = Table(title=f"eval {run.name}", title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in table_rows(run.summaries()):
        table.add_row(*row)
    out.print(table)
    live, replayed = run.calls()
    line = f"model calls: {live} live, {replayed} replayed from journals"
    if run.settings.get("difficulty"):
        plive, preplayed = run.probe_calls()
        line += f"; difficulty probes: {plive} live, {preplayed} replayed"
    out.print(line, highlight=False)


def note(text: str) -> None:
    err.print(text, markup=False)
