"""Prompt turns against a fake OpenAI / Anthropic server on 127.0.0.1 (the only fake)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fake_llm import FakeLLM, Reply
from tests.harness import INIT, raw_server, server_env

pytestmark = pytest.mark.anyio


@pytest.fixture
def llm():
    with FakeLLM() as fake:
        yield fake


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "acp-server.yaml"
    path.write_text(text)
    return str(path)


def openai_env(home: Path, llm: FakeLLM) -> dict[str, str]:
    return server_env(
        home, {"OPENAI_BASE_URL": llm.base_url_openai, "OPENAI_API_KEY": "sk-test-secret-key"}
    )


NO_TITLES = "agent:\n  generate_titles: false\nprovider:\n  max_retries: 2\n"


async def new_session(server, cwd: Path) -> str:
    await server.request("initialize", INIT)
    return (await server.request("session/new", {"cwd": str(cwd), "mcpServers": []}))["result"][
        "sessionId"
    ]


def prompt(sid: str, text: str) -> dict:
    return {"sessionId": sid, "prompt": [{"type": "text", "text": text}]}


def agent_text(server, sid: str) -> str:
    return "".join(
        u["content"]["text"]
        for u in server.updates(sid)
        if u["sessionUpdate"] == "agent_message_chunk"
    )


async def test_multi_turn_history_reaches_the_provider_complete_and_in_order(
    home, workspace, tmp_path, llm
):
    llm.queue(
        Reply(text_chunks=["Hel", "lo ", "one"], usage=(20, 3, 0)),
        Reply(tool_calls=[("call_a", "read_file", {"path": "README.md"})], usage=(30, 5, 0)),
        Reply(text_chunks=["The README says demo."], usage=(40, 5, 10)),
    )
    settings = "agent:\n  generate_titles: false\n  default_mode: auto\n"
    args = ["--memory", "--provider", "openai", "--config", config(tmp_path, settings)]
    async with raw_server(args, openai_env(home, llm)) as server:
        sid = await new_session(server, workspace)
        first = await server.request("session/prompt", prompt(sid, "question one"))
        assert first["result"]["stopReason"] == "end_turn"
        second = await server.request("session/prompt", prompt(sid, "read the readme"))
        assert second["result"]["stopReason"] == "end_turn"
        assert "The README says demo." in agent_text(server, sid)
        kinds = [u["sessionUpdate"] for u in server.updates(sid)]
        assert "tool_call" in kinds and "tool_call_update" in kinds
        usage = [u for u in server.updates(sid) if u["sessionUpdate"] == "usage_update"]
        assert usage[-1]["used"] == 45 and usage[-1]["size"] > 0

    roles = [[m["role"] for m in r["messages"]] for r in llm.requests]
    assert roles[0] == ["system", "user"]
    assert roles[1] == ["system", "user", "assistant", "user"]
    assert roles[2] == ["system", "user", "assistant", "user", "assistant", "tool"]
    last = llm.requests[2]["messages"]
    assert last[1]["content"] in ("question one", [{"type": "text", "text": "question one"}])
    assert "Hello one" in str(last[2]["content"])
    assert "demo project" in last[5]["content"]
    assert all(r.headers.get("authorization") == "Bearer sk-test-secret-key" for r in llm.requests)


async def test_cancel_mid_stream_answers_cancelled_fast_and_keeps_the_partial_reply(
    home, workspace, tmp_path, llm
):
    # A second session streams on meanwhile: the fake's events (one per 10 ms) are the
    # clock that says "fast", and a loaded machine slows that clock with the server.
    llm.queue(
        Reply(text_chunks=["partial "], endless=True, chunk_delay=0.01),
        Reply(text_chunks=["tick "], endless=True, chunk_delay=0.01),
    )
    db = f"sqlite:///{tmp_path / 's.db'}"
    args = ["--database-url", db, "--provider", "openai", "--config", config(tmp_path, NO_TITLES)]
    async with raw_server(args, openai_env(home, llm)) as server:
        sid = await new_session(server, workspace)
        metronome = (
            await server.request("session/new", {"cwd": str(workspace), "mcpServers": []})
        )["result"]["sessionId"]
        for request_id, session, text in (("turn", sid, "go on"), ("tick", metronome, "tick")):
            await server.send(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "method": "session/prompt",
                    "params": prompt(session, text),
                }
            )
            await server.wait_for(lambda m, s=session: agent_text(server, s).count(" ") >= 5)
        before = llm.streamed
        await server.notify("session/cancel", {"sessionId": sid})
        reply = await server.response("turn")
        late = llm.streamed - before
        assert reply["result"]["stopReason"] == "cancelled"
        assert late < 100, f"answered after {late} more streamed events (~{late / 100:.1f} s)"
        said = agent_text(server, sid)
        assert said.startswith("partial")
        # the session is usable at once
        llm.queue(Reply(text_chunks=["after"]))
        assert (await server.request("session/prompt", prompt(sid, "again")))["result"][
            "stopReason"
        ] == "end_turn"
        await server.notify("session/cancel", {"sessionId": metronome})
        assert (await server.response("tick"))["result"]["stopReason"] == "cancelled"
    async with raw_server(args, openai_env(home, llm)) as server:
        await server.request("initialize", INIT)
        await server.request(
            "session/load", {"sessionId": sid, "cwd": str(workspace), "mcpServers": []}
        )
        replayed = agent_text(server, sid)
        assert replayed.startswith(said)
        assert replayed.endswith("after")


async def test_provider_500_is_retried_then_succeeds(home, workspace, tmp_path, llm):
    llm.queue(Reply(status=500), Reply(text_chunks=["recovered"]))
    args = ["--memory", "--provider", "openai", "--config", config(tmp_path, NO_TITLES)]
    async with raw_server(args, openai_env(home, llm)) as server:
        sid = await new_session(server, workspace)
        assert (await server.request("session/prompt", prompt(sid, "hi")))["result"][
            "stopReason"
        ] == "end_turn"
        assert agent_text(server, sid) == "recovered"
    assert len(llm.requests) == 2


async def test_unreachable_provider_gives_a_readable_message_and_a_proper_stop(
    home, workspace, tmp_path
):
    env = server_env(
        home, {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-never-logged"}
    )
    args = [
        "--memory",
        "--provider",
        "openai",
        "--config",
        config(tmp_path, NO_TITLES.replace("2", "0")),
    ]
    async with raw_server(args, env) as server:
        sid = await new_session(server, workspace)
        reply = await server.request("session/prompt", prompt(sid, "hi"), timeout=60)
        # Scripts and headless clients must see a failure, not a successful end_turn.
        assert reply["error"]["code"] == -32603
        assert reply["error"]["data"] == {"kind": "unreachable", "retryable": True}
        assert "127.0.0.1:9" in reply["error"]["message"]
        message = agent_text(server, sid)
        assert "127.0.0.1:9" in message and "OPENAI_BASE_URL" in message
        # the server keeps serving
        assert "result" in await server.request("session/list", {})
    assert "sk-never-logged" not in server.stderr


async def test_provider_auth_failure_is_explained_without_the_key(home, workspace, tmp_path, llm):
    llm.queue(Reply(status=401))
    args = ["--memory", "--provider", "openai", "--config", config(tmp_path, NO_TITLES)]
    async with raw_server(args, openai_env(home, llm)) as server:
        sid = await new_session(server, workspace)
        reply = await server.request("session/prompt", prompt(sid, "hi"))
        assert reply["error"]["data"] == {"kind": "auth", "retryable": False}
        assert "sk-test-secret-key" not in json.dumps(reply)
        message = agent_text(server, sid)
        assert "401" in message and "sk-test-secret-key" not in message
    assert "sk-test-secret-key" not in server.stderr


async def test_titles_and_usage_appear_and_persist(home, workspace, tmp_path):
    with FakeLLM(
        default_reply=Reply(text_chunks=["Refactoring ", "auth module"], usage=(12, 4, 0))
    ) as llm:
        db = f"sqlite:///{tmp_path / 't.db'}"
        args = ["--database-url", db, "--provider", "openai"]
        async with raw_server(args, openai_env(home, llm)) as server:
            sid = await new_session(server, workspace)
            await server.request(
                "session/prompt", prompt(sid, "please refactor the authentication module")
            )
            info = await server.wait_for(
                lambda m: (
                    m.get("method") == "session/update"
                    and m["params"]["update"]["sessionUpdate"] == "session_info_update"
                )
            )
            assert info["params"]["update"]["title"] == "Refactoring auth module"
            # a person's title is never overwritten
            await server.request("session/prompt", prompt(sid, "/title My auth work"))
            await server.request("session/prompt", prompt(sid, "more"))
        async with raw_server(args, openai_env(home, llm)) as server:
            await server.request("initialize", INIT)
            listed = (await server.request("session/list", {}))["result"]["sessions"]
            assert listed[0]["title"] == "My auth work"
        # the title request was small and separate from the turns
        assert any(
            r.get("max_tokens", r.get("max_completion_tokens", 0)) <= 32 for r in llm.requests
        )


async def test_anthropic_thinking_text_and_usage(home, workspace, tmp_path):
    with FakeLLM() as llm:
        llm.queue(
            Reply(thinking_chunks=["let me ", "think"], text_chunks=["Answer."], usage=(50, 7, 20))
        )
        env = server_env(
            home, {"ANTHROPIC_BASE_URL": llm.base_url_anthropic, "ANTHROPIC_API_KEY": "ak-secret"}
        )
        args = ["--memory", "--provider", "anthropic", "--config", config(tmp_path, NO_TITLES)]
        async with raw_server(args, env) as server:
            sid = await new_session(server, workspace)
            await server.request("session/prompt", prompt(sid, "why?"))
            updates = server.updates(sid)
            thoughts = "".join(
                u["content"]["text"] for u in updates if u["sessionUpdate"] == "agent_thought_chunk"
            )
            assert thoughts == "let me think"
            assert agent_text(server, sid) == "Answer."
            ids = {u["messageId"] for u in updates if u["sessionUpdate"] == "agent_thought_chunk"}
            assert len(ids) == 1
        assert llm.requests[0].headers.get("x-api-key") == "ak-secret"


async def test_a_busy_session_refuses_a_second_prompt(home, workspace, tmp_path, llm):
    llm.queue(Reply(text_chunks=["slow"], endless=True, chunk_delay=0.02))
    args = ["--memory", "--provider", "openai", "--config", config(tmp_path, NO_TITLES)]
    async with raw_server(args, openai_env(home, llm)) as server:
        sid = await new_session(server, workspace)
        other = (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
            "result"
        ]["sessionId"]
        await server.send(
            {"jsonrpc": "2.0", "id": "t1", "method": "session/prompt", "params": prompt(sid, "one")}
        )
        await server.wait_for(
            lambda m: (
                m.get("method") == "session/update"
                and m["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
            )
        )
        busy = await server.request("session/prompt", prompt(sid, "two"))
        assert busy["error"]["code"] == -32600 and "already" in busy["error"]["message"]
        # another session is served meanwhile
        llm.queue(Reply(text_chunks=["other"]))
        assert (await server.request("session/prompt", prompt(other, "x")))["result"][
            "stopReason"
        ] == "end_turn"
        await server.request("session/close", {"sessionId": sid})
        assert (await server.response("t1"))["result"]["stopReason"] == "cancelled"


async def test_max_tokens_refusal_and_max_turn_requests(home, workspace, tmp_path, llm):
    llm.queue(
        Reply(text_chunks=["cut"], finish="length"),
        Reply(text_chunks=["no"], finish="content_filter"),
        *[Reply(tool_calls=[(f"c{i}", "list_directory", {})]) for i in range(3)],
    )
    text = "agent:\n  generate_titles: false\n  default_mode: auto\n  max_model_calls_per_turn: 3\n"
    args = ["--memory", "--provider", "openai", "--config", config(tmp_path, text)]
    async with raw_server(args, openai_env(home, llm)) as server:
        sid = await new_session(server, workspace)
        stops = [
            (await server.request("session/prompt", prompt(sid, str(i))))["result"]["stopReason"]
            for i in range(3)
        ]
    assert stops == ["max_tokens", "refusal", "max_turn_requests"]


async def test_script_provider_reproduces_its_file(home, workspace):
    example = Path(__file__).resolve().parent.parent / "examples" / "script-demo.yaml"
    async with raw_server(
        ["--memory", "--provider", f"script:{example}"], server_env(home)
    ) as server:
        sid = await new_session(server, workspace)
        await server.request("session/set_mode", {"sessionId": sid, "modeId": "auto"})
        reply = await server.request("session/prompt", prompt(sid, "demo"))
        assert reply["result"]["stopReason"] in ("end_turn", "max_tokens", "refusal")
        kinds = {u["sessionUpdate"] for u in server.updates(sid)}
        assert {
            "agent_thought_chunk",
            "agent_message_chunk",
            "plan",
            "tool_call",
            "tool_call_update",
        } <= kinds
