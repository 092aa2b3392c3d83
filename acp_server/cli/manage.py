"""The management commands: everything but ``serve``.

They work on the stored database the settings name, print their results to stdout, and
end a failure with one line on stderr: exit code 2 for bad usage, a bad setting or a
database that cannot be used, 1 for a session that does not exist (and for ``doctor``
finding a problem). Read-only commands never change the schema: a database nobody has
initialised simply holds no sessions, and one at another schema revision is refused
with the fix. ``sessions import`` migrates first, as ``serve`` does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acp_server.cli.common import CommandError, local_time, one_line, out, print_json, table
from acp_server.config.settings import Settings

if TYPE_CHECKING:
    from acp_server.sessions.model import SessionRecord
    from acp_server.storage.store import SessionStore

Handler = Callable[[argparse.Namespace, Settings], Awaitable[int]]


def run(command: str, args: argparse.Namespace, settings: Settings) -> int:
    """Run one management command; returns the process exit status."""
    import anyio

    _tolerant_stdout()
    name, handler = _handler(command, args)
    try:
        if settings.session_service.type == "memory" and command != "doctor":
            raise CommandError(
                f"'acp-server {name}' works on the stored sessions, but memory mode "
                "(--memory or ACP_SERVER_SESSION_STORE=memory) stores nothing; run it "
                "without memory mode, naming the database with --database-url if needed"
            )
        return anyio.run(handler, args, settings)
    except CommandError as exc:
        return _fail(str(exc), exc.code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. ``sessions list | head``
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        return _fail(_describe(exc), 2)


def _handler(command: str, args: argparse.Namespace) -> tuple[str, Handler]:
    action = {
        "db": getattr(args, "db_command", None),
        "sessions": getattr(args, "sessions_command", None),
        "retention": getattr(args, "retention_command", None),
    }.get(command)
    name = f"{command} {action}" if action else command
    handler = HANDLERS.get(name)
    if handler is None:
        raise SystemExit(_fail(f"unknown command {name!r}; see 'acp-server --help'", 2))
    return name, handler


def _fail(message: str, code: int) -> int:
    print(f"acp-server: {message}", file=sys.stderr)
    return code


def _describe(exc: BaseException) -> str:
    """One line for an error no command anticipated (never a traceback)."""
    from acp_server.logs import get_logger
    from acp_server.storage.engine import StorageError

    if isinstance(exc, StorageError):
        return str(exc)
    get_logger("acp_server.cli").debug("command failed", exc_info=exc)
    detail = _first_line(getattr(exc, "orig", None) or exc)
    if type(exc).__module__.startswith("sqlalchemy"):
        return f"the database failed ({detail}); check that it is reachable and try again"
    return f"unexpected error: {type(exc).__name__}: {detail} (rerun with --log-level debug)"


def _first_line(exc: object) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _tolerant_stdout() -> None:
    """Never fail on a character the terminal's encoding lacks (titles, ✓/✗)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")


# opening the database


def database_url(settings: Settings) -> str:
    from acp_server.config.loader import default_database_url

    return settings.session_service.database_url or default_database_url()


