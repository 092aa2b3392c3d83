"""Drive the real server: raw JSON lines, or the official ACP client.

By default the server runs inside the test's own event loop: ``serve()`` on a pair of
OS pipes, with the settings ``acp-server ARGS`` would build under ENV (no process to
start, and a debugger steps from the test into the turn). ``spawn=True`` starts the
``acp-server`` process instead, for tests whose subject is the process itself
(signals, SIGKILL, exit codes, several processes on one database); setting
``ACP_SERVER_TESTS_SPAWN=1`` spawns for every test.

Every line the server writes is checked either way: it must be JSON-RPC and validate
against the official ACP schema (``wire.py``). A violation fails the test that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream

from tests.wire import WireChecker

if TYPE_CHECKING:
    from acp_server.config.settings import Settings

BIN = Path(sys.executable).parent / "acp-server"
SERVER = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "acp_server"]
SPAWN_ALL = os.environ.get("ACP_SERVER_TESTS_SPAWN") == "1"
LINE_LIMIT = 64 * 1024 * 1024
"""The client's longest line, as large as the official client is given when spawned."""


def server_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: own config/data dirs, no provider keys from the machine."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ACP_SERVER_", "OPENAI_", "ANTHROPIC_", "DATA_RETENTION_"))
    }
    env.update(
        XDG_DATA_HOME=str(home / "data"),
        XDG_CONFIG_HOME=str(home / "config"),
        ACP_SERVER_LOG_LEVEL="debug",
    )
    env.update(extra or {})
    return env


def settings_for(args: list[str], env: Mapping[str, str]) -> Settings:
    """The ``Settings`` that ``acp-server ARGS`` builds under ENV, without touching
    os.environ: the CLI's parser and flags, the loader given ENV, and the database
    default the process would resolve from ENV."""
    from acp_server.cli import build_parser, flags_of
    from acp_server.config.loader import default_database_url, load_settings

    argv = args if args[:1] == ["serve"] else ["serve", *args]
    parsed = build_parser(serve_only=True).parse_args(argv)
    settings = load_settings(flags_of(parsed), env=env, config_file=parsed.config)
    service = settings.session_service
    if service.type == "sql" and not service.database_url:
        service.database_url = default_database_url(env)
    return settings


class _DrainProtocol(asyncio.streams.FlowControlMixin):
    """What ``asyncio.StreamWriter`` needs of a write pipe's protocol (``drain``)."""


async def _pipe_streams(
    read_fd: int, write_fd: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over our ends of the pipes, as the official client makes over a
    spawned agent's stdout and stdin."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        _DrainProtocol, os.fdopen(write_fd, "wb", buffering=0)
    )
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


class InProcess:
    """``serve()`` running as a task of the test's event loop, on a pair of pipes.

    ``reader``/``writer`` are the client's ends; closing ``writer`` is the EOF on stdin
    that ends the server, whose exit code lands in ``returncode``.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.returncode: int | None = None
        self.done = anyio.Event()
        self.logs = io.StringIO()

    @property
    def stderr(self) -> str:
        """What the server logged."""
        return self.logs.getvalue()

    async def close_stdin(self) -> None:
        """Close our end of the server's stdin once what was written has gone out."""
        self.writer.close()

    async def wait(self, timeout: float = 20) -> int:
        with anyio.fail_after(timeout):
            await self.done.wait()
        assert self.returncode is not None
        return self.returncode


@contextlib.asynccontextmanager
async def serve_in_process(args: list[str], env: Mapping[str, str]) -> AsyncIterator[InProcess]:
    """Run the server in this event loop until the body is done and its stdin closed
    (cancelled after 15 s, as a stuck process would be killed)."""
    from acp_server import logs
    from acp_server.server import serve

    settings = settings_for(args, env)
    to_server, from_client = os.pipe()
    to_client, from_server = os.pipe()
    reader, writer = await _pipe_streams(to_client, from_client)
    served = InProcess(reader, writer)

    async def run() -> None:
        logs.to_stream(served.logs)  # this task's context: the server's tasks and threads
        logs.configure(settings.logging.level, settings.logging.format)
        try:
            served.returncode = await serve(
                settings, fd_in=to_server, fd_out=from_server, handle_signals=False
            )
        finally:
            os.close(to_server)
            os.close(from_server)  # the client reads EOF
            served.done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            yield served
        finally:
            await served.close_stdin()
            with anyio.move_on_after(15):
                await served.done.wait()
            tg.cancel_scope.cancel()


Responder = Callable[[dict[str, Any]], Awaitable[Any]]


class _Spawned:
    """The ``acp-server`` process: stdin, stdout, stderr and exit code."""

    def __init__(self, process: anyio.abc.Process):
        self.process = process
        self.stderr = ""

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(data)

    async def output(self) -> AsyncIterator[bytes]:
        assert self.process.stdout is not None
        async for chunk in self.process.stdout:
            yield chunk

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for text in TextReceiveStream(self.process.stderr, errors="replace"):
            self.stderr += text

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.process.stdin.aclose()

    async def wait(self, timeout: float = 20) -> int:
        with anyio.fail_after(timeout):
            return await self.process.wait()

    async def stopped(self) -> None:
        await self.process.wait()


