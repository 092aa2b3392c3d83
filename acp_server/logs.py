"""structlog, writing to stderr only: stdout belongs to the protocol.

structlog is imported and configured on the first log call, not at start-up: the
server usually answers ``initialize`` before it has anything to say.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO, cast

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_SECRET_KEYS = ("api_key", "apikey", "authorization", "password", "secret", "token")
_wanted = {"level": "info", "format": "console"}
_configured = False
_stream: ContextVar[TextIO | None] = ContextVar("acp_server_log_stream", default=None)


class _Stderr:
    """sys.stderr, or the stream ``to_stream`` chose for this context, looked up at
    each write: loggers are cached on first use."""

    def write(self, text: str) -> int:
        return (_stream.get() or sys.stderr).write(text)

    def flush(self) -> None:
        (_stream.get() or sys.stderr).flush()


_stderr = cast(TextIO, _Stderr())  # all of TextIO that logging and structlog use


def to_stream(stream: TextIO) -> None:
    """Send this context's log lines (its tasks' and worker threads' too) to ``stream``:
    a test running the server inside its own event loop reads that server's log there."""
    _stream.set(stream)


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(marker in key.lower() for marker in _SECRET_KEYS):
            event[key] = "***"
    return event


def configure(level: str = "info", fmt: str = "console") -> None:
    """Choose level and format; the stdlib's loggers (libraries) go to stderr at once."""
    global _configured
    _wanted.update(level=level, format=fmt)
    _configured = False
    handler = logging.StreamHandler(_stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS.get(level, logging.INFO), logging.WARNING))


def _structlog() -> Any:
    global _configured
    import structlog

    if not _configured:
        fmt = _wanted["format"]
        renderer: Any = (
            structlog.processors.JSONRenderer()
            if fmt == "json"
            else structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        )
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                _drop_secrets,
                structlog.processors.format_exc_info
                if fmt == "json"
                else structlog.processors.StackInfoRenderer(),
                renderer,
            ],
            # _Logger checks the level on each call, so a logger cached before
            # configure() changed it still obeys.
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            logger_factory=structlog.PrintLoggerFactory(file=_stderr),
            cache_logger_on_first_use=True,
        )
        _configured = True
    return structlog


class _Logger:
    """A named logger that becomes a structlog logger on first use."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str):
        self._name = name
        self._logger: Any = None

    def __getattr__(self, method: str) -> Any:
        if _LEVELS.get(method, logging.CRITICAL) < _LEVELS.get(_wanted["level"], logging.INFO):
            return _ignore
        if self._logger is None:
            self._logger = _structlog().get_logger(self._name)
        return getattr(self._logger, method)


def _ignore(*args: Any, **kwargs: Any) -> None:
    """A call below the configured level: not even structlog is imported for it."""


def get_logger(name: str) -> Any:
    return _Logger(name)
