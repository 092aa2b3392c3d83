"""Any OpenAI-compatible chat-completions endpoint, streamed.

One dialect serves OpenAI, OpenRouter, Ollama, vLLM, llama.cpp and LM Studio, so this
module accepts the variations they send: ``reasoning_content`` or ``reasoning`` deltas
for thinking, tool calls whose arguments arrive whole or in fragments, and a
``finish_reason`` of ``stop`` even when the model called tools.
Tool-call arguments that are not a JSON object are passed on raw (see
``http.parse_arguments``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from acp_server.agent.providers.base import (
    AssistantMessage,
    Finish,
    FinishReason,
    ImagePart,
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

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4.1-mini"
COMMON_MODELS = ("gpt-4.1-mini", "gpt-4.1", "gpt-4o", "gpt-4o-mini", "o4-mini")
CACHE_READ_FACTOR = 0.25
"""OpenAI bills cached input at a fraction of the input price (a quarter for gpt-4.1)."""

_FINISH = {
    "stop": FinishReason.END_TURN,
    "tool_calls": FinishReason.TOOL_USE,
    "function_call": FinishReason.TOOL_USE,
    "length": FinishReason.MAX_TOKENS,
    "content_filter": FinishReason.REFUSAL,
}
_CONTEXT_WINDOWS = (
    ("gpt-4.1", 1_047_576),
    ("gpt-5", 400_000),
    ("o1", 200_000),
    ("o3", 200_000),
    ("o4", 200_000),
    ("gpt-4o", 128_000),
)


def context_window_of(model: str) -> int:
    """A known model's window; 128k otherwise (set provider.context_window for others)."""
    for prefix, window in _CONTEXT_WINDOWS:
        if model.startswith(prefix):
            return window
    return 128_000


class OpenAIProvider:
    """Streams chat completions from ``{base_url}/chat/completions``."""

    name = "openai"
    supports_images = True

    def __init__(self, settings: ProviderSettings, *, retry: RetryPolicy | None = None):
        self._settings = settings
        base_url = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._url = f"{base_url}/chat/completions"
        self._official = urlsplit(base_url).hostname == "api.openai.com"
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self._headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._endpoint = Endpoint(
            label="the OpenAI-compatible endpoint",
            base_url=base_url,
            key_env="OPENAI_API_KEY",
            url_env="OPENAI_BASE_URL",
            api_key=api_key,
            request_timeout=settings.request_timeout,
            connect_timeout=settings.connect_timeout,
        )
        self._retry = retry or RetryPolicy(max_retries=settings.max_retries)
        self._client = Client(settings)
        self.default_model = settings.model or DEFAULT_MODEL
        others = [m for m in COMMON_MODELS if m != self.default_model] if self._official else []
        self.models = [self.default_model, *others]
        self.context_window = settings.context_window or context_window_of(self.default_model)

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        body = self.request_body(request)
        return with_retries(lambda: self._attempt(request, body), self._retry)

    async def aclose(self) -> None:
        await self._client.aclose()

    def request_body(self, request: ModelRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": to_openai_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
            # OpenAI's reasoning models refuse max_tokens; local servers know only it.
            ("max_completion_tokens" if self._official else "max_tokens"): request.max_tokens,
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.input_schema,
                    },
                }
                for tool in request.tools
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
                if sse.data == "[DONE]":
                    break
                chunk = parse_json(sse.data)
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    raise self._endpoint.stream_error(chunk["error"])
                for event in state.feed(chunk):
                    yield event
            await drain(events)
        if state.finish_reason is None:
            raise self._endpoint.ended_early()
        for event in state.flush_calls(None):
            yield event
        yield UsageReport(self._usage(request, state))
        yield Finish(state.reason())

    def _usage(self, request: ModelRequest, state: _StreamState) -> Usage:
        reported = state.usage or {}
        prompt = int(reported.get("prompt_tokens") or 0)
        completion = int(reported.get("completion_tokens") or 0)
        if not prompt and not completion:
            usage = estimated_usage(request, state.output)
        else:
            prompt_details = reported.get("prompt_tokens_details") or {}
            completion_details = reported.get("completion_tokens_details") or {}
            usage = Usage(
                input_tokens=prompt,
                output_tokens=completion,
                cached_read_tokens=int(prompt_details.get("cached_tokens") or 0),
                thought_tokens=int(completion_details.get("reasoning_tokens") or 0),
            )
        return priced(usage, self._settings, cache_read_factor=CACHE_READ_FACTOR)


@dataclass(slots=True)
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _StreamState:
    """Accumulates one streamed completion: tool-call fragments, finish and usage."""

    calls: dict[int, _PendingCall] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    called_tools: bool = False

    def feed(self, chunk: dict[str, Any]) -> Iterator[StreamEvent]:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self.output.append(reasoning)
                yield ThinkingDelta(reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.output.append(content)
                yield TextDelta(content)
            for position, fragment in enumerate(delta.get("tool_calls") or ()):
                yield from self._tool_fragment(position, fragment)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _tool_fragment(self, position: int, fragment: dict[str, Any]) -> Iterator[StreamEvent]:
        index = fragment.get("index")
        index = index if isinstance(index, int) else position
        call = self.calls.get(index)
        if call is None:
            yield from self.flush_calls(index)  # a new call means earlier ones are complete
            call = self.calls[index] = _PendingCall()
        if fragment.get("id"):
            call.id = fragment["id"]
        function = fragment.get("function") or {}
        if function.get("name"):
            call.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call.arguments.append(arguments)
        elif isinstance(arguments, dict):  # some servers send parsed arguments
            call.arguments.append(orjson.dumps(arguments).decode())

    def flush_calls(self, before: int | None) -> Iterator[StreamEvent]:
        """Emit every pending call with an index below ``before`` (all when None)."""
        for index in sorted(self.calls):
            if before is not None and index >= before:
                break
            call = self.calls.pop(index)
            text = "".join(call.arguments)
            self.output.append(call.name + text)
            self.called_tools = True
            yield ToolCallReady(
                ToolCall(
                    id=call.id or f"call_{uuid.uuid4().hex[:24]}",
                    name=call.name,
                    arguments=parse_arguments(text),
                )
            )

    def reason(self) -> FinishReason:
        reason = _FINISH.get(self.finish_reason or "", FinishReason.END_TURN)
        if self.called_tools and reason is FinishReason.END_TURN:
            return FinishReason.TOOL_USE  # Ollama says "stop" after tool calls
        return reason


def to_openai_messages(request: ModelRequest) -> list[dict[str, Any]]:
    """The conversation in chat-completions form, system prompt first."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        if isinstance(message, ToolResult):
            content = message.content
            if message.is_error and not content.lower().startswith("error"):
                content = f"Error: {content}"
            messages.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": content}
            )
        elif isinstance(message, AssistantMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": message.text or None}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.name,
                            "arguments": orjson.dumps(call.arguments).decode(),
                        },
                    }
                    for call in message.tool_calls
                ]
            elif entry["content"] is None:
                entry["content"] = ""
            messages.append(entry)
        else:
            messages.append({"role": "user", "content": _user_content(message.parts)})
    return messages


def _user_content(parts: list[TextPart | ImagePart]) -> str | list[dict[str, Any]]:
    """Plain text when there is no image: the one form every compatible server takes."""
    if all(isinstance(part, TextPart) for part in parts):
        return "\n\n".join(part.text for part in parts if isinstance(part, TextPart))
    return [_user_part(part) for part in parts]


def _user_part(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    return {
        "type": "image_url",
        "image_url": {"url": f"data:{part.mime_type};base64,{part.data}"},
    }
