"""SessionStore: the one object the rest of the server uses to keep sessions in SQL.

Each method is one short transaction, run again from the start when a deadlock, lock
timeout, serialization failure or busy database rolls it back (``_write``). Counters
change with ``col = col + :x`` in SQL, never read-modify-write, so concurrent turns and
processes lose nothing. Items are an append-only log numbered by ``seq``; each append
commits at once (a turn's last one with the turn's end), so a message that has
completed survives a crash. Memory mode is the same code on an in-memory SQLite
database.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
    suppress,
)
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import anyio
from sqlalchemy import (
    Row,
    Table,
    Text,
    bindparam,
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
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from acp_server import errors
from acp_server.logs import get_logger
from acp_server.sessions.model import (
    LISTED_TYPES,
    TOOL_FINAL_STATUSES,
    Item,
    ItemKind,
    NewItem,
    SessionRecord,
    SessionType,
    Turn,
    TurnStatus,
    Usage,
    now_ms,
)
from acp_server.storage import statements, tables
from acp_server.storage.engine import (
    DatabaseConfigError,
    check_connection,
    create_engine,
    is_memory,
    is_transient,
    memory_url,
    normalize_url,
    redact,
)
from acp_server.storage.migrate import upgrade

log = get_logger(__name__)

INTERRUPTED_RESULT = "interrupted: the server stopped before this tool finished"
WRITE_TIMEOUT_S = 60
WRITE_ATTEMPTS = 8
"""Runs of a write transaction that a deadlock or a busy database rolled back."""
DUPLICATE_ATTEMPTS = 5
"""Runs of an append whose ``seq`` another writer took first."""
RETRY_BASE_S = 0.01
RETRY_CAP_S = 0.5

R = TypeVar("R")
Work = Callable[[AsyncConnection], Awaitable[R]]
"""One write transaction's statements, run on the connection given; see ``_write``."""

S = tables.sessions
T = tables.turns
I = tables.items  # noqa: E741
X = tables.extension_state
F = tables.feedback

ITEM_COLUMNS = (
    I.c.seq,
    I.c.turn_id,
    I.c.kind,
    I.c.message_id,
    I.c.data,
    I.c.user_visible,
    I.c.agent_visible,
    I.c.created_at,
)


@dataclass(frozen=True)
class ListKey:
    """Where a session listing page ended: the last row's sort key."""

    updated_at: int
    id: str


class SessionNotFoundError(errors.SessionNotFound):
    """The session does not exist (never did, or was deleted meanwhile, perhaps by
    another process in the middle of a turn): -32002 with a sentence for a person."""


