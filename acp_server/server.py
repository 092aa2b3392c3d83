"""``acp-server serve``: wire the transport, the ACP agent, sessions and tools together.

The database opens in the background while ``initialize`` is answered: SQLAlchemy's
import alone costs more than our whole start-up budget, so it is imported in a worker
thread and session methods wait for the store. A store that cannot open stops the
server with one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from acp_server import errors
from acp_server.agent.providers.base import Provider
from acp_server.agent.tools.base import Tool
from acp_server.agent.turn import LiveSession
from acp_server.config.loader import default_database_url
from acp_server.config.settings import Settings
from acp_server.logs import get_logger
from acp_server.preflight import provider_problem
from acp_server.protocol.agent import AcpAgent
from acp_server.sessions.service import SessionService
from acp_server.transport.rpc import Connection
from acp_server.transport.stdio import StdioChannel

log = get_logger("acp_server.server")
OPEN_TIMEOUT = 30.0


class _Backend:
    """The session store, opened once, in the background."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ready = anyio.Event()
        self.service: SessionService | None = None
        self.failure: str | None = None

    async def open(self, task_group: anyio.abc.TaskGroup) -> None:
        on_failure = task_group.cancel_scope
        config = self.settings.session_service
        try:
            await anyio.to_thread.run_sync(importlib.import_module, "acp_server.storage.store")
            from acp_server.storage.engine import DatabaseConfigError
            from acp_server.storage.migrate import MigrationError
            from acp_server.storage.store import SessionStore

            # Shielded so a quick exit never abandons a half-open connection (its
            # driver thread would outlive the event loop); bounded so it cannot hang.
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.fail_after(OPEN_TIMEOUT):
                        store = await SessionStore.open(
                            None
                            if config.type == "memory"
                            else (config.database_url or default_database_url()),
                            memory=config.type == "memory",
                        )
                except (DatabaseConfigError, MigrationError) as exc:
                    self.failure = str(exc)
                except TimeoutError:
                    self.failure = (
                        f"the session database did not answer within {OPEN_TIMEOUT:.0f} s; "
                        "check that it is running"
                    )
            if self.failure:
                on_failure.cancel()
                return
            self.service = SessionService(store)
            log.debug("session store ready", backend=store.backend, url=store.url_redacted)
            if self.settings.data_retention.enabled:
                from acp_server.retention import retention_loop

                task_group.start_soon(retention_loop, store, self.settings.data_retention)
        finally:
            self.ready.set()

    async def get(self) -> SessionService:
        await self.ready.wait()
        if self.service is None:
            raise errors.InternalError(
                f"the session database is unavailable: {self.failure or 'closed'}"
            )
        return self.service

    async def close(self) -> None:
        if self.service is not None:
            with anyio.CancelScope(shield=True):
                await self.service.store.close()


class _Providers:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.provider: Provider | None = None

    def get(self) -> Provider:
        if self.provider is None:
            from acp_server.agent.providers.registry import create_provider

            self.provider = create_provider(self.settings.provider)
        return self.provider

    async def close(self) -> None:
        if self.provider is not None:
            with anyio.CancelScope(shield=True):
                await self.provider.aclose()


async def _open_tools(
    live: LiveSession,
    servers: list[dict[str, Any]],
    tg: anyio.abc.TaskGroup,
    notice: Callable[[str], Awaitable[None]],
) -> list[str]:
    """Give a live session its own tool set: the built-in tools now, each MCP server's
    once it is ready. The servers start in the background, so a slow one never holds
    up the session; the entries that cannot be used are returned, a server that fails
    to start is told through ``notice``."""
    from acp_server.agent.tools.registry import builtin_tools

    live.tools = {tool.name: tool for tool in builtin_tools()}
    if not servers:
        return []
    # The MCP SDK takes ~0.4 s to import: off the event loop, so other sessions go on.
    await anyio.to_thread.run_sync(importlib.import_module, "acp_server.agent.tools.mcp")
    from acp_server.agent.tools.mcp import SessionExtensions

    def ready(tools: list[Tool]) -> None:
        live.tools.update({tool.name: tool for tool in tools})

    extensions = SessionExtensions.start(
        servers, tg, cwd=Path(live.record.cwd), on_ready=ready, on_problem=notice
    )
    live.extensions = extensions
    return list(extensions.problems)


async def _close_tools(live: LiveSession) -> None:
    extensions, live.extensions = live.extensions, None
    if extensions is not None:
        await extensions.aclose()


async def _watch_signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            scope.cancel()
            return


async def serve(
    settings: Settings, *, fd_in: int = 0, fd_out: int = 1, handle_signals: bool = True
) -> int:
    """Serve one client on ``fd_in``/``fd_out`` (stdin/stdout for an editor; a pair of
    pipes for a test that runs the server inside its own event loop) until EOF.
    Returns the exit code."""
    problem = provider_problem(settings)
    if problem is not None:
        print(f"acp-server: {problem}", file=sys.stderr)
        return 2
    providers = _Providers(settings)
    channel = StdioChannel(fd_in, fd_out, max_line_bytes=settings.transport.max_message_bytes)
    backend = _Backend(settings)
    agent: AcpAgent | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.open, tg)
            if handle_signals:
                tg.start_soon(_watch_signals, tg.cancel_scope)
            agent = AcpAgent(
                settings,
                service=backend.get,
                provider=providers.get,
                tools=_open_tools,
                close_tools=_close_tools,
                task_group=tg,
            )
            connection = Connection(channel, agent.handlers(), notifications=agent.notifications)
            await connection.serve(on_eof=agent.cancel_turns)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if agent is not None:
                await agent.shutdown()
            await providers.close()
            await backend.close()
        channel.close()
    if backend.failure:
        print(f"acp-server: {backend.failure}", file=sys.stderr)
        return 2
    return 0
