"""The schema: one declaration that SQLite, PostgreSQL and MySQL/MariaDB all accept.

Times are UTC epoch milliseconds in BIGINT columns (no time zones, no 1-second ties).
Every child row hangs off a cascading foreign key, so deleting a session or a turn never
leaves orphans. MySQL cannot index TEXT, so listings filter on ``cwd_hash`` (indexed)
and then on ``cwd`` (exact). Tables use a binary utf8mb4 collation on MySQL so ids and
paths compare exactly as on the other backends. The store speaks SQL, never objects, so
these are plain Core tables.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

ID = String(64)

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def cwd_hash(cwd: str) -> str:
    """The indexable stand-in for ``cwd`` (sha256 hex)."""
    return hashlib.sha256(cwd.encode("utf-8", "surrogatepass")).hexdigest()


sessions = Table(
    "sessions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("type", String(16), nullable=False),
    Column("parent_id", ID, ForeignKey("sessions.id", ondelete="SET NULL")),
    Column("cwd", Text, nullable=False),
    Column("cwd_hash", String(64), nullable=False),
    Column("additional_directories", JSON, nullable=False),
    Column("title", Text),
    Column("title_set_by_user", Boolean, nullable=False),
    Column("provider", String(64)),
    Column("model", String(255)),
    Column("mode", String(64)),
    Column("config", JSON, nullable=False),
    Column("mcp_servers", JSON, nullable=False),
    Column("permission_rules", JSON, nullable=False),
    Column("context_tokens", BigInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("cost", Double, nullable=False),
    Column("message_count", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("last_activity_at", BigInteger, nullable=False),
    Index(None, "type", "updated_at", "id"),
    Index(None, "cwd_hash", "type", "updated_at", "id"),
    Index(None, "parent_id"),
    **MYSQL_TABLE_OPTIONS,
)

turns = Table(
    "chat_tasks",
    metadata,
    Column("id", ID, primary_key=True),
    Column("session_id", ID, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("stop_reason", String(32)),
    Column("provider", String(64)),
    Column("model", String(255)),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cached_read_tokens", BigInteger, nullable=False),
    Column("cached_write_tokens", BigInteger, nullable=False),
    Column("thought_tokens", BigInteger, nullable=False),
    Column("cost", Double, nullable=False),
    Column("usage_estimated", Boolean, nullable=False),
    Column("model_calls", Integer, nullable=False),
    Column("error", Text),
    Column("started_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger),
    Index(None, "session_id", "started_at"),
    Index(None, "started_at"),
    **MYSQL_TABLE_OPTIONS,
)
"""One prompt turn (``chat_tasks``); retention deletes these and their items."""

items = Table(
    "session_items",
    metadata,
    Column("session_id", ID, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("turn_id", ID, ForeignKey("chat_tasks.id", ondelete="CASCADE")),
    Column("kind", String(16), nullable=False),
    Column("message_id", ID, nullable=False),
    Column("data", JSON, nullable=False),
    Column("user_visible", Boolean, nullable=False),
    Column("agent_visible", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "turn_id"),
    **MYSQL_TABLE_OPTIONS,
)
"""The append-only conversation, ordered by ``seq`` within a session."""

extension_state = Table(
    "session_extension_state",
    metadata,
    Column("session_id", ID, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)
"""Per-session state of extensions under namespaced, versioned keys (``todo.v1``)."""

feedback = Table(
    "feedback",
    metadata,
    Column("id", ID, primary_key=True),
    Column("session_id", ID, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("turn_id", ID, ForeignKey("chat_tasks.id", ondelete="CASCADE"), nullable=False),
    Column("rating", Integer, nullable=False),
    Column("comment", Text),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "session_id"),
    Index(None, "turn_id"),
    Index(None, "created_at"),
    **MYSQL_TABLE_OPTIONS,
)
