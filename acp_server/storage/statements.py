"""The statements every prompt turn runs, built once with bind parameters.

On SQLite, building a Core statement and computing its cache key cost more than
executing it; a prebuilt statement memoizes both, so a turn pays only for the
execution. Everything else in the store builds its statements where it runs them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from acp_server.sessions.model import NewItem, Turn, Usage
from acp_server.storage import tables

S = tables.sessions
T = tables.turns
I = tables.items  # noqa: E741

_TURN_STATE = (
    "status",
    "stop_reason",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cached_read_tokens",
    "cached_write_tokens",
    "thought_tokens",
    "cost",
    "usage_estimated",
    "model_calls",
    "error",
    "finished_at",
)

INSERT_TURN = insert(T)
"""Executed with ``turn_values(turn)``: every column given, so one compiled form."""

FINISH_TURN = (
    update(T)
    .where(T.c.id == bindparam("turn"))
    .values({name: bindparam(name) for name in _TURN_STATE})
)

BUMP_SESSION = (
    update(S)
    .where(S.c.id == bindparam("session"))
    .values(
        message_count=S.c.message_count + 1,
        updated_at=bindparam("now"),
        last_activity_at=bindparam("now"),
    )
)
"""One more item in the session; its row lock orders concurrent appenders, and a
rowcount of 0 means the session is gone."""

NEXT_SEQ = select(func.coalesce(func.max(I.c.seq), 0) + 1).where(
    I.c.session_id == bindparam("session")
)

_ITEM_VALUES = {
    "turn_id": bindparam("item_turn", type_=I.c.turn_id.type),
    "kind": bindparam("item_kind", type_=I.c.kind.type),
    "message_id": bindparam("item_message", type_=I.c.message_id.type),
    "data": bindparam("item_data", type_=I.c.data.type),
    "user_visible": bindparam("item_user", type_=I.c.user_visible.type),
    "agent_visible": bindparam("item_agent", type_=I.c.agent_visible.type),
    "created_at": bindparam("now", type_=I.c.created_at.type),
}

INSERT_ITEM = insert(I).values(
    session_id=bindparam("session"), seq=bindparam("seq"), **_ITEM_VALUES
)
"""An item at a ``seq`` already read with ``NEXT_SEQ``, for callers that need it."""

APPEND_ITEM = insert(I).from_select(
    ["session_id", "seq", *_ITEM_VALUES],
    select(
        bindparam("session", type_=I.c.session_id.type),
        func.coalesce(func.max(I.c.seq), 0) + 1,
        *_ITEM_VALUES.values(),
    ).where(I.c.session_id == bindparam("session")),
)
"""An item at the next ``seq``, numbered by the database in the same statement: one
round trip instead of two, for the appends whose ``seq`` nobody reads back."""

SESSION_AFTER_TURN = (
    update(S)
    .where(S.c.id == bindparam("session"))
    .values(
        input_tokens=S.c.input_tokens + bindparam("input_tokens"),
        output_tokens=S.c.output_tokens + bindparam("output_tokens"),
        cached_tokens=S.c.cached_tokens + bindparam("cached_tokens"),
        cost=S.c.cost + bindparam("cost"),
        context_tokens=func.coalesce(
            bindparam("context_tokens", type_=S.c.context_tokens.type), S.c.context_tokens
        ),
        message_count=S.c.message_count + bindparam("items"),
        updated_at=bindparam("now"),
        last_activity_at=bindparam("now"),
    )
)
"""A turn's usage added to the session (SQL increments), with its last item counted."""


def item_params(session_id: str, item: NewItem, now: int) -> dict[str, Any]:
    return {
        "session": session_id,
        "now": now,
        "item_turn": item.turn_id,
        "item_kind": item.kind.value,
        "item_message": item.message_id,
        "item_data": item.data,
        "item_user": item.user_visible,
        "item_agent": item.agent_visible,
    }


def turn_values(turn: Turn) -> dict[str, Any]:
    """A turn as a ``chat_tasks`` row."""
    usage = turn.usage
    return {
        "id": turn.id,
        "session_id": turn.session_id,
        "status": turn.status.value,
        "stop_reason": turn.stop_reason,
        "provider": turn.provider,
        "model": turn.model,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_read_tokens": usage.cached_read_tokens,
        "cached_write_tokens": usage.cached_write_tokens,
        "thought_tokens": usage.thought_tokens,
        "cost": usage.cost,
        "usage_estimated": usage.estimated,
        "model_calls": turn.model_calls,
        "error": turn.error,
        "started_at": turn.started_at,
        "finished_at": turn.finished_at,
    }


def finish_params(turn: Turn, finished_at: int) -> dict[str, Any]:
    values = turn_values(turn)
    params = {name: values[name] for name in _TURN_STATE}
    params["finished_at"] = finished_at
    params["turn"] = turn.id
    return params


def session_after_turn_params(
    session_id: str, usage: Usage, context_tokens: int | None, items: int, now: int
) -> dict[str, Any]:
    return {
        "session": session_id,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_read_tokens,
        "cost": usage.cost,
        "context_tokens": context_tokens,
        "items": items,
        "now": now,
    }
