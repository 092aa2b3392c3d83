"""Sessions end to end: the real server (a process where that is the subject), the official
ACP client, real databases."""

from __future__ import annotations

import signal

import anyio
import pytest
from acp import text_block
from acp.schema import (
    AgentMessageChunk,
    ClientCapabilities,
    SessionInfoUpdate,
    ToolCallStart,
    UsageUpdate,
    UserMessageChunk,
)

from tests.backends import SERVER_BACKENDS, backend_params, database_url
from tests.harness import INIT, RecordingClient, acp_client, raw_server, server_env

pytestmark = pytest.mark.anyio


def db_args(url: str) -> list[str]:
    return ["--memory"] if url == "memory" else ["--database-url", url]


def texts(updates: list[object], kind: type) -> list[str]:
    return [u.content.text for u in updates if isinstance(u, kind)]  # type: ignore[attr-defined]


async def start(connection, **caps):
    return await connection.initialize(
        protocol_version=1, client_capabilities=ClientCapabilities(**caps)
    )


async def test_a_conversation_survives_sigkill_and_loads_exactly(
    persistent_db_url, home, workspace
):
    env = server_env(home)
    client = RecordingClient()
    args = db_args(persistent_db_url)
    async with acp_client(args, env, client, spawn=True) as (conn, process, _):
        await start(conn)
        session = await conn.new_session(cwd=str(workspace), mcp_servers=[])
        sid = session.session_id
        for text in ("first question", "second question"):
            reply = await conn.prompt(session_id=sid, prompt=[text_block(text)])
            assert reply.stop_reason == "end_turn"
        live = client.of(sid)
        said = "".join(texts(live, AgentMessageChunk))
        assert "first question" in said and "second question" in said
        assert not texts(live, UserMessageChunk), "v1 clients must not get the prompt echoed live"
        assert any(isinstance(u, SessionInfoUpdate) and u.title for u in live)
        assert any(isinstance(u, UsageUpdate) for u in live)
        process.send_signal(signal.SIGKILL)
        await process.wait()

    loader = RecordingClient()
    async with acp_client(db_args(persistent_db_url), env, loader) as (conn, _, _):
        await start(conn)
        listed = await conn.list_sessions()
        assert [s.session_id for s in listed.sessions] == [sid]
        assert listed.sessions[0].title
        await conn.load_session(cwd=str(workspace), session_id=sid, mcp_servers=[])
        replay = loader.of(sid)
        assert texts(replay, UserMessageChunk) == ["first question", "second question"]
        assert "".join(texts(replay, AgentMessageChunk)) == said
        ids = [u.message_id for u in replay if isinstance(u, UserMessageChunk | AgentMessageChunk)]
        assert all(ids) and len(set(ids)) == len(ids)
        # the conversation goes on where it stopped
        reply = await conn.prompt(session_id=sid, prompt=[text_block("third")])
        assert reply.stop_reason == "end_turn"


