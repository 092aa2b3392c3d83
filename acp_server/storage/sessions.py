"""Session rows: create, read, list, update, delete, fork and import sessions, and
their extension state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from sqlalchemy import (
    Row,
    Table,
    Text,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from acp_server import errors
from acp_server.sessions.model import (
    LISTED_TYPES,
    Item,
    SessionRecord,
    SessionType,
    Turn,
    now_ms,
)
from acp_server.storage import statements, tables
from acp_server.storage.transactions import Transactions, one_statement

S = tables.sessions
T = tables.turns
I = tables.items  # noqa: E741
X = tables.extension_state


@dataclass(frozen=True)
class ListKey:
    """Where a session listing page ended: the last row's sort key."""

    updated_at: int
    id: str


class SessionNotFoundError(errors.SessionNotFound):
    """The session does not exist (never did, or was deleted meanwhile, perhaps by
    another process in the middle of a turn): -32002 with a sentence for a person."""


class Sessions(Transactions):
    """The ``sessions`` rows, whole sessions (fork, import) and their extension state."""

    async def create_session(self, record: SessionRecord) -> None:
        await self._write(one_statement(insert(S).values(session_values(record))))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(select(S).where(S.c.id == session_id))).first()
        return None if row is None else _record(row)

    def update(self, session_id: str) -> SessionUpdate:
        """Start a partial update; only the fields named on the builder change."""
        return SessionUpdate(self, session_id)

    async def delete_session(self, session_id: str) -> bool:
        """Hard delete; items, turns, state, feedback and subagent/hidden descendants go
        with it. Forks are sessions of their own: they stay, their parent link cleared."""

        async def work(conn: AsyncConnection) -> int:
            doomed, frontier = [session_id], [session_id]
            while frontier:
                children = await conn.execute(
                    select(S.c.id).where(
                        S.c.parent_id.in_(frontier), S.c.type != SessionType.USER.value
                    )
                )
                frontier = [row[0] for row in children if row[0] not in doomed]
                doomed += frontier
            return (await conn.execute(delete(S).where(S.c.id.in_(doomed)))).rowcount

        if not await self._write(work):
            return False
        await self._forget_deleted()
        return True

    async def list_sessions(
        self,
        *,
        cwd: str | None = None,
        types: tuple[SessionType, ...] = LISTED_TYPES,
        after: ListKey | None = None,
        limit: int = 50,
    ) -> tuple[list[SessionRecord], ListKey | None]:
        """Newest first, keyset-paged on an index; the key is None on the last page."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if not types:
            return [], None
        query = _session_filter(select(S), cwd, types)
        if after is not None:
            query = query.where(
                S.c.updated_at <= after.updated_at,
                or_(S.c.updated_at < after.updated_at, S.c.id < after.id),
            )
        query = query.order_by(S.c.updated_at.desc(), S.c.id.desc()).limit(limit + 1)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        page = [_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        return page, ListKey(page[-1].updated_at, page[-1].id) if more else None

    async def count_sessions(
        self, *, cwd: str | None = None, types: tuple[SessionType, ...] = LISTED_TYPES
    ) -> int:
        if not types:
            return 0
        query = _session_filter(select(func.count()).select_from(S), cwd, types)
        async with self._read() as conn:
            return int(await conn.scalar(query) or 0)

    async def list_children(self, parent_id: str) -> list[SessionRecord]:
        """Sessions whose parent is ``parent_id`` (subagents), oldest first."""
        query = select(S).where(S.c.parent_id == parent_id).order_by(S.c.created_at, S.c.id)
        async with self._read() as conn:
            return [_record(row) for row in (await conn.execute(query)).all()]

    # fork

    async def fork_session(self, source_id: str, new: SessionRecord) -> None:
        """Create ``new`` holding a copy of every item (and the extension state) of
        ``source_id``, in one transaction. Turns stay with the source."""
        copy_items = insert(I).from_select(
            [c.name for c in I.c],
            select(*(_forked(c, new.id) for c in I.c)).where(I.c.session_id == source_id),
        )
        copy_state = insert(X).from_select(
            [c.name for c in X.c],
            select(*(_forked(c, new.id) for c in X.c)).where(X.c.session_id == source_id),
        )

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(insert(S).values(session_values(new)))
            if await conn.scalar(select(S.c.id).where(S.c.id == source_id)) is None:
                raise SessionNotFoundError(source_id)
            copied = (await conn.execute(copy_items)).rowcount
            await conn.execute(copy_state)
            await conn.execute(update(S).where(S.c.id == new.id).values(message_count=copied))

        await self._write(work)

    # extension state

    async def get_extension_state(self, session_id: str) -> dict[str, Any]:
        query = select(X.c.key, X.c.value).where(X.c.session_id == session_id)
        async with self._read() as conn:
            return {key: value for key, value in (await conn.execute(query)).all()}

    async def set_extension_state(self, session_id: str, key: str, value: Any) -> None:
        """Insert or replace one namespaced, versioned key such as ``todo.v1``."""
        row = {"session_id": session_id, "key": key, "value": value, "updated_at": now_ms()}
        await self._write(
            one_statement(_upsert(self.engine.dialect.name, X, row, ("session_id", "key")))
        )

    async def delete_extension_state(self, session_id: str, key: str) -> bool:
        stmt = delete(X).where(X.c.session_id == session_id, X.c.key == key)
        return await self._write(one_statement(stmt)) > 0

    # import (``acp-server sessions import``)

    async def import_session(
        self,
        record: SessionRecord,
        *,
        turns: Sequence[Turn] = (),
        items: Sequence[Item] = (),
        extension_state: dict[str, Any] | None = None,
    ) -> None:
        """Write a whole session exactly as given (``seq``, times and counters kept) in
        one transaction: how an exported session comes back. Ids must be fresh."""

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(insert(S).values(session_values(record)))
            if turns:
                rows = [{**statements.turn_values(t), "session_id": record.id} for t in turns]
                await conn.execute(insert(T), rows)
            if items:
                await conn.execute(
                    insert(I),
                    [
                        {
                            "session_id": record.id,
                            "seq": item.seq,
                            "turn_id": item.turn_id,
                            "kind": item.kind.value,
                            "message_id": item.message_id,
                            "data": item.data,
                            "user_visible": item.user_visible,
                            "agent_visible": item.agent_visible,
                            "created_at": item.created_at,
                        }
                        for item in items
                    ],
                )
            if extension_state:
                now = now_ms()
                await conn.execute(
                    insert(X),
                    [
                        {"session_id": record.id, "key": key, "value": value, "updated_at": now}
                        for key, value in extension_state.items()
                    ],
                )

        await self._write(work)


class SessionUpdate:
    """Changes to one session, written by ``apply()`` as a single UPDATE.

    A field not named is left alone; naming it with None sets it to NULL.
    """

    def __init__(self, store: Sessions, session_id: str) -> None:
        self._store = store
        self._session_id = session_id
        self._values: dict[str, Any] = {}
        self._touch = True

    def _set(self, **values: Any) -> Self:
        self._values.update(values)
        return self

    def title(self, title: str | None, *, by_user: bool = False) -> Self:
        """A user's title always wins; an automatic one never replaces the user's."""
        if by_user:
            return self._set(title=title, title_set_by_user=title is not None)
        keep_users = case((S.c.title_set_by_user, S.c.title), else_=literal(title, Text))
        return self._set(title=keep_users)

    def provider(self, provider: str | None) -> Self:
        return self._set(provider=provider)

    def model(self, model: str | None) -> Self:
        return self._set(model=model)

    def mode(self, mode: str | None) -> Self:
        return self._set(mode=mode)

    def cwd(self, cwd: str) -> Self:
        return self._set(cwd=cwd, cwd_hash=tables.cwd_hash(cwd))

    def config(self, config: dict[str, Any]) -> Self:
        return self._set(config=config)

    def mcp_servers(self, mcp_servers: list[dict[str, Any]]) -> Self:
        return self._set(mcp_servers=mcp_servers)

    def additional_directories(self, directories: list[str]) -> Self:
        return self._set(additional_directories=directories)

    def permission_rules(self, rules: dict[str, str]) -> Self:
        return self._set(permission_rules=rules)

    def last_activity(self, at_ms: int) -> Self:
        return self._set(last_activity_at=at_ms)

    def touch(self, touch: bool = True) -> Self:
        """Whether ``apply()`` also sets ``updated_at`` to now (it does by default)."""
        self._touch = touch
        return self

    async def apply(self) -> bool:
        """Write the changes; False when the session does not exist."""
        values = dict(self._values)
        if self._touch:
            values.setdefault("updated_at", now_ms())
        if not values:
            return await self._store.get_session(self._session_id) is not None
        stmt = update(S).where(S.c.id == self._session_id).values(values)
        return await self._store._write(one_statement(stmt)) > 0


def session_values(record: SessionRecord) -> dict[str, Any]:
    """A record as a ``sessions`` row."""
    values = record.model_dump()
    values["type"] = record.type.value
    values["cwd_hash"] = tables.cwd_hash(record.cwd)
    return values


def _record(row: Row[Any]) -> SessionRecord:
    return SessionRecord.model_validate(dict(row._mapping))


def _session_filter(query: Any, cwd: str | None, types: tuple[SessionType, ...]) -> Any:
    query = query.where(S.c.type.in_([t.value for t in types]))
    if cwd is not None:
        query = query.where(S.c.cwd_hash == tables.cwd_hash(cwd), S.c.cwd == cwd)
    return query


def _forked(column: Any, new_id: str) -> Any:
    """The value a forked copy takes for ``column``: the new id, no turn, else as is."""
    if column.name == "session_id":
        return literal(new_id, tables.ID)
    if column.name == "turn_id":
        return null()
    return column


def _upsert(dialect: str, table: Table, row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """INSERT, or UPDATE the non-key columns when ``keys`` already exist."""
    changed = [name for name in row if name not in keys]
    if dialect == "mysql":
        from sqlalchemy.dialects.mysql import insert as mysql_insert

        stmt = mysql_insert(table).values(row)
        return stmt.on_duplicate_key_update({name: stmt.inserted[name] for name in changed})
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(table).values(row)
        return pg.on_conflict_do_update(
            index_elements=keys, set_={name: pg.excluded[name] for name in changed}
        )
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    lite = sqlite_insert(table).values(row)
    return lite.on_conflict_do_update(
        index_elements=keys, set_={name: lite.excluded[name] for name in changed}
    )