class SessionStore:
    """Sessions, their items, turns, extension state and feedback, on any backend."""

    backend: str
    """One of "sqlite", "memory", "postgresql", "mysql"."""
    url_redacted: str
    """The database URL without its password, for messages and logs."""

    def __init__(self, engine: AsyncEngine, *, backend: str, url_redacted: str) -> None:
        self.engine = engine
        self.backend = backend
        self.url_redacted = url_redacted
        # One shared in-memory connection cannot hold two transactions at once.
        self._serial: AbstractAsyncContextManager[Any] = (
            anyio.Lock() if backend == "memory" else nullcontext()
        )
        # SQLite has one writer at a time per file: writers queue here, in order,
        # instead of colliding on the file lock and sleeping in busy_timeout retries.
        self._writes: AbstractAsyncContextManager[Any] = (
            anyio.Lock() if backend == "sqlite" else nullcontext()
        )
        # With one writer at a time, that writer keeps its connection: a pool checkout
        # and return are two more trips to aiosqlite's thread on every write.
        self._keeps_writer = backend in ("sqlite", "memory")
        self._writer: AsyncConnection | None = None
        self.retries = 0
        """Write transactions run again (deadlock, busy database, a ``seq`` taken)."""

    @classmethod
    async def open(
        cls, url: str | None, *, memory: bool = False, migrate: bool = True
    ) -> SessionStore:
        """Connect, check the database answers, and bring its schema up to date."""
        if memory:
            sa_url = memory_url()
        elif url is None:
            raise DatabaseConfigError(
                "no database URL given; pass --database-url / ACP_SERVER_DATABASE_URL "
                "or use memory mode"
            )
        else:
            sa_url = normalize_url(url)
        in_memory = is_memory(sa_url)
        engine = create_engine(sa_url)
        try:
            await check_connection(engine, sa_url)
            if in_memory:
                async with engine.begin() as conn:
                    await conn.run_sync(tables.metadata.create_all)
            elif migrate:
                await upgrade(engine)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await engine.dispose()
            raise
        backend = "memory" if in_memory else sa_url.get_backend_name()
        return cls(engine, backend=backend, url_redacted=redact(sa_url))

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.close()
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def _write(self, work: Work[R], *, duplicates: bool = False) -> R:
        """Run ``work`` in one write transaction and return what it returns.

        Once started, the transaction finishes even if the caller is cancelled (a
        cancelled turn still keeps what it completed). A deadlock, lock wait timeout,
        serialization failure or busy database rolls it back, and ``work`` runs again
        from the start after a short random pause, a few times at most; with
        ``duplicates``, so does a duplicate key (another writer took the same ``seq``).
        So ``work`` must change nothing but the database through ``conn``: whatever it
        computes, it returns.
        """
        with anyio.fail_after(WRITE_TIMEOUT_S, shield=True), self._unavailable():
            async with self._serial, self._writes:
                for attempt in range(1, WRITE_ATTEMPTS + 1):
                    try:
                        return await self._attempt(work)
                    except IntegrityError:
                        if not duplicates or attempt >= DUPLICATE_ATTEMPTS:
                            raise
                    except DBAPIError as exc:
                        if attempt == WRITE_ATTEMPTS or not is_transient(exc):
                            raise
                        log.debug("write retried", attempt=attempt, error=str(exc.orig)[:200])
                    self.retries += 1
                    await anyio.sleep(_backoff(attempt))
                raise AssertionError("unreachable")

    async def _attempt(self, work: Work[R]) -> R:
        if not self._keeps_writer:
            async with self.engine.begin() as conn:
                return await work(conn)
        if self._writer is None:
            self._writer = await self.engine.connect()
        writer = self._writer
        try:
            async with writer.begin():
                return await work(writer)
        except IntegrityError:
            raise
        except (DBAPIError, OSError, TimeoutError):
            # Whatever broke may have broken the connection too: start afresh.
            self._writer = None
            await writer.close()
            raise

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._serial:
            with self._unavailable():
                async with self.engine.connect() as conn:
                    yield conn

    async def _forget_deleted(self) -> None:
        """After a delete on SQLite: ``secure_delete`` zeroed the rows in the database
        file, but the WAL still holds older copies of their pages; fold it into the file
        and truncate it. Best effort (the delete is done): a reader still on an old
        snapshot keeps the WAL, and the next delete or SQLite's own checkpoint retries."""
        if self.backend != "sqlite":
            return
        with anyio.move_on_after(WRITE_TIMEOUT_S, shield=True), suppress(DBAPIError, OSError):
            async with self._writes, self.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """A database that stops answering becomes one plain line (``errors.Unavailable``);
        constraint violations stay what they are, for the callers that retry on them."""
        try:
            yield
        except IntegrityError:
            raise
        except (DBAPIError, OSError, TimeoutError) as exc:
            detail = (
                str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
            )[0]
            raise errors.Unavailable(
                f"the session database {self.url_redacted} is not answering ({detail[:200]}); "
                "the request was not completed; check that the database is running"
            ) from exc

    # sessions

    async def create_session(self, record: SessionRecord) -> None:
        await self._write(_run(insert(S).values(session_values(record))))

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

    # items

    async def append_item(self, session_id: str, item: NewItem) -> Item:
        """Append and commit. Locking the session row first orders concurrent appenders;
        a duplicate ``seq`` (another writer won a race anyway) is retried."""
        now = now_ms()
        params = statements.item_params(session_id, item, now)

        async def work(conn: AsyncConnection) -> int:
            await self._bump(conn, params)
            seq = int(await conn.scalar(statements.NEXT_SEQ, params) or 0)
            await conn.execute(statements.INSERT_ITEM, {**params, "seq": seq})
            return seq

        seq = await self._write(work, duplicates=True)
        return Item.model_construct(
            session_id=session_id,
            seq=seq,
            created_at=now,
            kind=item.kind,
            message_id=item.message_id,
            data=item.data,
            turn_id=item.turn_id,
            user_visible=item.user_visible,
            agent_visible=item.agent_visible,
        )

    async def _bump(self, conn: AsyncConnection, params: dict[str, Any]) -> None:
        if (await conn.execute(statements.BUMP_SESSION, params)).rowcount == 0:
            raise SessionNotFoundError(params["session"])

    async def update_item(self, session_id: str, seq: int, data: dict[str, Any]) -> None:
        """Replace an item's data, e.g. a tool call reaching its final state."""
        stmt = update(I).where(I.c.session_id == session_id, I.c.seq == seq).values(data=data)
        await self._write(_run(stmt))

    async def hide_from_agent(self, session_id: str, *, through_seq: int) -> int:
        """Compaction: items up to ``through_seq`` leave the model's context, not the
        user's transcript. Returns how many items changed."""
        stmt = (
            update(I)
            .where(I.c.session_id == session_id, I.c.seq <= through_seq, I.c.agent_visible)
            .values(agent_visible=False)
        )
        return await self._write(_run(stmt))

    async def hide_turn_from_agent(self, session_id: str, turn_id: str) -> int:
        """A refused turn: its prompt and reply stay in the transcript and leave the
        model's context. Returns how many items changed."""
        stmt = (
            update(I)
            .where(I.c.session_id == session_id, I.c.turn_id == turn_id, I.c.agent_visible)
            .values(agent_visible=False)
        )
        return await self._write(_run(stmt))

    async def latest_seq(self, session_id: str) -> int:
        """The highest ``seq`` in the session (0 when empty): one indexed read, which
        tells a live session whether another process has written since it last looked."""
        query = select(func.max(I.c.seq)).where(I.c.session_id == session_id)
        async with self._read() as conn:
            return int(await conn.scalar(query) or 0)

    async def load_items(
        self,
        session_id: str,
        *,
        user_visible: bool | None = None,
        agent_visible: bool | None = None,
    ) -> list[Item]:
        """The conversation in ``seq`` order, optionally only what the user or the model
        sees."""
        query = select(*ITEM_COLUMNS).where(I.c.session_id == session_id)
        if user_visible is not None:
            query = query.where(I.c.user_visible == user_visible)
        if agent_visible is not None:
            query = query.where(I.c.agent_visible == agent_visible)
        async with self._read() as conn:
            rows = (await conn.execute(query.order_by(I.c.seq))).all()
        construct = Item.model_construct
        return [
            construct(
                session_id=session_id,
                seq=seq,
                turn_id=turn_id,
                kind=ItemKind(kind),
                message_id=message_id,
                data=data,
                user_visible=bool(user),
                agent_visible=bool(agent),
                created_at=created_at,
            )
            for seq, turn_id, kind, message_id, data, user, agent, created_at in rows
        ]

    # turns

    async def start_turn(self, turn: Turn, prompt: NewItem | None = None) -> None:
        """Record a turn, and with it the user's prompt, in one transaction: each write
        is a round trip to the database, and a turn should not pay for two."""
        values = statements.turn_values(turn)
        if prompt is None:
            await self._write(_run(statements.INSERT_TURN, values))
            return
        params = statements.item_params(turn.session_id, prompt, now_ms())

        async def work(conn: AsyncConnection) -> None:
            await self._bump(conn, params)
            await conn.execute(statements.INSERT_TURN, values)
            await conn.execute(statements.APPEND_ITEM, params)

        await self._write(work, duplicates=True)

    async def finish_turn(
        self, turn: Turn, context_tokens: int | None = None, *, last: NewItem | None = None
    ) -> None:
        """Record how the turn ended (``finished_at`` defaults to now), in one
        transaction with the turn's ``last`` item, if it has one still to store. With
        ``context_tokens``, the turn's usage is added to the session's counters (SQL
        increments, so concurrent turns lose nothing)."""
        now = now_ms()
        after = None
        if context_tokens is not None or last is not None:
            usage = turn.usage if context_tokens is not None else Usage()
            after = statements.session_after_turn_params(
                turn.session_id, usage, context_tokens, int(last is not None), now
            )
        params = None if last is None else statements.item_params(turn.session_id, last, now)
        finish = statements.finish_params(turn, turn.finished_at or now)

        async def work(conn: AsyncConnection) -> None:
            # The session row first, as every append locks it: one lock order.
            if after is not None:
                if (await conn.execute(statements.SESSION_AFTER_TURN, after)).rowcount == 0:
                    raise SessionNotFoundError(turn.session_id)
            if params is not None:
                await conn.execute(statements.APPEND_ITEM, params)
            await conn.execute(statements.FINISH_TURN, finish)

        await self._write(work, duplicates=last is not None)

    async def list_turns(self, session_id: str) -> list[Turn]:
        query = select(T).where(T.c.session_id == session_id).order_by(T.c.started_at, T.c.id)
        async with self._read() as conn:
            return [_turn(row) for row in (await conn.execute(query)).all()]

    async def repair_session(self, session_id: str) -> int:
        """Crash repair on load: running turns become interrupted and unfinished tool
        calls fail, so a resumed session never carries a dangling call. Idempotent;
        returns how many turns and items it changed."""
        now = now_ms()

        async def work(conn: AsyncConnection) -> int:
            turns = await conn.execute(
                update(T)
                .where(T.c.session_id == session_id, T.c.status == TurnStatus.RUNNING.value)
                .values(status=TurnStatus.INTERRUPTED.value, finished_at=now)
            )
            calls = await conn.execute(
                select(I.c.seq, I.c.data).where(
                    I.c.session_id == session_id, I.c.kind == ItemKind.TOOL_CALL.value
                )
            )
            fixes = [
                {"b_seq": seq, "b_data": _interrupted(data)}
                for seq, data in calls.all()
                if data.get("status") not in TOOL_FINAL_STATUSES
            ]
            if fixes:
                await conn.execute(
                    update(I)
                    .where(I.c.session_id == session_id, I.c.seq == bindparam("b_seq"))
                    .values(data=bindparam("b_data", type_=I.c.data.type)),
                    fixes,
                )
            return turns.rowcount + len(fixes)

        return await self._write(work)

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
        await self._write(_run(_upsert(self.engine.dialect.name, X, row, ("session_id", "key"))))

    async def delete_extension_state(self, session_id: str, key: str) -> bool:
        stmt = delete(X).where(X.c.session_id == session_id, X.c.key == key)
        return await self._write(_run(stmt)) > 0

    # feedback

    async def add_feedback(
        self,
        *,
        feedback_id: str,
        session_id: str,
        turn_id: str,
        rating: int,
        comment: str | None = None,
        created_at: int | None = None,
    ) -> None:
        """A rating (and optional comment) on one turn."""
        row = {
            "id": feedback_id,
            "session_id": session_id,
            "turn_id": turn_id,
            "rating": rating,
            "comment": comment,
            "created_at": created_at or now_ms(),
        }
        await self._write(_run(insert(F).values(row)))

    # retention

    async def delete_turns_before(self, cutoff_ms: int, *, batch_size: int = 500) -> int:
        """Delete turns started before ``cutoff_ms`` with their items and feedback, one
        transaction per batch, keeping ``message_count`` right. Returns turns deleted."""

        async def batch(conn: AsyncConnection) -> tuple[int, int]:
            ids = await _oldest(conn, T, T.c.started_at, cutoff_ms, batch_size)
            if not ids:
                return 0, 0
            in_batch = I.c.turn_id.in_(ids)
            lost = select(func.count()).where(I.c.session_id == S.c.id, in_batch)
            owners = select(T.c.session_id).where(T.c.id.in_(ids))
            await conn.execute(
                update(S)
                .where(S.c.id.in_(owners))
                .values(message_count=S.c.message_count - lost.scalar_subquery())
            )
            return len(ids), (await conn.execute(delete(T).where(T.c.id.in_(ids)))).rowcount

        deleted = 0
        while True:
            found, gone = await self._write(batch)
            deleted += gone
            if found < batch_size:
                if deleted:
                    await self._forget_deleted()
                return deleted

    async def delete_feedback_before(self, cutoff_ms: int, *, batch_size: int = 500) -> int:
        """Delete feedback older than ``cutoff_ms`` in batches; returns rows deleted."""

        async def batch(conn: AsyncConnection) -> tuple[int, int]:
            ids = await _oldest(conn, F, F.c.created_at, cutoff_ms, batch_size)
            if not ids:
                return 0, 0
            return len(ids), (await conn.execute(delete(F).where(F.c.id.in_(ids)))).rowcount

        deleted = 0
        while True:
            found, gone = await self._write(batch)
            deleted += gone
            if found < batch_size:
                if deleted:
                    await self._forget_deleted()
                return deleted

    # import and insights (``acp-server sessions import`` / ``insights``)

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

    async def insights(
        self,
        *,
        since_ms: int,
        utc_offset_ms: int = 0,
        top: int = 20,
        types: tuple[SessionType, ...] = LISTED_TYPES,
    ) -> dict[str, Any]:
        """Statistics, all computed by the database with GROUP BY (no item is read).

        ``totals``: sessions and messages of ``types``; tokens and cost of every session
        (a subagent's usage is spent too); turns. ``days``: turns started since
        ``since_ms`` by day (``day`` = days since the epoch, shifted by
        ``utc_offset_ms``), with active and new sessions of ``types``. ``models``: turns
        by provider and model. ``directories``: sessions of ``types`` by cwd. The last
        two keep the ``top`` largest.
        """
        listed = S.c.type.in_([t.value for t in types])
        day_ms = 86_400_000
        totals_query = select(
            func.count(case((listed, 1))),
            func.sum(case((listed, S.c.message_count), else_=0)),
            func.sum(S.c.input_tokens),
            func.sum(S.c.output_tokens),
            func.sum(S.c.cached_tokens),
            func.sum(S.c.cost),
        )
        turn_rows = (
            select(
                ((T.c.started_at + utc_offset_ms) // day_ms).label("day"),
                T.c.session_id,
                T.c.provider,
                T.c.model,
                T.c.input_tokens,
                T.c.output_tokens,
                T.c.cost,
                listed.label("listed"),
            )
            .join_from(T, S, S.c.id == T.c.session_id)
            .subquery()
        )
        r = turn_rows.c
        turn_sums = (
            func.count(),
            func.count(case((r.listed, r.session_id)).distinct()),
            func.sum(r.input_tokens),
            func.sum(r.output_tokens),
            func.sum(r.cost),
        )
        since_day = (since_ms + utc_offset_ms) // day_ms
        days_query = (
            select(r.day, *turn_sums).where(r.day >= since_day).group_by(r.day).order_by(r.day)
        )
        created = (
            select(((S.c.created_at + utc_offset_ms) // day_ms).label("day"))
            .where(listed, S.c.created_at >= since_ms)
            .subquery()
        )
        new_query = select(created.c.day, func.count()).group_by(created.c.day)
        models_query = (
            select(r.provider, r.model, *turn_sums)
            .group_by(r.provider, r.model)
            .order_by(func.count().desc(), r.provider, r.model)
            .limit(top)
        )
        directories_query = (
            select(
                func.min(S.c.cwd),
                func.count(),
                func.sum(S.c.message_count),
                func.sum(S.c.input_tokens),
                func.sum(S.c.output_tokens),
                func.sum(S.c.cost),
                func.max(S.c.updated_at),
            )
            .where(listed)
            .group_by(S.c.cwd_hash)
            .order_by(func.count().desc(), func.max(S.c.updated_at).desc())
            .limit(top)
        )

        def sums(values: Sequence[Any]) -> dict[str, Any]:
            turns, sessions, tokens_in, tokens_out, cost = values
            return {
                "turns": int(turns or 0),
                "sessions": int(sessions or 0),
                "input_tokens": int(tokens_in or 0),
                "output_tokens": int(tokens_out or 0),
                "cost": float(cost or 0),
            }

        async with self._read() as conn:
            totals = (await conn.execute(totals_query)).one()
            turn_count = await conn.scalar(select(func.count()).select_from(T))
            by_day = {int(row[0]): sums(row[1:]) for row in await conn.execute(days_query)}
            new = {int(day): int(n) for day, n in (await conn.execute(new_query)).all()}
            models = (await conn.execute(models_query)).all()
            directories = (await conn.execute(directories_query)).all()
        sessions, messages, tokens_in, tokens_out, cached, cost = totals
        idle = sums((0, 0, 0, 0, 0))
        return {
            "totals": {
                "sessions": int(sessions or 0),
                "messages": int(messages or 0),
                "turns": int(turn_count or 0),
                "input_tokens": int(tokens_in or 0),
                "output_tokens": int(tokens_out or 0),
                "cached_tokens": int(cached or 0),
                "cost": float(cost or 0),
            },
            "days": [
                {"day": day, "new_sessions": new.get(day, 0), **by_day.get(day, idle)}
                for day in sorted(by_day.keys() | new.keys())
            ],
            "models": [{"provider": row[0], "model": row[1], **sums(row[2:])} for row in models],
            "directories": [
                {
                    "cwd": row[0],
                    "sessions": int(row[1]),
                    "messages": int(row[2] or 0),
                    "input_tokens": int(row[3] or 0),
                    "output_tokens": int(row[4] or 0),
                    "cost": float(row[5] or 0),
                    "last_updated_at": int(row[6] or 0),
                }
                for row in directories
            ],
        }


class SessionUpdate:
    """Changes to one session, written by ``apply()`` as a single UPDATE.

    A field not named is left alone; naming it with None sets it to NULL.
    """

    def __init__(self, store: SessionStore, session_id: str) -> None:
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
        return await self._store._write(_run(stmt)) > 0


def _backoff(attempt: int) -> float:
    """Seconds before the next run: random ("full jitter"), so two transactions that
    deadlocked do not meet again at once, under a ceiling that doubles each time."""
    return random.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2**attempt))


def _run(statement: Any, params: Any = None) -> Work[int]:
    """A transaction of one statement; it returns the rows the statement changed."""

    async def work(conn: AsyncConnection) -> int:
        return (await conn.execute(statement, params)).rowcount

    return work


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


def _turn(row: Row[Any]) -> Turn:
    r = row._mapping
    return Turn(
        id=r["id"],
        session_id=r["session_id"],
        status=TurnStatus(r["status"]),
        stop_reason=r["stop_reason"],
        provider=r["provider"],
        model=r["model"],
        usage=Usage(
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            cached_read_tokens=r["cached_read_tokens"],
            cached_write_tokens=r["cached_write_tokens"],
            thought_tokens=r["thought_tokens"],
            cost=r["cost"],
            estimated=r["usage_estimated"],
        ),
        model_calls=r["model_calls"],
        error=r["error"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
    )


def _interrupted(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "status": "failed", "result": INTERRUPTED_RESULT, "isError": True}


def _forked(column: Any, new_id: str) -> Any:
    """The value a forked copy takes for ``column``: the new id, no turn, else as is."""
    if column.name == "session_id":
        return literal(new_id, tables.ID)
    if column.name == "turn_id":
        return null()
    return column


async def _oldest(
    conn: AsyncConnection, table: Any, when: Any, cutoff_ms: int, limit: int
) -> Sequence[str]:
    query = select(table.c.id).where(when < cutoff_ms).order_by(when).limit(limit)
    return (await conn.execute(query)).scalars().all()


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
