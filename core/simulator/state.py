"""What one simulator knows at run time: its script, its counters and its live load.

The event loop thread mutates it per request while a test thread snapshots or resets
it, so every counter the two share sits behind one lock.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from core.simulator.config import SimulatorConfig
from core.simulator.engine import Engine

if TYPE_CHECKING:
    import uvicorn


class SimulatorStats(BaseModel):
    requests: int = 0
    """Every POST to a generation endpoint, including failed and rejected ones."""
    chat_requests: int = 0
    completion_requests: int = 0
    failed_requests: int = 0
    """Answered with an injected failure."""
    aborted_requests: int = 0
    """The client went away before the answer was complete; generation stopped there
    (as vLLM aborts a request on disconnect). Their tokens are not counted."""
    choices_generated: int = 0
    completion_tokens: int = 0
    by_model: dict[str, int] = {}
    max_in_flight: int = 0
    """Highest number of generation requests in the server (running or queued) at once."""


@dataclass
class _Counters:
    """SimulatorStats' fields as a plain dataclass: pydantic's validated setattr would
    cost more than the rest of the bookkeeping on the per-request path."""

    requests: int = 0
    chat_requests: int = 0
    completion_requests: int = 0
    failed_requests: int = 0
    aborted_requests: int = 0
    choices_generated: int = 0
    completion_tokens: int = 0
    by_model: dict[str, int] = field(default_factory=dict)
    max_in_flight: int = 0


class SimState:
    """Script, counters and live load of one simulator; shared by its app and its owner."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._lock = threading.Lock()
        self.engine = Engine(config)
        self.stats = _Counters()
        self.running = 0
        self.waiting = 0
        self.slots = self._slots(config)
        self.closing = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: uvicorn.Server | None = None
        """Set by the runners: lets a "disconnect" failure find its connection."""
        self._ids = itertools.count(1)

    @staticmethod
    def _slots(config: SimulatorConfig) -> asyncio.Semaphore | None:
        return asyncio.Semaphore(config.max_running) if config.max_running else None

    def set_config(self, config: SimulatorConfig) -> None:
        with self._lock:
            self.engine = Engine(config)
            self.slots = self._slots(config)
        self.reset()

    def reset(self) -> None:
        self.engine.reset()
        with self._lock:
            self.stats = _Counters(max_in_flight=self.running + self.waiting)

    def snapshot(self) -> SimulatorStats:
        with self._lock:
            return SimulatorStats(**asdict(self.stats))

    def next_id(self) -> int:
        return next(self._ids)

    def enter(self, kind: Literal["chat", "completion"]) -> None:
        with self._lock:
            s = self.stats
            s.requests += 1
            if kind == "chat":
                s.chat_requests += 1
            else:
                s.completion_requests += 1
            self.waiting += 1
            s.max_in_flight = max(s.max_in_flight, self.running + self.waiting)

    def count(
        self,
        model: str | None = None,
        failed: bool = False,
        samples: int = 0,
        tokens: int = 0,
        aborted: bool = False,
    ) -> None:
        with self._lock:
            s = self.stats
            s.aborted_requests += aborted
            if model is not None:
                s.by_model[model] = s.by_model.get(model, 0) + 1
            s.failed_requests += failed
            s.choices_generated += samples
            s.completion_tokens += tokens


class Ticket:
    """One generation request's place in the server: queued, then running, then gone."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._slots: asyncio.Semaphore | None = None
        self._phase = 0  # 0 waiting, 1 running, 2 released

    async def run(self) -> None:
        slots = self.state.slots
        if slots is not None:
            await slots.acquire()
            self._slots = slots
        self.state.waiting -= 1
        self.state.running += 1
        self._phase = 1

    def release(self) -> None:
        if self._phase == 0:
            self.state.waiting -= 1
        elif self._phase == 1:
            self.state.running -= 1
            if self._slots is not None:
                self._slots.release()
        self._phase = 2
