"""The default when nothing is configured: repeats the prompt, deterministically.

It lets a person see the editor integration work before choosing a model, and tells
them once per session how to choose one. It never imports httpx, so a server that
uses it starts fast.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import anyio.lowlevel

from acp_server.agent.providers.base import (
    AssistantMessage,
    Finish,
    FinishReason,
    ImagePart,
    ModelRequest,
    StreamEvent,
    TextDelta,
    TextPart,
    UsageReport,
    UserMessage,
)
from acp_server.agent.providers.usage import estimated_usage
from acp_server.config.settings import ProviderSettings

DEFAULT_MODEL = "echo"
SETUP_NOTE = (
    "(This is the echo provider: it repeats your prompt. To talk to a real model, set "
    "ACP_SERVER_PROVIDER=openai and OPENAI_API_KEY, or ACP_SERVER_PROVIDER=anthropic and "
    "ANTHROPIC_API_KEY, or start the server with --provider.)"
)

_WORD = re.compile(r"\s*\S+\s*|\s+")


def word_chunks(text: str) -> list[str]:
    """Split text into word-sized pieces that join back to exactly ``text``."""
    return _WORD.findall(text)


class EchoProvider:
    """Replies ``Echo: <the last prompt's text>``, streamed word by word."""

    name = "echo"
    supports_images = True

    def __init__(self, settings: ProviderSettings | None = None):
        settings = settings or ProviderSettings()
        self.default_model = settings.model or DEFAULT_MODEL
        self.models = [self.default_model]
        self.context_window = settings.context_window or 200_000

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        return self._stream(request)

    async def _stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        text = reply_text(request)
        for chunk in word_chunks(text):
            await anyio.lowlevel.checkpoint()
            yield TextDelta(chunk)
        yield UsageReport(estimated_usage(request, [text]))
        yield Finish(FinishReason.END_TURN)

    async def aclose(self) -> None:
        return None


def reply_text(request: ModelRequest) -> str:
    """The whole reply: the echo, plus the setup note on a session's first answer."""
    prompt = next((m for m in reversed(request.messages) if isinstance(m, UserMessage)), None)
    parts = prompt.parts if prompt else []
    text = "\n\n".join(p.text for p in parts if isinstance(p, TextPart)).strip()
    images = sum(isinstance(p, ImagePart) for p in parts)
    if text:
        reply = f"Echo: {text}"
    elif images:
        reply = f"Echo: (the prompt has no text, only {images} image{'s' * (images > 1)})"
    else:
        reply = "Echo: (the prompt is empty)"
    if not any(isinstance(m, AssistantMessage) for m in request.messages):
        reply = f"{reply}\n\n{SETUP_NOTE}"
    return reply
