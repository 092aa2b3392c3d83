"""Tools through the real server: editor fs/terminal, local fallback, sandbox, permissions, MCP."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.harness import INIT, raw_server, server_env

pytestmark = pytest.mark.anyio

ECHO_SERVER = Path(__file__).resolve().parent / "mcp_servers" / "echo_server.py"


def script(tmp_path: Path, steps_per_turn: list[list[str]]) -> str:
    lines = ["turns:"]
    for steps in steps_per_turn:
        lines.append("  - steps:")
        lines += [f"      - {step}" for step in steps]
    path = tmp_path / f"script-{len(list(tmp_path.glob('script-*')))}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return f"script:{path}"


def prompt(sid: str, text: str = "go") -> dict[str, Any]:
    return {"sessionId": sid, "prompt": [{"type": "text", "text": text}]}


def final_calls(server, sid: str) -> dict[str, dict[str, Any]]:
    calls: dict[str, dict[str, Any]] = {}
    for update in server.updates(sid):
        if update["sessionUpdate"] in ("tool_call", "tool_call_update"):
            calls.setdefault(update["toolCallId"], {}).update(update)
    return calls


class Editor:
    """Answers the agent's fs/terminal/permission requests like an editor."""

    def __init__(self, permission: str = "allow_once"):
        self.permission = permission
        self.calls: list[str] = []
        self.terminals: dict[str, Any] = {}

    async def __call__(self, message: dict[str, Any]) -> Any:
        method, params = message["method"], message["params"]
        self.calls.append(method)
        if method == "session/request_permission":
            if self.permission == "cancelled":
                return {"outcome": {"outcome": "cancelled"}}
            return {"outcome": {"outcome": "selected", "optionId": self.permission}}
        if method == "fs/read_text_file":
            return {"content": "EDITOR BUFFER: " + Path(params["path"]).read_text()}
        if method == "fs/write_text_file":
            Path(params["path"]).write_text(params["content"])
            return {}
        if method == "terminal/create":
            import subprocess

            done = subprocess.run(
                [params["command"], *params["args"]],
                cwd=params["cwd"],
                capture_output=True,
                text=True,
            )
            tid = f"t{len(self.terminals)}"
            self.terminals[tid] = done
            return {"terminalId": tid}
        if method == "terminal/wait_for_exit":
            return {"exitCode": self.terminals[params["terminalId"]].returncode}
        if method == "terminal/output":
            done = self.terminals[params["terminalId"]]
            return {
                "output": done.stdout + done.stderr,
                "truncated": False,
                "exitStatus": {"exitCode": done.returncode},
            }
        if method in ("terminal/release", "terminal/kill"):
            return {}
        raise LookupError(method)


EDITOR_INIT = {
    "protocolVersion": 1,
    "clientCapabilities": {"fs": {"readTextFile": True, "writeTextFile": True}, "terminal": True},
}


async def test_tools_go_through_the_editor_when_it_offers_fs_and_terminal(
    home, workspace, tmp_path
):
    provider = script(
        tmp_path,
        [
            [
                "tool_call: {name: read_file, arguments: {path: README.md}}",
                "tool_call: {name: write_file, arguments: {path: notes.txt, content: hello}}",
                "tool_call: {name: run_command, arguments: {command: 'echo from-terminal'}}",
                "message: done",
            ]
        ],
    )
    editor = Editor()
    async with raw_server(
        ["--memory", "--provider", provider], server_env(home), responder=editor
    ) as server:
        await server.request("initialize", EDITOR_INIT)
        sid = (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
            "result"
        ]["sessionId"]
        await server.request("session/set_mode", {"sessionId": sid, "modeId": "auto"})
        assert (await server.request("session/prompt", prompt(sid)))["result"][
            "stopReason"
        ] == "end_turn"
        calls = list(final_calls(server, sid).values())
        # Reloaded later, the command's output is shown, not the old client's terminal.
        await server.request("session/close", {"sessionId": sid})
        before = len(server.updates(sid))
        load = {"sessionId": sid, "cwd": str(workspace), "mcpServers": []}
        assert "result" in await server.request("session/load", load)
        replayed = [u for u in server.updates(sid)[before:] if u["sessionUpdate"] == "tool_call"]
    assert "from-terminal" in str(replayed[2]["content"])
    assert not any(item["type"] == "terminal" for item in replayed[2]["content"])
    assert editor.calls.count("fs/read_text_file") >= 1 and "fs/write_text_file" in editor.calls
    assert ["terminal/create", "terminal/wait_for_exit", "terminal/output", "terminal/release"] == [
        c for c in editor.calls if c.startswith("terminal/")
    ]
    assert (workspace / "notes.txt").read_text() == "hello"
    assert "EDITOR BUFFER" in str(calls[0]["content"])
    assert any(item["type"] == "diff" for item in calls[1]["content"])
    assert any(item["type"] == "terminal" for item in calls[2]["content"])
    assert all(c["status"] == "completed" for c in calls)


