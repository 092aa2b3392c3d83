"""Schema migrations at start-up: a cheap version check, then Alembic under a lock.

A current database costs one small query and never imports Alembic (~0.4 s). Otherwise
the migrating process holds a lock only one process can hold (a PostgreSQL advisory
lock, a MySQL named lock, an ``flock`` beside a SQLite file), re-reads the version, and
runs Alembic on that same connection, so processes starting together never race.

MySQL/MariaDB and SQLite commit each CREATE TABLE as it runs, so a migration failing
halfway would leave tables behind that make every later start fail. Hence a fresh
database is first searched for tables in the way (refused by name, before anything is
created), and whatever a failed migration did create is dropped again.
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

from acp_server.logs import get_logger
from acp_server.storage.engine import StorageError, redact, sqlite_path

if TYPE_CHECKING:
    from alembic.config import Config

try:
    import fcntl
except ImportError:  # Windows: SQLite's own locking is all there is
    fcntl = None  # type: ignore[assignment]

HEAD_REVISION = "0001"
"""The newest revision in ``migrations/versions``; a test keeps it equal to Alembic's head."""

VERSION_TABLE = "alembic_version"
PG_LOCK_KEY = 0x6163_705F_6D69_6772  # "acp_migr"
MYSQL_LOCK_NAME = "acp_server_migrations"
MYSQL_LOCK_WAIT_S = 60

log = get_logger("acp_server.storage.migrate")


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
                lock = _lock_path(engine)
                if lock is not None:
                    _sweep_file_lock(lock)
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


async def check(engine: AsyncEngine) -> str | None:
    """What start-up checks before it migrates, changing nothing: the schema revision
    (None when never migrated), or ``MigrationError`` for a schema newer than this code
    or tables in the way of a fresh one. ``doctor`` runs it."""
    async with engine.connect() as conn:
        version = await _read_version(conn)
        await _preflight(conn, engine, version)
    return version


async def _migrate(engine: AsyncEngine, target: str, *, down: bool = False) -> None:
    try:
        async with engine.connect() as conn, _migration_lock(conn):
            version = await _read_version(conn)
            if not down and version == HEAD_REVISION:
                return
            if down:
                _check_known(engine, version)
            else:
                await _preflight(conn, engine, version)
            before = set(await conn.run_sync(_table_names))
            try:
                await conn.run_sync(_run_alembic, target, down)
                await conn.commit()
            except Exception as exc:
                left = await _drop_created(conn, before)
                raise _failed_migration(engine, target, exc, left) from None
    except MigrationError:
        raise
    except Exception as exc:
        raise _failed(engine, f"migrating the schema to {target}", exc) from None


async def _preflight(conn: AsyncConnection, engine: AsyncEngine, version: str | None) -> None:
    if version == HEAD_REVISION:
        return
    _check_known(engine, version)
    if version is None:
        clashes = await conn.run_sync(_clashing_tables)
        if clashes:
            raise MigrationError(_clash_message(engine, clashes))


def _table_names(connection: Connection) -> list[str]:
    return inspect(connection).get_table_names()


def _clashing_tables(connection: Connection) -> list[str]:
    """The tables and views of a never-migrated database that bear a name the schema
    gives one of its tables (SQLite compares names without case, as it does)."""
    from acp_server.storage.tables import metadata

    def key(name: str) -> str:
        return name.casefold() if connection.dialect.name == "sqlite" else name

    ours = {key(table.name) for table in metadata.sorted_tables}
    inspector = inspect(connection)
    present = [*inspector.get_table_names(), *inspector.get_view_names()]
    return sorted(name for name in present if key(name) in ours)


def _clash_message(engine: AsyncEngine, clashes: list[str]) -> str:
    one = len(clashes) == 1
    them = "it" if one else "them"
    return (
        f"database {redact(engine.url)} already has "
        f"{'a table' if one else 'tables'} named {', '.join(clashes)}, "
        f"{'a name' if one else 'names'} acp-server's schema needs, so nothing was "
        "created; give acp-server a database of its own with "
        f"--database-url / ACP_SERVER_DATABASE_URL, or drop or rename {them} if nothing "
        f"else uses {them} (tables left by an older acp-server's failed start are empty)"
    )


async def _drop_created(conn: AsyncConnection, before: set[str]) -> list[str]:
    """Drop the tables a failed migration created; returns those that could not be.

    On PostgreSQL the rollback undoes the DDL (and frees the transaction-scoped lock,
    so the catalog is not read again); MySQL and SQLite still hold their locks here.
    """
    created: list[str] = []
    try:
        await conn.rollback()
        if conn.dialect.name == "postgresql":
            return []
        created = sorted(set(await conn.run_sync(_table_names)) - before)
        if created:
            await conn.run_sync(_drop_tables, created)
            await conn.commit()
            log.info("removed the tables of a failed migration", tables=created)
        return []
    except Exception as exc:
        log.warning("could not remove the tables of a failed migration", error=str(exc))
        return created or ["(unknown)"]


def _drop_tables(connection: Connection, names: list[str]) -> None:
    from sqlalchemy import MetaData

    reflected = MetaData()
    reflected.reflect(connection, only=names)
    reflected.drop_all(connection, tables=[reflected.tables[name] for name in names])


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


def _detail(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _failed_migration(
    engine: AsyncEngine, target: str, exc: BaseException, left: list[str]
) -> MigrationError:
    """The connection worked, so the cause is in the database's contents or rights."""
    if left:
        after = f"drop the tables it left ({', '.join(left)}) and fix that"
    else:
        after = "nothing of it was kept; fix that"
    return MigrationError(
        f"migrating the schema to {target} failed for {redact(engine.url)} "
        f"({_detail(exc)}); {after} (acp-server needs a database of its own whose user "
        "may create tables and indexes), then start again"
    )


def _failed(engine: AsyncEngine, what: str, exc: BaseException) -> MigrationError:
    detail = _detail(exc)
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
        path = _lock_path(conn.engine)
        if path is None:
            yield
        else:
            async with _file_lock(path):
                yield


def _lock_path(engine: AsyncEngine) -> Path | None:
    """The migration lock file of a SQLite database: beside it, present only while held."""
    path = sqlite_path(engine.url)
    return None if path is None else path.with_name(path.name + ".migrate.lock")


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
    """An ``flock`` on ``path``, which is removed again when released."""
    if fcntl is None:
        yield
        return
    fd = await anyio.to_thread.run_sync(_take_file_lock, path)
    try:
        yield
    finally:
        _drop_file_lock(path, fd)


def _take_file_lock(path: Path) -> int:
    """Open and lock ``path``, the file now at that name.

    A holder removes the file while it still holds the lock, so whoever was waiting on
    it wakes up holding a lock on a file no longer there: it must start again with the
    file of that name (made anew if need be), or two processes would hold "the" lock.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_at(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _drop_file_lock(path: Path, fd: int) -> None:
    """Remove the lock file while still holding it, then release it."""
    try:
        os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sweep_file_lock(path: Path) -> None:
    """Remove a lock file an older acp-server left behind, unless someone holds it."""
    if fcntl is None:
        return
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return
    if _is_at(fd, path):
        _drop_file_lock(path, fd)
    else:
        os.close(fd)


def _is_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
