"""initial schema: sessions, turns, items, extension state, feedback

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Written by hand to match ``acp_server/storage/tables.py``; ``tests/test_migrations.py``
compares the two on every backend.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _id(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(64), nullable=nullable)


def _ms(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def _fk(
    column: str, table: str, referred: str, ondelete: str = "CASCADE"
) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column],
        [f"{referred}.id"],
        name=f"fk_{table}_{column}_{referred}",
        ondelete=ondelete,
    )


def upgrade() -> None:
    op.create_table(
        "sessions",
        _id("id"),
        sa.Column("type", sa.String(16), nullable=False),
        _id("parent_id", nullable=True),
        sa.Column("cwd", sa.Text(), nullable=False),
        sa.Column("cwd_hash", sa.String(64), nullable=False),
        sa.Column("additional_directories", sa.JSON(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("title_set_by_user", sa.Boolean(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=True),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("mode", sa.String(64), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("mcp_servers", sa.JSON(), nullable=False),
        sa.Column("permission_rules", sa.JSON(), nullable=False),
        sa.Column("context_tokens", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        _ms("created_at"),
        _ms("updated_at"),
        _ms("last_activity_at"),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        _fk("parent_id", "sessions", "sessions", ondelete="SET NULL"),
        **MYSQL,
    )
    op.create_index("ix_sessions_type_updated_at_id", "sessions", ["type", "updated_at", "id"])
    op.create_index(
        "ix_sessions_cwd_hash_type_updated_at_id",
        "sessions",
        ["cwd_hash", "type", "updated_at", "id"],
    )
    op.create_index("ix_sessions_parent_id", "sessions", ["parent_id"])

    op.create_table(
        "chat_tasks",
        _id("id"),
        _id("session_id"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stop_reason", sa.String(32), nullable=True),
        sa.Column("provider", sa.String(64), nullable=True),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("thought_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=False),
        sa.Column("usage_estimated", sa.Boolean(), nullable=False),
        sa.Column("model_calls", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _ms("started_at"),
        _ms("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_chat_tasks"),
        _fk("session_id", "chat_tasks", "sessions"),
        **MYSQL,
    )
    op.create_index(
        "ix_chat_tasks_session_id_started_at", "chat_tasks", ["session_id", "started_at"]
    )
    op.create_index("ix_chat_tasks_started_at", "chat_tasks", ["started_at"])

    op.create_table(
        "session_items",
        _id("session_id"),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        _id("turn_id", nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        _id("message_id"),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("user_visible", sa.Boolean(), nullable=False),
        sa.Column("agent_visible", sa.Boolean(), nullable=False),
        _ms("created_at"),
        sa.PrimaryKeyConstraint("session_id", "seq", name="pk_session_items"),
        _fk("session_id", "session_items", "sessions"),
        _fk("turn_id", "session_items", "chat_tasks"),
        **MYSQL,
    )
    op.create_index("ix_session_items_turn_id", "session_items", ["turn_id"])

    op.create_table(
        "session_extension_state",
        _id("session_id"),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        _ms("updated_at"),
        sa.PrimaryKeyConstraint("session_id", "key", name="pk_session_extension_state"),
        _fk("session_id", "session_extension_state", "sessions"),
        **MYSQL,
    )

    op.create_table(
        "feedback",
        _id("id"),
        _id("session_id"),
        _id("turn_id"),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        _ms("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        _fk("session_id", "feedback", "sessions"),
        _fk("turn_id", "feedback", "chat_tasks"),
        **MYSQL,
    )
    op.create_index("ix_feedback_session_id", "feedback", ["session_id"])
    op.create_index("ix_feedback_turn_id", "feedback", ["turn_id"])
    op.create_index("ix_feedback_created_at", "feedback", ["created_at"])


def downgrade() -> None:
    for table in ("feedback", "session_extension_state", "session_items", "chat_tasks", "sessions"):
        op.drop_table(table)
