"""Write transactions that a deadlock, lock timeout, serialization failure or busy
database rolled back run again, on real servers and real SQLite files."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from acp_server.sessions.model import ItemKind, NewItem, SessionRecord, Turn, TurnStatus, Usage
from acp_server.storage import tables
from acp_server.storage.store import SessionStore
from tests.backends import (
    SERVER_BACKENDS,
    backend_params,
    database_url,
    open_store,
    sqlite_url,
)

pytestmark = pytest.mark.anyio

S = tables.sessions


@pytest.fixture(params=backend_params(SERVER_BACKENDS))
def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def store(server_url: str, anyio_backend: str) -> AsyncIterator[SessionStore]:
    opened = await open_store(server_url)
    yield opened
    await opened.close()


async def test_a_busy_sqlite_database_is_run_again(tmp_path: Path, anyio_backend: str) -> None:
    """Another process holds the write lock; the first run gives up at once (instead of
    after the 30 s busy timeout) with SQLITE_BUSY, the second finds the lock free."""
    store = await open_store(sqlite_url(tmp_path))
    holder = sqlite3.connect(tmp_path / "sessions.db", isolation_level=None)
    runs = 0

    async def work(conn: AsyncConnection) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            await conn.exec_driver_sql("PRAGMA busy_timeout=0")
        else:
            holder.execute("ROLLBACK")
            await conn.exec_driver_sql("PRAGMA busy_timeout=30000")
        await conn.execute(update(S).where(S.c.id == "s").values(title="written"))

    try:
        await store.create_session(SessionRecord(id="s", cwd="/w"))
        holder.execute("BEGIN IMMEDIATE")
        await store._write(work)
        assert (runs, store.retries) == (2, 1)
        record = await store.get_session("s")
        assert record is not None and record.title == "written"
    finally:
        holder.close()
        await store.close()


async def test_a_deadlock_is_run_again_and_both_writes_land(store: SessionStore) -> None:
    """Two transactions lock two session rows in opposite orders: the database kills
    one (MariaDB 1213, PostgreSQL 40P01); it runs again once the other commits."""
    for sid in ("a", "b"):
        await store.create_session(SessionRecord(id=sid, cwd="/w"))
    holds = {"a": anyio.Event(), "b": anyio.Event()}
    runs = {"a": 0, "b": 0}

    def crossing(first: str, second: str) -> Any:
        async def work(conn: AsyncConnection) -> None:
            runs[first] += 1
            await conn.execute(update(S).where(S.c.id == first).values(title=f"by {first}"))
            holds[first].set()
            await holds[second].wait()
            await conn.execute(update(S).where(S.c.id == second).values(title=f"by {first}"))

        return work

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(store._write, crossing("a", "b"))
            tg.start_soon(store._write, crossing("b", "a"))
    assert sorted(runs.values()) == [1, 2]
    assert store.retries == 1
    again = "a" if runs["a"] == 2 else "b"
    for sid in ("a", "b"):
        record = await store.get_session(sid)
        assert record is not None and record.title == f"by {again}"


async def test_a_failure_that_is_not_transient_is_not_run_again(store: SessionStore) -> None:
    runs = 0

    async def work(conn: AsyncConnection) -> None:
        nonlocal runs
        runs += 1
        await conn.exec_driver_sql("SELECT * FROM no_such_table")

    with pytest.raises(Exception, match="not answering"):
        await store._write(work)
    assert runs == 1 and store.retries == 0


async def test_concurrent_prompts_on_many_sessions_all_succeed(server_url: str) -> None:
    """Turns as the server writes them (prompt, tool call and its update, answer,
    usage), many sessions at once, from two processes' worth of stores. On MariaDB the
    first items of neighbouring new sessions deadlock on the gap between them."""
    sessions, turns_each = 16, 6
    stores = [await open_store(server_url), await open_store(server_url)]
    try:
        ids = [f"s{n:02}" for n in range(sessions)]
        for sid in ids:
            await stores[0].create_session(SessionRecord(id=sid, cwd="/w"))

        async def converse(store: SessionStore, sid: str) -> None:
            for k in range(turns_each):
                await one_turn(store, sid, k)

        with anyio.fail_after(240):
            async with anyio.create_task_group() as tg:
                for n, sid in enumerate(ids):
                    tg.start_soon(converse, stores[n % 2], sid)
        for sid in ids:
            items = await stores[1].load_items(sid)
            assert [i.seq for i in items] == list(range(1, 4 * turns_each + 1))
            record = await stores[1].get_session(sid)
            assert record is not None and record.message_count == 4 * turns_each
            assert record.input_tokens == 10 * turns_each
            turns = await stores[1].list_turns(sid)
            assert [t.status for t in turns] == [TurnStatus.COMPLETED] * turns_each
    finally:
        for store in stores:
            await store.close()


async def one_turn(store: SessionStore, sid: str, k: int) -> None:
    turn = Turn(id=f"{sid}-t{k}", session_id=sid, provider="openai", model="m")
    prompt = NewItem(
        kind=ItemKind.USER,
        message_id=f"{sid}-u{k}",
        data={"content": [{"type": "text", "text": f"prompt {k}"}]},
    )
    await store.start_turn(turn, prompt)
    call = {"toolCallId": f"c{k}", "name": "read_file", "status": "pending"}
    item = await store.append_item(
        sid, NewItem(kind=ItemKind.TOOL_CALL, message_id=f"{sid}-c{k}", data=call, turn_id=turn.id)
    )
    await store.update_item(sid, item.seq, {**call, "status": "completed", "result": "ok"})
    await store.append_item(
        sid, NewItem(kind=ItemKind.THOUGHT, message_id=f"{sid}-h{k}", data={"text": "hm"})
    )
    turn.status, turn.stop_reason = TurnStatus.COMPLETED, "end_turn"
    turn.usage = Usage(input_tokens=10, output_tokens=2)
    answer = NewItem(kind=ItemKind.AGENT, message_id=f"{sid}-a{k}", data={"text": "done"})
    await store.finish_turn(turn, 10, last=answer)
