"""SessionStore on every backend: SQLite file, memory, PostgreSQL and MariaDB."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import event, func, insert, select

from acp_server.errors import Unavailable
from acp_server.sessions.model import (
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
from acp_server.storage import tables
from acp_server.storage.engine import DatabaseConfigError, normalize_url, redact
from acp_server.storage.items import INTERRUPTED_RESULT
from acp_server.storage.sessions import ListKey, SessionNotFoundError, session_values
from acp_server.storage.store import SessionStore
from tests.backends import open_store

pytestmark = pytest.mark.anyio

ALL_TABLES = (
    tables.sessions,
    tables.turns,
    tables.items,
    tables.extension_state,
    tables.feedback,
)


@pytest.fixture
async def store(db_url: str, anyio_backend: str) -> AsyncIterator[SessionStore]:
    opened = await open_store(db_url)
    yield opened
    await opened.close()


def session(sid: str, cwd: str = "/work/project", **fields: Any) -> SessionRecord:
    return SessionRecord(id=sid, cwd=cwd, **fields)


def message(text_: str, **fields: Any) -> NewItem:
    return NewItem(kind=ItemKind.AGENT, message_id=f"m-{text_}", data={"text": text_}, **fields)


def tool_call(call_id: str, status: str | None, **fields: Any) -> NewItem:
    data: dict[str, Any] = {"toolCallId": call_id, "name": "read_file", "rawInput": {"p": 1}}
    if status is not None:
        data["status"] = status
    return NewItem(kind=ItemKind.TOOL_CALL, message_id=f"m-{call_id}", data=data, **fields)


async def count_rows(store: SessionStore, table: Any, *where: Any) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)


@contextmanager
def statements(store: SessionStore) -> Iterator[list[str]]:
    """Every SQL statement the store sends while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement.strip().split()[0].upper())

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)


# opening


def test_normalize_url_maps_sync_schemes_to_async_drivers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cases = {
        "sqlite:///rel/x.db": f"sqlite+aiosqlite:///{tmp_path}/rel/x.db",
        "sqlite:////abs/x.db": "sqlite+aiosqlite:////abs/x.db",
        "sqlite+aiosqlite:////abs/x.db": "sqlite+aiosqlite:////abs/x.db",
        "sqlite://": "sqlite+aiosqlite://",
        ":memory:": "sqlite+aiosqlite://",
        "postgresql://u:p@h/db": "postgresql+asyncpg://u:p@h/db",
        "postgres://u@h:5433/db": "postgresql+asyncpg://u@h:5433/db",
        "postgresql+psycopg2://u@h/db?sslmode=require": "postgresql+asyncpg://u@h/db?ssl=require",
        "postgresql+psycopg://u@h/db": "postgresql+asyncpg://u@h/db",
        "mysql://u:p@h/db": "mysql+aiomysql://u:p@h/db?charset=utf8mb4",
        "mysql+pymysql://u@h/db": "mysql+aiomysql://u@h/db?charset=utf8mb4",
        "mysql+mysqldb://u@h/db": "mysql+aiomysql://u@h/db?charset=utf8mb4",
        "mariadb://u@h/db": "mysql+aiomysql://u@h/db?charset=utf8mb4",
        "mariadb+pymysql://u@h/db?charset=utf8": "mysql+aiomysql://u@h/db?charset=utf8",
    }
    for given, wanted in cases.items():
        assert normalize_url(given).render_as_string(hide_password=False) == wanted, given


@pytest.mark.parametrize("bad", ["oracle://u@h/db", "http://x", "not a url", "", "/tmp/x.db"])
def test_normalize_url_rejects_the_rest_in_one_line(bad: str) -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        normalize_url(bad)
    message = str(caught.value)
    assert "\n" not in message and "sqlite:///" in message and "postgresql://" in message


def test_redact_hides_passwords() -> None:
    assert "s3cret" not in redact("postgresql://u:s3cret@h/db")
    assert "s3cret" not in redact(normalize_url("mysql://u:s3cret@h/db"))
    assert "s3cret" not in redact("garbage://u:s3cret@h:x:y/db")


async def test_open_needs_a_url_or_memory(anyio_backend: str) -> None:
    with pytest.raises(DatabaseConfigError, match="no database URL"):
        await SessionStore.open(None)


