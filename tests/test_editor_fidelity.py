"""What real editors ran into: modes kept in sync both ways, errors naming the request's
own field, any text in the system prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fake_llm import FakeLLM, Reply
from tests.harness import INIT, raw_server, server_env

pytestmark = pytest.mark.anyio


async def open_session(server, cwd: Path) -> str:
    await server.request("initialize", INIT)
    reply = await server.request("session/new", {"cwd": str(cwd), "mcpServers": []})
    return reply["result"]["sessionId"]


async def test_mode_and_the_mode_config_option_move_together(home, workspace):
    async with raw_server(["--memory"], server_env(home)) as server:
        sid = await open_session(server, workspace)
        assert "result" in await server.request(
            "session/set_mode", {"sessionId": sid, "modeId": "read-only"}
        )
        option_update = await server.wait_for(
            lambda m: (
                m.get("method") == "session/update"
                and m["params"]["update"]["sessionUpdate"] == "config_option_update"
            )
        )
        options = option_update["params"]["update"]["configOptions"]
        assert next(o for o in options if o["id"] == "mode")["currentValue"] == "read-only"

        reply = await server.request(
            "session/set_config_option", {"sessionId": sid, "configId": "mode", "value": "auto"}
        )
        assert (
            next(o for o in reply["result"]["configOptions"] if o["id"] == "mode")["currentValue"]
            == "auto"
        )
        mode_update = await server.wait_for(
            lambda m: (
                m.get("method") == "session/update"
                and m["params"]["update"]["sessionUpdate"] == "current_mode_update"
            )
        )
        assert mode_update["params"]["update"]["currentModeId"] == "auto"


async def test_an_invalid_value_names_the_field_the_request_used(home, workspace):
    async with raw_server(["--memory"], server_env(home)) as server:
        sid = await open_session(server, workspace)
        by_option = await server.request(
            "session/set_config_option", {"sessionId": sid, "configId": "mode", "value": "yolo"}
        )
        assert by_option["error"]["data"] == {"field": "value"}
        by_mode = await server.request("session/set_mode", {"sessionId": sid, "modeId": "yolo"})
        assert by_mode["error"]["data"] == {"field": "modeId"}


async def test_braces_in_the_system_prompt_are_the_users_text(home, workspace, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "agent:\n  generate_titles: false\n"
        "  system_prompt: 'Answer as {\"json\": true} in {cwd}; never {format} or {0}.'\n"
    )
    with FakeLLM() as llm:
        llm.queue(Reply(text_chunks=["fine"]))
        env = server_env(home, {"OPENAI_BASE_URL": llm.base_url_openai, "OPENAI_API_KEY": "k"})
        args = ["--memory", "--provider", "openai", "--config", str(config)]
        async with raw_server(args, env) as server:
            sid = await open_session(server, workspace)
            reply = await server.request(
                "session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "hi"}]}
            )
            assert reply["result"]["stopReason"] == "end_turn"
        system = llm.requests[0]["messages"][0]
    assert system["role"] == "system"
    assert json.dumps(system["content"]).count("{format} or {0}") == 1
    assert f"in {workspace};" in system["content"]


async def test_a_failed_model_call_is_an_error_answer_and_what_streamed_is_kept(
    home, workspace, tmp_path
):
    config = tmp_path / "c.yaml"
    config.write_text("agent:\n  generate_titles: false\nprovider:\n  max_retries: 0\n")
    with FakeLLM() as llm:
        llm.queue(Reply(text_chunks=["half an answer"], stream_error="Overloaded"))
        env = server_env(home, {"OPENAI_BASE_URL": llm.base_url_openai, "OPENAI_API_KEY": "k"})
        args = ["--memory", "--provider", "openai", "--config", str(config)]
        async with raw_server(args, env) as server:
            sid = await open_session(server, workspace)
            reply = await server.request(
                "session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "hi"}]}
            )
            assert reply["error"]["code"] == -32603
            assert reply["error"]["message"].startswith("The model call failed: ")
            assert set(reply["error"]["data"]) == {"kind", "retryable"}
            chunks = [
                u["content"]["text"]
                for u in server.updates(sid)
                if u["sessionUpdate"] == "agent_message_chunk"
            ]
            assert chunks[0] == "half an answer"
            assert chunks[-1].startswith("\n\n⚠️ ")
            await server.request("session/close", {"sessionId": sid})
            before = len(server.updates(sid))
            await server.request(
                "session/load", {"sessionId": sid, "cwd": str(workspace), "mcpServers": []}
            )
            replayed = [
                u["content"]["text"]
                for u in server.updates(sid)[before:]
                if u["sessionUpdate"] == "agent_message_chunk"
            ]
            assert replayed == chunks


@pytest.mark.parametrize(
    "answer", [{"outcome": "yes please"}, {"outcome": {"outcome": "selected", "optionId": "x"}}]
)
async def test_an_unreadable_permission_answer_is_not_called_a_rejection(
    home, workspace, tmp_path, answer
):
    script = tmp_path / "s.yaml"
    script.write_text(
        "turns:\n  - steps:\n"
        "      - tool_call: {name: write_file, arguments: {path: a.txt, content: x}}\n"
        "      - message: done\n"
    )

    async def respond(message):
        return answer

    args = ["--memory", "--provider", f"script:{script}"]
    async with raw_server(args, server_env(home), responder=respond) as server:
        sid = await open_session(server, workspace)
        reply = await server.request(
            "session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "go"}]}
        )
        assert reply["result"]["stopReason"] == "end_turn"
        final = [
            u
            for u in server.updates(sid)
            if u["sessionUpdate"] == "tool_call_update" and u.get("status") == "failed"
        ]
        text = json.dumps(final)
        assert "no usable answer to the permission request" in text
        assert "rejected" not in text
    assert not (workspace / "a.txt").exists()
    assert "permission answer" in server.stderr


async def test_a_permission_request_shows_the_diff_or_the_command_line(home, workspace, tmp_path):
    (workspace / "notes.txt").write_text("alpha\nbeta\n")
    script = tmp_path / "s.yaml"
    script.write_text(
        "turns:\n  - steps:\n"
        "      - tool_call: {name: edit_file, arguments: {path: notes.txt, old_text: beta,"
        " new_text: gamma}}\n"
        "      - tool_call: {name: write_file, arguments: {path: new.txt, content: fresh}}\n"
        "      - tool_call: {name: run_command, arguments: {command: 'echo hi'}}\n"
        "      - tool_call: {name: edit_file, arguments: {path: notes.txt, old_text: nowhere,"
        " new_text: x}}\n"
        "      - message: done\n"
    )
    asked: list[dict] = []

    async def allow(message):
        asked.append(message["params"]["toolCall"])
        return {"outcome": {"outcome": "selected", "optionId": "allow_once"}}

    args = ["--memory", "--provider", f"script:{script}"]
    async with raw_server(args, server_env(home), responder=allow) as server:
        sid = await open_session(server, workspace)
        reply = await server.request(
            "session/prompt", {"sessionId": sid, "prompt": [{"type": "text", "text": "go"}]}
        )
        assert reply["result"]["stopReason"] == "end_turn"
    edit, write, command = asked  # the impossible edit is refused without asking
    assert edit["content"] == [
        {
            "type": "diff",
            "path": str(workspace / "notes.txt"),
            "oldText": "alpha\nbeta\n",
            "newText": "alpha\ngamma\n",
        }
    ]
    assert write["content"][0]["type"] == "diff"
    assert write["content"][0]["newText"] == "fresh"
    assert write["content"][0].get("oldText") is None
    assert command["content"] == [
        {"type": "content", "content": {"type": "text", "text": "$ echo hi"}}
    ]
    assert (workspace / "notes.txt").read_text() == "alpha\ngamma\n"


async def test_a_refused_prompt_is_kept_for_the_person_and_left_out_for_the_model(
    home, workspace, tmp_path
):
    config = tmp_path / "c.yaml"
    config.write_text("agent:\n  generate_titles: false\n")
    db = f"sqlite:///{tmp_path / 's.db'}"
    with FakeLLM() as llm:
        llm.queue(
            Reply(text_chunks=["I can't help with that."], finish="content_filter"),
            Reply(text_chunks=["Sure."]),
            Reply(text_chunks=["Still sure."]),
        )
        env = server_env(home, {"OPENAI_BASE_URL": llm.base_url_openai, "OPENAI_API_KEY": "k"})
        args = ["--database-url", db, "--provider", "openai", "--config", str(config)]

        def prompt(sid: str, text: str) -> dict:
            return {"sessionId": sid, "prompt": [{"type": "text", "text": text}]}

        async with raw_server(args, env) as server:
            sid = await open_session(server, workspace)
            refused = await server.request("session/prompt", prompt(sid, "forbidden ask"))
            assert refused["result"]["stopReason"] == "refusal"
            assert "result" in await server.request("session/prompt", prompt(sid, "fine ask"))
        async with raw_server(args, env) as server:
            await server.request("initialize", INIT)
            load = {"sessionId": sid, "cwd": str(workspace), "mcpServers": []}
            assert "result" in await server.request("session/load", load)
            shown = json.dumps(server.updates(sid))
            assert "forbidden ask" in shown and "I can't help with that." in shown
            assert "result" in await server.request("session/prompt", prompt(sid, "third ask"))
        for request in llm.requests[1:]:
            sent = json.dumps(request["messages"])
            assert "forbidden ask" not in sent and "I can't help" not in sent
        assert "fine ask" in json.dumps(llm.requests[2]["messages"])
