"""Settings as operators write them: the documented precedence (flag > environment >
config file > default) for every variable, and config files that cannot be read."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from acp_server.config.loader import ENVIRONMENT, PROVIDER_ENVIRONMENT, load_settings
from acp_server.config.settings import Settings
from tests.fake_llm import FakeLLM, Reply
from tests.harness import INIT, SERVER, raw_server, server_env

# Every variable: its setting, a value for the config file, one for the environment,
# and what the setting holds when the environment's value wins.
VARIABLES: dict[str, tuple[str, Any, str, Any]] = {
    "ACP_SERVER_SESSION_STORE": ("session_service.type", "sql", "memory", "memory"),
    "ACP_SERVER_DATABASE_URL": (
        "session_service.database_url",
        "sqlite:///file.db",
        "sqlite:///env.db",
        "sqlite:///env.db",
    ),
    "ACP_SERVER_PROVIDER": ("provider.name", "echo", "<provider>", "<provider>"),
    "ACP_SERVER_MODEL": ("provider.model", "file-model", "env-model", "env-model"),
    "ACP_SERVER_LOG_LEVEL": ("logging.level", "error", "debug", "debug"),
    "ACP_SERVER_LOG_FORMAT": ("logging.format", "json", "console", "console"),
    "DATA_RETENTION_ENABLED": ("data_retention.enabled", False, "true", True),
    "DATA_RETENTION_TASK_DAYS": ("data_retention.task_retention_days", 5, "6", 6),
    "DATA_RETENTION_FEEDBACK_DAYS": ("data_retention.feedback_retention_days", 7, "8", 8),
    "DATA_RETENTION_CLEANUP_HOURS": ("data_retention.cleanup_interval_hours", 1, "2.5", 2.5),
    "OPENAI_BASE_URL": (
        "provider.base_url",
        "http://file.test/v1",
        "http://env.test/v1",
        "http://env.test/v1",
    ),
    "OPENAI_API_KEY": ("provider.api_key", "file-key", "env-key", "env-key"),
    "ANTHROPIC_BASE_URL": (
        "provider.base_url",
        "http://file.test",
        "http://env.test",
        "http://env.test",
    ),
    "ANTHROPIC_API_KEY": ("provider.api_key", "file-key", "env-key", "env-key"),
}


def setting(settings: Settings, dotted: str) -> Any:
    section, key = dotted.split(".")
    value = getattr(getattr(settings, section), key)
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_every_environment_variable_beats_the_config_file(tmp_path: Path, provider: str) -> None:
    applies = [*ENVIRONMENT, *PROVIDER_ENVIRONMENT[provider]]
    assert set(applies) <= set(VARIABLES), "give each new variable a case here"
    tree: dict[str, dict[str, Any]] = {}
    env = {}
    for name in applies:
        dotted, in_file, in_env, _ = VARIABLES[name]
        section, key = dotted.split(".")
        tree.setdefault(section, {})[key] = in_file
        env[name] = provider if in_env == "<provider>" else in_env
    config = tmp_path / "acp.yaml"
    config.write_text(yaml.safe_dump(tree))

    from_file = load_settings(env={}, config_file=str(config))
    overridden = load_settings(env=env, config_file=str(config))
    for name in applies:
        dotted, in_file, in_env, wins = VARIABLES[name]
        assert setting(from_file, dotted) == in_file, name
        expected = provider if wins == "<provider>" else wins
        assert setting(overridden, dotted) == expected, name


def test_a_flag_beats_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "acp.yaml"
    config.write_text("provider:\n  model: file-model\n")
    settings = load_settings(
        {"provider.model": "flag-model", "provider.name": "echo"},
        env={"ACP_SERVER_MODEL": "env-model", "ACP_SERVER_PROVIDER": "openai"},
        config_file=str(config),
    )
    assert (settings.provider.name, settings.provider.model) == ("echo", "flag-model")


@pytest.mark.anyio
@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_the_server_calls_the_endpoint_and_key_of_the_environment(
    home: Path, workspace: Path, tmp_path: Path, api: str
) -> None:
    """The config file names an endpoint where nothing listens; the environment wins."""
    config = tmp_path / "acp.yaml"
    config.write_text(
        f"provider:\n  name: {api}\n  base_url: http://127.0.0.1:9\n  api_key: file-key\n"
        "  max_retries: 0\nagent:\n  generate_titles: false\n"
    )
    prefix = api.upper()
    with FakeLLM() as llm:
        llm.queue(Reply(text_chunks=["from the fake"]))
        url = llm.base_url_openai if api == "openai" else llm.base_url_anthropic
        env = server_env(home, {f"{prefix}_BASE_URL": url, f"{prefix}_API_KEY": "env-key"})
        async with raw_server(["--memory", "--config", str(config)], env) as server:
            await server.request("initialize", INIT)
            new = await server.request("session/new", {"cwd": str(workspace), "mcpServers": []})
            reply = await server.request(
                "session/prompt",
                {
                    "sessionId": new["result"]["sessionId"],
                    "prompt": [{"type": "text", "text": "hi"}],
                },
            )
        assert reply.get("result", {}).get("stopReason") == "end_turn", reply
        headers = llm.requests[0].headers
    if api == "openai":
        assert headers["authorization"] == "Bearer env-key"
    else:
        assert headers["x-api-key"] == "env-key"


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path, home: Path) -> None:
    config = tmp_path / "acp.yaml"
    config.write_bytes("provider:\n  model: café\n".encode("latin-1"))
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    expected = {
        config: f"acp-server: config file {config} is not UTF-8 text (byte 0xe9 at offset 22); "
        "save it as UTF-8",
        deep: f"acp-server: config file {deep} is nested too deeply to read",
    }
    for path, line in expected.items():
        env = server_env(home)
        serve = subprocess.run(
            [*SERVER, "--config", str(path)],
            input="",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (serve.returncode, serve.stderr, serve.stdout) == (2, line + "\n", "")
        doctor = subprocess.run(
            [*SERVER, "doctor", "--config", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert doctor.returncode == 1 and "Traceback" not in doctor.stderr
        assert doctor.stdout == f"✗ configuration: {line.removeprefix('acp-server: ')}\n"
