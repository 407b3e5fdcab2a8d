"""A scripted OpenAI-compatible model server: Ponder's test double and benchmark backend.

See docs/simulator.md for the script format and the latency model.
"""

from core.simulator.config import (
    Failure,
    Latency,
    Rule,
    ScriptedToolCall,
    SimulatorConfig,
    load_config,
)
from core.simulator.server import Simulator, SimulatorStats, build_app, serve

__all__ = [
    "Failure",
    "Latency",
    "Rule",
    "ScriptedToolCall",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "build_app",
    "load_config",
    "serve",
]
