"""Short session titles from the first prompt.

Real models are asked for a few words (one cheap, bounded call); deterministic
providers (echo, script) and any failure fall back to the prompt's first words, so a
session never stays "Untitled".
"""

from __future__ import annotations

from typing import Any

from acp_server.agent.providers.base import (
    ModelRequest,
    Provider,
    ProviderError,
    TextDelta,
    TextPart,
    UserMessage,
)

MAX_TITLE = 80
_INSTRUCTION = (
    "Write a short title (at most six words) for a coding conversation that starts with "
    "the message below. Answer with the title only, no quotes.\n\n"
)


def _prompt_text(blocks: list[dict[str, Any]]) -> str:
    texts = [str(b.get("text", "")) for b in blocks if b.get("type") == "text"]
    names = [str(b.get("name", "")) for b in blocks if b.get("type") == "resource_link"]
    return " ".join([*texts, *names]).strip()


def fallback_title(blocks: list[dict[str, Any]]) -> str | None:
    words = _prompt_text(blocks).split()
    if not words:
        return None
    title = " ".join(words[:8])
    return title if len(title) <= MAX_TITLE else title[: MAX_TITLE - 1].rstrip() + "…"


def _clean(text: str) -> str | None:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.strip("\"'`*# ").removeprefix("Title:").strip()
    return line[:MAX_TITLE] or None


async def generate_title(
    provider: Provider, model: str, blocks: list[dict[str, Any]]
) -> str | None:
    if provider.name in ("echo",) or provider.name.startswith("script"):
        return fallback_title(blocks)
    text = _prompt_text(blocks)[:2000]
    if not text:
        return None
    request = ModelRequest(
        model=model,
        system="You name conversations.",
        messages=[UserMessage([TextPart(_INSTRUCTION + text)])],
        max_tokens=24,
    )
    parts: list[str] = []
    try:
        async for event in provider.stream(request):
            if isinstance(event, TextDelta):
                parts.append(event.text)
    except ProviderError:
        return fallback_title(blocks)
    return _clean("".join(parts)) or fallback_title(blocks)
