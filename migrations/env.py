"""Alembic environment for acp-server.

The server runs migrations itself (``acp_server.storage.migrate``) on a connection it
already holds under a cross-process lock; that connection arrives in
``config.attributes["connection"]``. Without one (a developer running ``alembic``), the
URL comes from ``sqlalchemy.url`` or ``ACP_SERVER_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from acp_server.storage import tables
from acp_server.storage.engine import create_engine, normalize_url

config = context.config
target_metadata = tables.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("ACP_SERVER_DATABASE_URL")
    if not url:
        raise RuntimeError("set sqlalchemy.url or ACP_SERVER_DATABASE_URL")
    return url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_offline() -> None:
    context.configure(
        url=normalize_url(_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone() -> None:
    engine = create_engine(normalize_url(_url()))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
elif isinstance(config.attributes.get("connection"), Connection):
    run_on(config.attributes["connection"])
else:
    asyncio.run(run_standalone())
