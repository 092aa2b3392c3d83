"""The stdio JSON-RPC layer, with raw lines against the real server (its process where exit
and signals are the subject)."""

from __future__ import annotations

import json
import signal
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import INIT, SERVER, raw_server, server_env

pytestmark = pytest.mark.anyio


async def test_initialize_answers_version_1_and_only_implemented_capabilities(home):
    async with raw_server(["--memory"], server_env(home)) as server:
        for version in (1, 2, 99, 0):
            reply = await server.request("initialize", {**INIT, "protocolVersion": version})
            result = reply["result"]
            assert result["protocolVersion"] == 1
            assert result["agentInfo"]["name"] == "acp-server"
            assert result["authMethods"] == []
            caps = result["agentCapabilities"]
            assert caps["loadSession"] is True
            assert set(caps["sessionCapabilities"]) >= {"list", "resume", "close", "delete"}


async def test_malformed_input_gets_errors_and_the_server_keeps_serving(home):
    async with raw_server(["--memory"], server_env(home)) as server:
        await server.send_raw(b"this is not json\n")
        parse = await server.wait_for(lambda m: m.get("error", {}).get("code") == -32700)
        assert parse["id"] is None
        await server.send_raw(b'[{"jsonrpc":"2.0","id":1,"method":"initialize"}]\n')
        batch = await server.wait_for(lambda m: "batches" in m.get("error", {}).get("message", ""))
        assert batch["error"]["code"] == -32600
        await server.send_raw(b'{"jsonrpc":"1.0","id":7,"method":"initialize"}\n')
        wrong = await server.response(7)
        assert wrong["error"]["code"] == -32600
        await server.send_raw(b'"just a string"\n')
        await server.wait_for(
            lambda m: "must be a JSON object" in m.get("error", {}).get("message", "")
        )

        early = await server.request("session/list", {})
        assert early["error"]["code"] == -32600
        assert "before initialize" in early["error"]["message"]
        assert (await server.request("initialize", INIT))["result"]["protocolVersion"] == 1
        unknown = await server.request("no/such/method", {})
        assert unknown["error"]["code"] == -32601
        positional = await server.request("session/list", [1, 2])  # type: ignore[arg-type]
        assert positional["error"]["code"] == -32602
        bad = await server.request("session/new", {"cwd": 5, "mcpServers": []})
        assert bad["error"]["code"] == -32602
        assert "cwd" in bad["error"]["message"]
        missing = await server.request("session/new", {"mcpServers": []})
        assert missing["error"]["message"] == "Invalid params: cwd is required"
        gone = await server.request("session/prompt", {"sessionId": "nope", "prompt": []})
        assert gone["error"]["code"] == -32002
        # unknown notifications are ignored, and a stray response is dropped
        await server.notify("_vendor/whatever", {"x": 1})
        await server.send({"jsonrpc": "2.0", "id": 424242, "result": {}})
        assert (await server.request("initialize", INIT))["result"]["protocolVersion"] == 1
    assert server.returncode == 0


