"""A session as a file: the versioned JSON export (and its import), Markdown, and text.

The JSON export, format ``acp-server.session`` version 1, is one object::

    {
      "format": "acp-server.session",
      "version": 1,
      "exported_at": 1714557600000,          # epoch ms, like every time in the file
      "exported_by": "acp-server 1.2.3",     # the version that wrote it
      "session": {...},                      # the sessions row: id, type, parent_id, cwd,
                                             # additional_directories, title, provider,
                                             # model, mode, config, mcp_servers (secrets
                                             # already removed), token counters, cost,
                                             # message_count, created_at, updated_at, ...
      "items": [{"seq", "turn_id", "kind", "message_id", "data",
                 "user_visible", "agent_visible", "created_at"}, ...],
      "turns": [{"id", "status", "stop_reason", "provider", "model", "usage": {...},
                 "model_calls", "error", "started_at", "finished_at"}, ...],
      "extension_state": {"todo.v1": ..., ...}
    }

``kind`` and item ``data`` are as in ``acp_server.sessions.model``. A reader accepts
unknown keys; a change that older readers would misread gets a new version number.
Importing gives the session, its turns and their links new ids and keeps everything else.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from acp_server import __version__
from acp_server.cli.common import CommandError, local_time, money
from acp_server.sessions.model import (
    Item,
    ItemKind,
    SessionRecord,
    SessionType,
    Turn,
    TurnStatus,
    Usage,
    now_ms,
)
from acp_server.sessions.redaction import scrub_mcp_servers

FORMAT = "acp-server.session"
VERSION = 1
TEXT_RESULT_LINES = 12


def document(
    record: SessionRecord, items: list[Item], turns: list[Turn], state: dict[str, Any]
) -> dict[str, Any]:
    """The JSON export of one session (see the module docstring)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": now_ms(),
        "exported_by": f"acp-server {__version__}",
        "session": session_json(record),
        "items": [item.model_dump(mode="json", exclude={"session_id"}) for item in items],
        "turns": [turn.model_dump(mode="json", exclude={"session_id"}) for turn in turns],
        "extension_state": state,
    }


def session_json(record: SessionRecord) -> dict[str, Any]:
    """The sessions row as JSON, its MCP list scrubbed once more: a row written before
    a redaction rule existed must not leak through a command's output."""
    session = record.model_dump(mode="json")
    session["mcp_servers"] = scrub_mcp_servers(record.mcp_servers)
    return session


# import


class ExportedItem(BaseModel):
    seq: int = Field(ge=1)
    turn_id: str | None = None
    kind: ItemKind
    message_id: str
    data: dict[str, Any]
    user_visible: bool = True
    agent_visible: bool = True
    created_at: int


class ExportedTurn(BaseModel):
    id: str
    status: TurnStatus
    stop_reason: str | None = None
    provider: str | None = None
    model: str | None = None
    usage: Usage = Field(default_factory=Usage)
    model_calls: int = 0
    error: str | None = None
    started_at: int
    finished_at: int | None = None


class SessionExport(BaseModel):
    format: Literal["acp-server.session"]
    version: Literal[1]
    session: SessionRecord
    items: list[ExportedItem] = Field(default_factory=list)
    turns: list[ExportedTurn] = Field(default_factory=list)
    extension_state: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> SessionExport:
        seqs = [item.seq for item in self.items]
        if len(set(seqs)) != len(seqs):
            raise ValueError("two items have the same seq")
        turn_ids = [turn.id for turn in self.turns]
        if len(set(turn_ids)) != len(turn_ids):
            raise ValueError("two turns have the same id")
        known = set(turn_ids)
        for item in self.items:
            if item.turn_id is not None and item.turn_id not in known:
                raise ValueError(f"item {item.seq} names turn {item.turn_id!r}, not in 'turns'")
        return self


