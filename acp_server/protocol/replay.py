"""A stored conversation as the ``session/update`` notifications ``session/load`` sends.

Items carry their original messageIds; tool calls are sent once, in their final state.
Stored items already hold wire-shaped data (content blocks and tool-call fields were
produced by the protocol models when the turn ran), so the replay builds the update
dicts directly and writes them in a few large batches: a 10,000-message session must
load in well under a second. The shapes are those of ``schema.ContentChunk``,
``schema.ToolCallStart`` and ``schema.Plan``; the tests validate every one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from acp_server.protocol.client import text_chunk
from acp_server.sessions.model import Item, ItemKind, SessionRecord
from acp_server.transport.rpc import Connection

_TOOL_FIELDS = ("title", "kind", "status", "content", "locations", "rawInput", "rawOutput")


def _tool_call(data: dict[str, Any]) -> dict[str, Any]:
    update: dict[str, Any] = {
        "sessionUpdate": "tool_call",
        "toolCallId": str(data.get("toolCallId")),
    }
    update.update((key, data[key]) for key in _TOOL_FIELDS if data.get(key) is not None)
    update.setdefault("title", str(data.get("name", "tool")))
    result = [{"type": "content", "content": {"type": "text", "text": str(data.get("result"))}}]
    content = update.get("content")
    if content is None:
        if data.get("result"):
            update["content"] = result
    elif isinstance(content, list) and any(_is_terminal(c) for c in content):
        # That terminal belonged to an earlier client; the command's output is stored.
        kept = [c for c in content if not _is_terminal(c)]
        update["content"] = kept + result if data.get("result") else kept
    return update


def _is_terminal(content: Any) -> bool:
    return isinstance(content, dict) and content.get("type") == "terminal"


def replay_params(session_id: str, item: Item) -> Iterator[bytes]:
    """The serialized ``SessionNotification`` params that replay one item."""
    data = item.data
    if item.kind == ItemKind.AGENT:
        yield text_chunk(session_id, "agent_message_chunk", data.get("text", ""), item.message_id)
    elif item.kind == ItemKind.THOUGHT:
        yield text_chunk(session_id, "agent_thought_chunk", data.get("text", ""), item.message_id)
    elif item.kind == ItemKind.USER:
        for block in data.get("content", []):
            update = {
                "sessionUpdate": "user_message_chunk",
                "content": block,
                "messageId": item.message_id,
            }
            yield orjson.dumps({"sessionId": session_id, "update": update})
    elif item.kind == ItemKind.TOOL_CALL:
        yield orjson.dumps({"sessionId": session_id, "update": _tool_call(data)})
    elif item.kind == ItemKind.PLAN:
        update = {"sessionUpdate": "plan", "entries": data.get("entries", [])}
        yield orjson.dumps({"sessionId": session_id, "update": update})


async def replay_items(connection: Connection, record: SessionRecord, items: list[Item]) -> None:
    await connection.notify_many(
        "session/update", (params for item in items for params in replay_params(record.id, item))
    )
