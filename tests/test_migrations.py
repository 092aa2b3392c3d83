"""Migrations on real backends: head, fast path, schema parity, races, downgrade."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.lowlevel
import anyio.to_thread
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from acp_server.storage import tables
from acp_server.storage.engine import create_engine, normalize_url
from acp_server.storage.migrate import (
    HEAD_REVISION,
    MigrationError,
    alembic_config,
    current,
    downgrade,
    migrations_dir,
    upgrade,
)
from acp_server.storage.store import SessionStore

REPO = Path(__file__).resolve().parents[1]
SCHEMA_TABLES = {t.name for t in tables.metadata.sorted_tables}

OPEN_AND_REPORT_ALEMBIC = """
import asyncio, sys
from acp_server.storage.store import SessionStore

async def main(url):
    store = await SessionStore.open(url)
    await store.close()
    print(sorted(m for m in sys.modules if m.split(".")[0] == "alembic"))

asyncio.run(main(sys.argv[1]))
"""

UPGRADE_ON_GO = """
import asyncio, sys
from acp_server.storage.engine import create_engine, normalize_url
from acp_server.storage.migrate import current, upgrade

async def main(url):
    engine = create_engine(normalize_url(url))
    print("ready", flush=True)
    sys.stdin.readline()
    await upgrade(engine)
    print(await current(engine), flush=True)
    await engine.dispose()

