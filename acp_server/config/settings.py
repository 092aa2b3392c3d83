"""One typed settings object, the same for every command.

Values come from, in order of precedence: command-line flags, environment variables,
the YAML config file, defaults (see ``loader.py``). Everything here is validated by
pydantic so a bad value stops the server with one plain line, never a traceback.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SessionServiceSettings(_Section):
    type: Literal["sql", "memory"] = "sql"
    database_url: str | None = None
    """None means the SQLite file ``sessions.db`` in the user data dir."""


class ProviderSettings(_Section):
    name: str = "echo"
    """openai, anthropic, echo or script:PATH (resolved by the loader when unset)."""
    model: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    request_timeout: float = Field(default=120.0, gt=0)
    """Seconds without a byte from the provider before the call is abandoned."""
    connect_timeout: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10)
    max_tokens: int = Field(default=8192, gt=0)
    context_window: int | None = Field(default=None, gt=0)
    input_price_per_mtok: float | None = Field(default=None, ge=0)
    """USD per million input tokens; with the output price, turns get a cost."""
    output_price_per_mtok: float | None = Field(default=None, ge=0)

    @field_validator("name")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value in ("openai", "anthropic", "echo") or (
            value.startswith("script:") and len(value) > len("script:")
        ):
            return value
        raise ValueError("must be openai, anthropic, echo or script:PATH")


class AgentSettings(_Section):
    max_model_calls_per_turn: int = Field(default=50, gt=0)
    """Bound on model requests in one turn; reaching it stops with max_turn_requests."""
    default_mode: Literal["ask", "auto", "read-only"] = "ask"
    generate_titles: bool = True
    command_timeout: float = Field(default=120.0, gt=0)
    system_prompt: str | None = None
    mcp_start_wait: float = Field(default=10.0, ge=0)
    """Seconds a prompt waits for the session's MCP servers still starting before it
    goes on without them (their tools join later model calls once they are ready)."""


class RetentionSettings(_Section):
    enabled: bool = False
    task_retention_days: int = Field(default=90, gt=0)
    feedback_retention_days: int = Field(default=90, gt=0)
    cleanup_interval_hours: float = Field(default=24.0, gt=0)


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class TransportSettings(_Section):
    max_message_bytes: int = Field(default=50 * 1024 * 1024, gt=1024)


class Settings(_Section):
    session_service: SessionServiceSettings = Field(default_factory=SessionServiceSettings)
    provider: ProviderSettings = Field(default_factory=ProviderSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    data_retention: RetentionSettings = Field(default_factory=RetentionSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    transport: TransportSettings = Field(default_factory=TransportSettings)
