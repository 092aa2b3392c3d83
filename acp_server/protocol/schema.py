"""ACP v1 types, as pydantic models: snake_case in Python, camelCase on the wire.

Everything the server receives is validated through these models (a bad field becomes
-32602 naming the field); everything it sends is produced by them and checked against
the official JSON Schema in the tests. Models build lazily (``defer_build``) so start-up
pays only for the types ``initialize`` uses. Custom data never goes at the root of a
spec type, only in ``_meta``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

PROTOCOL_VERSION = 1


class AcpModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        defer_build=True,
        extra="ignore",
        strict=True,
    )
    field_meta: dict[str, Any] | None = Field(default=None, alias="_meta")

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict sent to the client (aliases, no unset optionals)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def wire_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


AbsPath = Annotated[str, Field(min_length=1)]


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("must be omitted rather than null")
    return value


NotNull = BeforeValidator(_not_null)
"""For optional fields whose schema type does not include null: omit, or give a value."""

# ---- content -------------------------------------------------------------------------


class Annotations(AcpModel):
    audience: list[Literal["assistant", "user"]] | None = None
    last_modified: str | None = None
    priority: float | None = None


class TextContent(AcpModel):
    type: Literal["text"] = "text"
    text: str
    annotations: Annotations | None = None


class ImageContent(AcpModel):
    type: Literal["image"] = "image"
    data: str
    mime_type: str
    uri: str | None = None
    annotations: Annotations | None = None


class AudioContent(AcpModel):
    type: Literal["audio"] = "audio"
    data: str
    mime_type: str
    annotations: Annotations | None = None


class ResourceLink(AcpModel):
    type: Literal["resource_link"] = "resource_link"
    uri: str
    name: str
    mime_type: str | None = None
    title: str | None = None
    description: str | None = None
    size: int | None = None
    annotations: Annotations | None = None


class TextResourceContents(AcpModel):
    uri: str
    text: str
    mime_type: str | None = None


class BlobResourceContents(AcpModel):
    uri: str
    blob: str
    mime_type: str | None = None


class EmbeddedResource(AcpModel):
    type: Literal["resource"] = "resource"
    resource: TextResourceContents | BlobResourceContents
    annotations: Annotations | None = None


ContentBlock = Annotated[
    TextContent | ImageContent | AudioContent | ResourceLink | EmbeddedResource,
    Field(discriminator="type"),
]

# ---- capabilities and initialize ------------------------------------------------------


class FileSystemCapability(AcpModel):
    read_text_file: bool = False
    write_text_file: bool = False


class ClientCapabilities(AcpModel):
    fs: FileSystemCapability = Field(default_factory=FileSystemCapability)
    terminal: bool = False


class Implementation(AcpModel):
    name: str
    title: str | None = None
    version: str


class InitializeRequest(AcpModel):
    protocol_version: int = Field(ge=0, le=65535)
    client_capabilities: ClientCapabilities = Field(default_factory=ClientCapabilities)
    client_info: Implementation | None = None


class PromptCapabilities(AcpModel):
    image: bool = False
    audio: bool = False
    embedded_context: bool = False


class McpCapabilities(AcpModel):
    http: bool = False
    sse: bool = False


class Marker(AcpModel):
    """``{}``: the capability is supported."""


class SessionCapabilities(AcpModel):
    list_: Marker | None = Field(default=None, alias="list")
    resume: Marker | None = None
    close: Marker | None = None
    delete: Marker | None = None
    additional_directories: Marker | None = None
    fork: Marker | None = None


class AgentCapabilities(AcpModel):
    load_session: bool = False
    prompt_capabilities: PromptCapabilities = Field(default_factory=PromptCapabilities)
    mcp_capabilities: McpCapabilities = Field(default_factory=McpCapabilities)
    session_capabilities: SessionCapabilities = Field(default_factory=SessionCapabilities)


class AuthMethod(AcpModel):
    id: str
    name: str
    description: str | None = None


class InitializeResponse(AcpModel):
    protocol_version: int
    agent_capabilities: AgentCapabilities
    auth_methods: list[AuthMethod] = Field(default_factory=list)
    agent_info: Implementation


class AuthenticateRequest(AcpModel):
    method_id: str


# ---- sessions -------------------------------------------------------------------------


class EnvVariable(AcpModel):
    name: str
    value: str


class HttpHeader(AcpModel):
    name: str
    value: str


class McpServerStdio(AcpModel):
    name: str
    command: str
    args: list[str] = Field(default_factory=list)
    env: list[EnvVariable] = Field(default_factory=list)


class McpServerHttp(AcpModel):
    type: Literal["http"]
    name: str
    url: str
    headers: list[HttpHeader] = Field(default_factory=list)


class McpServerSse(AcpModel):
    type: Literal["sse"]
    name: str
    url: str
    headers: list[HttpHeader] = Field(default_factory=list)


McpServer = McpServerHttp | McpServerSse | McpServerStdio


class NewSessionRequest(AcpModel):
    cwd: AbsPath
    mcp_servers: list[McpServer]
    additional_directories: Annotated[list[AbsPath] | None, NotNull] = None


class LoadSessionRequest(AcpModel):
    session_id: str
    cwd: AbsPath
    mcp_servers: list[McpServer]
    additional_directories: Annotated[list[AbsPath] | None, NotNull] = None


class ResumeSessionRequest(AcpModel):
    session_id: str
    cwd: AbsPath
    mcp_servers: Annotated[list[McpServer] | None, NotNull] = None
    additional_directories: Annotated[list[AbsPath] | None, NotNull] = None


class ForkSessionRequest(ResumeSessionRequest):
    pass


class SessionIdRequest(AcpModel):
    session_id: str


class ListSessionsRequest(AcpModel):
    cwd: AbsPath | None = None
    cursor: str | None = None


class SessionInfo(AcpModel):
    session_id: str
    cwd: str
    additional_directories: list[str] | None = None
    title: str | None = None
    updated_at: str | None = None


class ListSessionsResponse(AcpModel):
    sessions: list[SessionInfo]
    next_cursor: str | None = None


class SessionMode(AcpModel):
    id: str
    name: str
    description: str | None = None


class SessionModeState(AcpModel):
    current_mode_id: str
    available_modes: list[SessionMode]


class ConfigOptionValue(AcpModel):
    value: str
    name: str
    description: str | None = None


class SelectConfigOption(AcpModel):
    id: str
    name: str
    description: str | None = None
    category: str | None = None
    type: Literal["select"] = "select"
    current_value: str
    options: list[ConfigOptionValue]


class NewSessionResponse(AcpModel):
    session_id: str
    modes: SessionModeState | None = None
    config_options: list[SelectConfigOption] | None = None


class LoadSessionResponse(AcpModel):
    modes: SessionModeState | None = None
    config_options: list[SelectConfigOption] | None = None


class SetModeRequest(AcpModel):
    session_id: str
    mode_id: str


class SetConfigOptionRequest(AcpModel):
    session_id: str
    config_id: str
    value: str | bool
    type: str | None = None


class SetConfigOptionResponse(AcpModel):
    config_options: list[SelectConfigOption]


class PromptRequest(AcpModel):
    session_id: str
    prompt: list[ContentBlock]


StopReason = Literal["end_turn", "max_tokens", "max_turn_requests", "refusal", "cancelled"]


class PromptResponse(AcpModel):
    stop_reason: StopReason


class CancelRequestNotification(AcpModel):
    request_id: int | str | None


# ---- session updates ------------------------------------------------------------------


class ContentChunk(AcpModel):
    session_update: Literal["user_message_chunk", "agent_message_chunk", "agent_thought_chunk"]
    content: ContentBlock
    message_id: str | None = None


ToolKind = Literal[
    "read", "edit", "delete", "move", "search", "execute", "think", "fetch", "switch_mode", "other"
]
ToolCallStatus = Literal["pending", "in_progress", "completed", "failed"]


class ToolCallLocation(AcpModel):
    path: str
    line: int | None = None


class ToolCallStart(AcpModel):
    session_update: Literal["tool_call"] = "tool_call"
    tool_call_id: str
    title: str
    kind: ToolKind | None = None
    status: ToolCallStatus | None = None
    content: list[dict[str, Any]] | None = None
    locations: list[ToolCallLocation] | None = None
    raw_input: Any = None
    raw_output: Any = None


class ToolCallUpdate(AcpModel):
    """Both the ``tool_call_update`` session update and the permission request's
    ``toolCall`` (which has no ``sessionUpdate``)."""

    session_update: Literal["tool_call_update"] | None = "tool_call_update"
    tool_call_id: str
    title: str | None = None
    kind: ToolKind | None = None
    status: ToolCallStatus | None = None
    content: list[dict[str, Any]] | None = None
    locations: list[ToolCallLocation] | None = None
    raw_input: Any = None
    raw_output: Any = None


class PlanEntry(AcpModel):
    content: str
    priority: Literal["high", "medium", "low"]
    status: Literal["pending", "in_progress", "completed"]


class Plan(AcpModel):
    session_update: Literal["plan"] = "plan"
    entries: list[PlanEntry]


class AvailableCommandInput(AcpModel):
    hint: str


class AvailableCommand(AcpModel):
    name: str
    description: str
    input: AvailableCommandInput | None = None


class AvailableCommandsUpdate(AcpModel):
    session_update: Literal["available_commands_update"] = "available_commands_update"
    available_commands: list[AvailableCommand]


class CurrentModeUpdate(AcpModel):
    session_update: Literal["current_mode_update"] = "current_mode_update"
    current_mode_id: str


class ConfigOptionUpdate(AcpModel):
    session_update: Literal["config_option_update"] = "config_option_update"
    config_options: list[SelectConfigOption]


class SessionInfoUpdate(AcpModel):
    session_update: Literal["session_info_update"] = "session_info_update"
    title: str | None = None
    updated_at: str | None = None


class Cost(AcpModel):
    amount: float
    currency: str = "USD"


class UsageUpdate(AcpModel):
    session_update: Literal["usage_update"] = "usage_update"
    used: int
    size: int
    cost: Cost | None = None


SessionUpdate = (
    ContentChunk
    | ToolCallStart
    | ToolCallUpdate
    | Plan
    | AvailableCommandsUpdate
    | CurrentModeUpdate
    | ConfigOptionUpdate
    | SessionInfoUpdate
    | UsageUpdate
)


class SessionNotification(AcpModel):
    session_id: str
    update: SessionUpdate


# ---- agent -> client requests ----------------------------------------------------------


class PermissionOption(AcpModel):
    option_id: str
    name: str
    kind: Literal["allow_once", "allow_always", "reject_once", "reject_always"]


class RequestPermissionRequest(AcpModel):
    session_id: str
    tool_call: ToolCallUpdate
    options: list[PermissionOption]


class PermissionOutcome(AcpModel):
    outcome: Literal["selected", "cancelled"]
    option_id: str | None = None


class RequestPermissionResponse(AcpModel):
    outcome: PermissionOutcome


class ReadTextFileRequest(AcpModel):
    session_id: str
    path: str
    line: int | None = None
    limit: int | None = None


class ReadTextFileResponse(AcpModel):
    content: str


class WriteTextFileRequest(AcpModel):
    session_id: str
    path: str
    content: str


class CreateTerminalRequest(AcpModel):
    session_id: str
    command: str
    args: list[str] = Field(default_factory=list)
    env: list[EnvVariable] = Field(default_factory=list)
    cwd: str | None = None
    output_byte_limit: int | None = None


class CreateTerminalResponse(AcpModel):
    terminal_id: str


class TerminalRequest(AcpModel):
    session_id: str
    terminal_id: str


class TerminalExitStatus(AcpModel):
    exit_code: int | None = None
    signal: str | None = None


class TerminalOutputResponse(AcpModel):
    output: str
    truncated: bool
    exit_status: TerminalExitStatus | None = None


# ---- acp-server's own extension methods -------------------------------------------------


class RenameSessionRequest(AcpModel):
    """``_acp_server/session/rename``."""

    session_id: str
    title: str