async def test_tools_run_locally_without_editor_capabilities_and_stay_in_the_roots(
    home, workspace, tmp_path
):
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret")
    (workspace / "link").symlink_to(outside)
    provider = script(
        tmp_path,
        [
            [
                "tool_call: {name: run_command, arguments: {command: pwd}}",
                f"tool_call: {{name: read_file, arguments: {{path: {outside}}}}}",
                "tool_call: {name: read_file, arguments: {path: ../secret.txt}}",
                "tool_call: {name: read_file, arguments: {path: link}}",
                "message: done",
            ]
        ],
    )
    async with raw_server(["--memory", "--provider", provider], server_env(home)) as server:
        await server.request("initialize", INIT)
        sid = (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
            "result"
        ]["sessionId"]
        await server.request("session/set_mode", {"sessionId": sid, "modeId": "auto"})
        await server.request("session/prompt", prompt(sid))
        calls = list(final_calls(server, sid).values())
    assert str(workspace) in str(calls[0]["content"]) and calls[0]["status"] == "completed"
    for refused in calls[1:]:
        assert refused["status"] == "failed"
        assert "top secret" not in str(refused)
        assert "outside" in str(refused["content"])


async def test_permission_modes_and_always_surviving_a_restart(home, workspace, tmp_path):
    write = "tool_call: {name: write_file, arguments: {path: out.txt, content: x}}"
    provider = script(
        tmp_path,
        [
            [write, "message: a"],
            [write, "message: b"],
            [write, "message: c"],
            [write, "message: d"],
        ],
    )
    db = f"sqlite:///{tmp_path / 'p.db'}"
    args = ["--database-url", db, "--provider", provider]

    editor = Editor("reject_once")
    async with raw_server(args, server_env(home), responder=editor) as server:
        await server.request("initialize", INIT)
        sid = (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
            "result"
        ]["sessionId"]
        await server.request("session/prompt", prompt(sid))
        assert editor.calls == ["session/request_permission"]
        assert not (workspace / "out.txt").exists()
        assert "rejected" in str(final_calls(server, sid)["call_1_1"])
        editor.permission = "allow_always"
        await server.request("session/prompt", prompt(sid))
        assert (workspace / "out.txt").exists()

    editor = Editor("reject_once")
    async with raw_server(args, server_env(home), responder=editor) as server:
        await server.request("initialize", INIT)
        await server.request(
            "session/load", {"sessionId": sid, "cwd": str(workspace), "mcpServers": []}
        )
        (workspace / "out.txt").unlink()
        await server.request("session/prompt", prompt(sid))
        assert editor.calls == [], "allow_always must be remembered across restarts"
        assert (workspace / "out.txt").exists()
        await server.request("session/set_mode", {"sessionId": sid, "modeId": "read-only"})
        (workspace / "out.txt").unlink()
        await server.request("session/prompt", prompt(sid))
        assert not (workspace / "out.txt").exists()
        assert "read-only" in str(final_calls(server, sid)["call_4_1"]["content"])


async def test_a_cancelled_permission_aborts_the_tool_and_the_turn(home, workspace, tmp_path):
    provider = script(
        tmp_path,
        [
            [
                "tool_call: {name: write_file, arguments: {path: out.txt, content: x}}",
                "message: never",
            ]
        ],
    )
    async with raw_server(
        ["--memory", "--provider", provider], server_env(home), responder=Editor("cancelled")
    ) as server:
        await server.request("initialize", INIT)
        sid = (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
            "result"
        ]["sessionId"]
        reply = await server.request("session/prompt", prompt(sid))
        assert reply["result"]["stopReason"] == "cancelled"
        assert final_calls(server, sid)["call_1_1"]["status"] == "failed"
    assert not (workspace / "out.txt").exists()


