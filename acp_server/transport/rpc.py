"""Bidirectional JSON-RPC 2.0 over a line channel.

Incoming requests and notifications are dispatched by jsonrpcserver, each request in
its own task so a long ``session/prompt`` never blocks ``session/cancel``. Every line is
parsed once (orjson) and handed to jsonrpcserver through its ``deserializer`` hook, and
its per-message JSON-Schema validation is replaced by the cheap envelope check below.
The agent's own requests to the client (permission, fs, terminal) are matched to their
responses by id. The transport knows JSON-RPC only; handlers are plain coroutines.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import orjson
from jsonrpcserver import JsonRpcError, Success, async_dispatch_to_response
from jsonrpcserver.response import SuccessResponse
from jsonrpcserver.result import Result
from jsonrpcserver.sentinels import NODATA

from acp_server import errors
from acp_server.logs import get_logger
from acp_server.transport.stdio import Oversized, StdioChannel

log = get_logger("acp_server.rpc")

CANCEL_REQUEST = "$/cancel_request"
RequestId = int | str | None


@dataclass(slots=True)
class RequestContext:
    """What a handler knows about the request it serves."""

    connection: Connection
    request_id: RequestId
    method: str
    after_response: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def then(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` once the response has been written (e.g. updates a client
        may only accept after it knows the session)."""
        self.after_response.append(callback)


Handler = Callable[[RequestContext, dict[str, Any]], Awaitable[Any]]


class PeerError(Exception):
    """The client answered one of our requests with an error."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.data = data


class ConnectionClosed(Exception):
    """The client went away while we waited for its answer."""


@dataclass(slots=True)
class _Waiter:
    event: anyio.Event = field(default_factory=anyio.Event)
    message: dict[str, Any] | None = None


def _adapt(handler: Handler) -> Callable[..., Awaitable[Result]]:
    """Wrap a handler in the calling convention jsonrpcserver expects, and turn every
    exception into a JSON-RPC error a person can read (details only in the log)."""

    async def method(ctx: RequestContext, *args: Any, **params: Any) -> Result:
        if args:
            raise JsonRpcError(errors.INVALID_PARAMS, "Invalid params: params must be an object")
        try:
            result = await handler(ctx, params)
        except errors.RpcError as exc:
            raise JsonRpcError(
                exc.code, exc.message, NODATA if exc.data is None else exc.data
            ) from None
        except Exception:
            log.exception("request failed", method=ctx.method, request_id=ctx.request_id)
            raise JsonRpcError(
                errors.INTERNAL_ERROR,
                "Internal error: the server hit an unexpected problem (details are in its log)",
            ) from None
        return Success({} if result is None else result)

    return method


_BATCH_BYTES = 256 * 1024


@functools.cache
def _notification_prefix(method: str) -> bytes:
    return b'{"jsonrpc":"2.0","method":' + orjson.dumps(method) + b',"params":'


def _encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


def _error(request_id: RequestId, code: int, message: str, data: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return _encode({"jsonrpc": "2.0", "id": request_id, "error": error})


def _envelope_problem(message: dict[str, Any]) -> str | None:
    """The JSON-RPC 2.0 request rules jsonrpcserver's schema would check, done cheaply."""
    if message.get("jsonrpc") != "2.0":
        return 'Invalid request: "jsonrpc" must be "2.0"'
    if not isinstance(message.get("method"), str):
        return 'Invalid request: "method" must be a string'
    if "id" in message and not (
        message["id"] is None
        or (isinstance(message["id"], str | int) and not isinstance(message["id"], bool))
    ):
        return 'Invalid request: "id" must be a string, a number or null'
    if "params" in message and not isinstance(message["params"], dict | list):
        return 'Invalid request: "params" must be an object'
    return None


