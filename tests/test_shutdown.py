"""Stopping: stdin EOF and SIGTERM end the process promptly, and a turn in flight is
stored as interrupted with what it had said (the process is the subject: spawned)."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.harness import INIT, raw_server, server_env

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("how", ["eof", "sigterm"])
async def test_a_turn_in_flight_is_stored_as_interrupted(home, workspace, tmp_path, how):
    script = tmp_path / "s.yaml"
    script.write_text(
        "turns:\n  - steps:\n      - message: started on it\n"
        "      - tool_call: {name: write_file, arguments: {path: a.txt, content: x}}\n"
    )
    db = tmp_path / "s.db"
    asked = anyio.Event()

    async def hold(message: dict[str, Any]) -> Any:
        asked.set()
        await anyio.sleep_forever()

    args = ["--database-url", f"sqlite:///{db}", "--provider", f"script:{script}"]
    async with raw_server(args, server_env(home), responder=hold, spawn=True) as server:
        await server.request("initialize", INIT)
        sid = (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
            "result"
        ]["sessionId"]
        await server.start_prompt(sid, "go", "turn")
        with anyio.fail_after(30):
            await asked.wait()
        if how == "eof":
            await server.close_stdin()
        else:
            server.process.send_signal(signal.SIGTERM)
        assert await server.wait() == 0
    with sqlite3.connect(db) as conn:
        turns = [row[0] for row in conn.execute("SELECT status FROM chat_tasks")]
        items = conn.execute("SELECT kind, data FROM session_items ORDER BY seq").fetchall()
    assert turns == ["interrupted"], server.stderr[-3000:]
    assert [kind for kind, _ in items] == ["user", "agent", "tool_call"]
    assert json.loads(items[1][1])["text"] == "started on it"
    assert json.loads(items[2][1])["status"] == "failed"
    assert not (Path(workspace) / "a.txt").exists()
