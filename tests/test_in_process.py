"""What running the server inside the test's event loop relies on: the settings the
process would build from the same args and env, and a log of its own."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
import pytest

from acp_server import logs
from tests.harness import INIT, raw_server, server_env, settings_for

pytestmark = pytest.mark.anyio


def test_settings_come_from_the_given_env_and_its_dirs(home: Path) -> None:
    config = home / "config" / "acp-server" / "acp-server.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("agent:\n  default_mode: auto\n")
    env = server_env(home, {"ACP_SERVER_MODEL": "from-env"})

    settings = settings_for([], env)
    assert settings.agent.default_mode == "auto"
    assert settings.provider.model == "from-env"
    db = home / "data" / "acp-server" / "sessions.db"
    assert settings.session_service.database_url == f"sqlite:///{db}"
    assert settings_for(["--memory", "--model", "flag"], env).provider.model == "flag"


async def test_an_in_process_server_reads_the_config_in_its_env(
    home: Path, workspace: Path
) -> None:
    config = home / "config" / "acp-server" / "acp-server.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("agent:\n  default_mode: read-only\n")
    async with raw_server(["--memory"], server_env(home)) as server:
        await server.request("initialize", INIT)
        reply = await server.request("session/new", {"cwd": str(workspace), "mcpServers": []})
    assert reply["result"]["modes"]["currentModeId"] == "read-only"


async def test_each_in_process_server_logs_into_its_own_stderr(home: Path) -> None:
    async with (
        raw_server(["--memory"], server_env(home)) as told,
        raw_server(["--memory"], server_env(home)) as quiet,
    ):
        for server in (told, quiet):
            await server.request("initialize", INIT)
        await told.notify("session/prompt", {"sessionId": "s", "prompt": []})
        await told.request("session/list", {})
        await quiet.request("session/list", {})
    assert "request sent as a notification ignored" in told.stderr
    assert "notification ignored" not in quiet.stderr


async def test_a_logger_used_before_the_level_changed_obeys_the_new_level() -> None:
    log = logs.get_logger("tests.in_process")
    stream = io.StringIO()

    async def use() -> None:
        logs.to_stream(stream)
        logs.configure("info")
        log.info("first use")
        log.debug("hidden")
        logs.configure("debug")
        log.debug("shown")

    async with anyio.create_task_group() as tg:
        tg.start_soon(use)
    text = stream.getvalue()
    assert "first use" in text and "shown" in text and "hidden" not in text
