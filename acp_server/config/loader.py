"""Builds ``Settings`` from flags, environment, the YAML file and defaults.

Precedence is flag > environment > config file > default. The YAML file may say
``${NAME}`` or ``${NAME, default}`` anywhere in a string value. Every failure becomes a
``ConfigError`` whose text is one line a person can act on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from acp_server import errors
from acp_server.config.settings import Settings

APP_NAME = "acp-server"
_VAR = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:,\s*([^}]*?))?\s*\}")

# environment variable -> dotted settings path
ENVIRONMENT: dict[str, str] = {
    "ACP_SERVER_SESSION_STORE": "session_service.type",
    "ACP_SERVER_DATABASE_URL": "session_service.database_url",
    "ACP_SERVER_PROVIDER": "provider.name",
    "ACP_SERVER_MODEL": "provider.model",
    "ACP_SERVER_LOG_LEVEL": "logging.level",
    "ACP_SERVER_LOG_FORMAT": "logging.format",
    "DATA_RETENTION_ENABLED": "data_retention.enabled",
    "DATA_RETENTION_TASK_DAYS": "data_retention.task_retention_days",
    "DATA_RETENTION_FEEDBACK_DAYS": "data_retention.feedback_retention_days",
    "DATA_RETENTION_CLEANUP_HOURS": "data_retention.cleanup_interval_hours",
}

# dotted settings path -> the command-line flag that sets it
FLAGS: dict[str, str] = {
    "session_service.type": "--memory",
    "session_service.database_url": "--database-url",
    "provider.name": "--provider",
    "provider.model": "--model",
    "logging.level": "--log-level",
    "logging.format": "--log-format",
}

# Endpoint variables apply only to their own provider.
PROVIDER_ENVIRONMENT: dict[str, dict[str, str]] = {
    "openai": {"OPENAI_BASE_URL": "base_url", "OPENAI_API_KEY": "api_key"},
    "anthropic": {"ANTHROPIC_BASE_URL": "base_url", "ANTHROPIC_API_KEY": "api_key"},
}


ConfigError = errors.ConfigError
"""A setting the server cannot use; its text is the one line shown on stderr."""


def user_config_file(env: Mapping[str, str] | None = None) -> Path:
    """In the user config dir; an explicit ``env`` (a test's) may name it by
    XDG_CONFIG_HOME, as os.environ does for platformdirs on Linux."""
    if env is not None and env.get("XDG_CONFIG_HOME"):
        return Path(env["XDG_CONFIG_HOME"]) / APP_NAME / "acp-server.yaml"
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "acp-server.yaml"


def user_data_dir(env: Mapping[str, str] | None = None) -> Path:
    xdg = (os.environ if env is None else env).get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / APP_NAME
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_database_url(env: Mapping[str, str] | None = None) -> str:
    return f"sqlite:///{user_data_dir(env) / 'sessions.db'}"


def substitute(value: Any, env: Mapping[str, str]) -> Any:
    """Replace ``${NAME}`` / ``${NAME, default}`` in every string of a YAML tree."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default.strip().strip("\"'")
            raise ConfigError(
                f"the config file uses ${{{name}}} but {name} is not set; "
                f"set it or write ${{{name}, default}}"
            )

        return _VAR.sub(replace, value)
    if isinstance(value, dict):
        return {key: substitute(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, env) for item in value]
    return value


def _read_file(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start}); save it as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to read") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must be a mapping of sections, not {type(data).__name__}"
        )
    result = substitute(data, env)
    assert isinstance(result, dict)
    return result


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    node = tree.setdefault(section, {})
    if not isinstance(node, dict):
        raise ConfigError(f"config section '{section}' must be a mapping")
    node[key] = value


def _get(tree: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    node = tree.get(section)
    return node.get(key) if isinstance(node, dict) else None


def _describe(error: ValidationError, origins: dict[str, str]) -> str:
    first = error.errors()[0]
    dotted = ".".join(str(part) for part in first["loc"])
    origin = origins.get(dotted, "the config file")
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        return f"unknown setting '{dotted}' in {origin}; check its spelling against the README"
    value = first.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float | bool) else ""
    return f"setting '{dotted}' from {origin} is invalid{shown}: {message}"


def _chosen_provider(
    flags: Mapping[str, Any],
    from_env: Mapping[str, tuple[str, str]],
    tree: dict[str, Any],
    env: Mapping[str, str],
) -> str:
    """The provider by the usual precedence; unset, the first whose API key is set."""
    if "provider.name" in flags:
        return str(flags["provider.name"])
    if "provider.name" in from_env:
        return from_env["provider.name"][0]
    configured = _get(tree, "provider.name")
    if configured is not None:
        return str(configured)
    if env.get("OPENAI_API_KEY"):
        return "openai"
    if env.get("ANTHROPIC_API_KEY"):
        return "anthropic"
    return "echo"


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge every source into a validated ``Settings``.

    ``flags`` maps dotted paths (``provider.model``) to values given on the command line;
    ``None`` values mean the flag was not given.
    """
    given_env, env = env, os.environ if env is None else env
    flags = {key: value for key, value in (flags or {}).items() if value is not None}
    origins: dict[str, str] = {}

    path_text = config_file or env.get("ACP_SERVER_CONFIG")
    if path_text:
        path = Path(path_text).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist; fix --config or ACP_SERVER_CONFIG"
            )
        tree = _read_file(path, env)
    else:
        path = user_config_file(given_env)
        tree = _read_file(path, env) if path.is_file() else {}

    # The environment: every variable that is set, the chosen provider's endpoint
    # variables included, overrides the file, and a flag overrides the environment.
    from_env = {
        dotted: (env[name], name) for name, dotted in ENVIRONMENT.items() if env.get(name, "")
    }
    provider = _chosen_provider(flags, from_env, tree, env)
    _set(tree, "provider.name", provider)
    for name, key in PROVIDER_ENVIRONMENT.get(provider, {}).items():
        if env.get(name, ""):
            from_env[f"provider.{key}"] = (env[name], name)
    for dotted, (value, name) in from_env.items():
        _set(tree, dotted, value)
        origins[dotted] = f"environment variable {name}"
    for dotted, value in flags.items():
        _set(tree, dotted, value)
        origins[dotted] = FLAGS.get(dotted, f"--{dotted.split('.')[-1].replace('_', '-')}")

    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins)) from None