@pytest.mark.postgres
async def test_unreachable_postgres_is_one_plain_line(anyio_backend: str) -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        await SessionStore.open("postgresql://u:s3cret@127.0.0.1:5433/x")
    message = str(caught.value)
    assert message.startswith("cannot reach PostgreSQL at 127.0.0.1:5433 (connection refused)")
    assert "ACP_SERVER_DATABASE_URL" in message
    assert "\n" not in message and "s3cret" not in message


@pytest.mark.postgres
async def test_missing_postgres_database_is_named(anyio_backend: str) -> None:
    with pytest.raises(DatabaseConfigError, match="has no database 'no_such_db_acp'"):
        await SessionStore.open("postgresql://postgres@127.0.0.1:5432/no_such_db_acp")


@pytest.mark.mariadb
async def test_bad_mariadb_login_is_named(anyio_backend: str) -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        await SessionStore.open("mysql://nobody_acp:s3cret@127.0.0.1:3306/x")
    message = str(caught.value)
    assert "refused user 'nobody_acp'" in message and "s3cret" not in message


async def test_sqlite_path_that_cannot_exist(tmp_path: Path, anyio_backend: str) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(DatabaseConfigError, match="cannot create directory"):
        await SessionStore.open(f"sqlite:///{tmp_path}/file/sub/x.db")
    (tmp_path / "junk.db").write_text("this is not sqlite" * 100)
    with pytest.raises(DatabaseConfigError, match="is not a SQLite database"):
        await SessionStore.open(f"sqlite:///{tmp_path}/junk.db")


async def test_memory_mode_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    monkeypatch.chdir(tmp_path)
    async with await SessionStore.open(None, memory=True) as store:
        assert store.backend == "memory"
        await store.create_session(session("s"))
        await store.append_item("s", message("hello"))
        assert [i.data["text"] for i in await store.load_items("s")] == ["hello"]
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []


async def test_backend_and_redacted_url(store: SessionStore, db_url: str) -> None:
    assert store.backend in ("sqlite", "memory", "postgresql", "mysql")
    assert "aiosqlite" in store.url_redacted or db_url.split(":")[0] in store.url_redacted
    await store.ping()


# sessions


async def test_create_and_get_round_trip(store: SessionStore) -> None:
    record = session(
        "s1",
        cwd="/home/ünï/プロジェクト",
        additional_directories=["/a", "/b"],
        title="Fix the ✓ bug",
        title_set_by_user=True,
        provider="openai",
        model="gpt-x",
        mode="ask",
        config={"effort": "high", "nested": {"n": [1, 2.5, None, True]}},
        mcp_servers=[{"name": "fs", "command": "mcp-fs", "args": ["--root", "/"]}],
        permission_rules={"write_file": "allow"},
        context_tokens=3_000_000_000,
        input_tokens=5_000_000_000,
        output_tokens=7,
        cached_tokens=9,
        cost=1.25,
        message_count=0,
        created_at=1_700_000_000_123,
        updated_at=1_700_000_000_456,
        last_activity_at=1_700_000_000_789,
    )
    await store.create_session(record)
    assert await store.get_session("s1") == record
    assert await store.get_session("missing") is None


async def test_update_changes_only_named_fields_in_one_statement(store: SessionStore) -> None:
    before = session("s", provider="anthropic", model="m1", mode="ask", config={"a": 1})
    await store.create_session(before)
    with statements(store) as sent:
        assert await store.update("s").model(None).mode("code").config({"b": 2}).apply()
    assert sent == ["UPDATE"]
    after = await store.get_session("s")
    assert after is not None
    assert (after.model, after.mode, after.config) == (None, "code", {"b": 2})
    assert after.provider == "anthropic"
    assert after.updated_at >= before.updated_at
    unchanged = after.model_dump(exclude={"model", "mode", "config", "updated_at"})
    assert unchanged == before.model_dump(exclude={"model", "mode", "config", "updated_at"})