async def test_every_session_method_on_every_backend(server_db_url, home, workspace, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    async with raw_server(db_args(server_db_url), server_env(home)) as server:
        await server.request("initialize", INIT)
        created = (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
            "result"
        ]
        sid = created["sessionId"]
        assert {o["id"] for o in created["configOptions"]} == {"mode", "model"}
        assert created["modes"]["currentModeId"] == "ask"
        await server.wait_for(
            lambda m: (
                m.get("method") == "session/update"
                and m["params"]["update"]["sessionUpdate"] == "available_commands_update"
            )
        )
        answer = await server.request(
            "session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "hello"}]}
        )
        assert answer["result"]["stopReason"] == "end_turn"

        # resume: no replay at all
        before = len(server.updates(sid))
        resumed = await server.request("session/resume", {"sessionId": sid, "cwd": str(workspace)})
        assert "result" in resumed
        assert len(server.updates(sid)) == before or all(
            u["sessionUpdate"] == "available_commands_update" for u in server.updates(sid)[before:]
        )

        # load under another cwd is refused clearly
        wrong = await server.request(
            "session/load", {"sessionId": sid, "cwd": str(other), "mcpServers": []}
        )
        assert wrong["error"]["code"] == -32602 and str(workspace) in wrong["error"]["message"]

        # config options persist
        changed = await server.request(
            "session/set_config_option", {"sessionId": sid, "configId": "mode", "value": "auto"}
        )
        assert (
            next(o for o in changed["result"]["configOptions"] if o["id"] == "mode")["currentValue"]
            == "auto"
        )
        bad = await server.request(
            "session/set_config_option", {"sessionId": sid, "configId": "mode", "value": "yolo"}
        )
        assert bad["error"]["code"] == -32602
        assert "result" in await server.request(
            "session/set_mode", {"sessionId": sid, "modeId": "read-only"}
        )

        # fork: a new, independent session carrying the history
        forked = (
            await server.request(
                "session/fork", {"sessionId": sid, "cwd": str(other), "mcpServers": []}
            )
        )["result"]
        fid = forked["sessionId"]
        assert fid != sid
        await server.request(
            "session/load", {"sessionId": fid, "cwd": str(other), "mcpServers": []}
        )
        replayed = [u for u in server.updates(fid) if u["sessionUpdate"] == "user_message_chunk"]
        assert [u["content"]["text"] for u in replayed] == ["hello"]

        # list: both, cwd filter, titles and updatedAt
        listed = (await server.request("session/list", {}))["result"]["sessions"]
        assert {s["sessionId"] for s in listed} == {sid, fid}
        assert all(s["updatedAt"].endswith("Z") for s in listed)
        only = (await server.request("session/list", {"cwd": str(other)}))["result"]["sessions"]
        assert [s["sessionId"] for s in only] == [fid]
        assert (await server.request("session/list", {"cursor": "garbage!"}))["error"][
            "code"
        ] == -32602

        # close, then delete: gone from list and load; deleting again succeeds
        assert "result" in await server.request("session/close", {"sessionId": sid})
        assert "result" in await server.request("session/delete", {"sessionId": sid})
        assert "result" in await server.request("session/delete", {"sessionId": sid})
        for method, params in [
            ("session/load", {"sessionId": sid, "cwd": str(workspace), "mcpServers": []}),
            ("session/resume", {"sessionId": sid, "cwd": str(workspace)}),
            ("session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "x"}]}),
            ("session/close", {"sessionId": sid}),
            ("session/set_mode", {"sessionId": sid, "modeId": "auto"}),
            ("session/set_config_option", {"sessionId": sid, "configId": "mode", "value": "auto"}),
            ("session/fork", {"sessionId": sid, "cwd": str(workspace)}),
        ]:
            reply = await server.request(method, params)
            assert reply["error"]["code"] == -32002, (method, reply)
        assert [
            s["sessionId"] for s in (await server.request("session/list", {}))["result"]["sessions"]
        ] == [fid]


async def test_new_session_validates_directories(home, workspace, tmp_path):
    async with raw_server(["--memory"], server_env(home)) as server:
        await server.request("initialize", INIT)
        for params in [
            {"cwd": "relative/path", "mcpServers": []},
            {"cwd": str(tmp_path / "missing"), "mcpServers": []},
            {"cwd": str(workspace), "mcpServers": [], "additionalDirectories": ["rel"]},
            {"cwd": str(workspace)},
        ]:
            reply = await server.request("session/new", params)
            assert reply["error"]["code"] == -32602, reply


async def test_secrets_in_mcp_config_never_reach_the_database(home, workspace, tmp_path):
    db = tmp_path / "s.db"
    async with raw_server(["--database-url", f"sqlite:///{db}"], server_env(home)) as server:
        await server.request("initialize", INIT)
        await server.request(
            "session/new",
            {
                "cwd": str(workspace),
                "mcpServers": [
                    {
                        "name": "gh",
                        "command": "/nonexistent/ghx",
                        "args": [],
                        "env": [{"name": "GITHUB_TOKEN", "value": "s3cr3t-token"}],
                    },
                    {
                        "type": "http",
                        "name": "api",
                        "url": "http://127.0.0.1:9/mcp",
                        "headers": [{"name": "Authorization", "value": "Bearer s3cr3t-header"}],
                    },
                ],
            },
        )
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("s.db*"))
    assert b"s3cr3t" not in raw
    assert b"s3cr3t" not in server.stderr.encode()


async def test_session_ids_are_unguessable_and_unique(home, workspace):
    async with raw_server(["--memory"], server_env(home)) as server:
        await server.request("initialize", INIT)
        ids = [
            (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
                "result"
            ]["sessionId"]
            for _ in range(20)
        ]
    assert len(set(ids)) == 20
    assert all(len(i) >= 32 for i in ids)


@pytest.fixture(params=backend_params(SERVER_BACKENDS))
def shared_db_url(request, tmp_path):
    """A database server several processes share (SQLite's case is in the store tests)."""
    with database_url(request.param, tmp_path) as url:
        yield url


async def test_two_processes_on_one_database_lose_nothing(shared_db_url, home, workspace):
    created: list[str] = []

    async def worker() -> None:
        async with raw_server(db_args(shared_db_url), server_env(home), spawn=True) as server:
            await server.request("initialize", INIT)
            for _ in range(15):
                reply = await server.request(
                    "session/new", {"cwd": str(workspace), "mcpServers": []}
                )
                created.append(reply["result"]["sessionId"])
                await server.request("session/list", {})

    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(worker)
    async with raw_server(db_args(shared_db_url), server_env(home)) as server:
        await server.request("initialize", INIT)
        seen: list[str] = []
        cursor = None
        while True:
            params = {"cursor": cursor} if cursor else {}
            page = (await server.request("session/list", params))["result"]
            seen += [s["sessionId"] for s in page["sessions"]]
            cursor = page.get("nextCursor")
            if not cursor:
                break
    assert sorted(seen) == sorted(created) and len(created) == 30


async def test_tool_calls_are_replayed_in_their_final_state(home, workspace, tmp_path):
    script = tmp_path / "tools.yaml"
    script.write_text(
        "turns:\n"
        "  - steps:\n"
        "      - thought: reading\n"
        "      - tool_call: {name: read_file, arguments: {path: README.md}}\n"
        "      - plan: [{content: read, priority: high, status: completed}]\n"
        "      - message: done\n"
    )
    db = f"sqlite:///{tmp_path / 'x.db'}"
    args = ["--database-url", db, "--provider", f"script:{script}"]
    async with acp_client(args, server_env(home)) as (conn, _, _):
        await start(conn)
        sid = (await conn.new_session(cwd=str(workspace), mcp_servers=[])).session_id
        assert (
            await conn.prompt(session_id=sid, prompt=[text_block("read it")])
        ).stop_reason == "end_turn"
    loader = RecordingClient()
    async with acp_client(args, server_env(home), loader) as (conn, _, _):
        await start(conn)
        await conn.load_session(cwd=str(workspace), session_id=sid, mcp_servers=[])
        kinds = [type(u).__name__ for u in loader.of(sid)]
        calls = [u for u in loader.of(sid) if isinstance(u, ToolCallStart)]
        assert len(calls) == 1 and calls[0].status == "completed" and calls[0].kind == "read"
        assert "demo project" in str(calls[0].content)
        assert (
            kinds.index("AgentThoughtChunk")
            < kinds.index("ToolCallStart")
            < kinds.index("AgentPlanUpdate")
        )


async def test_a_database_that_goes_away_gets_a_clear_error_and_the_server_keeps_serving(
    home, workspace, tmp_path
):
    from tests.backends import _drop_pg_database

    with database_url("postgresql", tmp_path) as url:
        async with raw_server(["--database-url", url], server_env(home)) as server:
            await server.request("initialize", INIT)
            sid = (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
                "result"
            ]["sessionId"]
            name = url.rsplit("/", 1)[1]
            await anyio.to_thread.run_sync(_drop_pg_database, name)
            for method, params in [
                ("session/list", {}),
                ("session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "hi"}]}),
                ("session/new", {"cwd": str(workspace), "mcpServers": []}),
            ]:
                reply = await server.request(method, params)
                assert reply["error"]["code"] == -32603, reply
                assert "not answering" in reply["error"]["message"], reply
                assert "check that the database is running" in reply["error"]["message"]
            assert (await server.request("initialize", INIT))["result"]["protocolVersion"] == 1
        assert server.returncode == 0
