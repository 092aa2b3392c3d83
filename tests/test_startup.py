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


async def _send(process: anyio.abc.Process, out: _Output, message: dict[str, Any]) -> None:
    assert process.stdin is not None
    out.checker.sent(message)
    await process.stdin.send(json.dumps(message).encode() + b"\n")


async def test_nothing_but_transport_settings_and_the_answer_loads_before_initialize(
    home: Path, workspace: Path
) -> None:
    env = server_env(home, {"PYTHONPROFILEIMPORTTIME": "1"})
    process = await anyio.open_process(SERVER, env=env, stderr=subprocess.STDOUT)
    try:
        with anyio.fail_after(60):
            out = _Output(process)
            await _send(
                process, out, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT}
            )
            answer = await out.until_answer(1)
            assert answer["result"]["protocolVersion"] == 1
            before = list(out.imported)

            await _send(
                process,
                out,
                {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "session/new",
                    "params": {"cwd": str(workspace), "mcpServers": []},
                },
            )
            created = await out.until_answer(2)
            assert "sessionId" in created["result"], created
    finally:
        if process.stdin is not None:
            await process.stdin.aclose()
        with anyio.move_on_after(15):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()

    # The import lines were read: the transport is there, before the answer.
    assert "acp_server.transport.rpc" in before
    assert [name for name in before if _later(name)] == []
    # and what was held back did load, for the session.
    assert {"sqlalchemy", "acp_server.sessions.live"} <= set(out.imported)
