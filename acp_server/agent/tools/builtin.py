"""What the built-in tools share: a pydantic model per tool is both the JSON Schema the
model sees and the validator of what the model sends back, so the two never drift apart.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from acp_server.agent.tools.base import ToolContext, ToolError, ToolKind, ToolOutcome


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