def read_export(name: str) -> SessionExport:
    """Read and validate an export file; every problem is one plain CommandError."""
    import orjson

    path = Path(name).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CommandError(
            f"{path} is not JSON ({exc}); give a file from 'sessions export'"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CommandError(
            f'{path} is not an acp-server session export (it has no "format": "{FORMAT}"); '
            "give a file written by 'acp-server sessions export --format json'"
        )
    version = data.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise CommandError(
            f"{path} was exported by a newer acp-server (format version {version}); this one "
            f"reads version {VERSION}: upgrade acp-server"
        )
    try:
        return SessionExport.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        where = _location(first["loc"])
        others = len(errors) - 1
        more = f" (and {others} more problem{'s' * (others > 1)})" if others else ""
        message = str(first["msg"]).removeprefix("Value error, ")
        raise CommandError(
            f"{path} is not a valid session export: {where + ': ' if where else ''}{message}{more}"
        ) from None


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def as_new_session(
    parsed: SessionExport,
) -> tuple[SessionRecord, list[Turn], list[Item], dict[str, Any]]:
    """The export under fresh ids: new session and turn ids, no parent; a subagent
    session becomes a user session (its parent is not part of the file)."""
    from acp_server.sessions.service import new_session_id

    session_id = new_session_id()
    turn_ids = {turn.id: str(uuid.uuid4()) for turn in parsed.turns}
    source = parsed.session
    record = source.model_copy(
        update={
            "id": session_id,
            "parent_id": None,
            "type": SessionType.USER if source.type == SessionType.SUBAGENT else source.type,
            "mcp_servers": scrub_mcp_servers(source.mcp_servers),
        }
    )
    turns = [
        Turn(session_id=session_id, **{**turn.model_dump(), "id": turn_ids[turn.id]})
        for turn in parsed.turns
    ]
    items = [
        Item(
            session_id=session_id,
            **{
                **item.model_dump(),
                "turn_id": turn_ids[item.turn_id] if item.turn_id else None,
            },
        )
        for item in parsed.items
    ]
    return record, turns, items, dict(parsed.extension_state)


# readable forms


def _block_text(block: Any, markdown: bool) -> str:
    """One ACP content block of a user message as text."""
    if not isinstance(block, dict):
        return str(block)
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind in ("image", "audio"):
        return f"[{kind}: {block.get('mimeType', 'unknown type')}]"
    if kind == "resource_link":
        uri, name = block.get("uri", ""), block.get("name") or block.get("uri", "")
        return f"[{name}]({uri})" if markdown else f"[link: {name} <{uri}>]"
    if kind == "resource":
        resource = block.get("resource") or {}
        uri = resource.get("uri", "")
        text = resource.get("text")
        if text is None:
            return f"[attached: {uri}]"
        return f"[attached: {uri}]\n{_fenced(text) if markdown else _indent(text)}"
    return f"[{kind} content]"


def _user_text(item: Item, markdown: bool) -> str:
    blocks = item.data.get("content") or []
    return "\n\n".join(_block_text(block, markdown) for block in blocks).strip()


def _tool_result(data: dict[str, Any]) -> str:
    result = data.get("result")
    if isinstance(result, str) and result:
        return result
    texts = []
    for entry in data.get("content") or []:
        inner = entry.get("content") if isinstance(entry, dict) else None
        if isinstance(inner, dict) and inner.get("type") == "text":
            texts.append(str(inner.get("text", "")))
        elif isinstance(entry, dict) and entry.get("type") == "diff":
            texts.append(f"(diff of {entry.get('path', 'a file')})")
    return "\n".join(texts)


def _fenced(text: str, language: str = "") -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line else prefix.rstrip() for line in text.splitlines())


def _checkbox(entry: dict[str, Any]) -> tuple[str, str]:
    status = entry.get("status")
    mark = "x" if status == "completed" else " "
    note = " (in progress)" if status == "in_progress" else ""
    return mark, f"{entry.get('content', '')}{note}"


