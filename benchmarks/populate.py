"""Big stores, fast: bulk inserts with SQLAlchemy core on the server's own tables.

``SessionStore.open`` creates the schema (the server's migrations), then sessions and
items go in as multi-row INSERTs in one transaction per batch, far faster than one
``create_session`` / ``append_item`` call per row. The listing's sort keys are kept so
a deep-page cursor can be built without paging through 100,000 sessions.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert

from acp_server.sessions.model import SessionRecord, SessionType, now_ms
from acp_server.sessions.service import PAGE_SIZE, encode_cursor
from acp_server.storage import tables
from acp_server.storage.sessions import ListKey, session_values
from acp_server.storage.store import SessionStore

BATCH = 2_000
PROJECTS = 20
SUBAGENT_EVERY = 20
"""One session in 20 is a subagent (listed only by ``--all``), as in real stores."""
DEEP_FRACTION = 0.99


@dataclass
class ListFixture:
    sessions: int
    listed: int
    """How many of them ``session/list`` shows (user sessions)."""
    deep_cursor: str
    deep_key: ListKey
    deep_position: int
    cwd: str
    cwd_listed: int
    cwd_deep_cursor: str
    cwd_deep_key: ListKey


@dataclass
class Populated:
    url: str
    seconds: float = 0.0
    list: ListFixture | None = None
    load: dict[int, str] = field(default_factory=dict)
    """Session id by number of items."""
    load_cwd: str = ""


def project_cwd(index: int) -> str:
    return f"/home/dev/project-{index % PROJECTS:02d}"


async def _insert(store: SessionStore, table: Any, rows: list[dict[str, Any]]) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(insert(table), rows)


def _deep(keys: list[tuple[int, str]]) -> tuple[int, ListKey]:
    """The key a cursor ``DEEP_FRACTION`` of the way down the listing stands after
    (never so deep that less than a full page follows)."""
    ordered = sorted(keys, reverse=True)  # updated_at desc, id desc: the listing's order
    position = max(0, min(int(len(ordered) * DEEP_FRACTION), len(ordered) - PAGE_SIZE) - 1)
    updated_at, session_id = ordered[position]
    return position + 1, ListKey(updated_at, session_id)


async def add_sessions(store: SessionStore, count: int) -> ListFixture:
    template = session_values(
        SessionRecord(id="x", cwd="/", provider="openai", model="bench-model", mode="ask")
    )
    start = now_ms() - count * 1_000
    keys: list[tuple[int, str]] = []
    cwd_keys: list[tuple[int, str]] = []
    hashes = {p: tables.cwd_hash(project_cwd(p)) for p in range(PROJECTS)}
    last_user: str | None = None
    for first in range(0, count, BATCH):
        rows = []
        for i in range(first, min(count, first + BATCH)):
            session_id = str(uuid.uuid4())
            updated = start + i * 1_000
            subagent = i % SUBAGENT_EVERY == SUBAGENT_EVERY - 1 and last_user is not None
            row = dict(template)
            row.update(
                id=session_id,
                type=(SessionType.SUBAGENT if subagent else SessionType.USER).value,
                parent_id=last_user if subagent else None,
                cwd=project_cwd(i),
                cwd_hash=hashes[i % PROJECTS],
                title=f"Session {i}: tidy the parser and its tests",
                message_count=8 + i % 40,
                created_at=updated - 600_000,
                updated_at=updated,
                last_activity_at=updated,
            )
            rows.append(row)
            if not subagent:
                last_user = session_id
                keys.append((updated, session_id))
                if i % PROJECTS == 7:
                    cwd_keys.append((updated, session_id))
        await _insert(store, tables.sessions, rows)
    position, deep_key = _deep(keys)
    _, cwd_deep_key = _deep(cwd_keys)
    cwd = project_cwd(7)
    return ListFixture(
        sessions=count,
        listed=len(keys),
        deep_cursor=encode_cursor(deep_key, None),
        deep_key=deep_key,
        deep_position=position,
        cwd=cwd,
        cwd_listed=len(cwd_keys),
        cwd_deep_cursor=encode_cursor(cwd_deep_key, cwd),
        cwd_deep_key=cwd_deep_key,
    )


USER_TEXT = (
    "Please look at src/parser.py: the tokenizer drops the last line when the file has "
    "no trailing newline. Fix it and add a test."
)
AGENT_TEXT = (
    "I read the tokenizer. The loop stops at the last newline, so a final line without "
    "one is never yielded; I changed the loop to flush the remaining buffer after the "
    "last read and added a regression test covering files with and without a trailing "
    "newline. " * 3
)
TOOL_RESULT = "\n".join(f"{n:4} | line {n} of src/parser.py, some code here" for n in range(25))


def _item(session_id: str, seq: int, at: int) -> dict[str, Any]:
    """A realistic conversation: user, agent, a finished read_file call, agent, ..."""
    kind = ("user", "agent", "tool_call", "agent")[(seq - 1) % 4]
    if kind == "user":
        data: dict[str, Any] = {"content": [{"type": "text", "text": USER_TEXT}]}
    elif kind == "agent":
        data = {"text": AGENT_TEXT}
    else:
        data = {
            "toolCallId": f"call_{seq}",
            "name": "read_file",
            "title": "Read src/parser.py",
            "kind": "read",
            "status": "completed",
            "rawInput": {"path": "src/parser.py"},
            "locations": [{"path": "/home/dev/project/src/parser.py"}],
            "result": TOOL_RESULT,
            "isError": False,
        }
    return {
        "session_id": session_id,
        "seq": seq,
        "turn_id": None,
        "kind": kind,
        "message_id": f"call_{seq}" if kind == "tool_call" else str(uuid.uuid4()),
        "data": data,
        "user_visible": True,
        "agent_visible": True,
        "created_at": at,
    }


async def add_conversation(store: SessionStore, items: int, cwd: str) -> str:
    at = now_ms()
    record = SessionRecord(
        id=str(uuid.uuid4()),
        cwd=cwd,
        title=f"A conversation of {items} messages",
        provider="openai",
        model="bench-model",
        mode="ask",
        message_count=items,
        created_at=at,
        updated_at=at,
        last_activity_at=at,
    )
    await store.create_session(record)
    for first in range(1, items + 1, BATCH):
        last = min(items, first + BATCH - 1)
        rows = [_item(record.id, seq, at) for seq in range(first, last + 1)]
        await _insert(store, tables.items, rows)
    return record.id


async def populate(
    url: str, *, sessions: int, conversations: tuple[int, ...], cwd: str
) -> Populated:
    """Fill a fresh database; ``sessions`` = 0 or ``conversations`` = () skip a part."""
    started = time.perf_counter()
    out = Populated(url, load_cwd=cwd)
    store = await SessionStore.open(url)
    try:
        if sessions:
            out.list = await add_sessions(store, sessions)
        for size in conversations:
            out.load[size] = await add_conversation(store, size, cwd)
    finally:
        await store.close()
    out.seconds = time.perf_counter() - started
    return out


__all__ = ["PAGE_SIZE", "ListFixture", "Populated", "populate"]