def _missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file ``url`` names when it does not exist yet (nothing stored)."""
    from acp_server.storage.engine import normalize_url, sqlite_path

    path = sqlite_path(normalize_url(url))
    return path if path is not None and not path.exists() else None


@asynccontextmanager
async def open_store(
    settings: Settings, *, migrate: bool = False, say_empty: bool = False
) -> AsyncIterator[SessionStore]:
    """The session store. Without ``migrate`` the schema is left alone: a database never
    initialised behaves as an empty one (an empty in-memory store stands in; with
    ``say_empty`` a note on stderr says so), and one at another revision is refused."""
    from acp_server.storage.engine import redact
    from acp_server.storage.migrate import HEAD_REVISION, current
    from acp_server.storage.store import SessionStore

    url = database_url(settings)
    missing = None if migrate else _missing_sqlite_file(url)
    if missing is not None:
        store = await SessionStore.open(None, memory=True)
        if say_empty:
            _note(f"{missing} does not exist yet, so it holds no sessions")
    else:
        store = await SessionStore.open(url, migrate=migrate)
        if not migrate:
            try:
                revision = await current(store.engine)
            except BaseException:
                await store.close()
                raise
            if revision is None:
                if say_empty:
                    _note(f"database {redact(url)} is not initialised, so it holds no sessions")
                await store.close()
                store = await SessionStore.open(None, memory=True)
            elif revision != HEAD_REVISION:
                await store.close()
                raise CommandError(schema_problem(redact(url), revision))
    try:
        yield store
    finally:
        await store.close()


def schema_problem(url_redacted: str, revision: str) -> str:
    """What is wrong with a schema at ``revision`` (not HEAD), and the fix."""
    from acp_server.storage.migrate import HEAD_REVISION

    if revision_known(revision):
        return (
            f"database {url_redacted} is at schema revision {revision}, older than this "
            f"acp-server's {HEAD_REVISION}; run 'acp-server db upgrade' (serve also upgrades it)"
        )
    return (
        f"database {url_redacted} is at schema revision {revision}, newer than this "
        f"acp-server knows ({HEAD_REVISION}); upgrade acp-server"
    )


def revision_known(revision: str) -> bool:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError as AlembicError

    from acp_server.storage.migrate import alembic_config

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except AlembicError:
        return False


def _note(text: str) -> None:
    print(f"acp-server: note: {text}", file=sys.stderr)


def not_found(session_id: str) -> str:
    return f"no session {session_id!r}; 'acp-server sessions list --all' shows the stored ones"


def _absolute(path: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


# db


async def db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from acp_server.storage.engine import check_connection, create_engine, normalize_url, redact
    from acp_server.storage.migrate import current, upgrade

    text = database_url(settings)
    url = normalize_url(text)
    engine = create_engine(url)
    try:
        await check_connection(engine, url)
        before = await current(engine)
        await upgrade(engine)
        after = await current(engine)
    finally:
        await engine.dispose()
    change = "" if before == after else f" (was {before or 'not initialised'})"
    out(f"database {redact(text)} is at revision {after}{change}")
    return 0


async def db_current(args: argparse.Namespace, settings: Settings) -> int:
    from acp_server.storage.engine import check_connection, create_engine, normalize_url, redact
    from acp_server.storage.migrate import HEAD_REVISION, current

    text = database_url(settings)
    if _missing_sqlite_file(text) is not None:
        out("not initialised")
        return 0
    url = normalize_url(text)
    engine = create_engine(url)
    try:
        await check_connection(engine, url)
        revision = await current(engine)
    finally:
        await engine.dispose()
    out(revision or "not initialised")
    if revision != HEAD_REVISION:
        _note(
            f"this acp-server uses revision {HEAD_REVISION} of {redact(text)}; "
            "'acp-server db upgrade' (or starting the server) brings it there"
            if revision is None or revision_known(revision)
            else schema_problem(redact(text), revision)
        )
    return 0


# sessions


async def sessions_list(args: argparse.Namespace, settings: Settings) -> int:
    from acp_server.sessions.model import LISTED_TYPES, SessionType

    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    cwd = _absolute(args.cwd) if args.cwd else None
    types = tuple(SessionType) if args.all else LISTED_TYPES
    async with open_store(settings, say_empty=True) as store:
        records, more = await store.list_sessions(cwd=cwd, types=types, limit=args.limit)
        total = await store.count_sessions(cwd=cwd, types=types) if more else len(records)
    if args.json:
        from acp_server.cli.export import session_json

        print_json({"sessions": [session_json(r) for r in records], "total": total})
        return 0
    if not records:
        out("no sessions" + (f" in {cwd}" if cwd else ""))
        return 0
    headers = ["ID", "UPDATED", "TITLE", "MESSAGES", "CWD"]
    rows: list[list[Any]] = [
        [r.id, local_time(r.updated_at), one_line(r.title, 40) or "-", r.message_count, r.cwd]
        for r in records
    ]
    if args.all:
        headers.insert(1, "TYPE")
        for row, record in zip(rows, records, strict=True):
            row.insert(1, record.type.value)
    out(table(headers, rows, right=[headers.index("MESSAGES")]))
    if more:
        out(f"({len(records)} of {total} sessions shown; --limit {total} shows all)")
    return 0


async def sessions_show(args: argparse.Namespace, settings: Settings) -> int:
    from acp_server.cli import export

    missing = 0
    shown = 0
    async with open_store(settings) as store:
        for session_id in args.session_ids:
            record = await store.get_session(session_id)
            if record is None:
                _fail(not_found(session_id), 1)
                missing += 1
                continue
            items = await store.load_items(session_id)
            turns = await store.list_turns(session_id)
            if args.json:
                state = await store.get_extension_state(session_id)
                print_json(export.document(record, items, turns, state))
            else:
                out(("\n" if shown else "") + export.to_text(record, items, turns), end="")
            shown += 1
    return 1 if missing else 0


async def sessions_delete(args: argparse.Namespace, settings: Settings) -> int:
    missing = 0
    async with open_store(settings) as store:
        for session_id in args.session_ids:
            if await store.delete_session(session_id):
                out(f"deleted session {session_id}")
            else:
                _fail(not_found(session_id), 1)
                missing += 1
    return 1 if missing else 0


async def sessions_rename(args: argparse.Namespace, settings: Settings) -> int:
    title = " ".join(args.title.split()) or None
    async with open_store(settings) as store:
        if not await store.update(args.session_id).title(title, by_user=True).apply():
            raise CommandError(not_found(args.session_id), 1)
    if title is None:
        out(f"cleared the title of session {args.session_id}; an automatic one may follow")
    else:
        out(f"renamed session {args.session_id} to {title!r}")
    return 0


async def _exportable(
    store: SessionStore, session_id: str
) -> tuple[SessionRecord, list[Any], list[Any], dict[str, Any]]:
    record = await store.get_session(session_id)
    if record is None:
        raise CommandError(not_found(session_id), 1)
    items = await store.load_items(session_id)
    turns = await store.list_turns(session_id)
    return record, items, turns, await store.get_extension_state(session_id)


async def sessions_export(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from acp_server.cli import export

    async with open_store(settings) as store:
        record, items, turns, state = await _exportable(store, args.session_id)
    if args.format == "json":
        data = export.document(record, items, turns, state)
        text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        text = export.to_markdown(record, items, turns)
    if not args.output or args.output == "-":
        sys.stdout.write(text)
    else:
        path = _write(args.output, text)
        out(f"exported session {record.id} as {args.format} to {path}")
    return 0


def _write(output: str, text: str) -> Path:
    path = Path(output).expanduser()
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


async def sessions_import(args: argparse.Namespace, settings: Settings) -> int:
    from acp_server.cli import export

    parsed = export.read_export(args.file)
    record, turns, items, state = export.as_new_session(parsed)
    async with open_store(settings, migrate=True) as store:
        await store.import_session(record, turns=turns, items=items, extension_state=state)
    out(record.id)
    return 0


async def sessions_insights(args: argparse.Namespace, settings: Settings) -> int:
    from acp_server.cli import insights

    async with open_store(settings, say_empty=True) as store:
        report = await insights.collect(store)
    if args.json:
        print_json(report)
    else:
        out(insights.to_text(report), end="")
    return 0


# retention


async def retention_run(args: argparse.Namespace, settings: Settings) -> int:
    from acp_server.retention import run_retention
    from acp_server.sessions.model import now_ms

    policy = settings.data_retention
    async with open_store(settings) as store:
        turns, feedback = await run_retention(store, policy, now_ms())
    out(
        f"deleted {turns} turn{'s' * (turns != 1)} (with their messages) older than "
        f"{policy.task_retention_days} days"
    )
    out(
        f"deleted {feedback} feedback entr{'ies' if feedback != 1 else 'y'} older than "
        f"{policy.feedback_retention_days} days"
    )
    if not policy.enabled:
        out(
            "scheduled retention is off (data_retention.enabled / DATA_RETENTION_ENABLED); "
            "this run was by hand"
        )
    return 0


# doctor


async def doctor(args: argparse.Namespace, settings: Settings) -> int:
    checks: list[tuple[bool, str]] = [_check_config(args), _check_provider(settings)]
    if settings.session_service.type == "memory":
        checks.append((True, "session store: memory; nothing is written anywhere"))
    else:
        checks.extend(await _check_database(database_url(settings)))
    checks.append(_check_data_dir())
    policy = settings.data_retention
    checks.append(
        (
            True,
            f"data retention: on; turns after {policy.task_retention_days} days, feedback "
            f"after {policy.feedback_retention_days} days, every "
            f"{policy.cleanup_interval_hours:g} hours"
            if policy.enabled
            else "data retention: off; sessions are kept until deleted "
            "('acp-server retention run' cleans up by hand)",
        )
    )
    for ok, text in checks:
        out(f"{'✓' if ok else '✗'} {text}")
    problems = sum(not ok for ok, _ in checks)
    out(f"{problems} problem{'s' * (problems > 1)} found" if problems else "all checks passed")
    return 1 if problems else 0


def _check_config(args: argparse.Namespace) -> tuple[bool, str]:
    from acp_server.config.loader import user_config_file

    given = getattr(args, "config", None) or os.environ.get("ACP_SERVER_CONFIG")
    if given:
        return True, f"config file: {Path(given).expanduser()} (read and valid)"
    default = user_config_file()
    if default.is_file():
        return True, f"config file: {default} (read and valid)"
    return True, (
        f"config file: none at {default}; using defaults, environment variables and flags"
    )


def _check_provider(settings: Settings) -> tuple[bool, str]:
    provider = settings.provider
    model = provider.model or "its default model"
    name = provider.name
    if name == "echo":
        return True, (
            "provider: echo (repeats prompts; set ACP_SERVER_PROVIDER=openai or anthropic "
            "with an API key to use a model)"
        )
    if name.startswith("script:"):
        from acp_server.preflight import provider_problem

        problem = provider_problem(settings)
        if problem is not None:
            return False, f"provider: {problem}"
        return True, f"provider: script {Path(name.removeprefix('script:')).expanduser()}"
    variable = "OPENAI_API_KEY" if name == "openai" else "ANTHROPIC_API_KEY"
    where = f" at {provider.base_url}" if provider.base_url else ""
    if provider.api_key is not None and provider.api_key.get_secret_value():
        return True, f"provider: {name}{where}, {model}; API key set"
    if name == "openai" and provider.base_url:
        return True, (
            f"provider: openai-compatible{where}, {model}; no API key set (fine for a local "
            f"server; otherwise set {variable})"
        )
    return False, (
        f"provider: {name}, {model}; no API key set; set {variable} or provider.api_key "
        "in the config file"
    )


async def _check_database(url_text: str) -> list[tuple[bool, str]]:
    from acp_server.storage.engine import (
        StorageError,
        check_connection,
        create_engine,
        normalize_url,
        redact,
        sqlite_path,
    )
    from acp_server.storage.migrate import HEAD_REVISION, MigrationError, check

    try:
        url = normalize_url(url_text)
    except StorageError as exc:
        return [(False, f"database: {exc}")]
    shown = redact(url_text)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        if _creatable(path.parent):
            return [
                (True, f"database: {shown} does not exist yet; it is created at first start"),
                (True, f"schema: not initialised; the server applies revision {HEAD_REVISION}"),
            ]
        return [
            (
                False,
                f"database: cannot create {path}: {_existing_parent(path.parent)} is not "
                "writable; choose another --database-url / ACP_SERVER_DATABASE_URL",
            )
        ]
    # The checks start-up makes before it migrates, run by the same code, changing nothing.
    engine = None
    try:
        engine = create_engine(url)
        await check_connection(engine, url)
        checks = [(True, f"database: {shown} is reachable")]
        revision = await check(engine)
    except MigrationError as exc:
        return [*checks, (False, f"schema: {exc}")]
    except Exception as exc:
        return [(False, f"database: {_describe(exc)}")]
    finally:
        if engine is not None:
            await engine.dispose()
    later = f"the server (or 'acp-server db upgrade') brings it to {HEAD_REVISION}"
    if revision == HEAD_REVISION:
        checks.append((True, f"schema: revision {revision}, current"))
    elif revision is None:
        checks.append((True, f"schema: not initialised; {later}"))
    else:
        checks.append((True, f"schema: revision {revision}; {later}"))
    return checks


def _check_data_dir() -> tuple[bool, str]:
    from acp_server.config.loader import user_data_dir

    directory = user_data_dir()
    if directory.is_dir():
        if os.access(directory, os.W_OK | os.X_OK):
            return True, f"data dir: {directory} is writable"
        return False, f"data dir: {directory} is not writable; fix it or set XDG_DATA_HOME"
    if _creatable(directory):
        return True, f"data dir: {directory} does not exist yet; it is created when needed"
    return False, (
        f"data dir: cannot create {directory} ({_existing_parent(directory)} is not writable); "
        "fix its permissions or set XDG_DATA_HOME"
    )


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _creatable(directory: Path) -> bool:
    parent = _existing_parent(directory)
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


HANDLERS: dict[str, Handler] = {
    "db upgrade": db_upgrade,
    "db current": db_current,
    "sessions list": sessions_list,
    "sessions show": sessions_show,
    "sessions delete": sessions_delete,
    "sessions rename": sessions_rename,
    "sessions export": sessions_export,
    "sessions import": sessions_import,
    "sessions insights": sessions_insights,
    "retention run": retention_run,
    "doctor": doctor,
}
