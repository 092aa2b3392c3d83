"""Persistence of sessions in SQL (SQLite, PostgreSQL, MySQL/MariaDB, or memory).

The rest of the server uses ``store.SessionStore``; this package module imports nothing,
so importing one of its modules (``engine`` for the CLI, say) loads only that one.
"""
