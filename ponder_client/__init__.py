"""A Python client for Ponder's jobs and experiments API, sync and async (docs/client.md).

    >>> from ponder_client import PonderClient
    >>> with PonderClient("http://127.0.0.1:8000", api_key=KEY) as ponder:
    ...     job = ponder.submit("What is 17 * 3?", strategy={"kind": "self_consistency", "n": 5})
    ...     for event in ponder.events(job.id):  # the live trace, resumed if dropped
    ...         print(event.type, event.seq)
    ...     print(ponder.wait(job.id).answer)

Importing it loads httpx, pydantic and ``core.events`` (the one event schema), nothing
else of the server: ``tests/unit/test_layers.py`` keeps it so.
"""

from core.events import (
    DecisionEvent,
    Event,
    GroupEvent,
    JobFinishedEvent,
    JobRestartedEvent,
    JobSpanEvent,
    ModelCallEvent,
    StrategyEvent,
    ToolCallEvent,
)
from ponder_client._async import AsyncPonderClient
from ponder_client._sync import PonderClient
from ponder_client.errors import PonderAPIError
from ponder_client.models import (
    ArmOut,
    ArmSummary,
    DiffOut,
    ExperimentOut,
    ExperimentPage,
    ExperimentRows,
    JobOut,
    JobPage,
    PresetOut,
    RowOut,
    StrategyOut,
    TraceOut,
)

__all__ = [
    "ArmOut",
    "ArmSummary",
    "AsyncPonderClient",
    "DecisionEvent",
    "DiffOut",
    "Event",
    "ExperimentOut",
    "ExperimentPage",
    "ExperimentRows",
    "GroupEvent",
    "JobFinishedEvent",
    "JobOut",
    "JobPage",
    "JobRestartedEvent",
    "JobSpanEvent",
    "ModelCallEvent",
    "PonderAPIError",
    "PonderClient",
    "PresetOut",
    "RowOut",
    "StrategyEvent",
    "StrategyOut",
    "ToolCallEvent",
    "TraceOut",
]