async def test_update_every_setter(store: SessionStore) -> None:
    await store.create_session(session("s", created_at=1, updated_at=1, last_activity_at=1))
    applied = await (
        store.update("s")
        .provider("p")
        .model("m")
        .mode("x")
        .cwd("/elsewhere")
        .config({"k": "v"})
        .mcp_servers([{"name": "n"}])
        .additional_directories(["/d"])
        .permission_rules({"t": "reject"})
        .last_activity(42)
        .touch(False)
        .apply()
    )
    assert applied
    got = await store.get_session("s")
    assert got is not None
    assert (got.provider, got.model, got.mode, got.cwd) == ("p", "m", "x", "/elsewhere")
    assert got.config == {"k": "v"} and got.mcp_servers == [{"name": "n"}]
    assert got.additional_directories == ["/d"] and got.permission_rules == {"t": "reject"}
    assert (got.last_activity_at, got.updated_at) == (42, 1)
    assert [s.id for s in (await store.list_sessions(cwd="/elsewhere"))[0]] == ["s"]


async def test_update_reports_whether_the_session_exists(store: SessionStore) -> None:
    assert not await store.update("nope").model("m").apply()
    assert not await store.update("nope").touch(False).apply()
    await store.create_session(session("s", model="m"))
    assert await store.update("s").model("m").touch(False).apply()  # no change, still found
    assert await store.update("s").touch(False).apply()


async def test_automatic_title_never_replaces_the_users(store: SessionStore) -> None:
    await store.create_session(session("s"))
    await store.update("s").title("Auto one").apply()
    assert (await _get(store, "s")).title == "Auto one"
    await store.update("s").title("Mine", by_user=True).apply()
    await store.update("s").title("Auto two").apply()
    got = await _get(store, "s")
    assert (got.title, got.title_set_by_user) == ("Mine", True)
    await store.update("s").title(None, by_user=True).apply()
    await store.update("s").title("Auto three").apply()
    got = await _get(store, "s")
    assert (got.title, got.title_set_by_user) == ("Auto three", False)


async def _get(store: SessionStore, sid: str) -> SessionRecord:
    got = await store.get_session(sid)
    assert got is not None
    return got


async def test_concurrent_usage_increments_lose_nothing(store: SessionStore) -> None:
    await store.create_session(session("s"))
    usage = Usage(input_tokens=3, output_tokens=5, cached_read_tokens=7, cost=0.5)

    async def worker(n: int) -> None:
        for k in range(5):
            turn = Turn(id=f"t{n}-{k}", session_id="s", usage=usage)
            await store.start_turn(turn)
            await store.finish_turn(turn, context_tokens=1000 + n)

    async with anyio.create_task_group() as tg:
        for n in range(40):
            tg.start_soon(worker, n)
    got = await _get(store, "s")
    assert (got.input_tokens, got.output_tokens, got.cached_tokens) == (600, 1000, 1400)
    assert got.cost == pytest.approx(100.0)
    assert 1000 <= got.context_tokens < 1040


# items


async def test_append_numbers_items_and_keeps_the_session_current(store: SessionStore) -> None:
    await store.create_session(session("s", updated_at=1, last_activity_at=1))
    appended = [await store.append_item("s", message(str(n))) for n in range(5)]
    assert [i.seq for i in appended] == [1, 2, 3, 4, 5]
    assert all(i.session_id == "s" and i.created_at > 1 for i in appended)
    assert await store.load_items("s") == appended
    got = await _get(store, "s")
    assert got.message_count == 5
    assert got.updated_at == got.last_activity_at == appended[-1].created_at
    with pytest.raises(SessionNotFoundError):
        await store.append_item("missing", message("x"))


async def test_concurrent_appends_from_two_engines(
    persistent_db_url: str, anyio_backend: str
) -> None:
    first = await open_store(persistent_db_url)
    second = await open_store(persistent_db_url)
    try:
        await first.create_session(session("s"))

        async def writer(store: SessionStore, name: str) -> None:
            for n in range(15):
                await store.append_item("s", message(f"{name}-{n}"))

        async with anyio.create_task_group() as tg:
            for store, name in ((first, "a"), (second, "b")):
                for k in range(3):
                    tg.start_soon(writer, store, f"{name}{k}")
        loaded = await second.load_items("s")
        assert [i.seq for i in loaded] == list(range(1, 91))
        assert len({i.message_id for i in loaded}) == 90
        assert (await _get(first, "s")).message_count == 90
    finally:
        await first.close()
        await second.close()


async def test_a_write_once_started_survives_cancellation(store: SessionStore) -> None:
    await store.create_session(session("s"))
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.append_item("s", message("kept"))
    items = await store.load_items("s")
    assert (await _get(store, "s")).message_count == len(items)
    if store.backend != "memory":  # memory mode may stop at its lock, before writing
        assert [i.data["text"] for i in items] == ["kept"]
    await store.append_item("s", message("after"))


