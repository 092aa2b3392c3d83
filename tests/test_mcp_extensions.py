"""SessionExtensions against real MCP servers: the SDK's server in a child process, over
stdio or streamable HTTP, and an HTTP address nobody listens on."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from jsonschema import Draft202012Validator

from acp_server.agent.tools.base import ToolContext, ToolError
from acp_server.agent.tools.mcp import SessionExtensions, parse_servers, tool_name
from acp_server.agent.tools.registry import ToolSet, builtin_tools

ECHO_SERVER = Path(__file__).resolve().parent / "mcp_servers" / "echo_server.py"
ACP_SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "acp" / "schema.json"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def echo(name: str = "echo", label: str | None = None, **env: str) -> dict[str, Any]:
    """An ACP stdio entry for the echo server."""
    return {
        "name": name,
        "command": sys.executable,
        "args": [str(ECHO_SERVER), label or name],
        "env": [{"name": key, "value": value} for key, value in env.items()],
    }


@asynccontextmanager
async def extensions(
    servers: list[dict[str, Any]], **options: Any
) -> AsyncIterator[SessionExtensions]:
    """Started extensions, once every server is ready or has failed."""
    async with anyio.create_task_group() as tg:
        ext = await started(servers, tg, **options)
        try:
            yield ext
        finally:
            await ext.aclose()


async def started(
    servers: list[dict[str, Any]], tg: anyio.abc.TaskGroup, **options: Any
) -> SessionExtensions:
    ext = SessionExtensions.start(servers, tg, **options)
    assert await ext.settle(60) == []
    return ext


def context(tmp_path: Path) -> ToolContext:
    return ToolContext(session_id="s1", cwd=tmp_path, roots=[tmp_path], command_timeout=10)


async def call(ext: SessionExtensions, name: str, ctx: ToolContext, /, **arguments: Any) -> str:
    tool = {tool.name: tool for tool in ext.tools()}[name]
    outcome = await tool.run(arguments, ctx)
    assert not outcome.is_error, outcome.model_text
    return outcome.model_text


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@cache
def tool_call_content() -> Draft202012Validator:
    doc = json.loads(ACP_SCHEMA.read_text())
    return Draft202012Validator(
        {"$schema": doc["$schema"], "$defs": doc["$defs"], "$ref": "#/$defs/ToolCallContent"}
    )


@pytest.mark.anyio
async def test_tools_are_prefixed_called_and_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-mcp-servers")
    async with extensions([echo(GREETING="hello")], cwd=tmp_path) as ext:
        assert ext.problems == []
        assert ext.connected == ["echo"]
        tools = {tool.name: tool for tool in ext.tools()}
        assert {"echo__echo", "echo__add", "echo__pid", "echo__media"} <= set(tools)

        ctx = context(tmp_path)
        outcome = await tools["echo__echo"].run({"text": "hi"}, ctx)
        assert outcome.model_text == "echo: hi"
        assert outcome.content == [
            {"type": "content", "content": {"type": "text", "text": "echo: hi"}}
        ]
        assert await call(ext, "echo__add", ctx, a=2, b=40) == "42"

        assert (tools["echo__echo"].kind, tools["echo__echo"].mutates) == ("other", True)
        assert (tools["echo__pid"].kind, tools["echo__pid"].mutates) == ("read", False)
        assert tools["echo__add"].input_schema["required"] == ["a", "b"]
        assert tools["echo__echo"].title({"text": "hi"}) == "echo (echo)"

        # A stdio server runs in the session cwd, with the given env over a minimal one.
        assert await call(ext, "echo__cwd", ctx) == str(tmp_path)
        assert await call(ext, "echo__env", ctx, name="GREETING") == "hello"
        assert await call(ext, "echo__env", ctx, name="PATH") == os.environ["PATH"]
        assert await call(ext, "echo__env", ctx, name="OPENAI_API_KEY") == ""

        # The MCP tools sit beside the built-ins without a clash.
        names = ToolSet([*builtin_tools(), *ext.tools()]).names()
        assert "read_file" in names and "echo__echo" in names


@pytest.mark.anyio
async def test_results_become_model_text_and_acp_content(tmp_path: Path) -> None:
    async with extensions([echo()]) as ext:
        tools = {tool.name: tool for tool in ext.tools()}
        ctx = context(tmp_path)

        media = await tools["echo__media"].run({}, ctx)
        assert media.model_text.splitlines() == [
            "see attached",
            "[image: image/png]",
            "[resource file:///notes.txt]",
            "hello",
        ]
        assert [item["content"]["type"] for item in media.content] == ["text", "image", "resource"]
        assert media.content[1]["content"]["mimeType"] == "image/png"
        for item in media.content:
            tool_call_content().validate(item)

        failed = await tools["echo__fail"].run({"message": "boom"}, ctx)
        assert failed.is_error and "boom" in failed.model_text


@pytest.mark.anyio
async def test_two_sessions_never_see_each_others_tools(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    async with extensions([echo("alpha")]) as first, extensions([echo("beta")]) as second:
        assert {tool.name.split("__")[0] for tool in first.tools()} == {"alpha"}
        assert {tool.name.split("__")[0] for tool in second.tools()} == {"beta"}
        assert await call(first, "alpha__echo", ctx, text="x") == "alpha: x"
        assert await call(second, "beta__echo", ctx, text="x") == "beta: x"
        assert await call(first, "alpha__pid", ctx) != await call(second, "beta__pid", ctx)


@pytest.mark.anyio
async def test_aclose_stops_the_server_process(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    async with anyio.create_task_group() as tg:
        ext = await started([echo()], tg)
        echo_tool = next(tool for tool in ext.tools() if tool.name == "echo__echo")
        pid = int(await call(ext, "echo__pid", ctx))
        assert process_exists(pid)

        await ext.aclose()
        assert not process_exists(pid)
        assert ext.tools() == [] and ext.connected == []
        with pytest.raises(ToolError, match="MCP server 'echo' has stopped"):
            await echo_tool.run({"text": "late"}, ctx)
        await ext.aclose()  # idempotent


@pytest.mark.anyio
async def test_aclose_from_another_task(tmp_path: Path) -> None:
    async with anyio.create_task_group() as tg:
        ext = await started([echo()], tg)
        pid = int(await call(ext, "echo__pid", context(tmp_path)))
        async with anyio.create_task_group() as closers:
            closers.start_soon(ext.aclose)
            closers.start_soon(ext.aclose)
        assert not process_exists(pid)


@pytest.mark.anyio
async def test_cancelling_the_owning_task_group_stops_the_server(tmp_path: Path) -> None:
    async with anyio.create_task_group() as tg:
        ext = await started([echo()], tg)
        pid = int(await call(ext, "echo__pid", context(tmp_path)))
        tg.cancel_scope.cancel()
    assert not process_exists(pid)


def held(tmp_path: Path, name: str = "slow") -> dict[str, Any]:
    """An echo server that leaves ``initialize`` unanswered until ``go-NAME`` exists."""
    return echo(
        name,
        ECHO_HOLD_UNTIL=str(tmp_path / f"go-{name}"),
        ECHO_PID_FILE=str(tmp_path / f"pid-{name}"),
    )


async def pid_of(pid_file: Path) -> int:
    for _ in range(1500):
        if pid_file.exists():
            return int(pid_file.read_text())
        await anyio.sleep(0.02)
    raise AssertionError(f"{pid_file.name} was never written")


@pytest.mark.anyio
async def test_start_returns_at_once_and_hands_over_tools_when_ready(tmp_path: Path) -> None:
    handed: list[str] = []
    problems: list[str] = []

    async def report(problem: str) -> None:
        problems.append(problem)

    async with anyio.create_task_group() as tg:
        ext = SessionExtensions.start(
            [held(tmp_path), echo("quick")],
            tg,
            on_ready=lambda tools: handed.extend(tool.name for tool in tools),
            on_problem=report,
        )
        assert ext.starting == ["slow", "quick"] and ext.tools() == []
        assert await ext.settle(0) == [
            "MCP server 'slow' is still starting; its tools will be offered to the model "
            "once it is ready.",
            "MCP server 'quick' is still starting; its tools will be offered to the model "
            "once it is ready.",
        ]

        (tmp_path / "go-slow").touch()
        assert await ext.settle(60) == []
        assert ext.connected == ["slow", "quick"]
        assert sorted(handed) == sorted(tool.name for tool in ext.tools())
        assert {"slow__echo", "quick__echo"} <= set(handed)
        assert problems == []
        await ext.aclose()


@pytest.mark.anyio
async def test_aclose_stops_a_server_still_starting_without_a_problem(tmp_path: Path) -> None:
    problems: list[str] = []

    async def report(problem: str) -> None:
        problems.append(problem)

    async with anyio.create_task_group() as tg:
        ext = SessionExtensions.start([held(tmp_path)], tg, on_problem=report)
        pid = await pid_of(tmp_path / "pid-slow")
        assert process_exists(pid) and ext.starting == ["slow"]
        await ext.aclose()
        assert not process_exists(pid)
        assert ext.starting == [] and ext.tools() == []
        assert problems == [] and ext.problems == []


@pytest.mark.anyio
async def test_a_failed_start_is_reported_and_a_failing_reporter_is_harmless(
    tmp_path: Path,
) -> None:
    async def report(problem: str) -> None:
        raise RuntimeError("the editor is gone")

    missing = str(tmp_path / "ghx")
    bad = {"name": "github", "command": missing, "args": [], "env": []}
    async with anyio.create_task_group() as tg:
        ext = SessionExtensions.start([bad, echo()], tg, on_problem=report)
        assert await ext.settle(60) == []
        assert ext.problems == [f"MCP server 'github' could not start: {missing}: no such file."]
        assert await call(ext, "echo__echo", context(tmp_path), text="on") == "echo: on"
        await ext.aclose()


@pytest.mark.anyio
async def test_a_bad_command_is_a_problem_and_the_others_still_work(tmp_path: Path) -> None:
    missing = str(tmp_path / "ghx")
    bad = {"name": "github", "command": missing, "args": [], "env": []}
    async with extensions([bad, echo()]) as ext:
        assert ext.problems == [f"MCP server 'github' could not start: {missing}: no such file."]
        assert ext.connected == ["echo"]
        assert (
            await call(ext, "echo__echo", context(tmp_path), text="still here")
            == "echo: still here"
        )


@pytest.mark.anyio
async def test_a_server_that_exits_at_once_is_a_problem() -> None:
    gone = {"name": "gone", "command": "/bin/false", "args": [], "env": []}
    async with extensions([gone]) as ext:
        assert ext.tools() == []
        [problem] = ext.problems
        assert problem.startswith("MCP server 'gone' could not start: ")


@pytest.mark.anyio
async def test_a_silent_server_times_out_as_a_problem() -> None:
    silent = {
        "name": "silent",
        "command": sys.executable,
        "args": ["-c", "import sys; sys.stdin.read()"],
        "env": [],
    }
    with anyio.fail_after(10):
        async with extensions([silent], connect_timeout=0.5) as ext:
            assert ext.problems == [
                "MCP server 'silent' could not start: it did not complete the MCP handshake "
                "within 0.5 s."
            ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def http_echo(name: str) -> AsyncIterator[str]:
    """The echo server over streamable HTTP in a child process; its URL once it listens."""
    port = free_port()
    env = {**os.environ, "ECHO_HTTP_PORT": str(port)}
    async with await anyio.open_process(
        [sys.executable, str(ECHO_SERVER), name], env=env, stdout=None, stderr=None
    ) as process:
        try:
            with anyio.fail_after(60):
                while True:
                    try:
                        stream = await anyio.connect_tcp("127.0.0.1", port)
                    except OSError:
                        assert process.returncode is None, "the HTTP echo server exited"
                        await anyio.sleep(0.05)
                    else:
                        await stream.aclose()
                        break
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            process.terminate()
            await process.wait()


@pytest.mark.anyio
async def test_an_http_server_gets_the_sessions_headers_and_runs_tools(tmp_path: Path) -> None:
    async with http_echo("web") as url:
        entry = {
            "type": "http",
            "name": "web",
            "url": url,
            "headers": [{"name": "X-Key", "value": "k1"}],
        }
        async with extensions([entry]) as ext:
            assert ext.connected == ["web"]
            ctx = context(tmp_path)
            assert await call(ext, "web__echo", ctx, text="hi") == "web: hi"
            assert await call(ext, "web__header", ctx, name="x-key") == "k1"


@pytest.mark.anyio
async def test_http_server_on_a_closed_port_is_a_problem() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    entry = {
        "type": "http",
        "name": "web",
        "url": url,
        "headers": [{"name": "X-Key", "value": "k"}],
    }
    with anyio.fail_after(10):
        async with extensions([entry]) as ext:
            assert ext.tools() == []
            [problem] = ext.problems
            assert problem.startswith(f"MCP server 'web' could not connect to {url}: ")
            assert problem.endswith(".")


@pytest.mark.anyio
async def test_a_server_that_dies_mid_session_gives_a_plain_error(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    async with extensions([echo("doomed"), echo("other")]) as ext:
        tools = {tool.name: tool for tool in ext.tools()}
        with pytest.raises(ToolError, match="MCP server 'doomed' has stopped"):
            await tools["doomed__crash"].run({}, ctx)
        with pytest.raises(ToolError, match="MCP server 'doomed' has stopped"):
            await tools["doomed__echo"].run({"text": "anyone?"}, ctx)
        assert await call(ext, "other__echo", ctx, text="fine") == "other: fine"


@pytest.mark.anyio
async def test_no_servers() -> None:
    async with extensions([]) as ext:
        assert ext.tools() == [] and ext.problems == []


def test_unsupported_and_malformed_entries_are_problems() -> None:
    specs, problems = parse_servers(
        [
            {"type": "sse", "name": "old", "url": "http://x/sse", "headers": []},
            {"command": "/bin/true", "args": [], "env": []},
            {"type": "http", "name": "ftp", "url": "ftp://x", "headers": []},
            {
                "name": "ok",
                "command": "/bin/true",
                "args": ["-x"],
                "env": [{"name": "A", "value": "1"}],
            },
            {"name": "ok", "command": "/bin/true", "args": [], "env": []},
        ]
    )
    assert [spec.name for spec in specs] == ["ok"]
    assert specs[0].env == {"A": "1"} and specs[0].args == ("-x",)
    assert problems == [
        "MCP server 'old' uses the 'sse' transport, which this agent does not support; "
        "configure it as a stdio or HTTP server.",
        "An MCP server entry has no name, so it was skipped.",
        "MCP server 'ftp' was skipped: its url 'ftp://x' is not an http(s) address.",
        "MCP server 'ok' is listed twice; only the first entry is used.",
    ]


def test_tool_names_are_safe_for_every_model_api() -> None:
    assert tool_name("git hub", "search.issues") == "git_hub__search_issues"
    long = tool_name("a-very-long-server-name-indeed", "and_an_even_longer_tool_name_" * 3)
    other = tool_name("a-very-long-server-name-indeed", "and_an_even_longer_tool_name_" * 4)
    assert len(long) == 64 and len(other) == 64 and long != other
    assert all(c.isalnum() or c in "_-" for c in long)
