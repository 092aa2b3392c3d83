"""What a tool is, and what it may reach while it runs.

A tool never sees ACP messages or the connection: it gets a ``ToolContext`` holding the
session's roots and, when the editor offered them, a ``ClientBridge`` for the editor's
file system and terminals. The agent loop reports calls to the editor and asks for
permission; tools only do the work and describe the result.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import anyio.to_thread

from acp_server import errors

T = TypeVar("T")

ToolKind = Literal[
    "read", "edit", "delete", "move", "search", "execute", "think", "fetch", "switch_mode", "other"
]


@dataclass(slots=True)
class ExitStatus:
    exit_code: int | None = None
    signal: str | None = None


class ClientBridge(Protocol):
    """The editor's side of file and terminal access (ACP ``fs/*`` and ``terminal/*``).

    A capability flag is False when the editor did not advertise it; calling that
    method is then a bug.
    """

    can_read: bool
    can_write: bool
    can_terminal: bool

    async def read_text_file(
        self, path: str, line: int | None = None, limit: int | None = None
    ) -> str: ...

    async def write_text_file(self, path: str, content: str) -> None: ...

    async def create_terminal(
        self,
        command: str,
        args: list[str],
        cwd: str,
        env: dict[str, str] | None = None,
        output_byte_limit: int | None = None,
    ) -> str: ...

    async def terminal_output(self, terminal_id: str) -> tuple[str, bool, ExitStatus | None]:
        """(output, truncated, exit status if it has exited)."""
        ...

    async def wait_for_terminal_exit(self, terminal_id: str) -> ExitStatus: ...

    async def kill_terminal(self, terminal_id: str) -> None: ...

    async def release_terminal(self, terminal_id: str) -> None: ...


@dataclass(slots=True)
class ToolContext:
    session_id: str
    cwd: Path
    roots: list[Path]
    """cwd plus additionalDirectories, resolved; no path may leave them."""
    client: ClientBridge | None = None
    command_timeout: float = 120.0
    output_limit: int = 64_000
    report: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None
    """Send interim ACP ToolCallContent (e.g. a live terminal) while the tool runs."""


@dataclass(slots=True)
class ToolOutcome:
    model_text: str
    """What the model reads back."""
    is_error: bool = False
    content: list[dict[str, Any]] = field(default_factory=list)
    """ACP ToolCallContent shown to the user: content/diff/terminal items."""
    raw_output: Any = None


ToolError = errors.ToolError


@runtime_checkable
class Previews(Protocol):
    """A tool that can show what it will do before it runs, so a person approving
    it sees the change (a diff) or the command line first."""

    async def preview(self, arguments: dict[str, Any], ctx: ToolContext) -> list[dict[str, Any]]:
        """ACP ToolCallContent for the permission request; ``ToolError`` when the
        call cannot succeed anyway."""
        ...


class Tool(Protocol):
    name: str
    description: str
    input_schema: dict[str, Any]
    kind: ToolKind
    mutates: bool
    """Changes the workspace or runs commands: asks in ``ask`` mode, refused in
    ``read-only``."""

    def title(self, arguments: dict[str, Any]) -> str: ...

    def locations(self, arguments: dict[str, Any], ctx: ToolContext) -> list[dict[str, Any]]:
        """ACP ToolCallLocation list ({path, line?}) for follow-along UIs."""
        ...

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome: ...


class Abandoned(Exception):
    """Raised in a worker whose caller was cancelled; nobody reads its result."""


async def in_worker(work: Callable[[threading.Event], T]) -> T:
    """``work(stop)`` in a worker thread that a cancelled caller leaves at once.

    Plain ``anyio.to_thread.run_sync`` holds a cancel until the thread returns, so a
    long walk would keep the turn (and its ``session/cancel``) waiting. Here the
    caller goes at once and ``stop`` tells the worker to give up at its next check
    (raise ``Abandoned``).
    """
    stop = threading.Event()
    try:
        return await anyio.to_thread.run_sync(work, stop, abandon_on_cancel=True)
    finally:
        stop.set()
