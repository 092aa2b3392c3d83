"""The variants measured and the databases they run on.

A variant is the floor agent or the server on one backend. Each database is fresh:
a SQLite file in the run's temp dir, or a PostgreSQL database created for the run
through asyncpg (connected to the ``postgres`` database) and dropped afterwards.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
SERVER_BACKENDS = ("memory", "sqlite", "postgresql")
FLOOR = "floor"
STACK = "stack"
BASELINE_AGENTS = {FLOOR: "benchmarks.floor_agent", STACK: "benchmarks.stack_agent"}
SERVER_BIN = Path(sys.executable).parent / "acp-server"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Variant:
    name: str
    """"floor", "stack", or a server backend: "memory", "sqlite", "postgresql"."""
    url: str | None = None
    """The database URL (None for the floor and memory mode)."""

    @property
    def is_floor(self) -> bool:
        return self.name == FLOOR

    @property
    def is_server(self) -> bool:
        return self.name not in BASELINE_AGENTS

    @property
    def persistent(self) -> bool:
        return self.is_server and self.name != "memory"

    def argv(self) -> list[str]:
        if not self.is_server:
            return [sys.executable, "-m", BASELINE_AGENTS[self.name]]
        server = [str(SERVER_BIN)] if SERVER_BIN.exists() else [sys.executable, "-m", "acp_server"]
        store = ["--memory"] if self.url is None else ["--database-url", self.url]
        return [*server, *store, "--provider", "openai", "--model", "bench-model"]


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def postgres_problem() -> str | None:
    """None when PostgreSQL answers, else why not (one line)."""
    try:
        await _pg_admin("SELECT 1")
    except Exception as exc:  # any failure means: skip it, with this note
        return f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT} ({type(exc).__name__}: {exc})"
    return None


@contextlib.asynccontextmanager
async def database(backend: str, directory: Path, tag: str) -> AsyncIterator[str | None]:
    """A fresh database URL for ``backend`` (None in memory mode), removed on exit."""
    if backend == "memory":
        yield None
    elif backend == "sqlite":
        yield f"sqlite:///{directory / f'{tag}.db'}"
    elif backend == "postgresql":
        name = f"acp_bench_{tag}_{uuid.uuid4().hex[:10]}"
        await _pg_admin(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        raise ValueError(f"unknown backend {backend!r}")


async def migrate(url: str) -> None:
    """Create the schema in-process, so no measured start pays for a first migration
    (a one-time cost per database that imports Alembic)."""
    from acp_server.storage.store import SessionStore

    store = await SessionStore.open(url)
    await store.close()


@contextlib.asynccontextmanager
async def variants(names: list[str], directory: Path, tag: str) -> AsyncIterator[list[Variant]]:
    """Fresh, migrated databases for each named variant, for one scenario."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for name in names:
            url = (
                await stack.enter_async_context(database(name, directory, tag))
                if name not in BASELINE_AGENTS
                else None
            )
            if url is not None:
                await migrate(url)
            out.append(Variant(name, url))
        yield out


def compile_server() -> Path:
    """Write the server's bytecode before anything is measured, as installing it does.

    Otherwise every spawn of a tree edited since its last run (or run with
    PYTHONDONTWRITEBYTECODE set) compiles those modules from source again: up to ~50 ms
    of start-up that no installed server pays. Returns the package compiled, the one
    the spawned servers import (same ``sys.path``).
    """
    import compileall

    import acp_server

    package = Path(acp_server.__file__).resolve().parent
    compileall.compile_dir(package, quiet=1)
    return package
