"""Providers against a real HTTP server (``FakeLLM``), plus echo, script and registry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
from pydantic import SecretStr

from acp_server.agent.providers import script as script_module
from acp_server.agent.providers.anthropic import AnthropicProvider
from acp_server.agent.providers.base import (
    AssistantMessage,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    ModelRequest,
    PlanUpdate,
    Provider,
    ProviderError,
    ProviderErrorKind,
    StreamEvent,
    TextDelta,
    TextPart,
    Thinking,
    ThinkingDelta,
    ToolCall,
    ToolCallReady,
    ToolResult,
    ToolSpec,
    UsageReport,
    UserMessage,
)
from acp_server.agent.providers.echo import SETUP_NOTE, EchoProvider
from acp_server.agent.providers.http import RetryPolicy
from acp_server.agent.providers.openai import OpenAIProvider
from acp_server.agent.providers.registry import create_provider
from acp_server.agent.providers.script import ScriptProvider
from acp_server.config.settings import ProviderSettings
from acp_server.sessions.model import Usage
from tests.fake_llm import FakeLLM, Reply

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "script-demo.yaml"
KEY = "sk-test-SECRET-0123456789abcdef"
FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)
APIS = ["openai", "anthropic"]
ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture
def llm(server: FakeLLM) -> FakeLLM:
    server.reset()
    return server


def make(
    api: str,
    llm: FakeLLM | None = None,
    *,
    base_url: str | None = None,
    retry: RetryPolicy = FAST,
    **settings: Any,
) -> OpenAIProvider | AnthropicProvider:
    if base_url is None and llm is not None:
        base_url = llm.base_url_openai if api == "openai" else llm.base_url_anthropic
    config = ProviderSettings(name=api, base_url=base_url, api_key=SecretStr(KEY), **settings)
    cls = OpenAIProvider if api == "openai" else AnthropicProvider
    return cls(config, retry=retry)


def ask(text: str = "hi", **kwargs: Any) -> ModelRequest:
    return ModelRequest(
        model="m", system="be brief", messages=[UserMessage([TextPart(text)])], **kwargs
    )


async def collect(provider: Provider, request: ModelRequest) -> list[StreamEvent]:
    try:
        return [event async for event in provider.stream(request)]
    finally:
        await provider.aclose()


async def failure(provider: Provider, request: ModelRequest | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await collect(provider, request or ask())
    return caught.value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- OpenAI and Anthropic: streaming -------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_text_streams_in_order(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(text_chunks=["Hel", "lo", " world"], usage=(12, 3, 0)))
    events = await collect(make(api, llm), ask())
    assert events == [
        TextDelta("Hel"),
        TextDelta("lo"),
        TextDelta(" world"),
        UsageReport(Usage(input_tokens=12, output_tokens=3)),
        Finish(FinishReason.END_TURN),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_thinking_comes_before_text(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(thinking_chunks=["Let me ", "think."], text_chunks=["Hi"], signature="sig-1"))
    events = await collect(make(api, llm), ask())
    thinking = [ThinkingDelta("Let me "), ThinkingDelta("think.")]
    if api == "anthropic":
        thinking.append(ThinkingDelta("", signature="sig-1"))
    assert events[: len(thinking) + 1] == [*thinking, TextDelta("Hi")]


@pytest.mark.anyio
async def test_openai_reasoning_field_is_thinking(llm: FakeLLM) -> None:
    llm.queue(Reply(thinking_chunks=["hmm"], text_chunks=["ok"], reasoning_field="reasoning"))
    events = await collect(make("openai", llm), ask())
    assert events[:2] == [ThinkingDelta("hmm"), TextDelta("ok")]


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_tool_calls_assembled_from_fragments(llm: FakeLLM, api: str) -> None:
    calls: list[tuple[str, str, dict[str, Any] | str]] = [
        ("call_a", "read_file", {"path": "src/main.py", "line": 3}),
        ("call_b", "search_text", {"pattern": "TODO|FIXME", "path": "."}),
    ]
    llm.queue(Reply(text_chunks=["Looking."], tool_calls=calls, argument_fragment=3))
    events = await collect(make(api, llm), ask())
    ready = [e.call for e in events if isinstance(e, ToolCallReady)]
    assert ready == [ToolCall(i, n, a) for i, n, a in calls if isinstance(a, dict)]
    assert events[-1] == Finish(FinishReason.TOOL_USE)
    assert isinstance(events[-2], UsageReport)


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_invalid_tool_arguments_are_passed_raw(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(tool_calls=[("c1", "read_file", '{"path": "a'), ("c2", "list_directory", "")]))
    events = await collect(make(api, llm), ask())
    ready = [e.call for e in events if isinstance(e, ToolCallReady)]
    assert ready == [
        ToolCall("c1", "read_file", {"_raw": '{"path": "a'}),
        ToolCall("c2", "list_directory", {}),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_usage_with_cached_tokens_and_cost(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(text_chunks=["ok"], usage=(1000, 200, 400)))
    provider = make(api, llm, input_price_per_mtok=2.0, output_price_per_mtok=8.0)
    events = await collect(provider, ask())
    usage = next(e.usage for e in events if isinstance(e, UsageReport))
    assert (usage.input_tokens, usage.output_tokens, usage.cached_read_tokens) == (1000, 200, 400)
    assert not usage.estimated
    factor = 0.25 if api == "openai" else 0.1
    assert usage.cost == pytest.approx((600 * 2 + 400 * 2 * factor + 200 * 8) / 1e6)


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_usage_estimated_when_not_reported(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(text_chunks=["twelve chars"], usage=None))
    events = await collect(make(api, llm), ask("x" * 400))
    usage = next(e.usage for e in events if isinstance(e, UsageReport))
    assert usage.estimated
    assert usage.output_tokens == 3
    assert usage.input_tokens >= 100


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", FinishReason.END_TURN),
        ("length", FinishReason.MAX_TOKENS),
        ("content_filter", FinishReason.REFUSAL),
    ],
)
async def test_finish_reasons(llm: FakeLLM, api: str, finish: str, reason: FinishReason) -> None:
    llm.queue(Reply(text_chunks=["x"], finish=finish))
    events = await collect(make(api, llm), ask())
    assert events[-1] == Finish(reason)


@pytest.mark.anyio
async def test_openai_tool_calls_with_stop_still_mean_tool_use(llm: FakeLLM) -> None:
    llm.queue(Reply(tool_calls=[("c1", "read_file", {"path": "a"})], finish="stop"))
    events = await collect(make("openai", llm), ask())
    assert events[-1] == Finish(FinishReason.TOOL_USE)


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_concurrent_streams(llm: FakeLLM, api: str) -> None:
    # Each answer waits until all four requests are open: one after another never are.
    llm.queue(*[Reply(text_chunks=list("abcde"), together=4)] * 4)
    provider = make(api, llm)
    texts: list[str] = []
    started: list[int] = []
    all_started = anyio.Event()

    async def one() -> None:
        text = ""
        async for event in provider.stream(ask()):
            if not text and isinstance(event, TextDelta):
                started.append(1)
                if len(started) == 4:
                    all_started.set()
                await all_started.wait()
            text += event.text if isinstance(event, TextDelta) else ""
        texts.append(text)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(one)
    finally:
        await provider.aclose()
    assert texts == ["abcde"] * 4
    assert llm.most_open == 4


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_endless_stream_can_be_abandoned(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(endless=True), Reply(text_chunks=["after"]))
    provider = make(api, llm)
    count = 0
    async for _event in provider.stream(ask()):
        count += 1
        if count == 200:
            break
    events = await collect(provider, ask())
    assert TextDelta("after") in events


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_cancelled_stream_leaves_the_provider_usable(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(endless=True, chunk_delay=0.01), Reply(text_chunks=["after"]))
    provider = make(api, llm)
    seen = 0
    with anyio.CancelScope() as scope:
        async for _event in provider.stream(ask()):
            seen += 1
            if seen == 5:
                scope.cancel()
    assert seen == 5
    assert TextDelta("after") in await collect(provider, ask())


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_fast_stream_of_many_chunks(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(text_chunks=[f"{i} " for i in range(5000)], usage=(1, 1, 0)))
    started = time.process_time()  # CPU time: other processes on the machine cannot add to it
    events = await collect(make(api, llm), ask())
    assert len(events) == 5002
    assert time.process_time() - started < 2


# ---- OpenAI and Anthropic: failures --------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("status", [500, 503, 529])
async def test_server_error_then_success_is_retried(llm: FakeLLM, api: str, status: int) -> None:
    llm.queue(Reply(status=status), Reply(text_chunks=["fine"]))
    events = await collect(make(api, llm), ask())
    assert events[0] == TextDelta("fine")
    assert len(llm.requests) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_rate_limit_is_retried_after_the_asked_wait(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(status=429, headers={"retry-after": "0.3"}), Reply(text_chunks=["fine"]))
    started = time.monotonic()
    events = await collect(make(api, llm), ask())
    assert events[0] == TextDelta("fine")
    assert time.monotonic() - started >= 0.3


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_rate_limit_with_a_long_wait_is_reported_at_once(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(status=429, headers={"retry-after": "3600"}))
    error = await failure(make(api, llm))
    assert error.kind is ProviderErrorKind.RATE_LIMIT
    assert error.retryable
    assert "3600 s" in error.message
    assert len(llm.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_retries_are_bounded(llm: FakeLLM, api: str) -> None:
    llm.queue(*[Reply(status=500, error_message="boom")] * 10)
    error = await failure(make(api, llm, retry=RetryPolicy(max_retries=2, base_delay=0.01)))
    assert error.kind is ProviderErrorKind.SERVER
    assert "HTTP 500" in error.message and "boom" in error.message
    assert len(llm.requests) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_retries_bounded_by_time(llm: FakeLLM, api: str) -> None:
    llm.queue(*[Reply(status=500)] * 10)
    policy = RetryPolicy(max_retries=10, base_delay=0.2, max_delay=0.2, total_time=0.3)
    await failure(make(api, llm, retry=policy))
    assert len(llm.requests) <= 3


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_bad_key_is_auth_error_without_the_key(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(status=401, error_message=f"Incorrect API key provided: {KEY}"))
    error = await failure(make(api, llm))
    assert error.kind is ProviderErrorKind.AUTH
    assert not error.retryable
    assert ENV[api] in error.message and "(401)" in error.message
    assert llm.base_url_anthropic in error.message
    assert KEY not in error.message and KEY not in str(error)
    assert len(llm.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_endpoint_error_text_is_scrubbed_of_keys(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(status=400, error_message=f"bad header {KEY} and sk-other-abcdef123456"))
    error = await failure(make(api, llm))
    assert error.kind is ProviderErrorKind.BAD_REQUEST
    assert KEY not in error.message and "abcdef123456" not in error.message


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_unreachable_port(api: str) -> None:
    port = free_port()
    provider = make(api, base_url=f"http://127.0.0.1:{port}", retry=RetryPolicy(0))
    error = await failure(provider)
    assert error.kind is ProviderErrorKind.UNREACHABLE
    assert error.retryable
    assert f"cannot reach the {'OpenAI-compatible' if api == 'openai' else 'Anthropic'}" in (
        error.message
    )
    assert f"127.0.0.1:{port}" in error.message
    assert "connection refused; is the server running?" in error.message
    assert ("OPENAI_BASE_URL" if api == "openai" else "ANTHROPIC_BASE_URL") in error.message


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_unreachable_is_retried(api: str) -> None:
    policy = RetryPolicy(max_retries=2, base_delay=0.05, max_delay=0.05)
    started = time.monotonic()
    await failure(make(api, base_url=f"http://127.0.0.1:{free_port()}", retry=policy))
    assert time.monotonic() - started >= 0.05


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_hang_times_out(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(hang=True))
    with anyio.fail_after(60):  # a safety net: the fake hangs for 120 s
        error = await failure(make(api, llm, request_timeout=0.4))
    assert error.kind is ProviderErrorKind.TIMEOUT
    assert "0.4 s" in error.message


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_stall_mid_stream_times_out(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(text_chunks=["a", "b"], chunk_delay=1.0))
    error = await failure(make(api, llm, request_timeout=0.3))  # (it would end, unstopped)
    assert error.kind is ProviderErrorKind.TIMEOUT


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_context_too_long(llm: FakeLLM, api: str) -> None:
    if api == "openai":
        reply = Reply(
            status=400,
            error_message="This model's maximum context length is 128000 tokens.",
            error_code="context_length_exceeded",
        )
    else:
        reply = Reply(
            status=400,
            error_message="prompt is too long: 210000 tokens > 200000 maximum",
            error_code="invalid_request_error",
        )
    llm.queue(reply)
    error = await failure(make(api, llm))
    assert error.kind is ProviderErrorKind.CONTEXT_TOO_LONG
    assert not error.retryable
    assert len(llm.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_other_client_errors_carry_the_endpoint_message(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(status=400, error_message="tools.0.name: String should match pattern"))
    error = await failure(make(api, llm))
    assert error.kind is ProviderErrorKind.BAD_REQUEST
    assert "rejected the request (400): tools.0.name: String should match pattern" in (
        error.message
    )


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_stream_ended_early_is_not_replayed(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(text_chunks=["partial"], finish=None), Reply(text_chunks=["again"]))
    seen: list[StreamEvent] = []
    provider = make(api, llm)
    with pytest.raises(ProviderError) as caught:
        async for event in provider.stream(ask()):
            seen.append(event)
    await provider.aclose()
    assert seen == [TextDelta("partial")]
    assert caught.value.kind is ProviderErrorKind.SERVER
    assert "the stream ended early" in caught.value.message
    assert len(llm.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_error_inside_the_stream(llm: FakeLLM, api: str) -> None:
    llm.queue(Reply(stream_error="Overloaded"), Reply(text_chunks=["fine"]))
    assert (await collect(make(api, llm), ask()))[0] == TextDelta("fine")  # retried
    llm.queue(Reply(text_chunks=["half"], stream_error="Overloaded"))
    error = await failure(make(api, llm))
    assert error.kind is ProviderErrorKind.SERVER
    assert "Overloaded" in error.message
    assert len(llm.requests) == 3  # the half-streamed answer was not replayed


@pytest.mark.anyio
async def test_not_found_names_the_base_url(llm: FakeLLM) -> None:
    error = await failure(make("openai", base_url=f"{llm.url}/wrong"))
    assert error.kind is ProviderErrorKind.BAD_REQUEST
    assert "404" in error.message and "OPENAI_BASE_URL" in error.message


# ---- request bodies ------------------------------------------------------------------

TOOLS = [ToolSpec("read_file", "Read a file.", {"type": "object", "properties": {}})]
HISTORY: list[Message] = [
    UserMessage([TextPart("look at this"), ImagePart("iVBORw0KGgo=", "image/png")]),
    AssistantMessage(
        text="Reading.",
        thinking=[Thinking("I should read it.", signature="sig-9"), Thinking("unsigned")],
        tool_calls=[ToolCall("call_1", "read_file", {"path": "a.txt"})],
    ),
    ToolResult("call_1", "file body"),
    UserMessage([TextPart("thanks")]),
]


@pytest.mark.anyio
async def test_openai_request_carries_the_history(llm: FakeLLM) -> None:
    request = ModelRequest("gpt-x", "sys prompt", HISTORY, tools=TOOLS, max_tokens=99)
    await collect(make("openai", llm), request)
    sent = llm.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent["model"] == "gpt-x"
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 99
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "description": "Read a file.",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    assert sent["messages"] == [
        {"role": "system", "content": "sys prompt"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look at this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
        {
            "role": "assistant",
            "content": "Reading.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"path":"a.txt"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "file body"},
        {"role": "user", "content": "thanks"},
    ]


@pytest.mark.anyio
async def test_anthropic_request_carries_the_history(llm: FakeLLM) -> None:
    messages = [*HISTORY[:3], ToolResult("call_2", "oops", is_error=True), HISTORY[3]]
    request = ModelRequest("claude-x", "sys prompt", messages, tools=TOOLS, max_tokens=99)
    await collect(make("anthropic", llm), request)
    sent = llm.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert (sent["model"], sent["max_tokens"], sent["stream"]) == ("claude-x", 99, True)
    cache = {"type": "ephemeral"}
    assert sent["system"] == [{"type": "text", "text": "sys prompt", "cache_control": cache}]
    assert sent["tools"] == [
        {
            "name": "read_file",
            "description": "Read a file.",
            "input_schema": {"type": "object", "properties": {}},
        }
    ]
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look at this"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I should read it.", "signature": "sig-9"},
                {"type": "text", "text": "Reading."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "read_file",
                    "input": {"path": "a.txt"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "file body"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": "oops",
                    "is_error": True,
                },
                {"type": "text", "text": "thanks", "cache_control": cache},
            ],
        },
    ]


def test_openai_official_endpoint_uses_max_completion_tokens() -> None:
    provider = OpenAIProvider(ProviderSettings(name="openai"))
    body = provider.request_body(ask(max_tokens=7))
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body


def test_model_lists() -> None:
    openai = OpenAIProvider(ProviderSettings(name="openai"))
    assert openai.default_model == "gpt-4.1-mini" and openai.models[0] == "gpt-4.1-mini"
    assert len(openai.models) > 1 and openai.context_window > 100_000
    chosen = OpenAIProvider(ProviderSettings(name="openai", model="gpt-4o"))
    assert chosen.models[0] == "gpt-4o" and chosen.models.count("gpt-4o") == 1
    local = OpenAIProvider(
        ProviderSettings(name="openai", base_url="http://localhost:11434/v1", model="qwen3")
    )
    assert local.models == ["qwen3"]
    anthropic = AnthropicProvider(ProviderSettings(name="anthropic", context_window=50_000))
    assert anthropic.models[0] == anthropic.default_model == "claude-sonnet-4-5"
    assert anthropic.context_window == 50_000


# ---- echo ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_echo_repeats_and_explains_setup_once() -> None:
    provider = EchoProvider()
    first = await collect(provider, ask("hello there"))
    text = "".join(e.text for e in first if isinstance(e, TextDelta))
    assert text == f"Echo: hello there\n\n{SETUP_NOTE}"
    assert sum(isinstance(e, TextDelta) for e in first) > 5  # streamed by word
    assert first[-2].usage.estimated  # type: ignore[union-attr]
    assert first[-1] == Finish(FinishReason.END_TURN)
    later = ModelRequest(
        "echo",
        "",
        [
            UserMessage([TextPart("hello there")]),
            AssistantMessage(text=text),
            UserMessage([TextPart("again")]),
        ],
    )
    second = await collect(provider, later)
    assert [e for e in second if isinstance(e, TextDelta)] == [
        TextDelta("Echo: "),
        TextDelta("again"),
    ]
    assert await collect(provider, ask("hello there")) == first


@pytest.mark.anyio
async def test_echo_without_text() -> None:
    request = ModelRequest("echo", "", [UserMessage([ImagePart("AAAA", "image/png")])])
    events = await collect(EchoProvider(), request)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text.startswith("Echo: (the prompt has no text, only 1 image)")


# ---- script --------------------------------------------------------------------------


async def play(provider: Provider, prompts: int) -> list[list[list[StreamEvent]]]:
    """Drive the provider as the agent loop does: per turn, the events of each call."""
    messages: list[Message] = []
    turns: list[list[list[StreamEvent]]] = []
    for number in range(prompts):
        messages.append(UserMessage([TextPart(f"prompt {number + 1}")]))
        calls: list[list[StreamEvent]] = []
        while True:
            events = [e async for e in provider.stream(ModelRequest("s", "", list(messages)))]
            calls.append(events)
            reply = AssistantMessage(
                text="".join(e.text for e in events if isinstance(e, TextDelta)),
                thinking=[Thinking(e.text) for e in events if isinstance(e, ThinkingDelta)],
                tool_calls=[e.call for e in events if isinstance(e, ToolCallReady)],
            )
            messages.append(reply)
            messages.extend(ToolResult(call.id, "ok") for call in reply.tool_calls)
            if events[-1] != Finish(FinishReason.TOOL_USE):
                break
        turns.append(calls)
    return turns


def texts(events: list[StreamEvent], kind: type[TextDelta | ThinkingDelta]) -> list[str]:
    return [e.text for e in events if isinstance(e, kind)]


@pytest.mark.anyio
async def test_example_script_plays_exactly() -> None:
    provider = ScriptProvider(EXAMPLE)
    turns = await play(provider, 4)
    assert [len(calls) for calls in turns] == [3, 3, 1, 1]

    first, second, third = turns[0]
    assert "".join(texts(first, ThinkingDelta)) == (
        "The user wants notes on the README. I should read it first."
    )
    assert texts(first, TextDelta) == ["I'll ", "read ", "the ", "README ", "first."]
    plan = next(e for e in first if isinstance(e, PlanUpdate))
    assert plan.entries[0] == {
        "content": "Read README.md",
        "priority": "high",
        "status": "in_progress",
    }
    assert [e for e in first if isinstance(e, ToolCallReady)] == [
        ToolCallReady(ToolCall("call_1_4", "read_file", {"path": "README.md"}))
    ]
    assert first[-2].usage.estimated  # type: ignore[union-attr]
    assert first[-1] == Finish(FinishReason.TOOL_USE)
    write = next(e.call for e in second if isinstance(e, ToolCallReady))
    assert write == ToolCall(
        "call_1_6",
        "write_file",
        {"path": "NOTES.md", "content": "# Notes\n\nThe README, in short.\n"},
    )
    assert isinstance(third[0], PlanUpdate)
    assert texts(third, TextDelta) == ["Done", ": I wrote ", "NOTES.md", "."]
    assert third[-2:] == [
        UsageReport(Usage(input_tokens=1200, output_tokens=85, cached_read_tokens=800)),
        Finish(FinishReason.END_TURN),
    ]

    searches, edit, done = turns[1]
    assert texts(searches, ThinkingDelta) == ["Let me find ", "the heading."]
    assert [e.call.id for e in searches if isinstance(e, ToolCallReady)] == [
        "call_2_2_1",
        "call_2_2_2",
    ]
    assert [e.call.id for e in edit if isinstance(e, ToolCallReady)] == ["call_2_3"]
    assert done[-1] == Finish(FinishReason.END_TURN)
    assert turns[2][0][-1] == Finish(FinishReason.MAX_TOKENS)
    assert turns[3][0][-1] == Finish(FinishReason.REFUSAL)

    assert await play(ScriptProvider(EXAMPLE), 4) == turns  # deterministic
    with pytest.raises(ProviderError) as caught:
        await play(provider, 5)
    assert caught.value.kind is ProviderErrorKind.BAD_REQUEST
    assert caught.value.message == f"the script {EXAMPLE} has 4 turns; there is no turn 5"


@pytest.mark.anyio
async def test_inline_json_script(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "turns": [
                    {
                        "steps": [
                            {"thought": ["a", "b"]},
                            {"tool_call": {"name": "run_command", "id": "mine", "arguments": {}}},
                            {"chunks": ["x", "y"]},
                        ]
                    },
                    {"steps": [{"error": {"kind": "rate_limit", "message": "slow down"}}]},
                ]
            }
        )
    )
    provider = create_provider(ProviderSettings(name=f"script:{path}"))
    with pytest.raises(ProviderError) as caught:
        await play(provider, 2)
    assert (caught.value.kind, caught.value.message) == (ProviderErrorKind.RATE_LIMIT, "slow down")
    (calls,) = await play(provider, 1)
    assert calls[0][:3] == [
        ThinkingDelta("a"),
        ThinkingDelta("b"),
        ToolCallReady(ToolCall("mine", "run_command", {})),
    ]
    assert calls[1][:2] == [TextDelta("x"), TextDelta("y")]


@pytest.mark.anyio
async def test_script_ending_on_a_tool_call_finishes_the_turn_next(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("turns:\n  - steps:\n      - tool_call: {name: read_file}\n")
    (calls,) = await play(ScriptProvider(path), 1)
    assert calls[0][0] == ToolCallReady(ToolCall("call_1_1", "read_file", {}))
    assert calls[1][-1] == Finish(FinishReason.END_TURN)
    assert len(calls[1]) == 2


@pytest.mark.anyio
async def test_script_delay_lets_a_turn_be_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("turns:\n  - delay_ms: 100\n    steps:\n      - message: a b c d e f g h\n")
    seen: list[StreamEvent] = []
    started = time.monotonic()
    with anyio.CancelScope() as scope:
        async for event in ScriptProvider(path).stream(ask()):
            seen.append(event)
            if len(seen) == 2:
                scope.cancel()  # lands in the pause before the third word
    assert len(seen) == 2
    assert time.monotonic() - started >= 0.19  # each word waited its 100 ms (a lower bound)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("turns: [", "is not valid YAML"),
        ("turns: []", "turns: List should have at least 1 item"),
        (
            "turns:\n  - steps:\n      - message: hi\n      - mesage: typo\n",
            "turn 1, step 2: a step has exactly one key, one of: thought, message,",
        ),
        ("turns:\n  - steps:\n      - mesage: typo\n", "(found: mesage)"),
        (
            "turns:\n  - steps:\n      - stop: end_turn\n      - message: late\n",
            "turn 1: 'stop' must be the last step of its turn",
        ),
        ("turns:\n  - steps:\n      - stop: finished\n", "turn 1, step 1, stop: Input should be"),
        ("turns:\n  - steps:\n      - tool_call: {arguments: {}}\n", "tool_call.name: Field"),
        ("- just a list\n", "top level: Input should be a valid dictionary"),
    ],
)
def test_malformed_script_is_reported_clearly(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ProviderError) as caught:
        ScriptProvider(path)
    assert caught.value.message.startswith(f"the script {path} ")
    assert problem in caught.value.message


def test_missing_script_file(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="does not exist"):
        create_provider(ProviderSettings(name=f"script:{tmp_path / 'nope.yaml'}"))


def test_committed_schema_is_current_and_accepts_the_example() -> None:
    committed = json.loads((ROOT / "schemas" / "script-provider.schema.json").read_text())
    assert committed == script_module.schema()
    import yaml

    jsonschema.validate(yaml.safe_load(EXAMPLE.read_text()), committed)


# ---- registry ------------------------------------------------------------------------


def test_registry_picks_the_provider(tmp_path: Path) -> None:
    assert isinstance(create_provider(ProviderSettings(name="echo")), EchoProvider)
    assert isinstance(create_provider(ProviderSettings(name="openai")), OpenAIProvider)
    assert isinstance(create_provider(ProviderSettings(name="anthropic")), AnthropicProvider)
    script = create_provider(ProviderSettings(name=f"script:{EXAMPLE}"))
    assert isinstance(script, ScriptProvider)


@pytest.mark.anyio
@pytest.mark.parametrize("api", APIS)
async def test_registry_falls_back_to_environment(
    llm: FakeLLM, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = api.upper()
    base_url = llm.base_url_openai if api == "openai" else llm.base_url_anthropic
    monkeypatch.setenv(f"{prefix}_BASE_URL", base_url)
    monkeypatch.setenv(f"{prefix}_API_KEY", "env-key")
    await collect(create_provider(ProviderSettings(name=api)), ask())
    headers = llm.requests[0].headers
    assert headers.get("authorization", headers.get("x-api-key")) in ("Bearer env-key", "env-key")


@pytest.mark.parametrize("name", ["echo", f"script:{EXAMPLE}"])
def test_offline_providers_do_not_import_httpx(name: str) -> None:
    code = (
        "import sys\n"
        "from acp_server.agent.providers.registry import create_provider\n"
        "from acp_server.config.settings import ProviderSettings\n"
        f"create_provider(ProviderSettings(name={name!r}))\n"
        "assert 'httpx' not in sys.modules, 'httpx was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "ANTHROPIC"))}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=30)
