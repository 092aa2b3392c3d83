"""The session record and its conversation items, as every layer sees them.

Storage persists these; the agent loop turns items into model messages; the protocol
layer replays user-visible items as ``session/update`` notifications. Items are an
append-only log ordered by a per-session sequence number, never by timestamps. Each
item says whether the user sees it and whether the model does, so that context
compaction can hide old items from the model without rewriting what the user saw.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def now_ms() -> int:
    """UTC epoch milliseconds: the one time format stored anywhere."""
    return time.time_ns() // 1_000_000


class SessionType(StrEnum):
    USER = "user"
    SUBAGENT = "subagent"
    HIDDEN = "hidden"


LISTED_TYPES = (SessionType.USER,)
"""Types that ``session/list`` and ``sessions list`` show; children stay out."""


class ItemKind(StrEnum):
    USER = "user"  # data: {"content": [ACP ContentBlock, ...]}
    AGENT = "agent"  # data: {"text": str}
    THOUGHT = "thought"  # data: {"text": str, "signature"?: str}
    TOOL_CALL = "tool_call"  # data: see ToolCallData
    PLAN = "plan"  # data: {"entries": [ACP PlanEntry, ...]}
    SUMMARY = "summary"  # data: {"text": str}; model-only (compaction, coming next)


class TurnStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # found running after a crash; repaired on load


class _Record(BaseModel):
    """Built on first use, not at import: start-up only pays for what it touches."""

    model_config = ConfigDict(defer_build=True)


class Usage(_Record):
    """Token usage of one model call or one turn."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_read_tokens: int = 0
    cached_write_tokens: int = 0
    thought_tokens: int = 0
    cost: float = 0.0
    estimated: bool = False

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_read_tokens=self.cached_read_tokens + other.cached_read_tokens,
            cached_write_tokens=self.cached_write_tokens + other.cached_write_tokens,
            thought_tokens=self.thought_tokens + other.thought_tokens,
            cost=self.cost + other.cost,
            estimated=self.estimated or other.estimated,
        )


class SessionRecord(_Record):
    """One row of ``sessions``: everything about a session except its conversation."""

    id: str
    type: SessionType = SessionType.USER
    parent_id: str | None = None
    cwd: str
    additional_directories: list[str] = Field(default_factory=list)
    title: str | None = None
    title_set_by_user: bool = False
    provider: str | None = None
    model: str | None = None
    mode: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    """Other config option values by option id."""
    mcp_servers: list[dict[str, Any]] = Field(default_factory=list)
    """The session's MCP server list, with secret values (env, headers) removed."""
    permission_rules: dict[str, str] = Field(default_factory=dict)
    """Remembered "always" answers: tool name -> "allow" | "reject"."""
    context_tokens: int = 0
    """The last model call's context size (what usage_update reports as used)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    message_count: int = 0
    created_at: int = Field(default_factory=now_ms)
    updated_at: int = Field(default_factory=now_ms)
    last_activity_at: int = Field(default_factory=now_ms)


class NewItem(_Record):
    """An item about to be appended; the store assigns ``seq`` and ``created_at``."""

    kind: ItemKind
    message_id: str
    data: dict[str, Any]
    turn_id: str | None = None
    user_visible: bool = True
    agent_visible: bool = True


class Item(NewItem):
    """A stored item."""

    session_id: str
    seq: int
    created_at: int


class Turn(_Record):
    """One row of ``chat_tasks``: one prompt turn."""

    id: str
    session_id: str
    status: TurnStatus = TurnStatus.RUNNING
    stop_reason: str | None = None
    provider: str | None = None
    model: str | None = None
    usage: Usage = Field(default_factory=Usage)
    model_calls: int = 0
    error: str | None = None
    started_at: int = Field(default_factory=now_ms)
    finished_at: int | None = None


TOOL_FINAL_STATUSES = ("completed", "failed")
"""Tool-call item ``data`` keys: toolCallId, name, title, kind, status, rawInput,
rawOutput, content (ACP ToolCallContent list), locations, result (text the model saw),
isError. A tool call whose status is not final after a crash is repaired to failed."""