async def test_load_filters_by_visibility(store: SessionStore) -> None:
    await store.create_session(session("s"))
    await store.append_item("s", message("both"))
    await store.append_item("s", message("user-only", agent_visible=False))
    await store.append_item("s", message("model-only", user_visible=False))

    async def texts(**flags: bool) -> list[str]:
        return [i.data["text"] for i in await store.load_items("s", **flags)]

    assert await texts() == ["both", "user-only", "model-only"]
    assert await texts(user_visible=True) == ["both", "user-only"]
    assert await texts(agent_visible=True) == ["both", "model-only"]
    assert await texts(user_visible=False) == ["model-only"]
    assert await texts(user_visible=True, agent_visible=True) == ["both"]


async def test_update_item_and_hide_from_agent(store: SessionStore) -> None:
    await store.create_session(session("s"))
    call = await store.append_item("s", tool_call("c1", "pending"))
    for n in range(3):
        await store.append_item("s", message(str(n)))
    await store.update_item("s", call.seq, {**call.data, "status": "completed"})
    assert (await store.load_items("s"))[0].data["status"] == "completed"
    assert await store.hide_from_agent("s", through_seq=2) == 2
    assert await store.hide_from_agent("s", through_seq=2) == 0
    assert [i.seq for i in await store.load_items("s", agent_visible=True)] == [3, 4]
    assert len(await store.load_items("s", user_visible=True)) == 4


async def test_ten_thousand_items_load_quickly(store: SessionStore) -> None:
    await store.create_session(session("s"))
    rows = [
        {
            "session_id": "s",
            "seq": n,
            "turn_id": None,
            "kind": "agent",
            "message_id": f"m{n}",
            "data": {"text": f"message {n} " * 10},
            "user_visible": True,
            "agent_visible": n % 2 == 0,
            "created_at": n,
        }
        for n in range(1, 10_001)
    ]
    async with store.engine.begin() as conn:
        await conn.execute(insert(tables.items), rows)
    started = time.process_time()  # CPU time: other processes on the machine cannot add to it
    loaded = await store.load_items("s")
    elapsed = time.process_time() - started
    assert len(loaded) == 10_000 and loaded[-1].seq == 10_000
    assert isinstance(loaded[0], Item) and loaded[0].kind is ItemKind.AGENT
    assert elapsed < 2.0, f"loading 10,000 items took {elapsed:.2f} s of CPU"


# turns


async def test_turns_start_finish_list(store: SessionStore) -> None:
    await store.create_session(session("s"))
    first = Turn(id="t1", session_id="s", provider="p", model="m", started_at=100)
    second = Turn(id="t2", session_id="s", started_at=200)
    await store.start_turn(second)
    await store.start_turn(first)
    usage = Usage(
        input_tokens=10,
        output_tokens=20,
        cached_read_tokens=3,
        cached_write_tokens=4,
        thought_tokens=5,
        cost=0.01,
        estimated=True,
    )
    done = first.model_copy(
        update={
            "status": TurnStatus.COMPLETED,
            "stop_reason": "end_turn",
            "usage": usage,
            "model_calls": 2,
            "finished_at": 150,
        }
    )
    await store.finish_turn(done)
    failed = second.model_copy(update={"status": TurnStatus.FAILED, "error": "boom"})
    await store.finish_turn(failed)
    listed = await store.list_turns("s")
    assert listed[0] == done
    assert listed[1].status is TurnStatus.FAILED and listed[1].error == "boom"
    assert listed[1].finished_at is not None and listed[1].finished_at >= 200
    assert await store.list_turns("other") == []


