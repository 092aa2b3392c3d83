"""Sessions and their storage: create, find, list, fork, delete, record turns.

The service validates what a session is made of (absolute, existing directories),
keeps secrets out of the database (MCP env and header values, URL credentials and
secret arguments are never stored: see ``redaction``), repairs turns a crash
interrupted, and hides the store's keys behind opaque list cursors. It knows nothing
about ACP messages or models.
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from acp_server.errors import InvalidParams, SessionNotFound
from acp_server.sessions.model import (
    LISTED_TYPES,
    Item,
    NewItem,
    SessionRecord,
    SessionType,
    Turn,
    now_ms,
)
from acp_server.sessions.redaction import has_redactions, scrub_mcp_servers

if TYPE_CHECKING:  # the store imports SQLAlchemy, which stays off the start-up path
    from acp_server.storage.sessions import ListKey
    from acp_server.storage.store import SessionStore

PAGE_SIZE = 50


def new_session_id() -> str:
    """122 random bits from the OS: unguessable and globally unique."""
    return str(uuid.uuid4())


def check_directory(path: str, what: str) -> str:
    if not os.path.isabs(path):
        raise InvalidParams(f"{what} must be an absolute path, got {path!r}")
    if not Path(path).is_dir():
        raise InvalidParams(f"{what} {path!r} is not an existing directory")
    return os.path.normpath(path)


def encode_cursor(key: ListKey, cwd: str | None) -> str:
    raw = orjson.dumps({"u": key.updated_at, "i": key.id, "c": cwd})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, cwd: str | None) -> ListKey:
    from acp_server.storage.sessions import ListKey

    problem = InvalidParams(
        "invalid cursor: pass back the nextCursor of the previous session/list answer unchanged",
        data={"field": "cursor"},
    )
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise problem from None
    if not (
        isinstance(data, dict)
        and type(data.get("u")) is int
        and 0 <= data["u"] < 1 << 62
        and isinstance(data.get("i"), str)
        and len(data["i"]) <= 200
    ):
        raise problem
    key = ListKey(updated_at=data["u"], id=data["i"])
    if data.get("c") != cwd:
        raise InvalidParams(
            "invalid cursor: it belongs to a listing with a different cwd filter",
            data={"field": "cursor"},
        )
    return key


class SessionService:
    def __init__(self, store: SessionStore):
        self.store = store

    async def close(self) -> None:
        await self.store.close()

    async def create(
        self,
        *,
        cwd: str,
        additional_directories: list[str],
        mcp_servers: list[dict[str, Any]],
        provider: str | None,
        model: str | None,
        mode: str | None,
        session_type: SessionType = SessionType.USER,
        parent_id: str | None = None,
    ) -> SessionRecord:
        record = SessionRecord(
            id=new_session_id(),
            type=session_type,
            parent_id=parent_id,
            cwd=check_directory(cwd, "cwd"),
            additional_directories=[
                check_directory(path, "additionalDirectories entry")
                for path in additional_directories
            ],
            mcp_servers=scrub_mcp_servers(mcp_servers),
            provider=provider,
            model=model,
            mode=mode,
        )
        await self.store.create_session(record)
        return record

    async def get(self, session_id: str) -> SessionRecord:
        record = await self.store.get_session(session_id)
        if record is None:
            raise SessionNotFound(session_id)
        return record

    async def reopen(
        self, session_id: str, *, cwd: str, additional_directories: list[str] | None
    ) -> SessionRecord:
        """Find a stored session for load/resume/fork: same cwd, crash damage repaired."""
        record = await self.get(session_id)
        if os.path.normpath(cwd) != record.cwd:
            raise InvalidParams(
                f"session {session_id!r} belongs to {record.cwd}, not {cwd}; "
                "open it from its own folder, or fork it into this one",
                data={"field": "cwd", "sessionCwd": record.cwd},
            )
        await self.store.repair_session(session_id)
        if additional_directories is not None:
            directories = [
                check_directory(path, "additionalDirectories entry")
                for path in additional_directories
            ]
            if directories != record.additional_directories:
                await self.store.update(session_id).additional_directories(directories).apply()
                record.additional_directories = directories
        return record

    async def remember_mcp_servers(
        self, record: SessionRecord, servers: list[dict[str, Any]]
    ) -> None:
        """A client resent the session's MCP list: store it (scrubbed) as its extensions."""
        scrubbed = scrub_mcp_servers(servers)
        if scrubbed != record.mcp_servers:
            await self.store.update(record.id).mcp_servers(scrubbed).touch(False).apply()
            record.mcp_servers = scrubbed

    @staticmethod
    def restorable_mcp_servers(record: SessionRecord) -> tuple[list[dict[str, Any]], list[str]]:
        """The stored MCP servers that can be restarted as they are, and a sentence for
        each that cannot (its secrets were never stored)."""
        restorable, problems = [], []
        for server in record.mcp_servers:
            if has_redactions(server):
                problems.append(
                    f"MCP server '{server.get('name')}' was not restarted: its secrets are never "
                    "stored, so the editor must send it again (session/load or session/resume "
                    "with mcpServers)"
                )
            else:
                restorable.append(server)
        return restorable, problems

    async def fork(
        self, source_id: str, *, cwd: str, additional_directories: list[str] | None
    ) -> SessionRecord:
        source = await self.get(source_id)
        await self.store.repair_session(source_id)
        record = source.model_copy(
            update={
                "id": new_session_id(),
                "parent_id": source.id,
                "type": SessionType.USER,
                "cwd": check_directory(cwd, "cwd"),
                "additional_directories": [
                    check_directory(path, "additionalDirectories entry")
                    for path in (additional_directories or [])
                ],
                "title": f"Fork of {source.title}" if source.title else None,
                "title_set_by_user": False,
                "created_at": now_ms(),
                "updated_at": now_ms(),
                "last_activity_at": now_ms(),
            }
        )
        await self.store.fork_session(source_id, record)
        return record

    async def rename(self, session_id: str, title: str, *, by_user: bool) -> None:
        """A person's title is kept from then on; a generated one never replaces it."""
        if not await self.store.update(session_id).title(title, by_user=by_user).apply():
            raise SessionNotFound(session_id)

    async def configure(
        self, session_id: str, *, mode: str | None = None, model: str | None = None
    ) -> None:
        update = self.store.update(session_id)
        if mode is not None:
            update.mode(mode)
        if model is not None:
            update.model(model)
        if not await update.apply():
            raise SessionNotFound(session_id)

    async def remember_permission_rules(self, session_id: str, rules: dict[str, str]) -> None:
        """The "always" answers to permission requests, per tool, for the session."""
        await self.store.update(session_id).permission_rules(rules).apply()

    async def delete(self, session_id: str) -> None:
        await self.store.delete_session(session_id)

    async def list_page(
        self, *, cwd: str | None, cursor: str | None, limit: int = PAGE_SIZE
    ) -> tuple[list[SessionRecord], str | None]:
        if cwd is not None and not os.path.isabs(cwd):
            raise InvalidParams(f"cwd must be an absolute path, got {cwd!r}", data={"field": "cwd"})
        wanted = os.path.normpath(cwd) if cwd is not None else None
        after = decode_cursor(cursor, wanted) if cursor else None
        records, next_key = await self.store.list_sessions(
            cwd=wanted, types=LISTED_TYPES, after=after, limit=limit
        )
        return records, (encode_cursor(next_key, wanted) if next_key else None)

    async def items(self, session_id: str, *, for_model: bool = False) -> list[Item]:
        if for_model:
            return await self.store.load_items(session_id, agent_visible=True)
        return await self.store.load_items(session_id, user_visible=True)

    async def exclude_turn(self, session_id: str, turn_id: str) -> None:
        """Keep a turn out of the model's context from now on (a refused prompt is not
        part of the next one); the person still sees it."""
        await self.store.hide_turn_from_agent(session_id, turn_id)

    async def latest_seq(self, session_id: str) -> int:
        return await self.store.latest_seq(session_id)

    async def append(self, session_id: str, item: NewItem) -> Item:
        return await self.store.append_item(session_id, item)

    async def update_item(self, session_id: str, seq: int, data: dict[str, Any]) -> None:
        await self.store.update_item(session_id, seq, data)

    async def start_turn(self, turn: Turn, prompt: NewItem) -> None:
        """The turn and the user's prompt, stored together."""
        prompt.turn_id = turn.id
        await self.store.start_turn(turn, prompt)

    async def finish_turn(
        self, turn: Turn, context_tokens: int, last: NewItem | None = None
    ) -> None:
        """How the turn ended, its last item and its usage, stored together."""
        if last is not None:
            last.turn_id = turn.id
        await self.store.finish_turn(turn, context_tokens, last=last)
