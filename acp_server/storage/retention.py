"""Retention deletes: old turns (with their items) and old feedback, in small batches,
one transaction each, so a cleanup never holds long locks on a shared database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from acp_server.storage import tables
from acp_server.storage.transactions import Transactions

S = tables.sessions
T = tables.turns
I = tables.items  # noqa: E741
F = tables.feedback


class Retention(Transactions):
    """What ``acp_server.retention`` deletes, in batches."""

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


async def _oldest(
    conn: AsyncConnection, table: Any, when: Any, cutoff_ms: int, limit: int
) -> Sequence[str]:
    query = select(table.c.id).where(when < cutoff_ms).order_by(when).limit(limit)
    return (await conn.execute(query)).scalars().all()