async def test_repair_interrupts_running_turns_and_dangling_calls(store: SessionStore) -> None:
    await store.create_session(session("s"))
    await store.start_turn(Turn(id="old", session_id="s", status=TurnStatus.COMPLETED))
    await store.start_turn(Turn(id="live", session_id="s"))
    await store.append_item("s", tool_call("done", "completed", turn_id="old"))
    await store.append_item("s", tool_call("bad", "failed", turn_id="old"))
    await store.append_item("s", tool_call("pending", "pending", turn_id="live"))
    await store.append_item("s", tool_call("nostatus", None, turn_id="live"))
    await store.append_item("s", message("text", turn_id="live"))

    assert await store.repair_session("s") == 3
    assert await store.repair_session("s") == 0
    turns = {t.id: t for t in await store.list_turns("s")}
    assert turns["live"].status is TurnStatus.INTERRUPTED and turns["live"].finished_at
    assert turns["old"].status is TurnStatus.COMPLETED
    calls = {i.data.get("toolCallId"): i.data for i in await store.load_items("s")}
    for repaired in ("pending", "nostatus"):
        assert calls[repaired]["status"] == "failed"
        assert calls[repaired]["isError"] is True
        assert calls[repaired]["result"] == INTERRUPTED_RESULT
        assert calls[repaired]["rawInput"] == {"p": 1}
    assert calls["done"]["status"] == "completed" and "isError" not in calls["done"]
    assert calls["bad"]["status"] == "failed" and "result" not in calls["bad"]


# fork, extension state


async def test_fork_copies_items_and_state_but_not_turns(store: SessionStore) -> None:
    await store.create_session(session("src"))
    await store.start_turn(Turn(id="t", session_id="src"))
    for n in range(4):
        await store.append_item("src", message(str(n), turn_id="t", agent_visible=n > 0))
    await store.set_extension_state("src", "todo.v1", {"items": ["a"]})
    await store.fork_session("src", session("copy", parent_id="src"))

    source, copy = await store.load_items("src"), await store.load_items("copy")
    assert [i.seq for i in copy] == [i.seq for i in source]
    assert [i.data for i in copy] == [i.data for i in source]
    assert [i.agent_visible for i in copy] == [False, True, True, True]
    assert all(i.turn_id is None and i.session_id == "copy" for i in copy)
    assert all(i.turn_id == "t" for i in source)
    forked = await _get(store, "copy")
    assert forked.message_count == 4 and forked.parent_id == "src"
    assert await store.list_turns("copy") == []
    assert await store.get_extension_state("copy") == {"todo.v1": {"items": ["a"]}}
    assert (await store.append_item("copy", message("next"))).seq == 5
    assert len(await store.load_items("src")) == 4

    with pytest.raises(SessionNotFoundError):
        await store.fork_session("missing", session("orphan"))
    assert await store.get_session("orphan") is None


async def test_extension_state_upserts(store: SessionStore) -> None:
    await store.create_session(session("s"))
    await store.create_session(session("other"))
    assert await store.get_extension_state("s") == {}
    await store.set_extension_state("s", "todo.v1", {"items": [1]})
    await store.set_extension_state("s", "enabled.v1", ["fs", "git"])
    await store.set_extension_state("s", "todo.v1", {"items": [1, 2]})
    await store.set_extension_state("s", "note.v1", "plain")
    await store.set_extension_state("other", "todo.v1", 7)
    assert await store.get_extension_state("s") == {
        "todo.v1": {"items": [1, 2]},
        "enabled.v1": ["fs", "git"],
        "note.v1": "plain",
    }
    assert await store.delete_extension_state("s", "note.v1")
    assert not await store.delete_extension_state("s", "note.v1")
    assert await store.get_extension_state("other") == {"todo.v1": 7}


# deleting, retention


async def test_delete_cascades_to_everything_below(store: SessionStore) -> None:
    await store.create_session(session("keep"))
    await store.append_item("keep", message("kept"))
    await store.create_session(session("p"))
    await store.create_session(session("child", parent_id="p", type=SessionType.SUBAGENT))
    await store.create_session(session("grandchild", parent_id="child", type="subagent"))
    for sid in ("p", "child", "grandchild"):
        await store.start_turn(Turn(id=f"t-{sid}", session_id=sid))
        await store.append_item(sid, message(sid, turn_id=f"t-{sid}"))
        await store.set_extension_state(sid, "todo.v1", [])
        await store.add_feedback(
            feedback_id=f"f-{sid}", session_id=sid, turn_id=f"t-{sid}", rating=1
        )
    assert [c.id for c in await store.list_children("p")] == ["child"]

    assert await store.delete_session("p")
    assert not await store.delete_session("p")
    for table in ALL_TABLES:
        expected = 1 if table in (tables.sessions, tables.items) else 0
        assert await count_rows(store, table) == expected, table.name
    assert [i.data["text"] for i in await store.load_items("keep")] == ["kept"]


