"""Model providers: one ``Provider`` per backend, chosen by ``create_provider``.

This package module stays cheap to import (no httpx): the echo and script providers
must start instantly. Usage accounting lives in ``usage``, so a
provider without HTTP never has to import the HTTP helpers.
"""

from __future__ import annotations

import re

from acp_server.agent.providers.registry import create_provider
from acp_server.agent.providers.usage import estimate_tokens, estimated_usage, priced

__all__ = ["create_provider", "estimate_tokens", "estimated_usage", "priced", "word_chunks"]


_WORD = re.compile(r"\s*\S+\s*|\s+")


def word_chunks(text: str) -> list[str]:
    """Split text into word-sized pieces that join back to exactly ``text``."""
    return _WORD.findall(text)
