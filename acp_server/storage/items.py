"""Items and turns: the append-only conversation log, numbered by ``seq``, and the
prompt turns that write it, with their feedback.

Each append commits at once (a turn's last one with the turn's end), so a message that
has completed survives a crash.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from acp_server.sessions.model import (
    TOOL_FINAL_STATUSES,
    Item,
    ItemKind,
    NewItem,
    Turn,
    TurnStatus,
    Usage,
    now_ms,
)
from acp_server.storage import statements, tables
from acp_server.storage.sessions import SessionNotFoundError
from acp_server.storage.transactions import Transactions, one_statement

INTERRUPTED_RESULT = "interrupted: the server stopped before this tool finished"

T = tables.turns
I = tables.items  # noqa: E741
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


class ItemsAndTurns(Transactions):
    """A session's items, its turns, the crash repair of both, and feedback on turns."""

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
        await self._write(one_statement(stmt))

    async def hide_from_agent(self, session_id: str, *, through_seq: int) -> int:
        """Compaction: items up to ``through_seq`` leave the model's context, not the
        user's transcript. Returns how many items changed."""
        stmt = (
            update(I)
            .where(I.c.session_id == session_id, I.c.seq <= through_seq, I.c.agent_visible)
            .values(agent_visible=False)
        )
        return await self._write(one_statement(stmt))

    async def hide_turn_from_agent(self, session_id: str, turn_id: str) -> int:
        """A refused turn: its prompt and reply stay in the transcript and leave the
        model's context. Returns how many items changed."""
        stmt = (
            update(I)
            .where(I.c.session_id == session_id, I.c.turn_id == turn_id, I.c.agent_visible)
            .values(agent_visible=False)
        )
        return await self._write(one_statement(stmt))

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
            await self._write(one_statement(statements.INSERT_TURN, values))
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
        await self._write(one_statement(insert(F).values(row)))


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
