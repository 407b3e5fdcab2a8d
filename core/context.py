"""The strategy ``Context`` as core implements it: model roles (``core.role_model``),
tools (``core.tools.journaled``), the conversation, budget, tracer, seeded rng and child
runs, for one job run."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel

from core.budget import JobBudget
from core.role_model import RoleModel
from core.tools.journaled import JournaledTool
from core.trace import Tracer
from strategies.protocol import Conversation, StrategyResult

__all__ = ["ANSWER_DELTA", "ChildRunner", "JobContext", "RoleModel"]

ANSWER_DELTA = "answer_delta"
"""The listener event ``ctx.show`` sends: ``{"text": ...}``, a piece of the answer."""

ChildRunner = Callable[[BaseModel, str, "JobContext"], Awaitable[StrategyResult]]


class JobContext:
    """Implements ``strategies.protocol.Context`` for one job run."""

    def __init__(
        self,
        *,
        models: Mapping[str, RoleModel],
        budget: JobBudget,
        tracer: Tracer,
        seed: int,
        run_child: ChildRunner,
        conversation: Conversation,
        tools: Mapping[str, JournaledTool] | None = None,
    ) -> None:
        self.models = models
        self.conversation = conversation
        self.tools: Mapping[str, JournaledTool] = dict(tools or {})
        self.budget = budget
        self.tracer = tracer
        self.rng = random.Random(seed)
        self._run_child = run_child
        self.started = time.monotonic()

    def trace(self, name: str, **attributes: Any) -> None:
        self.tracer.event(name, attributes)

    def show(self, text: str) -> None:
        # To the run's listeners only (the OpenAI face's lane streams it to its client):
        # the journal already holds the call's deltas, so nothing is written here.
        self.tracer.notify(ANSWER_DELTA, {"text": text})

    @contextlib.asynccontextmanager
    async def span(self, name: str, **attributes: Any) -> AsyncIterator[Any]:
        async with self.tracer.span("span", name, **attributes) as span:
            yield span

    async def run(self, spec: BaseModel, problem: str) -> StrategyResult:
        return await self._run_child(spec, problem, self)