def _facts(record: SessionRecord, turns: list[Turn]) -> list[tuple[str, str]]:
    facts = [("session", record.id)]
    if record.type != SessionType.USER or record.parent_id:
        parent = f" of {record.parent_id}" if record.parent_id else ""
        facts.append(("type", f"{record.type.value}{parent}"))
    facts.append(("directory", record.cwd))
    if record.additional_directories:
        facts.append(("more directories", ", ".join(record.additional_directories)))
    model = " / ".join(part for part in (record.provider, record.model) if part) or "-"
    facts.append(("model", model))
    facts.append(("mode", record.mode or "-"))
    facts.append(
        (
            "tokens",
            f"{record.input_tokens:,} input, {record.output_tokens:,} output, "
            f"{record.cached_tokens:,} cached; last context {record.context_tokens:,}",
        )
    )
    facts.append(("cost", money(record.cost)))
    count = len(turns)
    facts.append(("messages", f"{record.message_count} in {count} turn{'s' * (count != 1)}"))
    facts.append(("created", local_time(record.created_at)))
    facts.append(("updated", local_time(record.updated_at)))
    return facts


def _title(record: SessionRecord) -> str:
    if not record.title:
        return "Untitled session"
    return record.title + (" (named by hand)" if record.title_set_by_user else "")


def to_text(record: SessionRecord, items: list[Item], turns: list[Turn]) -> str:
    """What ``sessions show`` prints: the facts, then the conversation the user saw."""
    width = max(len(name) for name, _ in _facts(record, turns))
    lines = [_title(record)]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in _facts(record, turns)]
    speaker = None
    for item in items:
        if not item.user_visible:
            continue
        who = "User" if item.kind == ItemKind.USER else "Agent"
        if who != speaker or item.kind == ItemKind.USER:
            lines += ["", f"── {who} · {local_time(item.created_at)}"]
            speaker = who
        data = item.data
        if item.kind == ItemKind.USER:
            lines.append(_user_text(item, markdown=False))
        elif item.kind == ItemKind.AGENT:
            lines.append(str(data.get("text", "")).strip())
        elif item.kind == ItemKind.THOUGHT:
            lines.append(_indent(str(data.get("text", "")).strip(), "  💭 "))
        elif item.kind == ItemKind.TOOL_CALL:
            lines.append(f"  ⚙ {data.get('title') or data.get('name')} [{data.get('status')}]")
            result = _tool_result(data).splitlines()
            shown = result[:TEXT_RESULT_LINES]
            if len(result) > len(shown):
                shown.append(f"… ({len(result) - len(shown)} more lines)")
            if shown:
                lines.append(_indent("\n".join(shown), "    │ "))
        elif item.kind == ItemKind.PLAN:
            lines.append("  Plan:")
            for entry in data.get("entries") or []:
                mark, text = _checkbox(entry)
                lines.append(f"    [{mark}] {text}")
        else:
            lines.append(str(data.get("text", "")))
    return "\n".join(lines) + "\n"


def to_markdown(record: SessionRecord, items: list[Item], turns: list[Turn]) -> str:
    """A readable Markdown transcript of what the user saw."""
    out = [f"# {record.title or 'Untitled session'}", ""]
    out += [f"- **{name.capitalize()}:** {value}" for name, value in _facts(record, turns)]
    speaker = None
    for item in items:
        if not item.user_visible:
            continue
        who = "User" if item.kind == ItemKind.USER else "Agent"
        if who != speaker or item.kind == ItemKind.USER:
            out += ["", f"## {who}", f"*{local_time(item.created_at)}*"]
            speaker = who
        out.append("")
        data = item.data
        if item.kind == ItemKind.USER:
            out.append(_user_text(item, markdown=True))
        elif item.kind == ItemKind.AGENT:
            out.append(str(data.get("text", "")).strip())
        elif item.kind == ItemKind.THOUGHT:
            thought = str(data.get("text", "")).strip()
            out.append("\n".join(f"> {line}".rstrip() for line in f"💭 {thought}".splitlines()))
        elif item.kind == ItemKind.TOOL_CALL:
            title = data.get("title") or data.get("name") or "tool"
            out.append(f"**Tool call:** {title} — *{data.get('status', 'unknown')}*")
            result = _tool_result(data)
            if result:
                out += ["", _fenced(result)]
        elif item.kind == ItemKind.PLAN:
            out.append("**Plan**")
            out.append("")
            for entry in data.get("entries") or []:
                mark, text = _checkbox(entry)
                out.append(f"- [{mark}] {text}")
        else:
            out.append(str(data.get("text", "")))
    return "\n".join(out).rstrip() + "\n"
