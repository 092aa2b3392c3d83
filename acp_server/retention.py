"""Data retention: turns (with their messages) and feedback older than N days are deleted.

Sessions stay until someone deletes them. ``retention_loop`` runs the cleanup on the
configured schedule inside the server; ``acp-server retention run`` runs it once by hand.
The store deletes in small batches, one transaction each, so a cleanup never holds long
locks on a database other servers are using.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from acp_server.config.settings import RetentionSettings

if TYPE_CHECKING:
    from acp_server.storage.store import SessionStore

DAY_MS = 86_400_000


async def run_retention(
    store: SessionStore, settings: RetentionSettings, now_ms: int
) -> tuple[int, int]:
    """Delete turns older than ``task_retention_days`` and feedback older than
    ``feedback_retention_days``; returns (turns deleted, feedback rows deleted)."""
    turns = await store.delete_turns_before(now_ms - settings.task_retention_days * DAY_MS)
    feedback = await store.delete_feedback_before(
        now_ms - settings.feedback_retention_days * DAY_MS
    )
    return turns, feedback


async def retention_loop(store: SessionStore, settings: RetentionSettings) -> None:
    """Clean up now and then every ``cleanup_interval_hours``, while retention is on.
    A failed run is logged and retried at the next interval; it never stops the server."""
    if not settings.enabled:
        return
    from acp_server.logs import get_logger
    from acp_server.sessions.model import now_ms

    log = get_logger("acp_server.retention")
    while True:
        try:
            turns, feedback = await run_retention(store, settings, now_ms())
        except Exception as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("retention cleanup failed; will retry", error=detail)
        else:
            log.info("retention cleanup", turns_deleted=turns, feedback_deleted=feedback)
        await anyio.sleep(settings.cleanup_interval_hours * 3600)
