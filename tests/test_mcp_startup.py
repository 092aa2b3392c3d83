"""MCP servers start in the background, through the real server: a slow one never holds
up ``session/new``, a prompt waits for it a bounded time, a failure is told at once,
and closing the session stops a server still starting.

The echo server is held before it reads ``initialize`` until the test creates a file,
so "still starting" is a fact the test controls, not a race against the clock.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.fake_llm import FakeLLM, Reply
from tests.harness import INIT, RawServer, raw_server, server_env

pytestmark = pytest.mark.anyio

ECHO_SERVER = Path(__file__).resolve().parent / "mcp_servers" / "echo_server.py"


@pytest.fixture
def llm():
    with FakeLLM() as fake:
        yield fake


def echo(name: str, **env: str) -> dict[str, Any]:
    return {
        "name": name,
        "command": sys.executable,
        "args": [str(ECHO_SERVER), name],
        "env": [{"name": key, "value": value} for key, value in env.items()],
    }


def held(tmp_path: Path, name: str, **env: str) -> dict[str, Any]:
    """An echo server that does not answer ``initialize`` until ``tmp_path/go-NAME``
    exists; it creates ``ready-NAME`` when it goes on and writes its pid to ``pid-NAME``."""
    return echo(
        name,
        ECHO_HOLD_UNTIL=str(tmp_path / f"go-{name}"),
        ECHO_READY_FILE=str(tmp_path / f"ready-{name}"),
        ECHO_PID_FILE=str(tmp_path / f"pid-{name}"),
        **env,
    )


def arguments(tmp_path: Path, settings: str, provider: str = "openai") -> list[str]:
    path = tmp_path / "acp-server.yaml"
    path.write_text("agent:\n  generate_titles: false\n" + settings)
    return ["--memory", "--provider", provider, "--config", str(path)]


def openai_env(home: Path, llm: FakeLLM) -> dict[str, str]:
    return server_env(
        home, {"OPENAI_BASE_URL": llm.base_url_openai, "OPENAI_API_KEY": "sk-test-secret-key"}
    )


def prompt(sid: str, text: str = "go") -> dict[str, Any]:
    return {"sessionId": sid, "prompt": [{"type": "text", "text": text}]}


def offered(request: dict[str, Any]) -> set[str]:
    return {tool["function"]["name"] for tool in request.get("tools", [])}


def notices(server: RawServer, sid: str) -> list[dict[str, Any]]:
    return [
        u
        for u in server.updates(sid)
        if u["sessionUpdate"] == "agent_message_chunk" and u["content"]["text"].startswith("⚠️")
    ]


def is_notice(sid: str, words: str) -> Callable[[dict[str, Any]], bool]:
    def match(message: dict[str, Any]) -> bool:
        params = message.get("params") or {}
        update = params.get("update") or {}
        return (
            message.get("method") == "session/update"
            and params.get("sessionId") == sid
            and update.get("sessionUpdate") == "agent_message_chunk"
            and words in update["content"]["text"]
        )

    return match


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until it holds; the bound (30 s or more) is only a safety net."""
    for _ in range(1500):
        if check():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status


async def new_session(server: RawServer, cwd: Path, servers: list[dict[str, Any]]) -> str:
    reply = await server.request("session/new", {"cwd": str(cwd), "mcpServers": servers})
    return reply["result"]["sessionId"]


async def test_session_setup_answers_while_a_server_is_still_starting(
    home, workspace, tmp_path, llm
):
    args = arguments(tmp_path, "  mcp_start_wait: 60\n")
    async with raw_server(args, openai_env(home, llm)) as server:
        await server.request("initialize", INIT)
        sid = await new_session(server, workspace, [held(tmp_path, "slow")])
        assert not (tmp_path / "ready-slow").exists(), "session/new waited for the server"

        # Once it goes on, a prompt waits for its handshake and offers its tools.
        (tmp_path / "go-slow").touch()
        reply = await server.request("session/prompt", prompt(sid))
        assert reply["result"]["stopReason"] == "end_turn"
        assert {"slow__echo", "slow__add", "read_file"} <= offered(llm.requests[0])
        assert notices(server, sid) == []

        # Nor do load, resume and fork.
        for method in ("session/load", "session/resume", "session/fork"):
            name = method.split("/")[1]
            params = {"sessionId": sid, "cwd": str(workspace), "mcpServers": [held(tmp_path, name)]}
            assert "result" in await server.request(method, params)
            assert not (tmp_path / f"ready-{name}").exists(), f"{method} waited for the server"


