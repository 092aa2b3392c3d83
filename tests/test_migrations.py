"""Migrations on real backends: head, fast path, schema parity, races, downgrade."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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


@pytest.mark.anyio
async def test_a_failed_migration_is_one_plain_line(tmp_path: Path, anyio_backend: str) -> None:
    url = f"sqlite:///{tmp_path}/clash.db"
    engine = create_engine(normalize_url(url))
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE sessions (id INTEGER)"))
    try:
        with pytest.raises(MigrationError) as caught:
            await upgrade(engine)
    finally:
        await engine.dispose()
    message = str(caught.value)
    assert message.startswith("migrating the schema to head failed for sqlite+aiosqlite:///")
    assert "already exists" in message and "\n" not in message


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
