"""Choose and build the configured provider.

Provider modules are imported only when chosen: httpx alone costs about 0.1 s, and the
echo and script providers must start without it.
"""

from __future__ import annotations

import os

from pydantic import SecretStr

from acp_server.agent.providers.base import Provider
from acp_server.config.settings import ProviderSettings

SCRIPT_PREFIX = "script:"


def create_provider(settings: ProviderSettings) -> Provider:
    """The provider ``settings.name`` names: openai, anthropic, echo or script:PATH.

    Raises ``ProviderError`` (bad_request) when a script file is missing or invalid.
    """
    name = settings.name
    if name == "echo":
        from acp_server.agent.providers.echo import EchoProvider

        return EchoProvider(settings)
    if name.startswith(SCRIPT_PREFIX):
        from acp_server.agent.providers.script import ScriptProvider

        return ScriptProvider(os.path.expanduser(name[len(SCRIPT_PREFIX) :]), settings)
    if name == "openai":
        from acp_server.agent.providers.openai import OpenAIProvider

        return OpenAIProvider(_with_environment(settings, "OPENAI"))
    if name == "anthropic":
        from acp_server.agent.providers.anthropic import AnthropicProvider

        return AnthropicProvider(_with_environment(settings, "ANTHROPIC"))
    raise ValueError(f"unknown provider {name!r}")


def _with_environment(settings: ProviderSettings, prefix: str) -> ProviderSettings:
    """Fill an unset base URL or API key from ``{prefix}_BASE_URL`` / ``{prefix}_API_KEY``."""
    update: dict[str, object] = {}
    if not settings.base_url and (url := os.environ.get(f"{prefix}_BASE_URL", "").strip()):
        update["base_url"] = url
    if settings.api_key is None and (key := os.environ.get(f"{prefix}_API_KEY", "").strip()):
        update["api_key"] = SecretStr(key)
    return settings.model_copy(update=update) if update else settings
