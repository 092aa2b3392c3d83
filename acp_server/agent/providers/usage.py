"""Usage accounting every provider and the turn loop share: the one token estimate and
the one pricing function.

Convention (all providers): ``input_tokens`` is the whole prompt, cached parts
included; ``cached_read_tokens`` and ``cached_write_tokens`` say how much of it was
read from or written to the provider's prompt cache. ``input_tokens + output_tokens``
is therefore the context the call occupied.
"""

from __future__ import annotations

from collections.abc import Iterable

from acp_server.agent.providers.base import (
    AssistantMessage,
    ImagePart,
    ModelRequest,
    TextPart,
    ToolResult,
)
from acp_server.config.settings import ProviderSettings
from acp_server.sessions.model import Usage

_IMAGE_TOKENS = 1_000
"""A rough per-image cost; real figures vary by size and provider."""


def estimate_tokens(text: str) -> int:
    """About four characters per token: good enough for context and cost estimates."""
    return (len(text) + 3) // 4


def _request_chars(request: ModelRequest) -> tuple[int, int]:
    chars = len(request.system)
    images = 0
    for tool in request.tools:
        chars += len(tool.name) + len(tool.description) + len(str(tool.input_schema))
    for message in request.messages:
        if isinstance(message, ToolResult):
            chars += len(message.content)
        elif isinstance(message, AssistantMessage):
            chars += len(message.text) + sum(len(t.text) for t in message.thinking)
            chars += sum(len(c.name) + len(str(c.arguments)) for c in message.tool_calls)
        else:
            for part in message.parts:
                if isinstance(part, TextPart):
                    chars += len(part.text)
                elif isinstance(part, ImagePart):
                    images += 1
    return chars, images


def estimated_usage(request: ModelRequest, output: Iterable[str]) -> Usage:
    """Usage for a call whose provider reported none, marked ``estimated``."""
    chars, images = _request_chars(request)
    return Usage(
        input_tokens=(chars + 3) // 4 + images * _IMAGE_TOKENS,
        output_tokens=sum(estimate_tokens(piece) for piece in output),
        estimated=True,
    )


def priced(
    usage: Usage,
    settings: ProviderSettings,
    *,
    cache_read_factor: float = 1.0,
    cache_write_factor: float = 1.0,
) -> Usage:
    """Fill ``usage.cost`` (USD) when both prices are configured.

    Cached tokens are charged at the input price times the provider's cache factor,
    since only the two base prices are configurable.
    """
    if settings.input_price_per_mtok is None or settings.output_price_per_mtok is None:
        return usage
    cached = usage.cached_read_tokens + usage.cached_write_tokens
    input_units = (
        max(usage.input_tokens - cached, 0)
        + usage.cached_read_tokens * cache_read_factor
        + usage.cached_write_tokens * cache_write_factor
    )
    cost = (
        input_units * settings.input_price_per_mtok
        + usage.output_tokens * settings.output_price_per_mtok
    ) / 1_000_000
    return usage.model_copy(update={"cost": cost})