class _Piped:
    """An in-process server seen through its pipes, as a process is through its stdio."""

    def __init__(self, served: InProcess):
        self.served = served

    @property
    def stderr(self) -> str:
        return self.served.stderr

    @property
    def returncode(self) -> int | None:
        return self.served.returncode

    async def send(self, data: bytes) -> None:
        self.served.writer.write(data)
        await self.served.writer.drain()

    async def output(self) -> AsyncIterator[bytes]:
        while chunk := await self.served.reader.read(1 << 16):
            yield chunk

    async def close_stdin(self) -> None:
        await self.served.close_stdin()

    async def wait(self, timeout: float = 20) -> int:
        return await self.served.wait(timeout)

    async def stopped(self) -> None:
        await self.served.done.wait()


class RawServer:
    """The server (in-process or spawned) with a line-level client that answers its
    requests."""

    def __init__(self, peer: _Spawned | _Piped, checker: WireChecker):
        self._peer = peer
        self.checker = checker
        self.messages: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self._arrived = anyio.Condition()
        self._next_id = 1000
        self.responder: Responder | None = None
        self.killed = False

    @property
    def process(self) -> anyio.abc.Process:
        """The spawned process (``raw_server(..., spawn=True)`` only)."""
        if not isinstance(self._peer, _Spawned):
            raise TypeError("this server runs in the test's process; ask for spawn=True")
        return self._peer.process

    @property
    def returncode(self) -> int | None:
        """The exit code, once the server has stopped."""
        return self._peer.returncode

    @property
    def stderr(self) -> str:
        """What the server logged (a process's whole stderr)."""
        return self._peer.stderr

    async def kill(self) -> None:
        """SIGKILL the server, as a crash would, and wait for it to be gone."""
        self.killed = True
        self.process.kill()
        await self.process.wait()

    async def send_raw(self, data: bytes) -> None:
        for line in data.splitlines():
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                message = json.loads(line)
                if isinstance(message, dict):
                    self.checker.sent(message)
        await self._peer.send(data)

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message).encode() + b"\n")

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def start_prompt(self, session_id: str, text: str, request_id: str) -> None:
        """Send a prompt without waiting for its answer (``response(request_id)``)."""
        await self.send(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "session/prompt",
                "params": {"sessionId": session_id, "prompt": [{"type": "text", "text": text}]},
            }
        )

    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30
    ) -> dict[str, Any]:
        """Send a request; return the whole response message (result or error)."""
        self._next_id += 1
        request_id = self._next_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return await self.response(request_id, timeout=timeout)

    async def response(self, request_id: Any, *, timeout: float = 30) -> dict[str, Any]:
        return await self.wait_for(
            lambda m: m.get("id") == request_id and ("result" in m or "error" in m), timeout=timeout
        )

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 30
    ) -> dict[str, Any]:
        """The first message that satisfies ``predicate``; after a first look at all,
        only new arrivals are tried (a flood of 20,000 answers stays linear)."""
        seen = 0
        with anyio.fail_after(timeout):
            async with self._arrived:
                while True:
                    for message in self.messages[seen:]:
                        if predicate(message):
                            return message
                    seen = len(self.messages)
                    await self._arrived.wait()

    def updates(self, session_id: str | None = None) -> list[dict[str, Any]]:
        return [
            m["params"]["update"]
            for m in self.messages
            if m.get("method") == "session/update"
            and (session_id is None or m["params"]["sessionId"] == session_id)
        ]

    async def _read(self) -> None:
        buffer = b""
        async for chunk in self._peer.output():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                await self._take(line)
        if buffer.strip() and not self.killed:  # SIGKILL may cut the last line short
            await self._take(buffer)

    async def _take(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not an object")
            self.checker.received(message)
        except Exception as exc:
            self.violations.append(f"{exc}: {line[:300]!r}")
            return
        if "method" in message and "id" in message:
            await self._answer(message)
        async with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()

    async def _answer(self, message: dict[str, Any]) -> None:
        if self.responder is None:
            reply = {
                "jsonrpc": "2.0",
                "id": message["id"],
                "error": {"code": -32601, "message": "Method not found"},
            }
        else:
            try:
                reply = {
                    "jsonrpc": "2.0",
                    "id": message["id"],
                    "result": await self.responder(message),
                }
            except LookupError as exc:
                reply = {
                    "jsonrpc": "2.0",
                    "id": message["id"],
                    "error": {"code": -32002, "message": str(exc)},
                }
        await self.send_raw(json.dumps(reply).encode() + b"\n")

    async def close_stdin(self) -> None:
        await self._peer.close_stdin()

    async def wait(self, timeout: float = 20) -> int:
        return await self._peer.wait(timeout)


@contextlib.asynccontextmanager
async def _peer(
    args: list[str], env: Mapping[str, str], *, cwd: str | None, spawn: bool
) -> AsyncIterator[_Spawned | _Piped]:
    if not (spawn or SPAWN_ALL or cwd is not None):
        async with serve_in_process(args, env) as served:
            yield _Piped(served)
        return
    process = await anyio.open_process([*SERVER, *args], env=dict(env), cwd=cwd)
    try:
        yield _Spawned(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def raw_server(
    args: list[str],
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    responder: Responder | None = None,
    spawn: bool = False,
) -> AsyncIterator[RawServer]:
    """A server to talk raw JSON lines to: in this event loop, or (``spawn``, or a
    ``cwd`` of its own) the ``acp-server`` process."""
    async with _peer(args, env, cwd=cwd, spawn=spawn) as peer:
        server = RawServer(peer, WireChecker())
        server.responder = responder
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(server._read)
                if isinstance(peer, _Spawned):
                    tg.start_soon(peer.read_stderr)
                try:
                    yield server
                finally:
                    await server.close_stdin()
                    with anyio.move_on_after(15):
                        await peer.stopped()
                    tg.cancel_scope.cancel()
        finally:
            if server.violations:
                raise AssertionError(
                    "the server wrote invalid messages:\n" + "\n".join(server.violations[:5])
                )


INIT = {
    "protocolVersion": 1,
    "clientCapabilities": {
        "fs": {"readTextFile": False, "writeTextFile": False},
        "terminal": False,
    },
}


class RecordingClient:
    """An official-SDK ``Client`` that records updates and answers the agent's requests
    like an editor would: permissions by a fixed choice, fs and terminals for real."""

    def __init__(self, permission: str = "allow_once"):
        self.updates: list[tuple[str, Any]] = []
        self.permission = permission
        self.permission_requests: list[Any] = []
        self.fs_calls: list[tuple[str, str]] = []

    def of(self, session_id: str) -> list[Any]:
        return [update for sid, update in self.updates if sid == session_id]

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append((session_id, update))

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any
    ) -> Any:
        from acp.schema import AllowedOutcome, DeniedOutcome, RequestPermissionResponse

        self.permission_requests.append(tool_call)
        if self.permission == "cancelled":
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=self.permission)
        )

    async def read_text_file(
        self,
        session_id: str,
        path: str,
        line: int | None = None,
        limit: int | None = None,
        **kwargs: Any,
    ) -> Any:
        from acp.schema import ReadTextFileResponse

        self.fs_calls.append(("read", path))
        lines = Path(path).read_text().splitlines(keepends=True)
        start = (line or 1) - 1
        return ReadTextFileResponse(
            content="".join(lines[start : start + limit if limit else None])
        )

    async def write_text_file(self, session_id: str, path: str, content: str, **kwargs: Any) -> Any:
        from acp.schema import WriteTextFileResponse

        self.fs_calls.append(("write", path))
        Path(path).write_text(content)
        return WriteTextFileResponse()


