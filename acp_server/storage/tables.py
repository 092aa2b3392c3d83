"""The schema: one declaration that SQLite, PostgreSQL and MySQL/MariaDB all accept.

Times are UTC epoch milliseconds in BIGINT columns (no time zones, no 1-second ties).
Every child row hangs off a cascading foreign key, so deleting a session or a turn never
leaves orphans. MySQL cannot index TEXT, so listings filter on ``cwd_hash`` (indexed)
and then on ``cwd`` (exact). Tables use a binary utf8mb4 collation on MySQL so ids and
paths compare exactly as on the other backends.
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
from sqlalchemy.types import TypeEngine

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


def cwd_hash(cwd: str) -> str:
    """The indexable stand-in for ``cwd`` (sha256 hex)."""
    return hashlib.sha256(cwd.encode("utf-8", "surrogatepass")).hexdigest()


def _column(
    name: str,
    type_: TypeEngine[Any] | type[TypeEngine[Any]],
    *args: Any,
    null: bool = False,
    **kw: Any,
) -> Column[Any]:
    """A column that is NOT NULL unless it says ``null=True``."""
    return Column(name, type_, *args, nullable=null, **kw)


metadata = MetaData(naming_convention=NAMING_CONVENTION)

sessions = Table(
    "sessions",
    metadata,
    _column("id", ID, primary_key=True),
    _column("type", String(16)),
    _column("parent_id", ID, ForeignKey("sessions.id", ondelete="SET NULL"), null=True),
    _column("cwd", Text),
    _column("cwd_hash", String(64)),
    _column("additional_directories", JSON),
    _column("title", Text, null=True),
    _column("title_set_by_user", Boolean),
    _column("provider", String(64), null=True),
    _column("model", String(255), null=True),
    _column("mode", String(64), null=True),
    _column("config", JSON),
    _column("mcp_servers", JSON),
    _column("permission_rules", JSON),
    _column("context_tokens", BigInteger),
    _column("input_tokens", BigInteger),
    _column("output_tokens", BigInteger),
    _column("cached_tokens", BigInteger),
    _column("cost", Double),
    _column("message_count", Integer),
    _column("created_at", BigInteger),
    _column("updated_at", BigInteger),
    _column("last_activity_at", BigInteger),
    Index(None, "type", "updated_at", "id"),
    Index(None, "cwd_hash", "type", "updated_at", "id"),
    Index(None, "parent_id"),
    **MYSQL_TABLE_OPTIONS,
)

turns = Table(
    "chat_tasks",
    metadata,
    _column("id", ID, primary_key=True),
    _column("session_id", ID, ForeignKey("sessions.id", ondelete="CASCADE")),
    _column("status", String(16)),
    _column("stop_reason", String(32), null=True),
    _column("provider", String(64), null=True),
    _column("model", String(255), null=True),
    _column("input_tokens", BigInteger),
    _column("output_tokens", BigInteger),
    _column("cached_read_tokens", BigInteger),
    _column("cached_write_tokens", BigInteger),
    _column("thought_tokens", BigInteger),
    _column("cost", Double),
    _column("usage_estimated", Boolean),
    _column("model_calls", Integer),
    _column("error", Text, null=True),
    _column("started_at", BigInteger),
    _column("finished_at", BigInteger, null=True),
    Index(None, "session_id", "started_at"),
    Index(None, "started_at"),
    **MYSQL_TABLE_OPTIONS,
)
"""One prompt turn (``chat_tasks``); retention deletes these and their items."""

items = Table(
    "session_items",
    metadata,
    _column("session_id", ID, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    _column("seq", Integer, primary_key=True, autoincrement=False),
    _column("turn_id", ID, ForeignKey("chat_tasks.id", ondelete="CASCADE"), null=True),
    _column("kind", String(16)),
    _column("message_id", ID),
    _column("data", JSON),
    _column("user_visible", Boolean),
    _column("agent_visible", Boolean),
    _column("created_at", BigInteger),
    Index(None, "turn_id"),
    **MYSQL_TABLE_OPTIONS,
)
"""The append-only conversation, ordered by ``seq`` within a session."""

extension_state = Table(
    "session_extension_state",
    metadata,
    _column("session_id", ID, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    _column("key", String(128), primary_key=True),
    _column("value", JSON),
    _column("updated_at", BigInteger),
    **MYSQL_TABLE_OPTIONS,
)
"""Per-session state of extensions under namespaced, versioned keys (``todo.v1``)."""

feedback = Table(
    "feedback",
    metadata,
    _column("id", ID, primary_key=True),
    _column("session_id", ID, ForeignKey("sessions.id", ondelete="CASCADE")),
    _column("turn_id", ID, ForeignKey("chat_tasks.id", ondelete="CASCADE")),
    _column("rating", Integer),
    _column("comment", Text, null=True),
    _column("created_at", BigInteger),
    Index(None, "session_id"),
    Index(None, "turn_id"),
    Index(None, "created_at"),
    **MYSQL_TABLE_OPTIONS,
)
