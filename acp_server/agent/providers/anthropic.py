"""Anthropic's Messages API, streamed.

Thinking blocks come back with a signature; they are returned to the API with it,
which Anthropic requires to continue a tool loop after the model thought. A
``ThinkingDelta`` carrying a signature closes its thinking block. Thinking from other
providers has no signature and is not sent (the API would reject it).

The system prompt and the last message are marked for prompt caching, so each call of
a long conversation reads the earlier part from the cache.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from acp_server.agent.providers.base import (
    AssistantMessage,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    ModelRequest,
    StreamEvent,
    TextDelta,
    TextPart,
    ThinkingDelta,
    ToolCall,
    ToolCallReady,
    ToolResult,
    UsageReport,
)
from acp_server.agent.providers.http import (
    Client,
    Endpoint,
    RetryPolicy,
    drain,
    parse_arguments,
    parse_json,
    sse_events,
    with_retries,
)
from acp_server.agent.providers.usage import estimated_usage, priced
from acp_server.config.settings import ProviderSettings
from acp_server.sessions.model import Usage

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MODEL = "claude-sonnet-4-5"
COMMON_MODELS = ("claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5", "claude-opus-4-1")
CONTEXT_WINDOW = 200_000
CACHE_READ_FACTOR = 0.1
CACHE_WRITE_FACTOR = 1.25
"""Anthropic's cache prices relative to the input price (five-minute cache)."""

_STOP = {
    "end_turn": FinishReason.END_TURN,
    "stop_sequence": FinishReason.END_TURN,
    "pause_turn": FinishReason.END_TURN,
    "tool_use": FinishReason.TOOL_USE,
    "max_tokens": FinishReason.MAX_TOKENS,
    "model_context_window_exceeded": FinishReason.MAX_TOKENS,
    "refusal": FinishReason.REFUSAL,
}
_CACHE = {"type": "ephemeral"}


class AnthropicProvider:
    """Streams from ``{base_url}/v1/messages``."""

    name = "anthropic"
    supports_images = True

    def __init__(self, settings: ProviderSettings, *, retry: RetryPolicy | None = None):
        self._settings = settings
        base_url = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._url = f"{base_url}/v1/messages"
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self._headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "anthropic-version": API_VERSION,
        }
        if api_key:
            self._headers["x-api-key"] = api_key
        self._endpoint = Endpoint(
            label="the Anthropic endpoint",
            base_url=base_url,
            key_env="ANTHROPIC_API_KEY",
            url_env="ANTHROPIC_BASE_URL",
            api_key=api_key,
            request_timeout=settings.request_timeout,
            connect_timeout=settings.connect_timeout,
        )
        self._retry = retry or RetryPolicy(max_retries=settings.max_retries)
        self._client = Client(settings)
        self.default_model = settings.model or DEFAULT_MODEL
        self.models = [self.default_model, *(m for m in COMMON_MODELS if m != self.default_model)]
        self.context_window = settings.context_window or CONTEXT_WINDOW

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        body = self.request_body(request)
        return with_retries(lambda: self._attempt(request, body), self._retry)

    async def aclose(self) -> None:
        await self._client.aclose()

    def request_body(self, request: ModelRequest) -> dict[str, Any]:
        messages = to_anthropic_messages(request.messages)
        if messages and messages[-1]["content"]:
            last = messages[-1]["content"][-1]
            if last["type"] in ("text", "image", "tool_result", "tool_use"):
                messages[-1]["content"][-1] = {**last, "cache_control": _CACHE}
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": messages,
            "stream": True,
        }
        if request.system:
            body["system"] = [{"type": "text", "text": request.system, "cache_control": _CACHE}]
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                for t in request.tools
            ]
        return body

    async def _attempt(
        self, request: ModelRequest, body: dict[str, Any]
    ) -> AsyncGenerator[StreamEvent, None]:
        state = _StreamState()
        async with self._endpoint.post_stream(
            self._client, self._url, body, self._headers
        ) as response:
            events = sse_events(response.aiter_lines())
            async for sse in events:
                payload = parse_json(sse.data)
                if not isinstance(payload, dict):
                    continue
                if payload.get("type") == "error":
                    raise self._endpoint.stream_error(payload.get("error"))
                for event in state.feed(payload):
                    yield event
                if state.stopped:
                    break
            await drain(events)
        if state.stop_reason is None:
            raise self._endpoint.ended_early()
        yield UsageReport(self._usage(request, state))
        yield Finish(_STOP.get(state.stop_reason, FinishReason.END_TURN))

    def _usage(self, request: ModelRequest, state: _StreamState) -> Usage:
        reported = state.usage
        cached_read = int(reported.get("cache_read_input_tokens") or 0)
        cached_write = int(reported.get("cache_creation_input_tokens") or 0)
        fresh = int(reported.get("input_tokens") or 0)
        output = int(reported.get("output_tokens") or 0)
        if not (fresh or cached_read or cached_write or output):
            usage = estimated_usage(request, state.output)
        else:
            usage = Usage(
                input_tokens=fresh + cached_read + cached_write,
                output_tokens=output,
                cached_read_tokens=cached_read,
                cached_write_tokens=cached_write,
            )
        return priced(
            usage,
            self._settings,
            cache_read_factor=CACHE_READ_FACTOR,
            cache_write_factor=CACHE_WRITE_FACTOR,
        )


