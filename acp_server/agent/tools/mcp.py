"""Per-session MCP extensions: the servers an editor names in ``session/new``, as tools.

The SDK's client contexts hold anyio task groups, so each connection is entered and
left by one task. All of a session's connection tasks live under one owner task,
started in the session's task group: closing the extensions, or cancelling that
group, ends every connection and stops every server process, including one still
starting.

Servers start in the background, so a slow one never holds up the session: each
server's tools are handed over (``on_ready``) when it has answered the handshake, and
one that fails is reported (``on_problem``) when it fails.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import anyio
import anyio.abc
import httpx2
import mcp.types as types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from acp_server import __version__
from acp_server.agent.tools import reaper
from acp_server.agent.tools.base import Tool, ToolContext, ToolError, ToolKind, ToolOutcome
from acp_server.logs import get_logger
from acp_server.sessions.redaction import hide, redact_url, secrets_of

log = get_logger(__name__)

CLIENT_INFO = types.Implementation(name="acp-server", version=__version__)
MAX_TOOL_NAME = 64
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")
_EXTRA_INHERITED_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TMPDIR")
"""Added to the SDK's minimal inherited environment (HOME, LOGNAME, PATH, SHELL, TERM,
USER) so a server decodes text and finds a temp folder as the user's shell would."""
_MAX_TOOL_PAGES = 100
_CLOSE_TIMEOUT = 15.0
"""Bounds aclose: the SDK's own stdio shutdown escalates over at most about 6 s."""
_TERM_GRACE = 1.0
"""From SIGTERM to SIGKILL for a server whose supervisor is told to stop; below the
SDK's own 2 s, after which it would SIGKILL the supervisor before it cleaned up."""
_HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
"""The SDK's own defaults for its HTTP client: a server may hold a response stream open."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One ``mcpServers`` entry from ACP, checked."""

    name: str
    transport: Literal["stdio", "http"]
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    """Masked in whatever is said or logged about this server."""


def parse_servers(servers: list[dict[str, Any]]) -> tuple[list[ServerSpec], list[str]]:
    """The usable entries, and a sentence for each one that cannot be used."""
    specs: list[ServerSpec] = []
    problems: list[str] = []
    seen: set[str] = set()
    for entry in servers:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip():
            problems.append("An MCP server entry has no name, so it was skipped.")
            continue
        kind = entry.get("type", "stdio")
        if _UNSAFE_NAME.sub("_", name) in seen:
            problems.append(f"MCP server '{name}' is listed twice; only the first entry is used.")
            continue
        try:
            if kind == "stdio":
                spec = ServerSpec(
                    name,
                    "stdio",
                    command=_text(entry, "command"),
                    args=tuple(str(arg) for arg in entry.get("args") or ()),
                    env=_pairs(entry.get("env")),
                    secrets=secrets_of(entry),
                )
            elif kind == "http":
                url = _text(entry, "url")
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"its url {redact_url(url)!r} is not an http(s) address")
                spec = ServerSpec(
                    name,
                    "http",
                    url=url,
                    headers=_pairs(entry.get("headers")),
                    secrets=secrets_of(entry),
                )
            else:
                problems.append(
                    f"MCP server '{name}' uses the {kind!r} transport, which this agent does not "
                    "support; configure it as a stdio or HTTP server."
                )
                continue
        except ValueError as exc:
            problems.append(f"MCP server '{name}' was skipped: {exc}.")
            continue
        seen.add(_UNSAFE_NAME.sub("_", name))
        specs.append(spec)
    return specs, problems


def _text(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"it has no {key}")
    return value


def _pairs(items: Any) -> dict[str, str]:
    """ACP's ``[{name, value}]`` lists (env, headers) as a dict."""
    pairs: dict[str, str] = {}
    for item in items or ():
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError("an env or header item has no name")
        pairs[item["name"]] = str(item.get("value", ""))
    return pairs


def tool_name(server: str, tool: str) -> str:
    """``server__tool`` in the characters and length every model API accepts."""
    name = _UNSAFE_NAME.sub("_", f"{server}__{tool}")
    if len(name) <= MAX_TOOL_NAME:
        return name
    return _hashed(name, server, tool)