async def test_oversized_line_is_rejected_without_killing_the_server(home, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text("transport:\n  max_message_bytes: 4096\n")
    async with raw_server(["--memory", "--config", str(config)], server_env(home)) as server:
        await server.send_raw(
            b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"x":"'
            + b"a" * 100_000
            + b'"}}\n'
        )
        error = await server.wait_for(
            lambda m: "exceeds the limit" in m.get("error", {}).get("message", "")
        )
        assert error["error"]["code"] == -32600
        assert (await server.request("initialize", INIT))["result"]["protocolVersion"] == 1


async def test_cancel_request_on_a_prompt_ends_the_turn_as_cancelled(home, workspace, tmp_path):
    """``$/cancel_request`` may answer with a partial result; for a prompt that is the
    turn ending ``cancelled``, stored exactly as ``session/cancel`` stores it."""
    script = tmp_path / "slow.yaml"
    script.write_text(
        "turns:\n  - delay_ms: 200\n    steps:\n      - chunks: ["
        + ", ".join(['"x"'] * 200)
        + "]\n"
    )
    async with raw_server(
        ["--memory", "--provider", f"script:{script}"], server_env(home)
    ) as server:
        await server.request("initialize", INIT)
        sid = (await server.request("session/new", {"cwd": str(workspace), "mcpServers": []}))[
            "result"
        ]["sessionId"]
        await server.start_prompt(sid, "go", "p1")
        await server.wait_for(
            lambda m: (
                m.get("method") == "session/update"
                and m["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
            )
        )
        sent = len(server.messages)
        await server.notify("$/cancel_request", {"requestId": "p1"})
        reply = await server.response("p1")
        assert reply["result"]["stopReason"] == "cancelled"
        # Counted in the script's own chunks (one per 200 ms), not read off a clock.
        late = server.messages[sent : server.messages.index(reply)]
        assert sum(m.get("method") == "session/update" for m in late) < 5
        # the session is still usable, and the partial reply was kept
        await server.request("session/list", {})


async def test_stdin_eof_and_sigterm_exit_cleanly(home):
    async with raw_server(["--memory"], server_env(home), spawn=True) as server:
        await server.request("initialize", INIT)
        await server.close_stdin()
        assert await server.wait() == 0
    async with raw_server(["--memory"], server_env(home), spawn=True) as server:
        await server.request("initialize", INIT)
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait() == 0


async def test_bad_settings_stop_with_one_line(home, tmp_path):
    cases = [
        (["--database-url", "oracle://x/y"], {}),
        (["--provider", "nonsense"], {}),
        ([], {"ACP_SERVER_LOG_LEVEL": "loud"}),
        (["--config", str(tmp_path / "missing.yaml")], {}),
        (["--database-url", "postgresql://nobody@127.0.0.1:1/x"], {}),
        (["--provider", f"script:{tmp_path / 'missing-script.yaml'}"], {}),
    ]
    done: list[tuple[list[str], Any]] = []

    async def one(args: list[str], extra: dict[str, str]) -> None:
        # The store opens once initialize is answered; session/list then waits for it.
        process = await anyio.run_process(
            [*SERVER, *args],
            input=(
                b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":1}}\n'
                b'{"jsonrpc":"2.0","id":1,"method":"session/list","params":{}}\n'
            ),
            env=server_env(home, extra),
            check=False,
        )
        done.append((args, process))

    async with anyio.create_task_group() as tg:  # side by side: each is its own process
        for args, extra in cases:
            tg.start_soon(one, args, extra)
    assert len(done) == len(cases)
    for args, process in done:
        lines = process.stderr.decode().strip().splitlines()
        assert process.returncode == 2, (args, process.stderr)
        assert lines and lines[-1].startswith("acp-server: "), process.stderr
        assert "Traceback" not in process.stderr.decode()
        for out in process.stdout.splitlines():
            json.loads(out)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=200).filter(lambda b: b"\n" not in b),
            st.text(max_size=200).map(lambda t: t.replace("\n", " ").encode()),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4)
                ),
                max_leaves=10,
            ).map(lambda v: json.dumps(v).encode()),
            st.fixed_dictionaries(
                {
                    "jsonrpc": st.just("2.0"),
                    "id": st.integers(0, 10**6),
                    "method": st.sampled_from(
                        [
                            "initialize",
                            "session/new",
                            "session/load",
                            "session/list",
                            "session/prompt",
                            "session/cancel",
                            "session/set_mode",
                            "session/set_config_option",
                            "session/delete",
                            "session/close",
                        ]
                    ),
                    "params": st.dictionaries(
                        st.sampled_from(
                            [
                                "sessionId",
                                "cwd",
                                "mcpServers",
                                "prompt",
                                "cursor",
                                "modeId",
                                "configId",
                                "value",
                            ]
                        ),
                        st.none()
                        | st.integers()
                        | st.text(max_size=10)
                        | st.lists(st.integers(), max_size=2),
                        max_size=4,
                    ),
                }
            ).map(lambda v: json.dumps(v).encode()),
        ),
        min_size=1,
        max_size=15,
    )
)
def test_garbage_never_crashes_the_server_or_breaks_stdout(lines, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")

    async def run() -> None:
        async with raw_server(["--memory"], server_env(home)) as server:
            for line in lines:
                await server.send_raw(line + b"\n")
            reply = await server.request("initialize", INIT)
            assert reply["result"]["protocolVersion"] == 1
        assert server.returncode == 0
        assert "Traceback" not in server.stderr or "request failed" in server.stderr

    anyio.run(run)
