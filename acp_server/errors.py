"""Errors that reach the client as JSON-RPC error responses.

Every layer raises these (or lets the transport turn anything else into -32603); the
message is written for the person reading the editor's error pop-up.
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


class RpcError(Exception):
    code = INTERNAL_ERROR

    def __init__(self, message: str, *, data: Any = None, code: int | None = None):
        super().__init__(message)
        self.message = message
        self.data = data
        if code is not None:
            self.code = code


class InvalidParams(RpcError):
    code = INVALID_PARAMS


class InvalidRequest(RpcError):
    code = INVALID_REQUEST


class MethodNotFound(RpcError):
    code = METHOD_NOT_FOUND


class ResourceNotFound(RpcError):
    code = RESOURCE_NOT_FOUND


class SessionNotFound(ResourceNotFound):
    def __init__(self, session_id: str):
        super().__init__(
            f"session {session_id!r} not found; it may have been deleted. "
            "Start a new session or pick one from session/list",
            data={"sessionId": session_id},
        )


class InternalError(RpcError):
    code = INTERNAL_ERROR
