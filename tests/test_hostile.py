"""Hostile and unlucky input on the wire: nothing may end the process, freeze it, lose an
answer or reach a session this connection never opened.

These drive the real server with raw lines (the process itself where memory, SIGKILL or
a second process is the subject); every line it writes is validated against the ACP
schema by the harness (response ids included).
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import INIT, raw_server, server_env

pytestmark = pytest.mark.anyio

HOSTILE_IDS: list[Any] = [{}, [], {"a": 1}, [1, 2], True, False, 1.5, 2**70, -(2**70)]


def line(message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


def script(tmp_path: Path, text: str) -> str:
    path = tmp_path / "script.yaml"
    path.write_text(text)
    return f"script:{path}"


async def open_session(server: Any, cwd: Path) -> str:
    await server.request("initialize", INIT)
    reply = await server.request("session/new", {"cwd": str(cwd), "mcpServers": []})
    return reply["result"]["sessionId"]


async def test_ids_of_any_json_type_never_end_the_process(home):
    """Unhashable ids in ``$/cancel_request`` and in responses used to kill the process
    (and with it the ``initialize`` answer written in the same breath)."""
    batch = [line({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT})]
    for hostile in HOSTILE_IDS:
        batch.append(
            line({"jsonrpc": "2.0", "method": "$/cancel_request", "params": {"requestId": hostile}})
        )
        batch.append(line({"jsonrpc": "2.0", "id": hostile, "result": {}}))
        batch.append(line({"jsonrpc": "2.0", "id": hostile, "error": {"code": 1}}))
    async with raw_server(["--memory"], server_env(home)) as server:
        await server.send_raw(b"".join(batch))
        assert (await server.response(1))["result"]["protocolVersion"] == 1
        for index, hostile in enumerate(HOSTILE_IDS):
            await server.send_raw(
                line({"jsonrpc": "2.0", "id": hostile, "method": "session/list", "params": {}})
            )
            # The answer to an id that is not a string, an integer or null says id null.
            reply = await server.wait_for(
                lambda m, n=index: (
                    m.get("id") is None
                    and "id" in m.get("error", {}).get("message", "")
                    and m.get("error", {}).get("code") == -32600
                    and sum(
                        1
                        for x in server.messages
                        if x.get("id") is None and x.get("error", {}).get("code") == -32600
                    )
                    > n
                )
            )
            assert reply["error"]["message"].startswith('Invalid request: "id"')
        assert "result" in await server.request("session/list", {})
    assert server.returncode == 0
    assert "Traceback" not in server.stderr


async def test_wire_details_get_the_right_error(home, workspace):
    async with raw_server(["--memory"], server_env(home)) as server:
        early = await server.request("session/new", {"cwd": str(workspace), "mcpServers": []})
        assert early["error"]["code"] == -32600
        assert "send initialize first" in early["error"]["message"]
        wrong_version = await server.request("initialize", {"protocolVersion": "1"})
        assert wrong_version["error"]["code"] == -32602
        assert "protocolVersion" in wrong_version["error"]["message"]
        sid = await open_session(server, workspace)

        positional = await server.request("session/list", [])  # type: ignore[arg-type]
        assert positional["error"] == {
            "code": -32602,
            "message": "Invalid params: params must be an object",
        }
        for method, params in [
            ("session/new", {"cwd": str(workspace), "mcpServers": None}),
            ("session/resume", {"sessionId": sid, "cwd": str(workspace), "mcpServers": None}),
            (
                "session/new",
                {"cwd": str(workspace), "mcpServers": [], "additionalDirectories": None},
            ),
        ]:
            reply = await server.request(method, params)
            assert reply["error"]["code"] == -32602, (method, params, reply)

        nested: Any = "deep"
        for _ in range(300):
            nested = {"x": nested}
        deep = await server.request(
            "session/prompt",
            {"sessionId": sid, "prompt": [{"type": "text", "text": "hi", "_meta": nested}]},
        )
        assert deep["error"]["code"] == -32602
        assert "nested more than" in deep["error"]["message"]

        crafted = [
            "W10",  # base64 of "[]"
            "eyJ1IjoxLCJpIjpbXX0",  # {"u":1,"i":[]}
            "eyJ1IjoxZTMwMCwiaSI6IngifQ",  # {"u":1e300,"i":"x"}
            "eyJ1Ijo5OTk5OTk5OTk5OTk5OTk5OTk5OTksImkiOiJ4In0",  # u beyond any integer column
            "bnVsbA",  # null
            "!!!",
        ]
        for cursor in crafted:
            reply = await server.request("session/list", {"cursor": cursor})
            assert reply["error"]["code"] == -32602, (cursor, reply)
            assert reply["error"]["data"] == {"field": "cursor"}
    assert "Traceback" not in server.stderr


async def test_a_prompt_sent_as_a_notification_runs_nothing(home, workspace, tmp_path):
    provider = script(tmp_path, "turns:\n  - steps:\n      - message: answered\n")
    async with raw_server(["--memory", "--provider", provider], server_env(home)) as server:
        sid = await open_session(server, workspace)
        await server.notify(
            "session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "hi"}]}
        )
        # The same session takes a real prompt at once: nothing invisible holds it.
        reply = await server.request(
            "session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "hi"}]}
        )
        assert reply["result"]["stopReason"] == "end_turn"
        said = [u for u in server.updates(sid) if u["sessionUpdate"] == "agent_message_chunk"]
        assert [u["content"]["text"] for u in said] == ["answered"]
    assert "request sent as a notification ignored" in server.stderr


@pytest.mark.timeout(600)  # 5,000 answers, each validated against the schema here
async def test_a_flood_is_queued_and_every_request_answered_once(home, workspace):
    count = 5_000
    async with raw_server(["--memory"], server_env(home), spawn=True) as server:
        await open_session(server, workspace)
        flood = b"".join(
            line({"jsonrpc": "2.0", "id": f"f{n}", "method": "session/list", "params": {}})
            for n in range(count)
        )
        await server.send_raw(flood)
        await server.response(f"f{count - 1}", timeout=300)
        answers: dict[str, int] = {}
        for message in server.messages:
            if isinstance(message.get("id"), str) and message["id"].startswith("f"):
                assert "result" in message, message
                answers[message["id"]] = answers.get(message["id"], 0) + 1
        assert len(answers) == count and set(answers.values()) == {1}
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        peak_kib = int(next(s for s in status.splitlines() if s.startswith("VmHWM")).split()[1])
        # One task per request peaked at 212 MiB here (630 MiB for 20,000); bounded,
        # the server stays near its idle size (92 MiB).
        assert peak_kib < 160 * 1024, peak_kib


def _stored(db: Path, sid: str) -> tuple[list[tuple[str, str]], list[str]]:
    with sqlite3.connect(db) as conn:
        items = conn.execute(
            "SELECT kind, data FROM session_items WHERE session_id = ? ORDER BY seq", (sid,)
        ).fetchall()
        turns = [
            row[0]
            for row in conn.execute("SELECT status FROM chat_tasks WHERE session_id = ?", (sid,))
        ]
    return items, turns


@pytest.mark.parametrize("how", ["session/cancel", "$/cancel_request"])
async def test_both_cancels_store_the_turn_end_the_same_way(home, workspace, tmp_path, how):
    """The streamed text is kept, the running tool call ends failed (not pending), and
    the turn is stored as cancelled, not left running for a later repair."""
    provider = script(
        tmp_path,
        "turns:\n  - steps:\n      - message: partial words\n"
        "      - tool_call: {name: write_file, arguments: {path: a.txt, content: x}}\n",
    )
    db = tmp_path / "s.db"
    args = ["--database-url", f"sqlite:///{db}", "--provider", provider]
    async with raw_server(args, server_env(home)) as server:
        asked, cancelled = anyio.Event(), anyio.Event()

        async def answer_after_cancel(message: dict[str, Any]) -> Any:
            asked.set()
            await cancelled.wait()  # (this holds the harness's reader until then)
            return {"outcome": {"outcome": "cancelled"}}

        server.responder = answer_after_cancel
        sid = await open_session(server, workspace)
        await server.start_prompt(sid, "go", "turn")
        with anyio.fail_after(30):
            await asked.wait()  # the tool call is waiting for permission
        if how == "session/cancel":
            await server.notify("session/cancel", {"sessionId": sid})
        else:
            await server.notify("$/cancel_request", {"requestId": "turn"})
        cancelled.set()
        reply = await server.response("turn")
        assert reply["result"]["stopReason"] == "cancelled"
        items, turns = _stored(db, sid)
    kinds = [kind for kind, _ in items]
    assert kinds == ["user", "agent", "tool_call"], kinds
    assert json.loads(items[1][1])["text"] == "partial words"
    assert json.loads(items[2][1])["status"] == "failed"
    assert turns == ["cancelled"]


async def test_a_session_is_used_only_where_it_was_opened(home, workspace, tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    async with raw_server(["--database-url", db], server_env(home)) as owner:
        sid = await open_session(owner, workspace)
    async with raw_server(["--database-url", db], server_env(home)) as stranger:
        await stranger.request("initialize", INIT)
        for method, params in [
            ("session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "x"}]}),
            ("session/set_mode", {"sessionId": sid, "modeId": "auto"}),
            ("session/set_config_option", {"sessionId": sid, "configId": "mode", "value": "auto"}),
            ("_acp_server/session/rename", {"sessionId": sid, "title": "mine now"}),
            ("session/fork", {"sessionId": sid, "cwd": str(workspace)}),
            ("session/close", {"sessionId": sid}),
            ("session/delete", {"sessionId": sid}),
        ]:
            reply = await stranger.request(method, params)
            assert reply["error"]["code"] == -32002, (method, reply)
            assert "on this connection" in reply["error"]["message"], reply
        # Opened here, it answers to all of them.
        await stranger.request(
            "session/resume", {"sessionId": sid, "cwd": str(workspace), "mcpServers": []}
        )
        assert "result" in await stranger.request(
            "session/set_mode", {"sessionId": sid, "modeId": "auto"}
        )
        assert "result" in await stranger.request(
            "_acp_server/session/rename", {"sessionId": sid, "title": "mine now"}
        )
        assert "result" in await stranger.request("session/delete", {"sessionId": sid})
    async with raw_server(["--database-url", db], server_env(home)) as lister:
        await lister.request("initialize", INIT)
        other = (await lister.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
            "result"
        ]["sessionId"]
        await lister.request("session/close", {"sessionId": other})
        # A listed session may be deleted without opening it (the history panel's flow).
        listed = (await lister.request("session/list", {}))["result"]["sessions"]
        assert [s["sessionId"] for s in listed] == [other]
        assert "result" in await lister.request("session/delete", {"sessionId": other})


METHODS = [
    "initialize",
    "authenticate",
    "session/new",
    "session/load",
    "session/resume",
    "session/fork",
    "session/list",
    "session/close",
    "session/delete",
    "session/prompt",
    "session/cancel",
    "session/set_mode",
    "session/set_config_option",
    "_acp_server/session/rename",
    "$/cancel_request",
    "no/such/method",
]
FIELDS = [
    "protocolVersion",
    "clientCapabilities",
    "methodId",
    "sessionId",
    "cwd",
    "mcpServers",
    "additionalDirectories",
    "cursor",
    "prompt",
    "modeId",
    "configId",
    "value",
    "type",
    "title",
    "requestId",
    "_meta",
]
SID = "<the session>"
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from([SID, "/", "/tmp", "auto", "mode", "model", "text", "http", "-1"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ids = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
messages = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "method": st.sampled_from(METHODS)},
    optional={
        "id": ids,
        "params": st.one_of(
            st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
            json_values,
        ),
    },
)


def _with_session(value: Any, sid: str) -> Any:
    if value == SID:
        return sid
    if isinstance(value, list):
        return [_with_session(v, sid) for v in value]
    if isinstance(value, dict):
        return {k: _with_session(v, sid) for k, v in value.items()}
    return value


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(messages, min_size=1, max_size=40))
def test_fuzz_every_method_field_and_id_type(batch, tmp_path_factory):
    """Whatever arrives: the process keeps serving, never answers -32603 (every bad input
    has a better code), answers each usable request id, and writes only valid ACP."""
    home = tmp_path_factory.mktemp("home")
    workspace = tmp_path_factory.mktemp("project")

    async def run() -> None:
        async with raw_server(["--memory"], server_env(home)) as server:
            sid = await open_session(server, workspace)
            sent = [_with_session(m, sid) for m in batch]
            await server.send_raw(b"".join(line(m) for m in sent))
            assert (await server.request("initialize", INIT))["result"]["protocolVersion"] == 1
            internal = [m for m in server.messages if m.get("error", {}).get("code") == -32603]
            assert not internal, internal
        assert server.returncode == 0
        assert "Traceback" not in server.stderr, server.stderr[-3000:]

    anyio.run(run)


async def test_a_second_process_on_the_session_is_seen_before_the_next_model_call(
    home, workspace, tmp_path
):
    from tests.fake_llm import FakeLLM, Reply

    db = f"sqlite:///{tmp_path / 's.db'}"
    with FakeLLM() as llm:
        llm.queue(
            Reply(text_chunks=["answer one"]),
            Reply(text_chunks=["answer two"]),
            Reply(text_chunks=["answer three"]),
        )
        env = server_env(
            home, {"OPENAI_BASE_URL": llm.base_url_openai, "OPENAI_API_KEY": "sk-test"}
        )
        config = tmp_path / "c.yaml"
        config.write_text("agent:\n  generate_titles: false\n")
        args = ["--database-url", db, "--provider", "openai", "--config", str(config)]

        def prompt(sid: str, text: str) -> dict[str, Any]:
            return {"sessionId": sid, "prompt": [{"type": "text", "text": text}]}

        async with (
            raw_server(args, env, spawn=True) as first,
            raw_server(args, env, spawn=True) as second,
        ):
            sid = await open_session(first, workspace)
            assert "result" in await first.request("session/prompt", prompt(sid, "from one"))
            await second.request("initialize", INIT)
            await second.request(
                "session/load", {"sessionId": sid, "cwd": str(workspace), "mcpServers": []}
            )
            assert "result" in await second.request("session/prompt", prompt(sid, "from two"))
            assert "result" in await first.request("session/prompt", prompt(sid, "from three"))
        seen = json.dumps(llm.requests[2]["messages"])
        for text in ("from one", "answer one", "from two", "answer two", "from three"):
            assert text in seen, (text, seen)


def _rows(db: Path, sid: str) -> list[tuple[int, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT seq, message_id, kind FROM session_items WHERE session_id = ? ORDER BY seq",
            (sid,),
        ).fetchall()


async def test_a_crash_loop_loses_nothing_committed_and_doubles_nothing(home, workspace, tmp_path):
    """SIGKILL at random points of turns (chosen by counting updates, not by time), then
    load: every item committed before a kill is still there, once, in order."""
    rng = random.Random(20261202)
    turn = (
        "  - delay_ms: 2\n    steps:\n"
        "      - thought: [Let me, ' look']\n"
        "      - message: Reading it.\n"
        "      - tool_call: {name: read_file, arguments: {path: README.md}}\n"
        "      - tool_call: {name: write_file, arguments: {path: out.txt, content: x}}\n"
        "      - chunks: [It, ' says', ' demo', ' project', .]\n"
    )
    provider = script(tmp_path, "turns:\n" + turn * 12)
    config = tmp_path / "c.yaml"
    config.write_text("agent:\n  generate_titles: false\n  default_mode: auto\n")
    db = tmp_path / "s.db"
    args = ["--database-url", f"sqlite:///{db}", "--provider", provider, "--config", str(config)]
    sid: str | None = None
    committed: list[tuple[int, str, str]] = []
    for _ in range(10):
        async with raw_server(args, server_env(home), spawn=True) as server:
            if sid is None:
                sid = await open_session(server, workspace)
            else:
                await server.request("initialize", INIT)
                load = {"sessionId": sid, "cwd": str(workspace), "mcpServers": []}
                assert "result" in await server.request("session/load", load)
            before = len(server.messages)
            await server.start_prompt(sid, "go", "p")
            wanted = rng.randrange(0, 14)
            await server.wait_for(
                lambda m, b=before, w=wanted: (
                    sum(1 for x in server.messages[b:] if x.get("method") == "session/update") >= w
                    or m.get("id") == "p"
                )
            )
            await server.kill()
        rows = _rows(db, sid)
        assert rows[: len(committed)] == committed, "an item committed before a kill changed"
        assert len({message_id for _, message_id, _ in rows}) == len(rows), "an item doubled"
        committed = rows
    assert sid is not None
    async with raw_server(args, server_env(home)) as server:
        await server.request("initialize", INIT)
        load = {"sessionId": sid, "cwd": str(workspace), "mcpServers": []}
        assert "result" in await server.request("session/load", load)
        replayed = {
            u.get("messageId") or u.get("toolCallId")
            for u in server.updates(sid)
            if u["sessionUpdate"] != "available_commands_update"
        }
    visible = {message_id for _, message_id, kind in committed if kind != "summary"}
    assert visible <= replayed, visible - replayed
    with sqlite3.connect(db) as conn:
        statuses = {row[0] for row in conn.execute("SELECT status FROM chat_tasks")}
        tool_states = [
            json.loads(row[0])["status"]
            for row in conn.execute("SELECT data FROM session_items WHERE kind = 'tool_call'")
        ]
    assert "running" not in statuses, statuses
    assert "pending" not in tool_states and "in_progress" not in tool_states, tool_states


async def test_a_session_deleted_by_another_process_in_mid_turn_is_32002(home, workspace, tmp_path):
    provider = script(
        tmp_path,
        "turns:\n  - steps:\n"
        "      - tool_call: {name: write_file, arguments: {path: a.txt, content: x}}\n"
        "      - message: written\n",
    )
    db = f"sqlite:///{tmp_path / 's.db'}"
    args = ["--database-url", db, "--provider", provider]
    asked, deleted = anyio.Event(), anyio.Event()

    async def allow_once_deleted(message: dict[str, Any]) -> Any:
        asked.set()
        await deleted.wait()
        return {"outcome": {"outcome": "selected", "optionId": "allow_once"}}

    # Two processes on one database: each spawned.
    async with raw_server(
        args, server_env(home), responder=allow_once_deleted, spawn=True
    ) as first:
        sid = await open_session(first, workspace)
        await first.start_prompt(sid, "go", "turn")
        with anyio.fail_after(30):
            await asked.wait()
        async with raw_server(args, server_env(home), spawn=True) as second:
            await second.request("initialize", INIT)
            await second.request("session/list", {})
            assert "result" in await second.request("session/delete", {"sessionId": sid})
        deleted.set()
        reply = await first.response("turn")
        assert reply["error"]["code"] == -32002, reply
        assert "may have been deleted" in reply["error"]["message"]
        assert "result" in await first.request("session/list", {})


async def test_a_request_with_a_null_id_is_answered_with_a_null_id(home, workspace):
    async with raw_server(["--memory"], server_env(home)) as server:
        await open_session(server, workspace)
        await server.send_raw(line({"jsonrpc": "2.0", "id": None, "method": "session/list"}))
        reply = await server.wait_for(lambda m: m.get("id", 0) is None and "result" in m)
        assert len(reply["result"]["sessions"]) == 1