class Connection:
    def __init__(self, channel: StdioChannel, handlers: Mapping[str, Handler]):
        self._channel = channel
        self._methods = {name: _adapt(handler) for name, handler in handlers.items()}
        self._inflight: dict[RequestId, anyio.CancelScope] = {}
        self._waiters: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._drained = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    # ---- sending --------------------------------------------------------------------

    async def notify(self, method: str, params: Mapping[str, Any] | bytes) -> None:
        """Send a notification; ``params`` may be pre-serialized JSON (the hot path)."""
        if isinstance(params, bytes):
            data = _notification_prefix(method) + params + b"}\n"
        else:
            data = _encode({"jsonrpc": "2.0", "method": method, "params": params})
        await self._channel.write(data)

    async def notify_many(self, method: str, params: Iterable[bytes]) -> None:
        """Send many pre-serialized notifications in order, a few writes for all of
        them (a ``session/load`` replay can be tens of thousands)."""
        prefix = _notification_prefix(method)
        batch: list[bytes] = []
        size = 0
        for item in params:
            batch.append(prefix + item + b"}\n")
            size += len(item)
            if size >= _BATCH_BYTES:
                await self._channel.write(b"".join(batch))
                batch, size = [], 0
        if batch:
            await self._channel.write(b"".join(batch))

    async def request(self, method: str, params: Mapping[str, Any]) -> Any:
        """Send a request to the client and wait for its result.

        Raises ``PeerError`` for an error answer and ``ConnectionClosed`` when stdin
        closes first. If the waiting task is cancelled, the client is told with
        ``$/cancel_request``.
        """
        if self._closed:
            raise ConnectionClosed(f"cannot send {method}: the client has disconnected")
        request_id = next(self._ids)
        waiter = self._waiters[request_id] = _Waiter()
        try:
            await self._channel.write(
                _encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            )
            await waiter.event.wait()
        except anyio.get_cancelled_exc_class():
            if not self._closed and waiter.message is None:
                with anyio.CancelScope(shield=True):
                    await self.notify(CANCEL_REQUEST, {"requestId": request_id})
            raise
        finally:
            self._waiters.pop(request_id, None)
        answer = waiter.message
        if answer is None:
            raise ConnectionClosed(f"the client disconnected before answering {method}")
        if "error" in answer:
            error = answer["error"] if isinstance(answer["error"], dict) else {}
            raise PeerError(
                int(error.get("code", errors.INTERNAL_ERROR)),
                str(error.get("message", "error")),
                error.get("data"),
            )
        return answer.get("result")

    # ---- receiving ------------------------------------------------------------------

    async def serve(
        self, *, on_eof: Callable[[], Awaitable[None]] | None = None, drain_seconds: float = 5.0
    ) -> None:
        """Read until EOF; then run ``on_eof`` (which stops long work such as turns),
        give in-flight requests ``drain_seconds`` to answer, and cancel the rest."""
        try:
            await self._serve(on_eof, drain_seconds)
        finally:
            await self._channel.flush(drain_seconds)

    async def _serve(
        self, on_eof: Callable[[], Awaitable[None]] | None, drain_seconds: float
    ) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._channel.run_writer)
            async for line in self._channel.lines():
                if isinstance(line, Oversized):
                    log.warning("oversized message dropped", size=line.size)
                    await self._channel.write(
                        _error(
                            None,
                            errors.INVALID_REQUEST,
                            f"Invalid request: message of {line.size} bytes exceeds the "
                            f"limit of {self._channel.max_line_bytes} bytes",
                        )
                    )
                    continue
                await self._receive(line, tg)
            self._closed = True
            for waiter in self._waiters.values():
                waiter.event.set()
            if on_eof is not None:
                await on_eof()
            if self._inflight:
                with anyio.move_on_after(drain_seconds):
                    await self._drained.wait()
            tg.cancel_scope.cancel()

    async def _receive(self, line: bytes, tg: anyio.abc.TaskGroup) -> None:
        if not line.strip():
            return
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            await self._channel.write(_error(None, errors.PARSE_ERROR, f"Parse error: {exc}"))
            return
        if isinstance(message, list):
            await self._channel.write(
                _error(
                    None,
                    errors.INVALID_REQUEST,
                    "Invalid request: batches are not supported by ACP",
                )
            )
            return
        if not isinstance(message, dict):
            await self._channel.write(
                _error(
                    None, errors.INVALID_REQUEST, "Invalid request: a message must be a JSON object"
                )
            )
            return
        if "method" not in message and ("result" in message or "error" in message):
            self._route_response(message)
            return
        problem = _envelope_problem(message)
        request_id = message.get("id") if isinstance(message.get("id"), int | str) else None
        if problem:
            if "id" in message or "method" not in message:
                await self._channel.write(_error(request_id, errors.INVALID_REQUEST, problem))
            return
        if "id" not in message:
            await self._notification(message)
            return
        if request_id in self._inflight:
            await self._channel.write(
                _error(
                    request_id,
                    errors.INVALID_REQUEST,
                    f"Invalid request: id {request_id!r} is already in use",
                )
            )
            return
        scope = self._inflight[request_id] = anyio.CancelScope()
        tg.start_soon(self._run_request, message, request_id, scope)

    def _route_response(self, message: dict[str, Any]) -> None:
        waiter = self._waiters.get(message.get("id"))  # type: ignore[arg-type]
        if waiter is None:
            log.warning("response to an unknown request dropped", id=message.get("id"))
            return
        waiter.message = message
        waiter.event.set()

    async def _notification(self, message: dict[str, Any]) -> None:
        method = message["method"]
        if method == CANCEL_REQUEST:
            params = message.get("params")
            target = params.get("requestId") if isinstance(params, dict) else None
            scope = self._inflight.get(target)
            if scope is not None:
                scope.cancel()
            return
        if method not in self._methods:
            log.debug("unknown notification ignored", method=method)
            return
        assert self._tg is not None
        self._tg.start_soon(self._dispatch, message, None)

    async def _run_request(
        self, message: dict[str, Any], request_id: RequestId, scope: anyio.CancelScope
    ) -> None:
        ctx: RequestContext | None = None
        try:
            with scope:
                ctx = await self._dispatch(message, request_id)
        finally:
            self._inflight.pop(request_id, None)
            if self._closed and not self._inflight:
                self._drained.set()
        if scope.cancelled_caught:
            await self._channel.write(
                _error(request_id, errors.REQUEST_CANCELLED, "Request cancelled")
            )
        if ctx is not None:
            for callback in ctx.after_response:
                await callback()

    async def _dispatch(self, message: dict[str, Any], request_id: RequestId) -> RequestContext:
        ctx = RequestContext(self, request_id, message["method"])
        response = await async_dispatch_to_response(
            "",
            self._methods,
            context=ctx,
            deserializer=lambda _: message,
            validator=lambda request: request,
        )
        if response is not None:
            await self._channel.write(_encode(_response_dict(response)))
        return ctx


def _response_dict(response: Any) -> dict[str, Any]:
    """jsonrpcserver's Either[ErrorResponse, SuccessResponse] as a JSON-RPC dict."""
    value = response._error if hasattr(response, "_error") else response._value
    if isinstance(value, SuccessResponse):
        return {"jsonrpc": "2.0", "id": value.id, "result": value.result}
    error: dict[str, Any] = {"code": value.code, "message": value.message}
    if value.data is not NODATA:
        error["data"] = value.data
    return {"jsonrpc": "2.0", "id": value.id, "error": error}
