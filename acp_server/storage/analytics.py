"""Insights for ``acp-server sessions insights``: statistics the database computes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, select

from acp_server.sessions.model import LISTED_TYPES, SessionType
from acp_server.storage import tables
from acp_server.storage.transactions import Transactions

S = tables.sessions
T = tables.turns


class Analytics(Transactions):
    """Aggregates over sessions and turns, for the CLI; nothing here reads an item."""

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
