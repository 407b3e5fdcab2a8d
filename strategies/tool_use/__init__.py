"""Tool use: strategies that act through ``ctx.tools`` (sandboxed programs, MCP tools)."""
