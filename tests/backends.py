"""Real databases for tests, as a pytest plugin (``pytest_plugins = ["tests.backends"]``).

Every test gets a fresh database of its own: a file in ``tmp_path`` for SQLite, and a
randomly named database, dropped afterwards, on the local PostgreSQL and MariaDB
servers. A server that cannot be reached skips its tests, unless
``ACP_SERVER_REQUIRE_DATABASES=1`` (as in CI), which makes that a failure.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn

import pytest

from acp_server.storage.store import SessionStore

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
MARIADB_HOST, MARIADB_PORT, MARIADB_USER = "127.0.0.1", 3306, "root"

ALL_BACKENDS = ("sqlite", "memory", "postgresql", "mariadb")
PERSISTENT_BACKENDS = ("sqlite", "postgresql", "mariadb")
SERVER_BACKENDS = ("postgresql", "mariadb")

_MARKS = {"postgresql": pytest.mark.postgres, "mariadb": pytest.mark.mariadb}


def backend_params(backends: tuple[str, ...]) -> list[Any]:
    """``pytest.param``s for ``backends``, marked ``postgres`` / ``mariadb`` as needed."""
    return [
        pytest.param(name, id=name, marks=[_MARKS[name]] if name in _MARKS else [])
        for name in backends
    ]


def unavailable(reason: str) -> NoReturn:
    """Skip for want of a database server, or fail when CI requires every server."""
    if os.environ.get("ACP_SERVER_REQUIRE_DATABASES") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _fresh_name() -> str:
    return f"acp_test_{uuid.uuid4().hex[:16]}"


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{(directory / 'sessions.db').resolve()}"


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _create_pg_database() -> str:
    name = _fresh_name()
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    return name


def _drop_pg_database(name: str) -> None:
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class _PgSpare:
    """Creates the next test's PostgreSQL database, and drops the last one, on a
    worker thread while the current test runs.

    CREATE DATABASE costs ~0.3 s of server I/O; overlapping it keeps the suite fast
    while every test still gets a database nobody has touched.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._next: Future[str] | None = None

    def take(self) -> str:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-spare")
            atexit.register(self.close)
        ready = self._next or self._pool.submit(_create_pg_database)
        self._next = self._pool.submit(_create_pg_database)
        return ready.result()

    def release(self, name: str) -> None:
        """Drop a used database in the background (``close`` waits for it)."""
        assert self._pool is not None
        self._pool.submit(_drop_pg_database, name)

    def close(self) -> None:
        """Drop the unused spare; runs at session end or exit, when no loop is running
        and no new threads may start."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._next is not None:
            with suppress(Exception):
                _drop_pg_database(self._next.result())
            self._next = None


_PG_SPARE = _PgSpare()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _PG_SPARE.close()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database's URL, dropped on exit."""
    try:
        name = _PG_SPARE.take()
    except Exception as exc:
        unavailable(f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT}: {exc}")
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        _PG_SPARE.release(name)


def _mariadb_admin(sql: str) -> None:
    import pymysql

    conn = pymysql.connect(
        host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER, password="", connect_timeout=5
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
    finally:
        conn.close()


@contextmanager
def mariadb_database() -> Iterator[str]:
    """A fresh MariaDB database's URL, dropped on exit."""
    name = _fresh_name()
    try:
        _mariadb_admin(f"CREATE DATABASE `{name}`")
    except Exception as exc:
        unavailable(f"MariaDB not reachable on {MARIADB_HOST}:{MARIADB_PORT}: {exc}")
    try:
        yield f"mysql://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    finally:
        _mariadb_admin(f"DROP DATABASE IF EXISTS `{name}`")


@contextmanager
def database_url(backend: str, directory: Path) -> Iterator[str]:
    """A URL for a fresh database of ``backend``; "memory" stands for memory mode."""
    if backend == "memory":
        yield "memory"
    elif backend == "sqlite":
        yield sqlite_url(directory)
    elif backend == "postgresql":
        with postgres_database() as url:
            yield url
    elif backend == "mariadb":
        with mariadb_database() as url:
            yield url
    else:
        raise ValueError(f"unknown test backend {backend!r}")


async def open_store(db_url: str, *, migrate: bool = True) -> SessionStore:
    """Open ``db_url`` as the server would ("memory" means memory mode)."""
    if db_url == "memory":
        return await SessionStore.open(None, memory=True)
    return await SessionStore.open(db_url, migrate=migrate)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=backend_params(ALL_BACKENDS))
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database on every backend, memory mode included."""
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=backend_params(ALL_BACKENDS))
def server_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A value for ``acp-server --database-url``: a real URL, or the literal "memory"."""
    with database_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=backend_params(PERSISTENT_BACKENDS))
def persistent_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database that outlives its connections (no memory mode)."""
    with database_url(request.param, tmp_path) as url:
        yield url
