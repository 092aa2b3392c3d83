"""structlog, writing to stderr only: stdout belongs to the protocol.

structlog is imported and configured on the first log call, not at start-up: the
server usually answers ``initialize`` before it has anything to say.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TextIO, cast

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

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


def _structlog(name: str) -> FilteringBoundLogger:
    global _configured
    import structlog

    if not _configured:
        fmt = _wanted["format"]
        renderer: structlog.typing.Processor = (
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
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger


class Logger:
    """A named logger that becomes a structlog logger on first use; a call below the
    configured level imports nothing."""

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str):
        self._name = name
        self._logger: FilteringBoundLogger | None = None

    def _bound(self, level: str) -> FilteringBoundLogger | None:
        if _LEVELS[level] < _LEVELS.get(_wanted["level"], logging.INFO):
            return None
        if self._logger is None:
            self._logger = _structlog(self._name)
        return self._logger

    def debug(self, event: str, **fields: object) -> None:
        if (logger := self._bound("debug")) is not None:
            logger.debug(event, **fields)

    def info(self, event: str, **fields: object) -> None:
        if (logger := self._bound("info")) is not None:
            logger.info(event, **fields)

    def warning(self, event: str, **fields: object) -> None:
        if (logger := self._bound("warning")) is not None:
            logger.warning(event, **fields)

    def error(self, event: str, **fields: object) -> None:
        if (logger := self._bound("error")) is not None:
            logger.error(event, **fields)

    def exception(self, event: str, **fields: object) -> None:
        """An error with the traceback of the exception being handled."""
        if (logger := self._bound("error")) is not None:
            logger.exception(event, **fields)


def get_logger(name: str) -> Logger:
    return Logger(name)
