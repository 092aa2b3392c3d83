"""The ``acp-server`` command line.

``serve`` is the default and the hot path: it imports only what answering
``initialize`` needs; every other command imports its own module when chosen.
Settings errors end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from acp_server import __version__

COMMANDS = ("serve", "db", "sessions", "retention", "doctor")


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (default: acp-server.yaml in the user config dir)",
    )
    parser.add_argument("--database-url", metavar="URL", help="SQLAlchemy-style database URL")
    parser.add_argument(
        "--memory", action="store_true", default=None, help="keep sessions in memory; write nothing"
    )
    parser.add_argument("--provider", help="openai, anthropic, echo or script:PATH")
    parser.add_argument("--model", help="the model to use (default: the provider's)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["console", "json"])


def build_parser(*, serve_only: bool = False) -> argparse.ArgumentParser:
    """The whole command line; ``serve_only`` leaves out the management commands, whose
    dozen subparsers cost ~10 ms that an editor's spawn should not pay."""
    parser = argparse.ArgumentParser(
        prog="acp-server",
        description=(
            "An Agent Client Protocol (ACP v1) agent server; "
            "editors spawn it and speak ACP over stdio."
        ),
    )
    parser.add_argument("--version", action="version", version=f"acp-server {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="serve ACP v1 over stdin/stdout until stdin closes (the default)"
    )
    _settings_flags(serve)
    if serve_only:
        return parser

    db = sub.add_parser("db", help="database schema migrations")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for name, text in (
        ("upgrade", "apply pending migrations"),
        ("current", "show the schema version"),
    ):
        _settings_flags(db_sub.add_parser(name, help=text))

    sessions = sub.add_parser("sessions", help="inspect and manage stored sessions")
    s_sub = sessions.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)
    p = s_sub.add_parser("list", help="list sessions, most recent first")
    _settings_flags(p)
    p.add_argument("--cwd", help="only sessions of this working directory")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--all", action="store_true", help="include subagent and hidden sessions")
    p.add_argument("--json", action="store_true", help="print JSON")
    for name, text in (
        ("show", "show one session and its conversation"),
        ("delete", "delete sessions"),
    ):
        p = s_sub.add_parser(name, help=text)
        _settings_flags(p)
        p.add_argument("session_ids", nargs="+", metavar="SESSION_ID")
        if name == "show":
            p.add_argument("--json", action="store_true", help="print JSON")
    p = s_sub.add_parser("rename", help="set a session's title")
    _settings_flags(p)
    p.add_argument("session_id")
    p.add_argument("title")
    p = s_sub.add_parser("export", help="export a session as JSON or Markdown")
    _settings_flags(p)
    p.add_argument("session_id")
    p.add_argument("--format", choices=["json", "markdown"], default="json")
    p.add_argument("--output", "-o", help="file to write (default: stdout)")
    p = s_sub.add_parser("import", help="import a session exported as JSON (it gets a new id)")
    _settings_flags(p)
    p.add_argument("file")
    p = s_sub.add_parser("insights", help="aggregated statistics by day, model and directory")
    _settings_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    retention = sub.add_parser("retention", help="data retention")
    r_sub = retention.add_subparsers(dest="retention_command", metavar="ACTION", required=True)
    _settings_flags(r_sub.add_parser("run", help="run the retention cleanup once, now"))

    _settings_flags(sub.add_parser("doctor", help="check configuration, database and schema"))
    return parser


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line values as dotted settings paths (absent flags are None)."""
    memory = getattr(args, "memory", None)
    return {
        "session_service.database_url": getattr(args, "database_url", None),
        "session_service.type": "memory" if memory else None,
        "provider.name": getattr(args, "provider", None),
        "provider.model": getattr(args, "model", None),
        "logging.level": getattr(args, "log_level", None),
        "logging.format": getattr(args, "log_format", None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    # pydantic scans every installed distribution's entry points for plugins at import
    # (~25 ms); this process uses none.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["serve", *argv]
    args = build_parser(serve_only=argv[0] == "serve").parse_args(argv)
    command = args.command or "serve"

    from acp_server.config.loader import ConfigError, load_settings

    try:
        settings = load_settings(flags_of(args), config_file=getattr(args, "config", None))
    except ConfigError as exc:
        if command == "doctor":
            sys.stdout.write(f"✗ configuration: {exc}\n")  # doctor's report
            return 1
        print(f"acp-server: {exc}", file=sys.stderr)
        return 2

    from acp_server import logs

    logs.configure(settings.logging.level, settings.logging.format)

    if command == "serve":
        import anyio

        from acp_server.server import serve

        try:
            code = anyio.run(serve, settings)
        except KeyboardInterrupt:
            code = 130
        # Everything is stored, closed and flushed by now; tearing down the interpreter
        # (pydantic, SQLAlchemy) would cost another 0.2-0.5 s, and editors that send
        # SIGTERM soon after closing stdin would kill us mid-teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    from acp_server.cli import manage

    return manage.run(command, args, settings)
