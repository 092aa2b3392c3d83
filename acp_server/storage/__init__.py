"""Persistence of sessions in SQL (SQLite, PostgreSQL, MySQL/MariaDB, or memory).

The rest of the server uses ``SessionStore`` and nothing else from here.
"""

from acp_server.storage.engine import DatabaseConfigError, StorageError, redact
from acp_server.storage.migrate import HEAD_REVISION, MigrationError
from acp_server.storage.store import ListKey, SessionNotFoundError, SessionStore, SessionUpdate

__all__ = [
    "HEAD_REVISION",
    "DatabaseConfigError",
    "ListKey",
    "MigrationError",
    "SessionNotFoundError",
    "SessionStore",
    "SessionUpdate",
    "StorageError",
    "redact",
]
