"""The one interface every model provider implements.

The agent loop speaks only these types; each provider module translates them to its
wire format. A provider streams events for one model call; it never stores anything,
never sees ACP types, and raises ``ProviderError`` for every failure a person should
read about.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

from acp_server import errors
from acp_server.sessions.model import Usage

# ---- the conversation as the model sees it -------------------------------------------


@dataclass(slots=True)
class TextPart:
    text: str


@dataclass(slots=True)
class ImagePart:
    data: str  # base64
    mime_type: str


@dataclass(slots=True)
class UserMessage:
    parts: list[TextPart | ImagePart]
    role: Literal["user"] = "user"


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(slots=True)
class Thinking:
    text: str
    signature: str | None = None  # Anthropic needs it back to continue a tool loop


@dataclass(slots=True)
class AssistantMessage:
    text: str = ""
    thinking: list[Thinking] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    role: Literal["assistant"] = "assistant"


@dataclass(slots=True)
class ToolResult:
    tool_call_id: str
    content: str
    is_error: bool = False
    role: Literal["tool"] = "tool"


Message = UserMessage | AssistantMessage | ToolResult


@dataclass(slots=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(slots=True)
class ModelRequest:
    model: str
    system: str
    messages: list[Message]
    tools: list[ToolSpec] = field(default_factory=list)
    max_tokens: int = 8192


# ---- what a model call streams back --------------------------------------------------


class FinishReason(StrEnum):
    END_TURN = "end_turn"
    TOOL_USE = "tool_use"
    MAX_TOKENS = "max_tokens"
    REFUSAL = "refusal"


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str
    signature: str | None = None


@dataclass(slots=True)
class ToolCallReady:
    """A complete tool call; providers buffer argument fragments until it parses."""

    call: ToolCall


@dataclass(slots=True)
class PlanUpdate:
    """A complete plan (only the script provider emits it; models use a tool)."""

    entries: list[dict[str, Any]]


@dataclass(slots=True)
class UsageReport:
    usage: Usage


@dataclass(slots=True)
class Finish:
    reason: FinishReason


StreamEvent = TextDelta | ThinkingDelta | ToolCallReady | PlanUpdate | UsageReport | Finish


class ProviderErrorKind(StrEnum):
    AUTH = "auth"
    RATE_LIMIT = "rate_limit"
    UNREACHABLE = "unreachable"
    CONTEXT_TOO_LONG = "context_too_long"
    SERVER = "server"
    BAD_REQUEST = "bad_request"
    TIMEOUT = "timeout"


class ProviderError(errors.AcpServerError):
    """A failure worded for the person at the editor; never carries credentials."""

    def __init__(self, kind: ProviderErrorKind, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable


class Provider(Protocol):
    name: str
    default_model: str
    models: list[str]
    """Models offered in the session's model selector (default first)."""
    supports_images: bool
    context_window: int

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream one model call. Transient failures are retried inside, before the
        first event; the last event is always ``Finish`` unless it raises."""
        ...

    async def aclose(self) -> None: ...
