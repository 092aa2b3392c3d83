"""The agent's tools: the built-in "developer" set and per-session MCP extensions."""

from acp_server.agent.tools.base import (
    ClientBridge,
    ExitStatus,
    Tool,
    ToolContext,
    ToolError,
    ToolKind,
    ToolOutcome,
)
from acp_server.agent.tools.paths import resolve_in_roots
from acp_server.agent.tools.registry import ToolSet, builtin_tools

__all__ = [
    "ClientBridge",
    "ExitStatus",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolKind",
    "ToolOutcome",
    "ToolSet",
    "builtin_tools",
    "resolve_in_roots",
]