@dataclass(slots=True)
class _Block:
    type: str
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _StreamState:
    """Accumulates one streamed message: open blocks, stop reason and usage."""

    blocks: dict[int, _Block] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None
    stopped: bool = False

    def feed(self, payload: dict[str, Any]) -> Iterator[StreamEvent]:
        kind = payload.get("type")
        if kind == "content_block_delta":
            yield from self._delta(payload.get("index", 0), payload.get("delta") or {})
        elif kind == "content_block_start":
            yield from self._start(payload.get("index", 0), payload.get("content_block") or {})
        elif kind == "content_block_stop":
            yield from self._stop(payload.get("index", 0))
        elif kind == "message_start":
            self._add_usage((payload.get("message") or {}).get("usage"))
        elif kind == "message_delta":
            self._add_usage(payload.get("usage"))
            reason = (payload.get("delta") or {}).get("stop_reason")
            if reason:
                self.stop_reason = reason
        elif kind == "message_stop":
            self.stopped = True

    def _add_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.usage.update({k: v for k, v in usage.items() if v is not None})

    def _start(self, index: int, block: dict[str, Any]) -> Iterator[StreamEvent]:
        kind = str(block.get("type", ""))
        given = block.get("input")
        self.blocks[index] = _Block(
            type=kind,
            id=str(block.get("id", "")),
            name=str(block.get("name", "")),
            input=given if isinstance(given, dict) else {},
        )
        if kind == "text" and block.get("text"):
            yield from self._delta(index, {"type": "text_delta", "text": block["text"]})
        elif kind == "thinking" and block.get("thinking"):
            yield from self._delta(index, {"type": "thinking_delta", "thinking": block["thinking"]})

    def _delta(self, index: int, delta: dict[str, Any]) -> Iterator[StreamEvent]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            self.output.append(delta["text"])
            yield TextDelta(delta["text"])
        elif kind == "thinking_delta" and delta.get("thinking"):
            self.output.append(delta["thinking"])
            yield ThinkingDelta(delta["thinking"])
        elif kind == "signature_delta" and delta.get("signature"):
            yield ThinkingDelta("", signature=delta["signature"])
        elif kind == "input_json_delta" and index in self.blocks:
            self.blocks[index].parts.append(delta.get("partial_json") or "")

    def _stop(self, index: int) -> Iterator[StreamEvent]:
        block = self.blocks.pop(index, None)
        if block is None or block.type != "tool_use":
            return
        text = "".join(block.parts)
        self.output.append(block.name + text)
        arguments = parse_arguments(text) if text.strip() else block.input
        yield ToolCallReady(ToolCall(id=block.id, name=block.name, arguments=arguments))


def to_anthropic_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The conversation as Messages-API turns; same-role neighbours are merged, since
    the API wants user and assistant to alternate (tool results travel as user)."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    if isinstance(message, ToolResult):
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id,
            "content": message.content or "(no output)",
        }
        if message.is_error:
            block["is_error"] = True
        return "user", [block]
    if isinstance(message, AssistantMessage):
        blocks: list[dict[str, Any]] = [
            {"type": "thinking", "thinking": t.text, "signature": t.signature}
            for t in message.thinking
            if t.signature
        ]
        if message.text.strip():
            blocks.append({"type": "text", "text": message.text})
        blocks.extend(
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
            for c in message.tool_calls
        )
        return "assistant", blocks
    blocks = [_user_block(part) for part in message.parts if not _blank(part)]
    return "user", blocks or [{"type": "text", "text": "(empty message)"}]


def _blank(part: TextPart | ImagePart) -> bool:
    return isinstance(part, TextPart) and not part.text.strip()


def _user_block(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": part.mime_type, "data": part.data},
    }
