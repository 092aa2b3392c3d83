"""The transaction every store method runs in: ``Transactions._write`` and ``_read``.

Each method is one short transaction, run again from the start when a deadlock, lock
timeout, serialization failure or busy database rolls it back (``_write``). Counters
change with ``col = col + :x`` in SQL, never read-modify-write, so concurrent turns and
processes lose nothing. Memory mode is the same code on an in-memory SQLite database.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
    suppress,
)
from typing import Any, Self, TypeVar

import anyio
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from acp_server import errors
from acp_server.logs import get_logger
from acp_server.storage.engine import is_transient

log = get_logger(__name__)

WRITE_TIMEOUT_S = 60
WRITE_ATTEMPTS = 8
"""Runs of a write transaction that a deadlock or a busy database rolled back."""
DUPLICATE_ATTEMPTS = 5
"""Runs of an append whose ``seq`` another writer took first."""
RETRY_BASE_S = 0.01
RETRY_CAP_S = 0.5

R = TypeVar("R")
Work = Callable[[AsyncConnection], Awaitable[R]]
"""One write transaction's statements, run on the connection given; see ``_write``."""


class Transactions:
    """An engine and the way to use it: writes retried, reads and writes serialized where
    the backend needs it. The store's parts all build on this."""

    backend: str
    """One of "sqlite", "memory", "postgresql", "mysql"."""
    url_redacted: str
    """The database URL without its password, for messages and logs."""

    def __init__(self, engine: AsyncEngine, *, backend: str, url_redacted: str) -> None:
        self.engine = engine
        self.backend = backend
        self.url_redacted = url_redacted
        # One shared in-memory connection cannot hold two transactions at once.
        self._serial: AbstractAsyncContextManager[Any] = (
            anyio.Lock() if backend == "memory" else nullcontext()
        )
        # SQLite has one writer at a time per file: writers queue here, in order,
        # instead of colliding on the file lock and sleeping in busy_timeout retries.
        self._writes: AbstractAsyncContextManager[Any] = (
            anyio.Lock() if backend == "sqlite" else nullcontext()
        )
        # With one writer at a time, that writer keeps its connection: a pool checkout
        # and return are two more trips to aiosqlite's thread on every write.
        self._keeps_writer = backend in ("sqlite", "memory")
        self._writer: AsyncConnection | None = None
        self.retries = 0
        """Write transactions run again (deadlock, busy database, a ``seq`` taken)."""

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.close()
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def _write(self, work: Work[R], *, duplicates: bool = False) -> R:
        """Run ``work`` in one write transaction and return what it returns.

        Once started, the transaction finishes even if the caller is cancelled (a
        cancelled turn still keeps what it completed). A deadlock, lock wait timeout,
        serialization failure or busy database rolls it back, and ``work`` runs again
        from the start after a short random pause, a few times at most; with
        ``duplicates``, so does a duplicate key (another writer took the same ``seq``).
        So ``work`` must change nothing but the database through ``conn``: whatever it
        computes, it returns.
        """
        with anyio.fail_after(WRITE_TIMEOUT_S, shield=True), self._unavailable():
            async with self._serial, self._writes:
                for attempt in range(1, WRITE_ATTEMPTS + 1):
                    try:
                        return await self._attempt(work)
                    except IntegrityError:
                        if not duplicates or attempt >= DUPLICATE_ATTEMPTS:
                            raise
                    except DBAPIError as exc:
                        if attempt == WRITE_ATTEMPTS or not is_transient(exc):
                            raise
                        log.debug("write retried", attempt=attempt, error=str(exc.orig)[:200])
                    self.retries += 1
                    await anyio.sleep(_backoff(attempt))
                raise AssertionError("unreachable")

    async def _attempt(self, work: Work[R]) -> R:
        if not self._keeps_writer:
            async with self.engine.begin() as conn:
                return await work(conn)
        if self._writer is None:
            self._writer = await self.engine.connect()
        writer = self._writer
        try:
            async with writer.begin():
                return await work(writer)
        except IntegrityError:
            raise
        except (DBAPIError, OSError, TimeoutError):
            # Whatever broke may have broken the connection too: start afresh.
            self._writer = None
            await writer.close()
            raise

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._serial:
            with self._unavailable():
                async with self.engine.connect() as conn:
                    yield conn

    async def _forget_deleted(self) -> None:
        """After a delete on SQLite: ``secure_delete`` zeroed the rows in the database
        file, but the WAL still holds older copies of their pages; fold it into the file
        and truncate it. Best effort (the delete is done): a reader still on an old
        snapshot keeps the WAL, and the next delete or SQLite's own checkpoint retries."""
        if self.backend != "sqlite":
            return
        with anyio.move_on_after(WRITE_TIMEOUT_S, shield=True), suppress(DBAPIError, OSError):
            async with self._writes, self.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """A database that stops answering becomes one plain line (``errors.Unavailable``);
        constraint violations stay what they are, for the callers that retry on them."""
        try:
            yield
        except IntegrityError:
            raise
        except (DBAPIError, OSError, TimeoutError) as exc:
            detail = (
                str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
            )[0]
            raise errors.Unavailable(
                f"the session database {self.url_redacted} is not answering ({detail[:200]}); "
                "the request was not completed; check that the database is running"
            ) from exc


def _backoff(attempt: int) -> float:
    """Seconds before the next run: random ("full jitter"), so two transactions that
    deadlocked do not meet again at once, under a ceiling that doubles each time."""
    return random.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2**attempt))


def one_statement(statement: Any, params: Any = None) -> Work[int]:
    """A transaction of one statement; it returns the rows the statement changed."""

    async def work(conn: AsyncConnection) -> int:
        return (await conn.execute(statement, params)).rowcount

    return work
