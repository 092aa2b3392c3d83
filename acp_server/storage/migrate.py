"""Schema migrations at start-up: a cheap version check, then Alembic under a lock.

A current database costs one small query and never imports Alembic (~0.4 s). Otherwise
the migrating process holds a lock only one process can hold (a PostgreSQL advisory
lock, a MySQL named lock, an ``flock`` beside a SQLite file), re-reads the version, and
runs Alembic on that same connection, so processes starting together never race.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from acp_server.storage.engine import StorageError, redact, sqlite_path

if TYPE_CHECKING:
    from alembic.config import Config

HEAD_REVISION = "0001"
"""The newest revision in ``migrations/versions``; a test keeps it equal to Alembic's head."""

VERSION_TABLE = "alembic_version"
PG_LOCK_KEY = 0x6163_705F_6D69_6772  # "acp_migr"
MYSQL_LOCK_NAME = "acp_server_migrations"
MYSQL_LOCK_WAIT_S = 60


class MigrationError(StorageError):
    """The schema could not be brought to this version; the text says what to do."""


def migrations_dir() -> Path:
    """``_migrations`` inside an installed wheel, else ``migrations/`` of the source tree."""
    package = Path(__file__).resolve().parents[1]
    bundled = package / "_migrations"
    return bundled if bundled.is_dir() else package.parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config built in code (no alembic.ini); output goes to stderr."""
    from alembic.config import Config

    cfg = Config(stdout=sys.stderr)
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


async def current(engine: AsyncEngine) -> str | None:
    """The database's schema revision, or None when it was never migrated."""
    async with engine.connect() as conn:
        return await _read_version(conn)


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to ``HEAD_REVISION``; safe when many processes start at once."""
    try:
        async with engine.connect() as conn:
            if await _read_version(conn) == HEAD_REVISION:
                return
    except Exception as exc:
        raise _failed(engine, "reading the schema version", exc) from None
    await _migrate(engine, "head")


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    """Step the schema back to ``revision`` ("base" removes every table)."""
    await _migrate(engine, revision, down=True)


async def _read_version(conn: AsyncConnection) -> str | None:
    if not await conn.run_sync(lambda sync: inspect(sync).has_table(VERSION_TABLE)):
        return None
    result = await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
    return result.scalars().first()


async def _migrate(engine: AsyncEngine, target: str, *, down: bool = False) -> None:
    try:
        async with engine.connect() as conn, _migration_lock(conn):
            version = await _read_version(conn)
            if not down and version == HEAD_REVISION:
                return
            _check_known(engine, version)
            await conn.run_sync(_run_alembic, target, down)
            await conn.commit()
    except MigrationError:
        raise
    except Exception as exc:
        raise _failed(engine, f"migrating the schema to {target}", exc) from None


def _check_known(engine: AsyncEngine, version: str | None) -> None:
    if version is None:
        return
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        ScriptDirectory.from_config(alembic_config()).get_revision(version)
    except CommandError:
        raise MigrationError(
            f"database schema {version} at {redact(engine.url)} is newer than this "
            f"acp-server ({HEAD_REVISION}); upgrade acp-server"
        ) from None


def _run_alembic(connection: Connection, target: str, down: bool) -> None:
    from alembic import command

    cfg = alembic_config(connection)
    if down:
        command.downgrade(cfg, target)
    else:
        command.upgrade(cfg, target)


def _failed(engine: AsyncEngine, what: str, exc: BaseException) -> MigrationError:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    detail = lines[0] if lines else type(exc).__name__
    return MigrationError(
        f"{what} failed for {redact(engine.url)} ({detail}); check that the database is "
        "reachable and its user may create and alter tables, then start again"
    )


@asynccontextmanager
async def _migration_lock(conn: AsyncConnection) -> AsyncIterator[None]:
    """Hold the one lock per database that every migrating process takes."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        # Transaction-scoped: released by the final commit, or by rollback on failure.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
        yield
    elif dialect == "mysql":
        async with _mysql_lock(conn):
            yield
    else:
        path = sqlite_path(conn.engine.url)
        if path is None:
            yield
        else:
            async with _file_lock(path.with_name(path.name + ".migrate.lock")):
                yield


@asynccontextmanager
async def _mysql_lock(conn: AsyncConnection) -> AsyncIterator[None]:
    got = await conn.scalar(
        text("SELECT GET_LOCK(:name, :wait)"),
        {"name": MYSQL_LOCK_NAME, "wait": MYSQL_LOCK_WAIT_S},
    )
    await conn.commit()  # so the version is re-read in a fresh snapshot
    if got != 1:
        raise MigrationError(
            f"another acp-server has been migrating {redact(conn.engine.url)} for over "
            f"{MYSQL_LOCK_WAIT_S} s; wait for it to finish or look for a stuck process"
        )
    try:
        yield
    finally:
        try:
            await conn.rollback()
            await conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": MYSQL_LOCK_NAME})
            await conn.commit()
        except Exception:
            await conn.invalidate()  # the server frees a closed session's locks


@asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: SQLite's own locking is all we have
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