asyncio.run(main(sys.argv[1]))
"""


@pytest.fixture
async def engine(persistent_db_url: str, anyio_backend: str) -> AsyncIterator[AsyncEngine]:
    made = create_engine(normalize_url(persistent_db_url))
    yield made
    await made.dispose()


def python(code: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, text=True, **popen
    )


def run_python(code: str, *args: str) -> str:
    proc = python(code, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


def test_head_revision_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [HEAD_REVISION]
    assert migrations_dir() == REPO / "migrations"


@pytest.mark.anyio
async def test_fresh_upgrade_and_current(engine: AsyncEngine) -> None:
    assert await current(engine) is None
    await upgrade(engine)
    assert await current(engine) == HEAD_REVISION
    assert SCHEMA_TABLES <= await table_names(engine)
    await upgrade(engine)
    assert await current(engine) == HEAD_REVISION


@pytest.mark.anyio
async def test_migrated_schema_equals_the_metadata(engine: AsyncEngine) -> None:
    await upgrade(engine)

    def differences(conn: Connection) -> list[Any]:
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, tables.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(differences) == []


@pytest.mark.anyio
async def test_foreign_keys_cascade_in_the_migrated_schema(engine: AsyncEngine) -> None:
    await upgrade(engine)

    def foreign_keys(conn: Connection) -> set[tuple[str, str, str | None]]:
        found = set()
        inspector = inspect(conn)
        for table in SCHEMA_TABLES:
            for fk in inspector.get_foreign_keys(table):
                ondelete = (fk.get("options") or {}).get("ondelete")
                found.add((table, fk["referred_table"], ondelete and ondelete.upper()))
        return found

    async with engine.connect() as conn:
        assert await conn.run_sync(foreign_keys) == {
            ("sessions", "sessions", "SET NULL"),
            ("chat_tasks", "sessions", "CASCADE"),
            ("session_items", "sessions", "CASCADE"),
            ("session_items", "chat_tasks", "CASCADE"),
            ("session_extension_state", "sessions", "CASCADE"),
            ("feedback", "sessions", "CASCADE"),
            ("feedback", "chat_tasks", "CASCADE"),
        }


@pytest.mark.anyio
async def test_downgrade_to_base_and_back(engine: AsyncEngine) -> None:
    await upgrade(engine)
    await downgrade(engine, "base")
    assert await current(engine) is None
    assert not SCHEMA_TABLES & await table_names(engine)
    await upgrade(engine)
    assert await current(engine) == HEAD_REVISION


@pytest.mark.anyio
async def test_a_newer_schema_is_refused(engine: AsyncEngine, persistent_db_url: str) -> None:
    await upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(MigrationError) as caught:
        await SessionStore.open(persistent_db_url)
    message = str(caught.value)
    assert "database schema 9999" in message
    assert message.endswith(f"is newer than this acp-server ({HEAD_REVISION}); upgrade acp-server")
    assert "\n" not in message


async def execute(engine: AsyncEngine, *statements: str) -> None:
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


@pytest.mark.anyio
async def test_tables_in_the_way_are_refused_by_name_before_anything_is_made(
    engine: AsyncEngine, persistent_db_url: str
) -> None:
    await execute(
        engine, "CREATE TABLE feedback (note VARCHAR(20))", "CREATE TABLE chat_tasks (n INTEGER)"
    )
    with pytest.raises(MigrationError) as caught:
        await SessionStore.open(persistent_db_url)
    assert await table_names(engine) == {"chat_tasks", "feedback"}
    message = str(caught.value)
    assert "already has tables named chat_tasks, feedback, names acp-server's schema" in message
    assert "reachable" not in message and "\n" not in message

    await execute(engine, "DROP TABLE feedback", "DROP TABLE chat_tasks")
    await upgrade(engine)  # nothing was left behind: the next start needs no cleanup
    assert await current(engine) == HEAD_REVISION


# A name in the way that only shows when the migration reaches it (SQLite and PostgreSQL
# share index names across tables, MySQL/MariaDB foreign key names), and its removal.
INDEX_IN_THE_WAY = (
    ["CREATE TABLE other (n INTEGER)", "CREATE INDEX ix_feedback_created_at ON other (n)"],
    ["DROP TABLE other"],
)
BLOCKERS = {
    "sqlite": INDEX_IN_THE_WAY,
    "postgresql": INDEX_IN_THE_WAY,
    "mysql": (
        [
            "CREATE TABLE other_parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE other (n INTEGER, CONSTRAINT fk_feedback_turn_id_chat_tasks "
            "FOREIGN KEY (n) REFERENCES other_parent (id))",
        ],
        ["DROP TABLE other", "DROP TABLE other_parent"],
    ),
}


@pytest.mark.anyio
async def test_a_migration_failing_halfway_leaves_nothing_behind(engine: AsyncEngine) -> None:
    create, drop = BLOCKERS[engine.dialect.name]
    await execute(engine, *create)
    before = await table_names(engine)
    with pytest.raises(MigrationError) as caught:
        await upgrade(engine)
    assert await table_names(engine) == before
    message = str(caught.value)
    assert message.startswith("migrating the schema to head failed for ")
    assert "nothing of it was kept" in message and "\n" not in message

    await execute(engine, *drop)
    await upgrade(engine)
    assert await current(engine) == HEAD_REVISION


@pytest.mark.anyio
async def test_memory_mode_needs_no_alembic(anyio_backend: str) -> None:
    async with await SessionStore.open(None, memory=True) as store:
        assert await current(store.engine) is None
        async with store.engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        assert names == SCHEMA_TABLES


def test_start_up_on_a_fresh_database_loads_alembic(tmp_path: Path) -> None:
    """The control for the next test: the check does see Alembic when it is used."""
    loaded = ast.literal_eval(run_python(OPEN_AND_REPORT_ALEMBIC, f"sqlite:///{tmp_path}/x.db"))
    assert "alembic" in loaded


@pytest.mark.anyio
async def test_start_up_on_a_current_database_skips_alembic(
    engine: AsyncEngine, persistent_db_url: str
) -> None:
    await upgrade(engine)
    await engine.dispose()
    report = await anyio.to_thread.run_sync(run_python, OPEN_AND_REPORT_ALEMBIC, persistent_db_url)
    assert ast.literal_eval(report) == []


def test_four_processes_upgrade_one_database_at_once(persistent_db_url: str) -> None:
    procs = [
        python(
            UPGRADE_ON_GO,
            persistent_db_url,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == HEAD_REVISION


def lock_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".lock"))


@pytest.mark.anyio
async def test_the_sqlite_migration_lock_is_removed_after_use(tmp_path: Path) -> None:
    import fcntl

    url = f"sqlite:///{tmp_path}/sessions.db"
    await (await SessionStore.open(url)).close()  # migrates under the lock
    assert lock_files(tmp_path) == []

    # One an older acp-server left is swept at the next start, unless someone holds it.
    stale = tmp_path / "sessions.db.migrate.lock"
    stale.touch()
    fd = os.open(stale, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        await (await SessionStore.open(url)).close()
        assert lock_files(tmp_path) == [stale.name]
    finally:
        os.close(fd)
    await (await SessionStore.open(url)).close()
    assert lock_files(tmp_path) == []


@pytest.mark.anyio
async def test_the_file_lock_excludes_while_its_file_comes_and_goes(tmp_path: Path) -> None:
    """Each holder removes the file on release, so a waiter may wake on a removed file;
    it must not then hold the lock beside whoever made the file anew."""
    from acp_server.storage.migrate import _file_lock

    path = tmp_path / "x.migrate.lock"
    inside = peak = entries = 0

    async def contend() -> None:
        nonlocal inside, peak, entries
        for _ in range(25):
            async with _file_lock(path):
                inside += 1
                entries += 1
                peak = max(peak, inside)
                await anyio.lowlevel.checkpoint()
                inside -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(contend)
    assert (entries, peak) == (200, 1)
    assert lock_files(tmp_path) == []