@contextlib.asynccontextmanager
async def acp_client(
    args: list[str],
    env: Mapping[str, str],
    client: Any | None = None,
    *,
    unstable: bool = True,
    spawn: bool = False,
) -> AsyncIterator[tuple[Any, Any, WireChecker]]:
    """Connect the official ACP client to the server, yielding (connection, server,
    checker); every message the server writes is validated against the schema through
    the client's stream observer. The server runs in this event loop (an ``InProcess``)
    or, with ``spawn``, is the ``acp-server`` process."""
    from acp import spawn_agent_process
    from acp.client.connection import ClientSideConnection
    from acp.connection import StreamDirection

    checker = WireChecker()
    violations: list[str] = []

    def observe(event: Any) -> None:
        try:
            if event.direction == StreamDirection.OUTGOING:
                checker.sent(event.message)
            else:
                checker.received(event.message)
        except AssertionError as exc:
            violations.append(str(exc))

    client = client or RecordingClient()
    if spawn or SPAWN_ALL:
        async with spawn_agent_process(
            client,
            *SERVER,
            *args,
            env=dict(env),
            transport_kwargs={"limit": LINE_LIMIT},
            observers=[observe],
            use_unstable_protocol=unstable,
        ) as (connection, process):
            yield connection, process, checker
    else:
        async with serve_in_process(args, env) as served:
            # As spawn_agent_process builds it over a process's stdout and stdin.
            connection = ClientSideConnection(
                client,
                served.writer,
                served.reader,
                observers=[observe],
                use_unstable_protocol=unstable,
            )
            try:
                yield connection, served, checker
            finally:
                await connection.close()
    if violations:
        raise AssertionError("the server wrote invalid messages:\n" + "\n".join(violations[:5]))
