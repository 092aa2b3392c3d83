"""Every error the server raises on purpose, under one root, with its JSON-RPC code.

The tree (each class says where it is raised)::

    AcpServerError                  code -32603 unless a subclass says otherwise
    ├── InvalidRequest              -32600  the message breaks a protocol rule
    ├── MethodNotFound              -32601
    ├── InvalidParams               -32602  names the field in ``data.field``
    ├── ResourceNotFound            -32002  e.g. a session not open on this connection
    │   └── SessionNotFound                 the session is not stored (or was deleted,
    │                                       also by another process in mid-turn)
    ├── InternalError               -32603
    ├── Unavailable                 -32603  the session database stopped answering
    ├── ConfigError                         a bad setting (start-up: exit code 2)
    ├── StorageError                        database URL, driver or migrations (start-up)
    ├── ProviderError                       the model provider failed after retries
    ├── ToolError                           a tool failed; the model reads the message
    └── PeerError, ConnectionClosed         the client answered an error, or left

``code_of`` is the one place an exception becomes a JSON-RPC error: what is not an
``AcpServerError`` is a bug, answered -32603 with a generic message (details go to the
log). Every message is written for the person reading the editor's pop-up.
"""

from __future__ import annotations

from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REQUEST_CANCELLED = -32800
AUTH_REQUIRED = -32000
RESOURCE_NOT_FOUND = -32002

UNEXPECTED = "Internal error: the server hit an unexpected problem (details are in its log)"


class AcpServerError(Exception):
    code = INTERNAL_ERROR

    def __init__(self, message: str, *, data: Any = None, code: int | None = None):
        super().__init__(message)
        self.message = message
        self.data = data
        if code is not None:
            self.code = code


class InvalidRequest(AcpServerError):
    code = INVALID_REQUEST


class MethodNotFound(AcpServerError):
    code = METHOD_NOT_FOUND


class InvalidParams(AcpServerError):
    code = INVALID_PARAMS


class ResourceNotFound(AcpServerError):
    code = RESOURCE_NOT_FOUND


class SessionNotFound(ResourceNotFound):
    def __init__(self, session_id: str):
        super().__init__(
            f"session {session_id!r} not found; it may have been deleted. "
            "Start a new session or pick one from session/list",
            data={"sessionId": session_id},
        )
        self.session_id = session_id


class InternalError(AcpServerError):
    code = INTERNAL_ERROR


class Unavailable(AcpServerError):
    """The session database stopped answering; its text is one line for a person."""


class ConfigError(AcpServerError):
    """A setting that cannot be used; its text is one line a person can act on."""


class StorageError(AcpServerError):
    """The database cannot be used as configured (URL, driver, migrations)."""


class ToolError(AcpServerError):
    """A failure the model should read (bad path, refused path, missing file...)."""


def code_of(exc: BaseException) -> tuple[int, str, Any]:
    """(code, message, data) of the JSON-RPC error that answers ``exc``."""
    if isinstance(exc, AcpServerError):
        return exc.code, exc.message, exc.data
    return INTERNAL_ERROR, UNEXPECTED, None
