"""``acp-server serve``: wire the transport, the ACP agent, sessions and tools together.

Until ``initialize`` is answered the process holds only the transport, the settings and
what that answer is built from. The database opens in the background once the answer
is out: SQLAlchemy's import alone costs more than our whole start-up budget, so it is
imported in a worker thread (where it cannot delay the answer) and session methods wait
for the store. A store that cannot open stops the server with one line on stderr and
exit code 2.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from acp_server import errors
from acp_server.config.loader import default_database_url
from acp_server.config.settings import Settings
from acp_server.logs import get_logger
from acp_server.preflight import provider_problem
from acp_server.protocol.methods import AcpMethods
from acp_server.transport.rpc import Connection, Handler, RequestContext
from acp_server.transport.stdio import StdioChannel

if TYPE_CHECKING:
    from acp_server.agent.providers.base import Provider
    from acp_server.sessions.service import SessionService

log = get_logger("acp_server.server")
OPEN_TIMEOUT = 30.0


class _Backend:
    """The session store, opened once, in the background."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ready = anyio.Event()
        self.service: SessionService | None = None
        self.failure: str | None = None
        self._opening = False

    def open_soon(self, task_group: anyio.abc.TaskGroup) -> None:
        if not self._opening:
            self._opening = True
            task_group.start_soon(self.open, task_group)

    async def open(self, task_group: anyio.abc.TaskGroup) -> None:
        on_failure = task_group.cancel_scope
        config = self.settings.session_service
        url = None if config.type == "memory" else (config.database_url or default_database_url())
        try:
            await anyio.to_thread.run_sync(importlib.import_module, "acp_server.storage.store")
            from acp_server.sessions.service import SessionService
            from acp_server.storage.engine import DatabaseConfigError
            from acp_server.storage.migrate import MigrationError
            from acp_server.storage.store import SessionStore

            # Shielded so a quick exit never abandons a half-open connection (its
            # driver thread would outlive the event loop) nor stops a migration halfway
            # (MySQL's DDL is not transactional); bounded so it cannot hang.
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.fail_after(OPEN_TIMEOUT):
                        store = await SessionStore.open(url, memory=url is None)
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
                await self.service.close()


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


def _then(handler: Handler, callback: Callable[[], Awaitable[None]]) -> Handler:
    """``handler``, with ``callback`` run once its answer (whatever it is) is written."""

    async def handle(ctx: RequestContext, params: dict[str, Any]) -> Any:
        ctx.then(callback)
        return await handler(ctx, params)

    return handle


async def _watch_signals(connection: Connection, scope: anyio.CancelScope) -> None:
    """The first SIGTERM or SIGINT ends the server as stdin EOF does (running turns
    stored as interrupted, answers flushed); a second one stops it at once."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            if connection.stopping:
                scope.cancel()
                return
            connection.stop_reading()


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
    methods: AcpMethods | None = None
    try:
        async with anyio.create_task_group() as tg:
            methods = AcpMethods(
                settings, service=backend.get, provider=providers.get, task_group=tg
            )

            async def open_store() -> None:
                backend.open_soon(tg)

            handlers = methods.handlers()
            handlers["initialize"] = _then(handlers["initialize"], open_store)
            connection = Connection(channel, handlers, notifications=methods.notifications)
            if handle_signals:
                tg.start_soon(_watch_signals, connection, tg.cancel_scope)
            await connection.serve(on_eof=methods.client_gone)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if methods is not None:
                await methods.shutdown()
            await providers.close()
            await backend.close()
        channel.close()
    if backend.failure:
        print(f"acp-server: {backend.failure}", file=sys.stderr)
        return 2
    return 0