async def test_mcp_servers_are_per_session_and_stopped_on_close(home, workspace, tmp_path):
    server_a = {"name": "alpha", "command": sys.executable, "args": [str(ECHO_SERVER)], "env": []}
    provider = script(
        tmp_path,
        [
            ["tool_call: {name: alpha__pid, arguments: {}}", "message: a"],
            ["tool_call: {name: alpha__pid, arguments: {}}", "message: b"],
        ],
    )
    async with raw_server(["--memory", "--provider", provider], server_env(home)) as server:
        await server.request("initialize", INIT)
        with_mcp = (
            await server.request("session/new", {"cwd": str(workspace), "mcpServers": [server_a]})
        )["result"]["sessionId"]
        without = (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
            "result"
        ]["sessionId"]
        for sid in (with_mcp, without):
            await server.request("session/set_mode", {"sessionId": sid, "modeId": "auto"})
            await server.request("session/prompt", prompt(sid))
        mine = final_calls(server, with_mcp)["call_1_1"]
        theirs = final_calls(server, without)["call_1_1"]
        assert mine["status"] == "completed"
        assert theirs["status"] == "failed", "a session must never see another session's MCP tools"
        pid = int(mine["content"][0]["content"]["text"].strip())
        assert _alive(pid)
        await server.request("session/close", {"sessionId": with_mcp})
        assert not _alive(pid), "the session's MCP server must stop when the session closes"


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status


async def test_a_broken_mcp_server_is_reported_and_the_session_works(home, workspace, tmp_path):
    broken = {"name": "gh", "command": "/nonexistent/ghx", "args": [], "env": []}
    async with raw_server(["--memory"], server_env(home)) as server:
        await server.request("initialize", INIT)
        sid = (
            await server.request("session/new", {"cwd": str(workspace), "mcpServers": [broken]})
        )["result"]["sessionId"]
        reply = await server.request("session/prompt", prompt(sid, "hello"))
        assert reply["result"]["stopReason"] == "end_turn"
        said = "".join(
            u["content"]["text"]
            for u in server.updates(sid)
            if u["sessionUpdate"] == "agent_message_chunk"
        )
        assert "gh" in said and "could not start" in said


async def test_resume_restores_the_sessions_mcp_servers_except_those_with_secrets(
    home, workspace, tmp_path
):
    plain = {"name": "alpha", "command": sys.executable, "args": [str(ECHO_SERVER)], "env": []}
    secret = {
        "name": "beta",
        "command": sys.executable,
        "args": [str(ECHO_SERVER)],
        "env": [{"name": "TOKEN", "value": "s3cr3t"}],
    }
    provider = script(
        tmp_path,
        [
            ["message: first"],
            ["tool_call: {name: alpha__echo, arguments: {text: back}}", "message: b"],
        ],
    )
    args = ["--database-url", f"sqlite:///{tmp_path / 'm.db'}", "--provider", provider]
    async with raw_server(args, server_env(home)) as server:
        await server.request("initialize", INIT)
        new = {"cwd": str(workspace), "mcpServers": [plain, secret]}
        sid = (await server.request("session/new", new))["result"]["sessionId"]
        await server.request("session/prompt", prompt(sid))
    async with raw_server(args, server_env(home)) as server:
        await server.request("initialize", INIT)
        assert "result" in await server.request(
            "session/resume", {"sessionId": sid, "cwd": str(workspace)}
        )
        await server.request("session/set_mode", {"sessionId": sid, "modeId": "auto"})
        await server.request("session/prompt", prompt(sid))
        call = final_calls(server, sid)["call_2_1"]
        assert call["status"] == "completed" and "back" in str(call["content"])
        said = "".join(
            u["content"]["text"]
            for u in server.updates(sid)
            if u["sessionUpdate"] == "agent_message_chunk"
        )
        assert "'beta' was not restarted" in said


