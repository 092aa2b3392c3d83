"""structlog, writing to stderr only: stdout belongs to the protocol.

structlog is imported and configured on the first log call, not at start-up: the
server usually answers ``initialize`` before it has anything to say.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_SECRET_KEYS = ("api_key", "apikey", "authorization", "password", "secret", "token")
_wanted = {"level": "info", "format": "console"}
_configured = False


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
    handler = logging.StreamHandler(sys.stderr)
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
            wrapper_class=structlog.make_filtering_bound_logger(
                _LEVELS.get(_wanted["level"], logging.INFO)
            ),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
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
