"""A stored conversation as the ``session/update`` notifications ``session/load`` sends.

Items carry their original messageIds; tool calls are sent once, in their final state.
"""

from __future__ import annotations

from typing import Any, Literal

from acp_server.protocol import schema as s
from acp_server.protocol.client import send_update, tool_call_start
from acp_server.sessions.model import Item, ItemKind, SessionRecord
from acp_server.transport.rpc import Connection


def updates_for(item: Item) -> list[s.AcpModel]:
    data: dict[str, Any] = item.data
    if item.kind == ItemKind.USER:
        return [
            s.ContentChunk.model_validate(
                {
                    "sessionUpdate": "user_message_chunk",
                    "content": block,
                    "messageId": item.message_id,
                }
            )
            for block in data.get("content", [])
        ]
    if item.kind in (ItemKind.AGENT, ItemKind.THOUGHT):
        kind: Literal["agent_message_chunk", "agent_thought_chunk"] = (
            "agent_message_chunk" if item.kind == ItemKind.AGENT else "agent_thought_chunk"
        )
        return [
            s.ContentChunk(
                session_update=kind,
                content=s.TextContent(text=data.get("text", "")),
                message_id=item.message_id,
            )
        ]
    if item.kind == ItemKind.TOOL_CALL:
        final = dict(data)
        if "content" not in final and final.get("result"):
            final["content"] = [
                {"type": "content", "content": {"type": "text", "text": final["result"]}}
            ]
        return [tool_call_start(final)]
    if item.kind == ItemKind.PLAN:
        return [s.Plan.model_validate({"entries": data.get("entries", [])})]
    return []


async def replay_items(connection: Connection, record: SessionRecord, items: list[Item]) -> None:
    for item in items:
        for update in updates_for(item):
            await send_update(connection, record.id, update)
