"""SessionStore: the one object the rest of the server uses to keep sessions in SQL.

Its parts live by concern: ``transactions`` (how every method writes and reads),
``sessions`` (session rows, fork, import, extension state), ``items`` (the append-only
conversation and the turns that write it), ``retention`` (batched deletes) and
``analytics`` (the CLI's insights). This module opens the database and puts them together.
"""

from __future__ import annotations

import anyio

from acp_server.storage import tables
from acp_server.storage.analytics import Analytics
from acp_server.storage.engine import (
    DatabaseConfigError,
    check_connection,
    create_engine,
    is_memory,
    memory_url,
    normalize_url,
    redact,
)
from acp_server.storage.items import ItemsAndTurns
from acp_server.storage.migrate import upgrade
from acp_server.storage.retention import Retention
from acp_server.storage.sessions import Sessions


class SessionStore(Sessions, ItemsAndTurns, Retention, Analytics):
    """Sessions, their items, turns, extension state and feedback, on any backend."""

    @classmethod
    async def open(
        cls, url: str | None, *, memory: bool = False, migrate: bool = True
    ) -> SessionStore:
        """Connect, check the database answers, and bring its schema up to date."""
        if memory:
            sa_url = memory_url()
        elif url is None:
            raise DatabaseConfigError(
                "no database URL given; pass --database-url / ACP_SERVER_DATABASE_URL "
                "or use memory mode"
            )
        else:
            sa_url = normalize_url(url)
        in_memory = is_memory(sa_url)
        engine = create_engine(sa_url)
        try:
            await check_connection(engine, sa_url)
            if in_memory:
                async with engine.begin() as conn:
                    await conn.run_sync(tables.metadata.create_all)
            elif migrate:
                await upgrade(engine)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await engine.dispose()
            raise
        backend = "memory" if in_memory else sa_url.get_backend_name()
        return cls(engine, backend=backend, url_redacted=redact(sa_url))
