"""What ``serve`` checks before it serves, shared with ``acp-server doctor``.

Doctor runs these same functions, so it passes exactly where the server can start. The
database's checks live with the store: ``check_connection`` and ``migrate.check`` (the
preflight every migration runs first).
"""

from __future__ import annotations

from acp_server.config.settings import Settings


def provider_problem(settings: Settings) -> str | None:
    """Why the configured provider stops the server at start, as one line, or None.

    A script is loaded now: one that cannot load is a bad setting, better said at once
    than on the editor's first prompt. (It imports nothing heavy.) The other providers
    are built on first use and fail there, with the reason, if they must.
    """
    if not settings.provider.name.startswith("script:"):
        return None
    from acp_server.agent.providers.base import ProviderError
    from acp_server.agent.providers.registry import create_provider

    try:
        create_provider(settings.provider)
    except ProviderError as exc:
        return f"{exc.message}; fix --provider or ACP_SERVER_PROVIDER"
    return None