def _hashed(name: str, server: str, tool: str) -> str:
    digest = hashlib.sha1(f"{server}\0{tool}".encode()).hexdigest()[:8]
    return f"{name[: MAX_TOOL_NAME - 9]}_{digest}"


class _Connection:
    """One server's live session and tools; ``session`` is None until it is ready and
    once it is closed. ``settled`` is set when it is ready or will never be."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.session: ClientSession | None = None
        self.tools: list[McpTool] = []
        self.starting = anyio.CancelScope()
        """Bounds the start; cancelled when the extensions close before it is ready."""
        self.settled = anyio.Event()

    def attach(self, session: ClientSession, listed: list[types.Tool]) -> None:
        used: set[str] = set()
        for remote in listed:
            name = tool_name(self.spec.name, remote.name)
            if name in used:
                name = _hashed(name, self.spec.name, remote.name)
            used.add(name)
            self.tools.append(McpTool(self, remote, name))
        self.session = session

    def detach(self) -> None:
        self.session = None


class SessionExtensions:
    """One session's MCP connections.

    Owned by one task (anyio requires MCP client contexts to be entered and exited in
    the same task), so ``start()`` spawns that owner task in the given task group.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        cwd: Path | None,
        errlog: TextIO,
        on_ready: Callable[[list[Tool]], None] | None,
        on_problem: Callable[[str], Awaitable[None]] | None,
    ) -> None:
        self.problems: list[str] = []
        self._connect_timeout = connect_timeout
        self._cwd = cwd
        self._errlog = errlog
        self._on_ready = on_ready
        self._on_problem = on_problem
        self._connections: list[_Connection] = []
        self._stop = anyio.Event()
        self._done = anyio.Event()

    @classmethod
    def start(
        cls,
        servers: list[dict[str, Any]],
        tg: anyio.abc.TaskGroup,
        *,
        connect_timeout: float = 20.0,
        cwd: Path | None = None,
        errlog: TextIO | None = None,
        on_ready: Callable[[list[Tool]], None] | None = None,
        on_problem: Callable[[str], Awaitable[None]] | None = None,
    ) -> SessionExtensions:
        """Start connecting to every server at once, in the background; return at once.

        ``problems`` then holds a sentence for each entry that cannot be used. Each
        server that completes the handshake within ``connect_timeout`` gives its tools
        to ``on_ready``; one that does not becomes a sentence in ``problems``, also
        given to ``on_problem``, and never fails the others or the session. ``cwd`` is
        where stdio servers run (the session cwd); their stderr goes to ``errlog`` (our
        stderr), never to our stdout.
        """
        self = cls(
            connect_timeout=connect_timeout,
            cwd=cwd,
            errlog=errlog or _stderr(),
            on_ready=on_ready,
            on_problem=on_problem,
        )
        specs, self.problems = parse_servers(servers)
        self._connections = [_Connection(spec) for spec in specs]
        tg.start_soon(self._own)
        return self

    def tools(self) -> list[Tool]:
        return [
            tool for conn in self._connections if conn.session is not None for tool in conn.tools
        ]

    @property
    def connected(self) -> list[str]:
        """Names of the servers that completed the MCP handshake and are still open."""
        return [conn.spec.name for conn in self._connections if conn.session is not None]

    @property
    def starting(self) -> list[str]:
        """Names of the servers neither ready nor failed yet."""
        return [conn.spec.name for conn in self._connections if not conn.settled.is_set()]

    async def settle(self, seconds: float) -> list[str]:
        """Wait up to ``seconds`` for the servers still starting, so a turn can
        offer their tools; a sentence for each one it has to go on without."""
        with anyio.move_on_after(seconds):
            for conn in self._connections:
                await conn.settled.wait()
        return [
            f"MCP server '{name}' is still starting; its tools will be offered to the model "
            "once it is ready."
            for name in self.starting
        ]

    async def aclose(self) -> None:
        """Close every connection, abandon every start, and wait until the server
        processes are gone.

        Callable from any task, any number of times.
        """
        self._stop.set()
        for conn in self._connections:
            if not conn.settled.is_set():
                conn.starting.cancel()
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await self._done.wait()

    async def _own(self) -> None:
        try:
            if not self._stop.is_set():
                async with anyio.create_task_group() as connections:
                    for conn in self._connections:
                        connections.start_soon(self._serve, conn)
        finally:
            for conn in self._connections:
                conn.detach()
                conn.settled.set()
            self._done.set()

    async def _serve(self, conn: _Connection) -> None:
        """Connect, hand over the tools, hold the connection until asked to stop."""
        spec = conn.spec
        problem: str | None = None
        try:
            conn.starting.deadline = anyio.current_time() + self._connect_timeout
            with conn.starting:
                try:
                    async with AsyncExitStack() as stack:
                        session = await self._open(stack, spec)
                        listed = await _list_tools(session)
                        conn.starting.deadline = math.inf
                        conn.attach(session, listed)
                        conn.settled.set()
                        log.info("mcp_server_ready", server=spec.name, tools=len(conn.tools))
                        if self._on_ready is not None:
                            self._on_ready(list(conn.tools))
                        await self._stop.wait()
                except* Exception as failure:
                    # except*: an error beside our own deadline's cancellation is still
                    # this server's problem, never the session's.
                    if conn.settled.is_set():
                        # The error, not its traceback: URLs with their tokens sit in both.
                        reason = hide(describe_error(failure), spec.secrets)
                        log.warning("mcp_server_failed", server=spec.name, error=reason)
                    else:
                        problem = hide(describe_error(failure), spec.secrets)
            if conn.starting.cancelled_caught and problem is None and not conn.settled.is_set():
                problem = (
                    f"it did not complete the MCP handshake within {self._connect_timeout:g} s."
                )
            if problem is not None and not self._stop.is_set():
                failing = (
                    "could not start"
                    if spec.transport == "stdio"
                    else f"could not connect to {redact_url(spec.url)}"
                )
                await self._report(f"MCP server '{spec.name}' {failing}: {problem}")
        finally:
            conn.detach()
            conn.settled.set()

    async def _report(self, problem: str) -> None:
        """Record a failed start and pass it on; a reporter that fails is only logged."""
        self.problems.append(problem)
        if self._on_problem is None:
            return
        try:
            await self._on_problem(problem)
        except Exception:
            log.warning("mcp_problem_not_reported", problem=problem, exc_info=True)

    async def _open(self, stack: AsyncExitStack, spec: ServerSpec) -> ClientSession:
        if spec.transport == "stdio":
            env = _environment(spec.env)
            argv = [spec.command, *spec.args]
            if reaper.SUPPORTED:
                _check_executable(spec.command, env, self._cwd)
                argv = reaper.supervised(argv, term_grace=_TERM_GRACE)
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=self._cwd)
            read, write = await stack.enter_async_context(stdio_client(params, self._errlog))
        else:
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=spec.headers, timeout=_HTTP_TIMEOUT)
            )
            read, write = await stack.enter_async_context(
                streamable_http_client(spec.url, http_client=http)
            )
        session = await stack.enter_async_context(
            ClientSession(read, write, client_info=CLIENT_INFO)
        )
        await session.initialize()
        return session


