"""The built-in tools, and the set of tools one session offers the model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from acp_server.agent.providers.base import ToolSpec
from acp_server.agent.tools.base import Tool, ToolContext, ToolError, ToolOutcome
from acp_server.agent.tools.files import EditFile, ListDirectory, ReadFile, WriteFile
from acp_server.agent.tools.search import FindFiles, SearchText
from acp_server.agent.tools.shell import RunCommand


def builtin_tools() -> list[Tool]:
    """The "developer" tools every session starts with."""
    return [
        ReadFile(),
        WriteFile(),
        EditFile(),
        ListDirectory(),
        FindFiles(),
        SearchText(),
        RunCommand(),
    ]


class ToolSet:
    """The tools one session offers, by name (built-ins plus its MCP extensions)."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> list[ToolSpec]:
        """What the model is told about each tool."""
        return [ToolSpec(tool.name, tool.description, tool.input_schema) for tool in self]

    async def run(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        """Run a tool, turning an unknown name or a ``ToolError`` into an error the model reads."""
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(self._tools) or "none"
            message = f"There is no tool named {name!r}; available: {known}."
            return ToolOutcome(message, is_error=True)
        try:
            return await tool.run(arguments, ctx)
        except ToolError as exc:
            return ToolOutcome(str(exc), is_error=True)