async def test_a_turn_goes_on_without_a_late_server_and_takes_its_tools_later(
    home, workspace, tmp_path, llm
):
    release = tmp_path / "release"
    llm.queue(
        Reply(
            tool_calls=[
                (
                    "call_1",
                    "run_command",
                    {"command": f"until [ -e {release} ]; do sleep 0.02; done"},
                )
            ]
        ),
        Reply(text_chunks=["done"]),
    )
    args = arguments(tmp_path, "  mcp_start_wait: 0\n  default_mode: auto\n")
    async with raw_server(args, openai_env(home, llm)) as server:
        await server.request("initialize", INIT)
        sid = await new_session(server, workspace, [held(tmp_path, "slow")])
        async with anyio.create_task_group() as tg:
            replies: list[dict[str, Any]] = []

            async def ask() -> None:
                replies.append(await server.request("session/prompt", prompt(sid)))

            tg.start_soon(ask)
            await eventually(lambda: len(llm.requests) == 1, "the first model call")
            assert not (tmp_path / "ready-slow").exists()
            assert "slow__echo" not in offered(llm.requests[0])
            [notice] = notices(server, sid)
            assert "MCP server 'slow' is still starting" in notice["content"]["text"]

            # It becomes ready while the command runs; the next model call offers it.
            (tmp_path / "go-slow").touch()
            await eventually(lambda: "mcp_server_ready" in server.stderr, "the handshake")
            release.touch()
        assert replies[0]["result"]["stopReason"] == "end_turn"
        assert "slow__echo" in offered(llm.requests[1])


async def test_cancel_ends_a_prompt_waiting_for_a_server(home, workspace, tmp_path):
    args = arguments(tmp_path, "  mcp_start_wait: 60\n", provider="echo")
    async with raw_server(args, server_env(home)) as server:
        await server.request("initialize", INIT)
        sid = await new_session(server, workspace, [held(tmp_path, "slow")])
        replies: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:

            async def ask() -> None:
                replies.append(await server.request("session/prompt", prompt(sid)))

            tg.start_soon(ask)
            # Until it lands while the prompt waits (a cancel before the prompt is a no-op).
            for _ in range(1500):
                if replies:
                    break
                await server.notify("session/cancel", {"sessionId": sid})
                await anyio.sleep(0.02)
        assert replies[0]["result"]["stopReason"] == "cancelled"
        # Not told the server timed out: the cancel, not the start timeout, ended the wait.
        assert notices(server, sid) == []
        assert not (tmp_path / "ready-slow").exists()


async def test_a_server_that_fails_to_start_is_told_at_once(home, workspace, tmp_path):
    ghost = {"name": "ghost", "command": str(tmp_path / "no-such-server"), "args": [], "env": []}
    broken = held(tmp_path, "broken", ECHO_FAIL="token expired")
    async with raw_server(arguments(tmp_path, "", provider="echo"), server_env(home)) as server:
        await server.request("initialize", INIT)
        sid = await new_session(server, workspace, [ghost, broken])

        # No prompt: each is said as soon as it is known, after session/new's answer.
        await server.wait_for(is_notice(sid, "MCP server 'ghost' could not start"))
        (tmp_path / "go-broken").touch()
        await server.wait_for(is_notice(sid, "MCP server 'broken' could not start"))
        told = notices(server, sid)
        assert len(told) == 2
        order = [
            m.get("method") or (m.get("result") or {}).get("sessionId") for m in server.messages
        ]
        assert "session/update" not in order[: order.index(sid)]

        # Told once, each as its own message, never sharing an id with the reply.
        reply = await server.request("session/prompt", prompt(sid, "hello"))
        assert reply["result"]["stopReason"] == "end_turn"
        assert notices(server, sid) == told
        ids = [
            u["messageId"]
            for u in server.updates(sid)
            if u["sessionUpdate"] == "agent_message_chunk"
        ]
        assert len({told[0]["messageId"], told[1]["messageId"], ids[-1]}) == 3


async def test_closing_or_stopping_ends_a_server_still_starting(home, workspace, tmp_path):
    async with raw_server(arguments(tmp_path, "", provider="echo"), server_env(home)) as server:
        await server.request("initialize", INIT)
        closed = await new_session(server, workspace, [held(tmp_path, "first")])
        await new_session(server, workspace, [held(tmp_path, "second")])
        for pid_file in (tmp_path / "pid-first", tmp_path / "pid-second"):
            await eventually(pid_file.exists, f"{pid_file.name} to be written")
        first, second = (int((tmp_path / f"pid-{n}").read_text()) for n in ("first", "second"))
        assert alive(first) and alive(second)

        assert "result" in await server.request("session/close", {"sessionId": closed})
        assert not alive(first), "closing the session must stop its server"
        assert alive(second)
    assert not alive(second), "stopping acp-server must stop every server"
    assert not (tmp_path / "ready-first").exists() and not (tmp_path / "ready-second").exists()