async def _list_tools(session: ClientSession) -> list[types.Tool]:
    capabilities = session.server_capabilities
    if capabilities is not None and capabilities.tools is None:
        return []
    listed: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_TOOL_PAGES):
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        listed.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return listed


def _check_executable(command: str, env: dict[str, str], cwd: Path | None) -> None:
    """Fail as exec would, naming the command: under the supervisor, a failed exec
    would only be an early exit."""
    path = env.get("PATH", os.environ.get("PATH", os.defpath))
    if os.sep in command:
        candidate = Path(cwd or ".", command)
        found = str(candidate) if candidate.exists() else None
    else:
        found = shutil.which(command, mode=os.F_OK, path=path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)
    if os.path.isdir(found) or not os.access(found, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), command)


def _environment(given: dict[str, str]) -> dict[str, str]:
    inherited = {key: os.environ[key] for key in _EXTRA_INHERITED_ENV if key in os.environ}
    return inherited | given


def _stderr() -> TextIO:
    """Our stderr when it is a real file (the child needs a descriptor), else the original."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__ or sys.stderr
    return sys.stderr


def describe_error(exc: BaseException) -> str:
    """One plain sentence for why a connection or call failed."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, FileNotFoundError) and exc.filename:
        text = f"{exc.filename}: no such file"
    elif isinstance(exc, PermissionError) and exc.filename:
        text = f"{exc.filename}: permission denied"
    elif isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror.lower()}"
    elif isinstance(exc, MCPError) and exc.code == types.CONNECTION_CLOSED:
        text = "the server closed the connection (it may have exited)"
    elif isinstance(exc, MCPError):
        text = exc.message
    else:
        text = str(exc) or type(exc).__name__
    return text.rstrip(".") + "."


