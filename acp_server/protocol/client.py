"""The editor as the agent loop sees it: updates out, permissions and fs/terminal in.

``EditorListener`` turns loop events into ``session/update`` notifications;
``EditorBridge`` implements the tools' ``ClientBridge`` with ``fs/*`` and
``terminal/*`` requests, and only offers what the client advertised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import orjson

from acp_server.errors import ToolError
from acp_server.logs import get_logger
from acp_server.protocol import schema as s
from acp_server.transport.rpc import Connection, ConnectionClosed, PeerError

if TYPE_CHECKING:  # the agent loop and the tools load after initialize is answered
    from acp_server.agent.tools.base import ExitStatus
    from acp_server.agent.turn import Decision

log = get_logger("acp_server.client")


class ClientRequestFailed(ToolError):
    """The editor refused an fs/terminal request; shown to the model as a tool error."""


async def send_update(connection: Connection, session_id: str, update: s.AcpModel) -> None:
    note = s.SessionNotification.model_construct(session_id=session_id, update=update)
    await connection.notify("session/update", note.wire_json())


ChunkKind = Literal["user_message_chunk", "agent_message_chunk", "agent_thought_chunk"]


def text_chunk(session_id: str, kind: ChunkKind, text: str, message_id: str) -> bytes:
    """``SessionNotification`` params of a text ``ContentChunk``, serialized directly:
    the streaming hot path, one per token, where building models costs more than the
    rest of the turn. The shape is ``schema.ContentChunk``'s; the tests validate it."""
    return orjson.dumps(
        {
            "sessionId": session_id,
            "update": {
                "sessionUpdate": kind,
                "content": {"type": "text", "text": text},
                "messageId": message_id,
            },
        }
    )


class EditorListener:
    def __init__(self, connection: Connection, session_id: str):
        self.connection = connection
        self.session_id = session_id

    async def _send(self, update: s.AcpModel) -> None:
        await send_update(self.connection, self.session_id, update)

    async def message_chunk(self, message_id: str, text: str) -> None:
        params = text_chunk(self.session_id, "agent_message_chunk", text, message_id)
        await self.connection.notify("session/update", params)

    async def thought_chunk(self, message_id: str, text: str) -> None:
        params = text_chunk(self.session_id, "agent_thought_chunk", text, message_id)
        await self.connection.notify("session/update", params)

    async def tool_call(self, data: dict[str, Any]) -> None:
        await self._send(tool_call_start(data))

    async def tool_call_update(self, tool_call_id: str, fields: dict[str, Any]) -> None:
        await self._send(s.ToolCallUpdate.model_validate({"toolCallId": tool_call_id, **fields}))

    async def plan(self, entries: list[dict[str, Any]]) -> None:
        await self._send(s.Plan.model_validate({"entries": entries}))

    async def request_permission(self, data: dict[str, Any]) -> Decision:
        tool_call = s.ToolCallUpdate.model_validate(
            {
                k: v
                for k, v in data.items()
                if k
                in ("toolCallId", "title", "kind", "status", "content", "rawInput", "locations")
            }
        )
        tool_call.session_update = None
        request = s.RequestPermissionRequest(
            session_id=self.session_id,
            tool_call=tool_call,
            options=[
                s.PermissionOption(option_id="allow_once", name="Allow once", kind="allow_once"),
                s.PermissionOption(
                    option_id="allow_always", name="Always allow", kind="allow_always"
                ),
                s.PermissionOption(option_id="reject_once", name="Reject", kind="reject_once"),
                s.PermissionOption(
                    option_id="reject_always", name="Always reject", kind="reject_always"
                ),
            ],
        )
        try:
            answer = await self.connection.request("session/request_permission", request.wire())
            outcome = s.RequestPermissionResponse.model_validate(answer).outcome
        except ConnectionClosed:
            return "cancelled"  # the editor is gone: the turn ends, stored
        except PeerError as exc:
            log.warning("permission request failed in the editor", error=exc.message)
            return "unanswered"
        except ValueError as exc:
            log.warning("unreadable permission answer", error=str(exc)[:500])
            return "unanswered"
        if outcome.outcome == "cancelled":
            return "cancelled"
        match outcome.option_id:
            case "allow_once" | "allow_always" | "reject_once" | "reject_always" as chosen:
                return chosen
        log.warning("permission answer with an unknown option", option=outcome.option_id)
        return "unanswered"


def tool_call_start(data: dict[str, Any]) -> s.ToolCallStart:
    fields = {
        k: v
        for k, v in data.items()
        if k
        in (
            "toolCallId",
            "title",
            "kind",
            "status",
            "rawInput",
            "rawOutput",
            "content",
            "locations",
        )
    }
    return s.ToolCallStart.model_validate(fields)


class EditorBridge:
    def __init__(self, connection: Connection, session_id: str, capabilities: s.ClientCapabilities):
        self.connection = connection
        self.session_id = session_id
        self.can_read = capabilities.fs.read_text_file
        self.can_write = capabilities.fs.write_text_file
        self.can_terminal = capabilities.terminal

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        try:
            return await self.connection.request(method, {"sessionId": self.session_id, **params})
        except PeerError as exc:
            raise ClientRequestFailed(f"the editor could not {method}: {exc.message}") from None

    async def read_text_file(
        self, path: str, line: int | None = None, limit: int | None = None
    ) -> str:
        params: dict[str, Any] = {"path": path}
        if line is not None:
            params["line"] = line
        if limit is not None:
            params["limit"] = limit
        result = await self._call("fs/read_text_file", params)
        return str(s.ReadTextFileResponse.model_validate(result).content)

    async def write_text_file(self, path: str, content: str) -> None:
        await self._call("fs/write_text_file", {"path": path, "content": content})

    async def create_terminal(
        self,
        command: str,
        args: list[str],
        cwd: str,
        env: dict[str, str] | None = None,
        output_byte_limit: int | None = None,
    ) -> str:
        params: dict[str, Any] = {
            "command": command,
            "args": args,
            "cwd": cwd,
            "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        }
        if output_byte_limit is not None:
            params["outputByteLimit"] = output_byte_limit
        result = await self._call("terminal/create", params)
        return s.CreateTerminalResponse.model_validate(result).terminal_id

    async def terminal_output(self, terminal_id: str) -> tuple[str, bool, ExitStatus | None]:
        from acp_server.agent.tools.base import ExitStatus

        result = s.TerminalOutputResponse.model_validate(
            await self._call("terminal/output", {"terminalId": terminal_id})
        )
        status = result.exit_status
        exit_status = ExitStatus(status.exit_code, status.signal) if status else None
        return result.output, result.truncated, exit_status

    async def wait_for_terminal_exit(self, terminal_id: str) -> ExitStatus:
        from acp_server.agent.tools.base import ExitStatus

        result = s.TerminalExitStatus.model_validate(
            await self._call("terminal/wait_for_exit", {"terminalId": terminal_id})
        )
        return ExitStatus(result.exit_code, result.signal)

    async def kill_terminal(self, terminal_id: str) -> None:
        await self._call("terminal/kill", {"terminalId": terminal_id})

    async def release_terminal(self, terminal_id: str) -> None:
        await self._call("terminal/release", {"terminalId": terminal_id})
