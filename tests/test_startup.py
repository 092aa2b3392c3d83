"""Start-up: until ``initialize`` is answered the server holds only the transport, the
settings and what that answer is built from; the rest loads after it.

The server runs with ``PYTHONPROFILEIMPORTTIME=1`` and its stderr merged into its
stdout, so each finished import's line and each protocol message come out of one pipe
in the order they happened: every module named before the ``initialize`` answer had
been imported before that answer was written.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from tests.harness import INIT, SERVER, server_env
from tests.wire import WireChecker

pytestmark = pytest.mark.anyio

LATER = (
    "sqlalchemy",
    "aiosqlite",
    "alembic",
    "httpx",
    "mcp",
    "structlog",
    "acp_server.storage",
    "acp_server.sessions",
    "acp_server.agent",
)
"""Packages (and their submodules) that must not load before ``initialize`` is answered:
the store and its driver, the session machinery, the turn loop, tools and providers."""


def _later(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in LATER)


class _Output:
    """The server's merged stdout and stderr: protocol messages and import lines."""

    def __init__(self, process: anyio.abc.Process):
        assert process.stdout is not None
        self.stream = process.stdout
        self.checker = WireChecker()
        self.buffer = b""
        self.imported: list[str] = []

    async def until_answer(self, request_id: int) -> dict[str, Any]:
        """Read up to the answer to ``request_id``; every message on the way is checked
        against the ACP schema, every finished import is recorded."""
        while True:
            while b"\n" not in self.buffer:
                self.buffer += await self.stream.receive()
            line, self.buffer = self.buffer.split(b"\n", 1)
            text = line.decode(errors="replace")
            if text.startswith("import time:"):
                name = text.rsplit("|", 1)[-1].strip()
                if name != "imported package":
                    self.imported.append(name)
            elif text.startswith("{"):
                message = json.loads(text)
                self.checker.received(message)
                if message.get("id") == request_id:
                    return message


async def _request(
    process: anyio.abc.Process, out: _Output, request_id: int, method: str, params: Any
) -> dict[str, Any]:
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    out.checker.sent(message)
    assert process.stdin is not None
    await process.stdin.send(json.dumps(message).encode() + b"\n")
    answer = await out.until_answer(request_id)
    assert "result" in answer, answer
    return answer["result"]


async def test_initialize_is_answered_before_the_store_and_sessions_load(
    home: Path, workspace: Path
) -> None:
    env = server_env(home, {"PYTHONPROFILEIMPORTTIME": "1"})
    process = await anyio.open_process(SERVER, env=env, stderr=subprocess.STDOUT)
    try:
        with anyio.fail_after(60):
            out = _Output(process)
            await _request(process, out, 1, "initialize", INIT)
            at_initialize = list(out.imported)
            new = {"cwd": str(workspace), "mcpServers": []}
            session_id = (await _request(process, out, 2, "session/new", new))["sessionId"]
            at_session_new = list(out.imported)
            prompt = {"sessionId": session_id, "prompt": [{"type": "text", "text": "hi"}]}
            await _request(process, out, 3, "session/prompt", prompt)
    finally:
        if process.stdin is not None:
            await process.stdin.aclose()
        with anyio.move_on_after(15):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()

    # The import lines were read: the transport is there, before the answer.
    assert "acp_server.transport.rpc" in at_initialize
    assert [name for name in at_initialize if _later(name)] == []
    # What was held back loads for the first session; the built-in tools with its
    # first turn.
    assert {"sqlalchemy", "acp_server.sessions.live"} <= set(at_session_new)
    tools = {"acp_server.agent.tools.files", "acp_server.agent.tools.search"}
    assert not tools & set(at_session_new)
    assert tools <= set(out.imported)
