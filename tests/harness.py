"""Drive the real ``acp-server`` process: raw JSON lines, or the official ACP client.

Every line the server writes is checked: it must be JSON-RPC and validate against the
official ACP schema (``wire.py``). A violation fails the test that caused it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream

from tests.wire import WireChecker

BIN = Path(sys.executable).parent / "acp-server"
SERVER = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "acp_server"]


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


Responder = Callable[[dict[str, Any]], Awaitable[Any]]


class RawServer:
    """The server process with a line-level client that answers its requests."""

    def __init__(self, process: anyio.abc.Process, checker: WireChecker):
        self.process = process
        self.checker = checker
        self.messages: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.stderr = ""
        self._arrived = anyio.Condition()
        self._next_id = 1000
        self.responder: Responder | None = None
        self.killed = False

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
        assert self.process.stdin is not None
        await self.process.stdin.send(data)

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message).encode() + b"\n")

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})

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
        with anyio.fail_after(timeout):
            async with self._arrived:
                while True:
                    for message in self.messages:
                        if predicate(message):
                            return message
                    await self._arrived.wait()

    def updates(self, session_id: str | None = None) -> list[dict[str, Any]]:
        return [
            m["params"]["update"]
            for m in self.messages
            if m.get("method") == "session/update"
            and (session_id is None or m["params"]["sessionId"] == session_id)
        ]

    async def _read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
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

    async def _read_stderr(self) -> None:
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


@contextlib.asynccontextmanager
async def raw_server(
    args: list[str],
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    responder: Responder | None = None,
) -> AsyncIterator[RawServer]:
    process = await anyio.open_process([*SERVER, *args], env=dict(env), cwd=cwd)
    server = RawServer(process, WireChecker())
    server.responder = responder
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server._read)
            tg.start_soon(server._read_stderr)
            try:
                yield server
            finally:
                await server.close_stdin()
                with anyio.move_on_after(15):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
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
    args: list[str], env: Mapping[str, str], client: Any | None = None, *, unstable: bool = True
) -> AsyncIterator[tuple[Any, Any, WireChecker]]:
    """Spawn the server and connect the official ACP client; every message the server
    writes is validated against the schema through the client's stream observer."""
    from acp import spawn_agent_process
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
    async with spawn_agent_process(
        client,
        *SERVER,
        *args,
        env=dict(env),
        transport_kwargs={"limit": 64 * 1024 * 1024},
        observers=[observe],
        use_unstable_protocol=unstable,
    ) as (connection, process):
        yield connection, process, checker
    if violations:
        raise AssertionError("the server wrote invalid messages:\n" + "\n".join(violations[:5]))
