"""Built-in tools a strategy can use. The first: ``PythonSandbox`` (``docs/sandbox.md``)."""

from core.tools.sandbox import ExecutionResult, PythonSandbox, SandboxLimits, SandboxUnavailable

__all__ = ["ExecutionResult", "PythonSandbox", "SandboxLimits", "SandboxUnavailable"]
