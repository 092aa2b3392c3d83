"""Sessions open in this process, and the one owner of everything each one holds.

``LiveSessions`` opens and reopens sessions with their own tools and MCP connections,
keeps their busy state, runs the preparation a turn needs (servers still starting,
history from the store), cancels and closes them, and tells the person about problems
(an MCP server that failed) when nobody else will. The protocol layer asks it for a
session by id and never changes what a session holds; the agent loop runs one turn on
a session it is handed.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from acp_server import errors
from acp_server.agent.history import model_messages
from acp_server.agent.tools.base import ClientBridge, Tool
from acp_server.agent.turn import LiveSession
from acp_server.logs import get_logger
from acp_server.sessions.model import SessionRecord
from acp_server.sessions.service import SessionService

log = get_logger("acp_server.live")

Notify = Callable[[str, str], Awaitable[None]]
"""How a problem reaches the person: (session id, text), sent as an agent message."""


class LiveSessions:
    """Every session open on one connection."""

    def __init__(self, task_group: anyio.abc.TaskGroup, notify: Notify, *, mcp_start_wait: float):
        self._tg = task_group
        self._notify = notify
        self._mcp_start_wait = mcp_start_wait
        self._live: dict[str, LiveSession] = {}
        self._known: set[str] = set()
        """Sessions this connection opened or listed: the ones it may delete."""

    # ---- finding --------------------------------------------------------------------

    def find(self, session_id: str) -> LiveSession | None:
        return self._live.get(session_id)

    def get(self, session_id: str) -> LiveSession:
        """The session, if it is open here: a session is prompted, configured, renamed,
        forked or closed only after session/new, load, resume or fork on this
        connection."""
        live = self._live.get(session_id)
        if live is None:
            raise errors.ResourceNotFound(
                f"session {session_id!r} is not open on this connection; open it first "
                "with session/load or session/resume (or start one with session/new)",
                data={"sessionId": session_id},
            )
        return live

    def remember(self, session_ids: list[str]) -> None:
        """Sessions the client was shown (session/list): it may delete them."""
        self._known.update(session_ids)

    def check_known(self, session_id: str) -> None:
        if session_id not in self._known:
            raise errors.ResourceNotFound(
                f"session {session_id!r} is not known on this connection; list it "
                "with session/list or open it before deleting it (or use "
                "`acp-server sessions delete`)",
                data={"sessionId": session_id},
            )

    # ---- opening and closing ----------------------------------------------------------

    async def open(
        self,
        record: SessionRecord,
        mcp_servers: list[dict[str, Any]],
        *,
        client: ClientBridge | None,
        problems: list[str] | None = None,
    ) -> LiveSession:
        """Make a stored session live here: its MCP servers as each becomes ready, its
        built-in tools at its first turn. An earlier live copy of it is closed first."""
        old = self._live.pop(record.id, None)
        if old is not None:
            await self._shut(old)
        live = LiveSession(record=record, client=client)
        live.problems = list(problems or [])

        async def failed(problem: str) -> None:
            if not live.closed:
                live.problems.append(problem)
                await self.tell(live)

        if mcp_servers:
            # The MCP SDK takes ~0.4 s to import: off the event loop, so others go on.
            await anyio.to_thread.run_sync(importlib.import_module, "acp_server.agent.tools.mcp")
            from acp_server.agent.tools.mcp import SessionExtensions

            def ready(tools: list[Tool]) -> None:
                live.tools.update({tool.name: tool for tool in tools})

            extensions = SessionExtensions.start(
                mcp_servers, self._tg, cwd=Path(record.cwd), on_ready=ready, on_problem=failed
            )
            live.extensions = extensions
            live.problems.extend(extensions.problems)
        self._live[record.id] = live
        self._known.add(record.id)
        return live

    async def announced(self, session_id: str) -> None:
        """The client has the setup answer: updates for the session may go out now."""
        live = self._live.get(session_id)
        if live is not None:
            live.announced = True
            await self.tell(live)

    async def close(self, session_id: str) -> None:
        live = self.get(session_id)
        del self._live[session_id]
        await self._shut(live)

    async def discard(self, session_id: str) -> None:
        """Close the session if it is open here (it is being deleted)."""
        live = self._live.pop(session_id, None)
        if live is not None:
            await self._shut(live)

    async def _shut(self, live: LiveSession) -> None:
        live.closed = True
        live.cancel()
        extensions, live.extensions = live.extensions, None
        if extensions is not None:
            with anyio.CancelScope(shield=True):
                await extensions.aclose()

    def cancel(self, session_id: str) -> None:
        live = self._live.get(session_id)
        if live is not None:
            live.cancel()

    def interrupt_all(self) -> None:
        """The client is gone or the server stops: every running turn stops, and is
        stored as interrupted (not as cancelled by the person)."""
        for live in self._live.values():
            live.interrupted = True
            live.cancel()

    async def shutdown(self) -> None:
        for live in list(self._live.values()):
            await self._shut(live)
        self._live.clear()

    # ---- turns ------------------------------------------------------------------------

    @asynccontextmanager
    async def turn(self, live: LiveSession) -> AsyncIterator[None]:
        """Hold the session for one prompt; a second prompt meanwhile is refused."""
        if live.busy:
            raise errors.InvalidRequest(
                f"session {live.id!r} is already answering a prompt; "
                "wait for it to finish or send session/cancel",
                data={"sessionId": live.id},
            )
        live.busy = True
        live.cancel_requested = False
        try:
            yield
        finally:
            live.busy = False
        await self.tell(live)  # an MCP server that failed while the turn ran

    async def prepare(
        self, live: LiveSession, service: SessionService, *, images: bool
    ) -> list[str] | None:
        """Ready the session for a model turn: MCP servers still starting get a bounded
        wait, and the model's history and the built-in tools are loaded once. Returns
        the problems to show at the turn's start, or None when the prompt was cancelled
        meanwhile."""
        live.announced = True
        late: list[str] = []
        if live.extensions is not None:
            with anyio.CancelScope() as scope:
                live.turn_scope = scope
                if live.cancel_requested:
                    scope.cancel()
                try:
                    late = await live.extensions.settle(self._mcp_start_wait)
                finally:
                    live.turn_scope = None
            if scope.cancelled_caught:
                return None
        if live.history is None:
            # The built-in tools come with the first turn: their modules would cost the
            # first session/new ~15 ms. An MCP tool of the same name still wins.
            live.tools = {tool.name: tool for tool in _builtin_tools()} | live.tools
            live.synced_seq = await service.latest_seq(live.id)
            live.history = model_messages(
                await service.items(live.id, for_model=True), images=images
            )
        problems, live.problems = [*live.problems, *late], []
        return problems

    async def tell(self, live: LiveSession) -> None:
        """Say the session's pending problems now, unless a turn will (it is busy) or
        the client does not know the session yet."""
        if live.busy or not live.announced or live.closed:
            return
        problems, live.problems = live.problems, []
        for problem in problems:
            await self._notify(live.id, problem)


def _builtin_tools() -> list[Tool]:
    from acp_server.agent.tools.registry import builtin_tools

    return list(builtin_tools())
