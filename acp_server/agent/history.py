"""From stored items to the messages a model reads.

Items are stored one per completed message (a thought, a reply, each tool call with
its result); a model wants assistant turns that group text, thinking and tool calls,
each followed by the tool results. Only agent-visible items come in here, so a future
compaction summary replaces what it summarises without touching the transcript.
"""

from __future__ import annotations

from typing import Any

from acp_server.agent.providers.base import (
    AssistantMessage,
    ImagePart,
    Message,
    TextPart,
    Thinking,
    ToolCall,
    ToolResult,
    UserMessage,
)
from acp_server.sessions.model import Item, ItemKind


def prompt_parts(blocks: list[dict[str, Any]], *, images: bool) -> list[TextPart | ImagePart]:
    """ACP content blocks as model input; what a model cannot take is described."""
    parts: list[TextPart | ImagePart] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            parts.append(TextPart(block.get("text", "")))
        elif kind == "image" and images:
            parts.append(ImagePart(block.get("data", ""), block.get("mimeType", "image/png")))
        elif kind == "image":
            parts.append(TextPart("[an image was attached, but this model cannot read images]"))
        elif kind == "resource_link":
            name = block.get("name") or block.get("uri", "")
            parts.append(TextPart(f"[@{name}]({block.get('uri', '')})"))
        elif kind == "resource":
            resource = block.get("resource") or {}
            uri = resource.get("uri", "")
            if "text" in resource:
                parts.append(TextPart(f'<context uri="{uri}">\n{resource["text"]}\n</context>'))
            else:
                parts.append(TextPart(f"[binary resource {uri} attached]"))
        elif kind == "audio":
            parts.append(TextPart("[an audio clip was attached, but this model cannot hear audio]"))
    return parts


def model_messages(items: list[Item], *, images: bool) -> list[Message]:
    messages: list[Message] = []
    assistant: AssistantMessage | None = None
    results: list[ToolResult] = []

    def close() -> None:
        nonlocal assistant, results
        if assistant is not None:
            messages.append(assistant)
            messages.extend(results)
        assistant, results = None, []

    for item in items:
        data = item.data
        if item.kind == ItemKind.USER:
            close()
            messages.append(UserMessage(prompt_parts(data.get("content", []), images=images)))
        elif item.kind == ItemKind.SUMMARY:
            close()
            messages.append(
                UserMessage(
                    [TextPart(f"Summary of the earlier conversation:\n{data.get('text', '')}")]
                )
            )
        elif item.kind in (ItemKind.AGENT, ItemKind.THOUGHT):
            if assistant is not None and assistant.tool_calls:
                close()
            if assistant is None:
                assistant = AssistantMessage()
            if item.kind == ItemKind.AGENT:
                assistant.text += data.get("text", "")
            else:
                assistant.thinking.append(Thinking(data.get("text", ""), data.get("signature")))
        elif item.kind == ItemKind.TOOL_CALL:
            if assistant is None:
                assistant = AssistantMessage()
            call_id = str(data.get("toolCallId"))
            assistant.tool_calls.append(
                ToolCall(call_id, str(data.get("name")), data.get("rawInput") or {})
            )
            results.append(
                ToolResult(
                    call_id,
                    str(data.get("result") or "interrupted: no result was recorded"),
                    bool(data.get("isError", data.get("status") != "completed")),
                )
            )
    close()
    return messages