async def test_a_fork_outlives_its_parent(store: SessionStore) -> None:
    await store.create_session(session("p"))
    await store.append_item("p", message("hello"))
    await store.fork_session("p", session("fork", parent_id="p"))
    assert await store.delete_session("p")
    fork = await store.get_session("fork")
    assert fork is not None and fork.parent_id is None
    assert [i.data["text"] for i in await store.load_items("fork")] == ["hello"]


async def test_retention_deletes_old_turns_in_batches(store: SessionStore) -> None:
    now = now_ms()
    for sid in ("a", "b"):
        await store.create_session(session(sid))
    plan = {"a": {"a-old1": 1000, "a-old2": 2000, "a-new": now}, "b": {"b-old": 1500, "b-new": now}}
    for sid, turns in plan.items():
        for turn_id, started in turns.items():
            await store.start_turn(Turn(id=turn_id, session_id=sid, started_at=started))
            for n in range(3):
                await store.append_item(sid, message(f"{turn_id}-{n}", turn_id=turn_id))
            await store.add_feedback(
                feedback_id=f"f-{turn_id}", session_id=sid, turn_id=turn_id, rating=5
            )
    await store.append_item("a", message("no-turn"))

    with statements(store) as sent:
        assert await store.delete_turns_before(10_000, batch_size=2) == 3
    assert sent.count("DELETE") == 2
    assert await store.delete_turns_before(10_000, batch_size=2) == 0

    assert {t.id for t in await store.list_turns("a")} == {"a-new"}
    assert {t.id for t in await store.list_turns("b")} == {"b-new"}
    a_items = await store.load_items("a")
    assert [i.data["text"] for i in a_items] == ["a-new-0", "a-new-1", "a-new-2", "no-turn"]
    assert (await _get(store, "a")).message_count == 4
    assert (await _get(store, "b")).message_count == 3
    assert await count_rows(store, tables.feedback) == 2


async def test_turn_end_stores_the_last_item_with_the_usage(store: SessionStore) -> None:
    await store.create_session(session("s"))
    turn = Turn(id="t", session_id="s", usage=Usage(input_tokens=10, output_tokens=4))
    await store.start_turn(turn, message("question", turn_id="t"))
    turn.status, turn.stop_reason = TurnStatus.COMPLETED, "end_turn"
    await store.finish_turn(turn, context_tokens=14, last=message("answer", turn_id="t"))
    items = await store.load_items("s")
    assert [(i.seq, i.data["text"], i.turn_id) for i in items] == [
        (1, "question", "t"),
        (2, "answer", "t"),
    ]
    got = await _get(store, "s")
    assert (got.message_count, got.input_tokens, got.output_tokens, got.context_tokens) == (
        2,
        10,
        4,
        14,
    )
    [stored] = await store.list_turns("s")
    assert (stored.status, stored.stop_reason) == (TurnStatus.COMPLETED, "end_turn")
    with pytest.raises(SessionNotFoundError):
        await store.finish_turn(
            Turn(id="t2", session_id="gone"), context_tokens=1, last=message("x")
        )


async def test_a_failed_sqlite_write_leaves_the_store_writing(
    tmp_path: Path, anyio_backend: str
) -> None:
    """SQLite keeps one writer connection; a write that fails in the driver must not
    wedge it, and must leave nothing half-written."""
    async with await open_store(f"sqlite:///{tmp_path}/w.db") as store:
        await store.create_session(session("s"))
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE TRIGGER boom BEFORE INSERT ON chat_tasks WHEN NEW.provider = 'boom' "
                "BEGIN SELECT zeroblob(2000000000); END"
            )
        with pytest.raises(Unavailable, match="too big"):
            await store.start_turn(Turn(id="bad", session_id="s", provider="boom"), message("x"))
        await store.start_turn(Turn(id="good", session_id="s", provider="p"), message("y"))
        assert [t.id for t in await store.list_turns("s")] == ["good"]
        assert [i.data["text"] for i in await store.load_items("s")] == ["y"]
        assert (await _get(store, "s")).message_count == 1


