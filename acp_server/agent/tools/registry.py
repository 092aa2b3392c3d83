"""The built-in tools, and the set of tools one session offers the model.

``BuiltinTool`` is what the built-in tools share: a pydantic model per tool is both
the JSON Schema the model sees and the validator of what the model sends back, so
the two never drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from acp_server.agent.providers.base import ToolSpec
from acp_server.agent.tools.base import Tool, ToolContext, ToolError, ToolKind, ToolOutcome


class Arguments(BaseModel):
    """Base of every tool's arguments; a stray extra key from the model is ignored."""

    model_config = ConfigDict(extra="ignore")


ArgsT = TypeVar("ArgsT", bound=Arguments)


class BuiltinTool(Generic[ArgsT]):
    """A tool whose arguments are described and checked by one pydantic model."""

    name: str
    description: str
    kind: ToolKind
    mutates: bool = False
    arguments: type[ArgsT]
    input_schema: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "arguments" in cls.__dict__:
            schema = cls.arguments.model_json_schema()
            schema.pop("title", None)
            cls.input_schema = schema

    def parse(self, arguments: dict[str, Any]) -> ArgsT:
        try:
            return self.arguments.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ToolError(f"Invalid arguments for {self.name}: {problems}.") from None

    def try_parse(self, arguments: dict[str, Any]) -> ArgsT | None:
        """For titles and locations, which must never fail."""
        try:
            return self.parse(arguments)
        except ToolError:
            return None

    def title(self, arguments: dict[str, Any]) -> str:
        return self.name

    def locations(self, arguments: dict[str, Any], ctx: ToolContext) -> list[dict[str, Any]]:
        return []

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        raise NotImplementedError


def builtin_tools() -> list[Tool]:
    """The "developer" tools every session starts with."""
    # Imported here because those modules build on BuiltinTool above.
    from acp_server.agent.tools.files import EditFile, ListDirectory, ReadFile, WriteFile
    from acp_server.agent.tools.search import FindFiles, SearchText
    from acp_server.agent.tools.shell import RunCommand

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
