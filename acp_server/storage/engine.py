"""Database URLs and engines: every supported backend, reached through an async driver.

People write URLs the way SQLAlchemy's sync drivers taught them (``postgresql://``,
``mysql+pymysql://``, ``sqlite:///x.db``); we accept those and swap in the async driver
rather than make them learn ours. Secrets in URLs never reach a message or a log.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import URL, event, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from acp_server import errors

URL_HINT = "check --database-url / ACP_SERVER_DATABASE_URL"
SCHEMES_HELP = (
    "use sqlite:///path/to/file.db, postgresql://user:password@host/db "
    "or mysql://user:password@host/db (mariadb:// works too)"
)

_SQLITE_DRIVERS = {None, "aiosqlite", "pysqlite"}
_POSTGRES_NAMES = {"postgresql", "postgres"}
_POSTGRES_DRIVERS = {None, "asyncpg", "psycopg2", "psycopg", "pg8000"}
_MYSQL_NAMES = {"mysql", "mariadb"}
_MYSQL_DRIVERS = {None, "aiomysql", "pymysql", "mysqldb", "mysqlconnector", "asyncmy"}
_LIBPQ_TO_ASYNCPG = {"sslmode": "ssl", "connect_timeout": "timeout"}
_PASSWORD_IN_TEXT = re.compile(r"(//[^/:@]*:)[^@/]*@")


StorageError = errors.StorageError
"""Base of the storage errors whose text is shown to people as one plain line."""


class DatabaseConfigError(StorageError):
    """The database URL is wrong or the database cannot be reached; says how to fix it."""


def normalize_url(url: str) -> URL:
    """Map a URL as people write it to the async driver this server uses."""
    text = url.strip()
    if not text:
        raise DatabaseConfigError(f"the database URL is empty; {SCHEMES_HELP}")
    if text == ":memory:":
        return memory_url()
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError):
        raise DatabaseConfigError(
            f"{redact(text)!r} is not a database URL; {SCHEMES_HELP}"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    drv = driver or None
    if backend == "sqlite" and drv in _SQLITE_DRIVERS:
        return _sqlite_url(parsed)
    if backend in _POSTGRES_NAMES and drv in _POSTGRES_DRIVERS:
        return _postgres_url(parsed)
    if backend in _MYSQL_NAMES and drv in _MYSQL_DRIVERS:
        return _mysql_url(parsed)
    raise DatabaseConfigError(
        f"unsupported database URL scheme {parsed.drivername!r}; {SCHEMES_HELP}"
    )


def memory_url() -> URL:
    return make_url("sqlite+aiosqlite://")


def is_memory(url: URL) -> bool:
    """An in-memory SQLite database: gone with the process, nothing written anywhere."""
    return url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    )


def _sqlite_url(parsed: URL) -> URL:
    url = parsed.set(drivername="sqlite+aiosqlite")
    if is_memory(url):
        return url
    assert url.database is not None
    path = Path(url.database).expanduser()
    return url.set(database=str(path if path.is_absolute() else Path.cwd() / path))


def _postgres_url(parsed: URL) -> URL:
    query = {_LIBPQ_TO_ASYNCPG.get(k, k): v for k, v in parsed.query.items()}
    return parsed.set(drivername="postgresql+asyncpg", query=query)


def _mysql_url(parsed: URL) -> URL:
    return parsed.set(drivername="mysql+aiomysql").update_query_dict(
        {"charset": parsed.query.get("charset", "utf8mb4")}
    )


def redact(url: URL | str) -> str:
    """The URL with its password masked, fit for messages and logs."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD_IN_TEXT.sub(r"\1***@", url)


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite file URL, else None."""
    if url.get_backend_name() != "sqlite" or is_memory(url):
        return None
    return Path(url.database or "")


def create_engine(url: URL) -> AsyncEngine:
    """An engine tuned for its backend (pragmas for SQLite, pool health for servers)."""
    json_args: dict[str, Any] = {
        "json_serializer": _json_dumps,
        "json_deserializer": _json_loads,
    }
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            engine = create_async_engine(url, poolclass=StaticPool, **json_args)
        else:
            _make_parent(path)
            engine = create_async_engine(url, pool_size=5, max_overflow=10, **json_args)
        _install_sqlite_pragmas(engine, wal=path is not None)
        return engine
    common: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
    if backend == "postgresql":
        args = {"timeout": 10} if "timeout" not in url.query else {}
        return create_async_engine(url, connect_args=args, **common, **json_args)
    return create_async_engine(url, pool_recycle=3600, **common, **json_args)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _json_loads(value: Any) -> Any:
    # SQLite gives JSON columns numeric affinity: a top-level number comes back parsed.
    return value if isinstance(value, int | float) else orjson.loads(value)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DatabaseConfigError(
            f"cannot create directory {path.parent} for the SQLite database ({reason}); "
            f"choose a writable location ({URL_HINT})"
        ) from None


def _install_sqlite_pragmas(engine: AsyncEngine, *, wal: bool) -> None:
    """Set on every new connection: SQLite forgets pragmas between connections.
    ``secure_delete`` zeroes deleted rows and freed pages, so what a user deletes does
    not stay readable in the file."""
    pragmas = ["busy_timeout=30000", "foreign_keys=ON", "secure_delete=ON"]
    if wal:
        pragmas += ["journal_mode=WAL", "synchronous=NORMAL"]

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()


async def check_connection(engine: AsyncEngine, url: URL) -> None:
    """Connect once, turning driver failures into one line that says what to fix."""
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        raise DatabaseConfigError(describe_connect_error(exc, url)) from None


def describe_connect_error(exc: BaseException, url: URL) -> str:
    """One plain line for a failed connection: what happened, where, and what to try."""
    chain = _exception_chain(exc)
    names = {type(e).__name__ for e in chain}
    codes = {e.args[0] for e in chain if e.args and isinstance(e.args[0], int)}
    driver = chain[-1] if len(chain) > 1 else exc
    detail = _first_line(driver)
    backend = url.get_backend_name()
    label = {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB"}.get(backend, "SQLite")
    where = f"{url.host or 'localhost'}:{url.port or _DEFAULT_PORTS.get(backend, '')}"
    if backend == "sqlite":
        path = sqlite_path(url) or ":memory:"
        if "file is not a database" in detail:
            return f"{path} is not a SQLite database ({detail}); {URL_HINT}"
        return (
            f"cannot open SQLite database {path} ({detail}); "
            f"check the path and its permissions ({URL_HINT})"
        )
    if "ConnectionRefusedError" in names:
        return (
            f"cannot reach {label} at {where} (connection refused); "
            f"is the server running? {URL_HINT}"
        )
    if "gaierror" in names:
        return f"cannot reach {label} at {where} (unknown host {url.host!r}); {URL_HINT}"
    if names & {"TimeoutError", "CancelledError"}:
        return f"cannot reach {label} at {where} (timed out); is the host reachable? {URL_HINT}"
    if "InvalidCatalogNameError" in names or 1049 in codes:
        return (
            f"{label} at {where} has no database {url.database!r}; "
            f"create it or fix the database name ({URL_HINT})"
        )
    if names & _AUTH_ERRORS or codes & {1044, 1045}:
        return (
            f"{label} at {where} refused user {url.username!r} ({detail}); "
            f"check the user name and password ({URL_HINT})"
        )
    if isinstance(driver, TypeError):
        return f"unsupported option in the database URL {redact(url)} ({detail}); {URL_HINT}"
    return f"cannot open {label} database {redact(url)} ({detail}); {URL_HINT}"


def is_transient(exc: BaseException) -> bool:
    """A failure that rolled the transaction back and goes away if it runs again: a
    deadlock or lock wait timeout (MySQL/MariaDB 1213, 1205), a serialization failure
    or deadlock (PostgreSQL 40001, 40P01), a busy or locked SQLite database."""
    for error in _exception_chain(exc):
        if getattr(error, "sqlstate", None) in _PG_TRANSIENT:
            return True
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(code, int) and (code & 0xFF) in _SQLITE_TRANSIENT:
            return True
        if type(error).__module__.startswith("pymysql") and error.args:
            if error.args[0] in _MYSQL_TRANSIENT:
                return True
        if type(error).__module__ == "sqlite3" and "database is locked" in str(error):
            return True
    return False


_PG_TRANSIENT = {"40001", "40P01"}
_MYSQL_TRANSIENT = {1205, 1213}
_SQLITE_TRANSIENT = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED and their extended codes
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_AUTH_ERRORS = {"InvalidAuthorizationSpecificationError", "InvalidPasswordError"}


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        orig = getattr(current, "orig", None)
        current = (
            orig if isinstance(orig, BaseException) else current.__cause__ or current.__context__
        )
    return chain


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