async def test_a_hostile_search_holds_neither_other_sessions_nor_cancel(home, workspace, tmp_path):
    # Python's re would spend 2**40 steps on line 1, holding the GIL and so the
    # whole server; nothing below could be answered until it was done.
    (workspace / "hostile.txt").write_text("a" * 40 + "!\naaaa\n")
    provider = script(
        tmp_path,
        [
            [
                "tool_call: {name: search_text, arguments: {pattern: '(a+)+$', path: .}}",
                "message: searched",
            ]
        ],
    )

    def started(sid: str):
        return lambda m: (
            m.get("method") == "session/update"
            and m["params"]["sessionId"] == sid
            and m["params"]["update"].get("status") == "in_progress"
        )

    async with raw_server(["--memory", "--provider", provider], server_env(home)) as server:
        await server.request("initialize", INIT)
        new = {"cwd": str(workspace), "mcpServers": []}
        first = (await server.request("session/new", new))["result"]["sessionId"]
        second = (await server.request("session/new", new))["result"]["sessionId"]
        await server.send(
            {"jsonrpc": "2.0", "id": "p1", "method": "session/prompt", "params": prompt(first)}
        )
        await server.wait_for(started(first))
        await server.send(
            {"jsonrpc": "2.0", "id": "p2", "method": "session/prompt", "params": prompt(second)}
        )
        await server.wait_for(started(second))
        await server.notify("session/cancel", {"sessionId": second})
        listed = (await server.request("session/list", {}))["result"]["sessions"]
        assert {first, second} <= {s["sessionId"] for s in listed}
        cancelled = await server.response("p2")
        assert cancelled["result"]["stopReason"] in ("cancelled", "end_turn")
        done = await server.response("p1")
        assert done["result"]["stopReason"] == "end_turn"
        call = final_calls(server, first)["call_1_1"]
    assert call["status"] == "completed"
    assert call["content"][0]["content"]["text"] == "hostile.txt:2: aaaa"


async def _until_gone(pids: list[int], seconds: float = 20) -> list[int]:
    """The pids still alive once all are gone or ``seconds`` have passed (a safety net)."""
    for _ in range(int(seconds / 0.05)):
        if not any(_alive(pid) for pid in pids):
            break
        await anyio.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


async def _until_written(path: Path, seconds: float = 30) -> str:
    for _ in range(int(seconds / 0.02)):
        if path.exists() and path.read_text().endswith("\n"):
            break
        await anyio.sleep(0.02)
    return path.read_text()


async def test_a_running_command_and_all_it_started_die_with_a_killed_server(
    home, workspace, tmp_path
):
    command = (
        "echo $$ > shell.pid; sleep 3011 & echo $! > bg.pid; "
        "(setsid sh -c 'echo $$ > escaped.pid; exec sleep 3012' &); "
        "until [ -s escaped.pid ]; do sleep 0.01; done; echo go > ready; wait"
    )
    provider = script(
        tmp_path,
        [[f"tool_call: {{name: run_command, arguments: {{command: {json.dumps(command)}}}}}"]],
    )
    args = ["--memory", "--provider", provider]
    async with raw_server(args, server_env(home), spawn=True) as server:
        await server.request("initialize", INIT)
        sid = (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
            "result"
        ]["sessionId"]
        await server.request("session/set_mode", {"sessionId": sid, "modeId": "auto"})
        await server.send(
            {"jsonrpc": "2.0", "id": 1, "method": "session/prompt", "params": prompt(sid)}
        )
        await _until_written(workspace / "ready")
        pids = [int((workspace / name).read_text()) for name in ("shell.pid", "bg.pid")]
        pids.append(int((workspace / "escaped.pid").read_text()))
        assert all(_alive(pid) for pid in pids)
        server.process.kill()
        await server.process.wait()
    assert await _until_gone(pids) == []


async def test_mcp_servers_and_all_they_started_die_with_the_session_and_the_server(
    home, workspace, tmp_path
):
    echo = {"name": "alpha", "command": sys.executable, "args": [str(ECHO_SERVER)], "env": []}
    calls = ["tool_call: {name: alpha__pid, arguments: {}}", "tool_call: {name: alpha__spawn}"]
    provider = script(tmp_path, [[*calls, "message: a"], [*calls, "message: b"]])

    async def started(server, sid: str) -> list[int]:
        """The session's MCP server pid, and the pid of the child it spawned."""
        await server.request("session/set_mode", {"sessionId": sid, "modeId": "auto"})
        await server.request("session/prompt", prompt(sid))
        results = list(final_calls(server, sid).values())
        pids = [int(call["content"][0]["content"]["text"]) for call in results]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        return pids

    args = ["--memory", "--provider", provider]
    async with raw_server(args, server_env(home), spawn=True) as server:
        await server.request("initialize", INIT)
        new = {"cwd": str(workspace), "mcpServers": [echo]}
        closed = (await server.request("session/new", new))["result"]["sessionId"]
        killed = (await server.request("session/new", new))["result"]["sessionId"]
        closed_pids = await started(server, closed)
        killed_pids = await started(server, killed)
        await server.request("session/close", {"sessionId": closed})
        assert await _until_gone(closed_pids) == [], (
            "closing a session stops all its servers started"
        )
        server.process.kill()
        await server.process.wait()
    assert await _until_gone(killed_pids) == [], "a killed server leaves no MCP process behind"
