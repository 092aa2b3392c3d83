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
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MYSQL_TABLE_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

ID = String(64)


def cwd_hash(cwd: str) -> str:
    """The indexable stand-in for ``cwd`` (sha256 hex)."""
    return hashlib.sha256(cwd.encode("utf-8", "surrogatepass")).hexdigest()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SessionRow(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        Index(None, "type", "updated_at", "id"),
        Index(None, "cwd_hash", "type", "updated_at", "id"),
        Index(None, "parent_id"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("sessions.id", ondelete="SET NULL")
    )
    cwd: Mapped[str] = mapped_column(Text)
    cwd_hash: Mapped[str] = mapped_column(String(64))
    additional_directories: Mapped[list[str]] = mapped_column(JSON)
    title: Mapped[str | None] = mapped_column(Text)
    title_set_by_user: Mapped[bool] = mapped_column(Boolean)
    provider: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(255))
    mode: Mapped[str | None] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    mcp_servers: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    permission_rules: Mapped[dict[str, str]] = mapped_column(JSON)
    context_tokens: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[float] = mapped_column(Double)
    message_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    last_activity_at: Mapped[int] = mapped_column(BigInteger)


class TurnRow(Base):
    """One prompt turn (``chat_tasks``); retention deletes these and their items."""

    __tablename__ = "chat_tasks"
    __table_args__ = (
        Index(None, "session_id", "started_at"),
        Index(None, "started_at"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    session_id: Mapped[str] = mapped_column(ID, ForeignKey("sessions.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    provider: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(255))
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_read_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_write_tokens: Mapped[int] = mapped_column(BigInteger)
    thought_tokens: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[float] = mapped_column(Double)
    usage_estimated: Mapped[bool] = mapped_column(Boolean)
    model_calls: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)


class ItemRow(Base):
    """The append-only conversation, ordered by ``seq`` within a session."""

    __tablename__ = "session_items"
    __table_args__ = (Index(None, "turn_id"), MYSQL_TABLE_OPTIONS)

    session_id: Mapped[str] = mapped_column(
        ID, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    turn_id: Mapped[str | None] = mapped_column(ID, ForeignKey("chat_tasks.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    message_id: Mapped[str] = mapped_column(ID)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    user_visible: Mapped[bool] = mapped_column(Boolean)
    agent_visible: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[int] = mapped_column(BigInteger)


class ExtensionStateRow(Base):
    """Per-session state of extensions under namespaced, versioned keys (``todo.v1``)."""

    __tablename__ = "session_extension_state"
    __table_args__ = (MYSQL_TABLE_OPTIONS,)

    session_id: Mapped[str] = mapped_column(
        ID, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class FeedbackRow(Base):
    __tablename__ = "feedback"
    __table_args__ = (
        Index(None, "session_id"),
        Index(None, "turn_id"),
        Index(None, "created_at"),
        MYSQL_TABLE_OPTIONS,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    session_id: Mapped[str] = mapped_column(ID, ForeignKey("sessions.id", ondelete="CASCADE"))
    turn_id: Mapped[str] = mapped_column(ID, ForeignKey("chat_tasks.id", ondelete="CASCADE"))
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)


def _table(row: type[Base]) -> Table:
    table = row.__table__
    assert isinstance(table, Table)
    return table


metadata = Base.metadata
sessions = _table(SessionRow)
turns = _table(TurnRow)
items = _table(ItemRow)
extension_state = _table(ExtensionStateRow)
feedback = _table(FeedbackRow)