async def test_retention_deletes_old_feedback_in_batches(store: SessionStore) -> None:
    await store.create_session(session("s"))
    await store.start_turn(Turn(id="t", session_id="s"))
    for n in range(7):
        await store.add_feedback(
            feedback_id=f"old{n}", session_id="s", turn_id="t", rating=n, created_at=100 + n
        )
    await store.add_feedback(feedback_id="new", session_id="s", turn_id="t", rating=1)
    with statements(store) as sent:
        assert await store.delete_feedback_before(10_000, batch_size=3) == 7
    assert sent.count("DELETE") == 3
    assert await count_rows(store, tables.feedback) == 1
    assert len(await store.list_turns("s")) == 1


# listing


async def test_list_pages_are_complete_disjoint_and_filtered(store: SessionStore) -> None:
    cwds = ["/work/a", "/work/b", "/work/ü c", "/work/b/sub"]
    records = []
    for n in range(2100):
        records.append(
            session(f"u{n:05d}", cwd=cwds[n % 4], updated_at=1_000_000 + n // 7, created_at=1)
        )
    for n in range(120):
        kind = SessionType.SUBAGENT if n % 2 else SessionType.HIDDEN
        records.append(session(f"x{n:04d}", cwd=cwds[n % 4], type=kind, updated_at=2_000_000))
    records += [session(f"e{n:03d}", cwd="/exact", updated_at=5) for n in range(100)]
    async with store.engine.begin() as conn:
        await conn.execute(insert(tables.sessions), [session_values(r) for r in records])

    def expected(cwd: str | None, types: tuple[SessionType, ...]) -> list[str]:
        chosen = [r for r in records if r.type in types and cwd in (None, r.cwd)]
        chosen.sort(key=lambda r: (r.updated_at, r.id), reverse=True)
        return [r.id for r in chosen]

    async def all_pages(limit: int, **filters: Any) -> list[str]:
        seen: list[str] = []
        key: ListKey | None = None
        while True:
            page, key = await store.list_sessions(after=key, limit=limit, **filters)
            assert len(page) == limit or key is None
            seen += [r.id for r in page]
            if key is None:
                return seen

    everything = await all_pages(97)
    assert everything == expected(None, (SessionType.USER,))
    assert len(everything) == len(set(everything)) == 2200
    for cwd in cwds:
        assert await all_pages(50, cwd=cwd) == expected(cwd, (SessionType.USER,))
        assert await store.count_sessions(cwd=cwd) == 525
    both = (SessionType.USER, SessionType.SUBAGENT)
    assert await all_pages(200, cwd="/work/b", types=both) == expected("/work/b", both)
    assert await store.count_sessions() == 2200
    assert await store.count_sessions(types=both) == 2260
    assert await store.count_sessions(types=()) == 0
    assert await store.list_sessions(types=()) == ([], None)

    page, key = await store.list_sessions(cwd="/exact", limit=50)
    assert len(page) == 50 and key == ListKey(5, "e050")
    page, key = await store.list_sessions(cwd="/exact", limit=50, after=key)
    assert len(page) == 50 and key is None
    assert await store.list_sessions(cwd="/nowhere") == ([], None)
    with pytest.raises(ValueError):
        await store.list_sessions(limit=0)


async def test_sqlite_listing_walks_an_index(tmp_path: Path, anyio_backend: str) -> None:
    async with await open_store(f"sqlite:///{tmp_path}/plan.db") as store:
        await store.create_session(session("s"))
        plans = await _listing_plans(store)
    assert "USING INDEX ix_sessions_type_updated_at_id" in plans["all"]
    assert "USING INDEX ix_sessions_cwd_hash_type_updated_at_id" in plans["cwd"]
    for plan in plans.values():
        assert "TEMP B-TREE" not in plan and "SCAN sessions" not in plan, plan


async def _listing_plans(store: SessionStore) -> dict[str, str]:
    """SQLite's plan for the store's own listing queries, with and without a cwd."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        sent.append((statement, params))

    plans = {}
    for name, cwd in {"all": None, "cwd": "/x"}.items():
        event.listen(store.engine.sync_engine, "before_cursor_execute", record)
        try:
            await store.list_sessions(cwd=cwd, after=ListKey(5, "z"))
        finally:
            event.remove(store.engine.sync_engine, "before_cursor_execute", record)
        statement, params = sent.pop()
        async with store.engine.connect() as conn:
            result = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
            plans[name] = " | ".join(str(row[-1]) for row in result)
    return plans