class McpTool:
    """One MCP tool, offered to the model as ``server__tool``."""

    def __init__(self, conn: _Connection, remote: types.Tool, name: str) -> None:
        hints = remote.annotations
        read_only = bool(hints and hints.read_only_hint)
        self.name = name
        self.description = (
            remote.description or f"{remote.name} (from MCP server '{conn.spec.name}')"
        )
        self.input_schema: dict[str, Any] = remote.input_schema or {"type": "object"}
        self.kind: ToolKind = "read" if read_only else "other"
        self.mutates = not read_only  # unknown side effects ask first
        self.server = conn.spec.name
        self.remote_name = remote.name
        self._label = remote.title or (hints.title if hints else None) or remote.name
        self._conn = conn

    def title(self, arguments: dict[str, Any]) -> str:
        return f"{self._label} ({self.server})"

    def locations(self, arguments: dict[str, Any], ctx: ToolContext) -> list[dict[str, Any]]:
        return []

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        session = self._conn.session
        stopped = (
            f"MCP server '{self.server}' has stopped, so its tool {self.remote_name} cannot run."
        )
        if session is None:
            raise ToolError(stopped)
        try:
            result = await session.call_tool(
                self.remote_name, arguments, read_timeout_seconds=ctx.command_timeout
            )
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                raise ToolError(stopped) from None
            if exc.code == types.REQUEST_TIMEOUT:
                raise ToolError(
                    f"MCP server '{self.server}' did not answer {self.remote_name} "
                    f"within {ctx.command_timeout:g} s."
                ) from None
            raise ToolError(
                f"MCP server '{self.server}' refused {self.remote_name}: {self._describe(exc)}"
            ) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ToolError(stopped) from None
        except Exception as exc:
            raise ToolError(
                f"MCP server '{self.server}' failed to run {self.remote_name}: "
                f"{self._describe(exc)}"
            ) from None
        return to_outcome(result)

    def _describe(self, exc: BaseException) -> str:
        """The error without the server's secrets: the model and the transcript see it."""
        return hide(describe_error(exc), self._conn.spec.secrets)


def to_outcome(result: types.CallToolResult) -> ToolOutcome:
    """MCP content for the model (text) and for the user (ACP content blocks).

    MCP and ACP content blocks share one shape, so each is passed on as is.
    """
    texts: list[str] = []
    content: list[dict[str, Any]] = []
    for block in result.content:
        wire = block.model_dump(by_alias=True, exclude_none=True, mode="json")
        content.append({"type": "content", "content": wire})
        texts.append(_model_text(block))
    if not texts and result.structured_content is not None:
        texts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return ToolOutcome(
        "\n".join(texts) if texts else "(no output)",
        is_error=result.is_error,
        content=content,
        raw_output=result.structured_content,
    )


def _model_text(block: types.ContentBlock) -> str:
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent):
        return f"[image: {block.mime_type}]"
    if isinstance(block, types.AudioContent):
        return f"[audio: {block.mime_type}]"
    if isinstance(block, types.ResourceLink):
        return f"[resource link: {block.name} <{block.uri}>]"
    resource = block.resource
    if isinstance(resource, types.TextResourceContents):
        return f"[resource {resource.uri}]\n{resource.text}"
    return f"[binary resource {resource.uri} ({resource.mime_type or 'unknown type'})]"
