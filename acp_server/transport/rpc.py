"""Bidirectional JSON-RPC 2.0 over a line channel.

Incoming requests are dispatched by jsonrpcserver, each in its own task so a long
``session/prompt`` never blocks ``session/cancel``; at most ``max_inflight`` run at once
and the rest wait in a queue bounded by bytes (past it a request is answered "busy" at
once), so a flood can neither exhaust memory nor starve the database pool. Responses and
notifications are never queued: an answer the client owes us always gets through. Every
line is parsed once (orjson) and handed to jsonrpcserver through its ``deserializer``
hook; its per-message JSON-Schema validation is replaced by the cheap envelope check
below. No input of any JSON type can end the read loop, and every request gets exactly
one response. The transport knows JSON-RPC only; handlers are plain coroutines.
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import orjson
from jsonrpcserver import JsonRpcError, Result, Success, async_dispatch_to_serializable

from acp_server import errors
from acp_server.logs import get_logger
from acp_server.transport.stdio import Oversized, StdioChannel

log = get_logger("acp_server.rpc")

CANCEL_REQUEST = "$/cancel_request"
RequestId = int | str | None
MAX_INFLIGHT = 32
MAX_QUEUED_BYTES = 16 << 20
MAX_DEPTH = 128
"""Deeper JSON than this is refused: nothing in ACP nests near it, and the JSON encoder
that stores a prompt gives up past 254 levels."""
_INT64 = 1 << 63


@dataclass(slots=True)
class RequestContext:
    """What a handler knows about the request it serves."""

    connection: Connection
    request_id: RequestId
    method: str
    after_response: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_cancel: Callable[[], None] | None = None
    """How ``$/cancel_request`` stops this request, when the handler has a gentler way
    than cancelling its task (a prompt turn ends as ``cancelled`` and stores its end)."""

    def then(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` once the response has been written (e.g. updates a client
        may only accept after it knows the session)."""
        self.after_response.append(callback)


Handler = Callable[[RequestContext, dict[str, Any]], Awaitable[Any]]


class PeerError(errors.AcpServerError):
    """The client answered one of our requests with an error."""

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message, data=data, code=code)


class ConnectionClosed(errors.AcpServerError):
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
        except Exception as exc:
            code, message, data = errors.code_of(exc)
            if not isinstance(exc, errors.AcpServerError):
                log.exception("request failed", method=ctx.method, request_id=ctx.request_id)
            elif code == errors.INTERNAL_ERROR:
                log.warning("request failed", method=ctx.method, error=message)
            if data is None:
                raise JsonRpcError(code, message) from None
            raise JsonRpcError(code, message, data) from None
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


def _valid_id(value: Any) -> bool:
    """ACP's RequestId: null, a string, or an integer within int64 (never a boolean)."""
    if value is None or isinstance(value, str):
        return True
    return type(value) is int and -_INT64 <= value < _INT64


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether containers nest deeper than ``limit``, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _envelope_problem(message: dict[str, Any]) -> tuple[int, str] | None:
    """The JSON-RPC 2.0 and ACP request rules, checked cheaply: (code, message)."""
    if message.get("jsonrpc") != "2.0":
        return errors.INVALID_REQUEST, 'Invalid request: "jsonrpc" must be "2.0"'
    if not isinstance(message.get("method"), str):
        return errors.INVALID_REQUEST, 'Invalid request: "method" must be a string'
    if "id" in message and not _valid_id(message["id"]):
        return (
            errors.INVALID_REQUEST,
            'Invalid request: "id" must be a string, an integer or null',
        )
    if "params" in message:
        params = message["params"]
        if not isinstance(params, dict):
            return errors.INVALID_PARAMS, "Invalid params: params must be an object"
        if _too_deep(params):
            return (
                errors.INVALID_PARAMS,
                f"Invalid params: nested more than {MAX_DEPTH} levels deep",
            )
    return None


@dataclass(slots=True, eq=False)
class _Request:
    """A request accepted from the client: waiting for a slot, or running."""

    message: dict[str, Any]
    id: RequestId
    size: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ctx: RequestContext | None = None
    started: bool = False


class Connection:
    def __init__(
        self,
        channel: StdioChannel,
        handlers: Mapping[str, Handler],
        *,
        notifications: Collection[str] = (),
        max_inflight: int = MAX_INFLIGHT,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
    ):
        self._channel = channel
        self._methods = {name: _adapt(handler) for name, handler in handlers.items()}
        self._notifications = frozenset(notifications)
        self._max_inflight = max_inflight
        self._max_queued_bytes = max_queued_bytes
        self._requests: dict[RequestId, _Request] = {}
        self._queue: deque[_Request] = deque()
        self._queued_bytes = 0
        self._running = 0
        self._waiters: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._drained = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._reading = anyio.CancelScope()

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
            code = error.get("code")
            raise PeerError(
                code if type(code) is int else errors.INTERNAL_ERROR,
                str(error.get("message", "error")),
                error.get("data"),
            )
        return answer.get("result")

    # ---- receiving ------------------------------------------------------------------

    async def serve(
        self, *, on_eof: Callable[[], Awaitable[None]] | None = None, drain_seconds: float = 5.0
    ) -> None:
        """Read until EOF; then run ``on_eof`` (which stops long work such as turns),
        give accepted requests ``drain_seconds`` to answer, and cancel the rest."""
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
            with self._reading:
                await self._read_all()
            self._closed = True
            for waiter in self._waiters.values():
                waiter.event.set()
            if on_eof is not None:
                await on_eof()
            if self._requests:
                with anyio.move_on_after(drain_seconds):
                    await self._drained.wait()
            # What the drain time did not reach is still answered, never dropped: the
            # queued requests here, the running ones as their tasks are cancelled.
            while self._queue:
                request = self._queue.popleft()
                del self._requests[request.id]
                await self._channel.write(
                    _error(
                        request.id,
                        errors.REQUEST_CANCELLED,
                        "Request cancelled: the server is shutting down",
                    )
                )
            tg.cancel_scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._closed or self._reading.cancel_called

    def stop_reading(self) -> None:
        """Behave as if stdin had closed (SIGTERM): the same orderly end as EOF."""
        self._reading.cancel()

    async def _read_all(self) -> None:
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
            try:
                await self._receive(line)
            except Exception:
                # Last line of defence: one message must never end the read loop.
                log.exception("message could not be handled", size=len(line))

    async def _receive(self, line: bytes) -> None:
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
        request_id = message.get("id") if _valid_id(message.get("id")) else None
        problem = _envelope_problem(message)
        if problem:
            if "id" in message or "method" not in message:
                await self._channel.write(_error(request_id, *problem))
            else:
                log.warning("malformed notification dropped", problem=problem[1])
            return
        if "id" not in message:
            await self._notification(message)
            return
        if request_id in self._requests:
            await self._channel.write(
                _error(
                    request_id,
                    errors.INVALID_REQUEST,
                    f"Invalid request: id {request_id!r} is already in use",
                )
            )
            return
        request = _Request(message, request_id, len(line))
        if self._running < self._max_inflight:
            self._start(request)
        elif self._queued_bytes + request.size <= self._max_queued_bytes:
            self._requests[request_id] = request
            self._queue.append(request)
            self._queued_bytes += request.size
        else:
            log.warning("request refused: queue full", queued=len(self._queue))
            await self._channel.write(
                _error(
                    request_id,
                    errors.INTERNAL_ERROR,
                    f"Server busy: {len(self._queue)} requests are already waiting; "
                    "send this one again once some have been answered",
                    {"busy": True},
                )
            )

    def _start(self, request: _Request) -> None:
        assert self._tg is not None
        self._requests[request.id] = request
        request.started = True
        self._running += 1
        self._tg.start_soon(self._run_request, request)

    def _route_response(self, message: dict[str, Any]) -> None:
        raw = message.get("id")
        key: int | None = None
        if type(raw) is int:
            key = raw
        elif isinstance(raw, str) and raw.isdecimal() and len(raw) < 20:
            key = int(raw)  # some clients echo our integer ids as strings
        waiter = self._waiters.get(key) if key is not None else None
        if waiter is None or waiter.message is not None:
            log.warning("response to an unknown request dropped", id=repr(raw)[:100])
            return
        waiter.message = message
        waiter.event.set()

    async def _notification(self, message: dict[str, Any]) -> None:
        method = message["method"]
        if method == CANCEL_REQUEST:
            params = message.get("params")
            target = params.get("requestId") if isinstance(params, dict) else None
            if _valid_id(target):
                await self._cancel(target)
            else:
                log.warning("$/cancel_request with an invalid requestId ignored")
            return
        if method in self._notifications:
            await self._dispatch(message, None)
        elif method in self._methods:
            log.warning("request sent as a notification ignored: it needs an id", method=method)
        else:
            log.debug("unknown notification ignored", method=method)

    async def _cancel(self, request_id: RequestId) -> None:
        request = self._requests.get(request_id)
        if request is None:
            return
        if not request.started:
            self._queue.remove(request)
            self._queued_bytes -= request.size
            del self._requests[request_id]
            await self._channel.write(
                _error(request_id, errors.REQUEST_CANCELLED, "Request cancelled")
            )
            self._check_drained()
        elif request.ctx is not None and request.ctx.on_cancel is not None:
            request.ctx.on_cancel()
        else:
            request.scope.cancel()

    async def _run_request(self, request: _Request) -> None:
        response: dict[str, Any] | None = None
        try:
            with request.scope:
                response = await self._dispatch(request.message, request.id, request)
        except anyio.get_cancelled_exc_class():
            # The server is stopping: this request is still answered, not dropped.
            with anyio.CancelScope(shield=True):
                await self._channel.write(
                    _error(
                        request.id,
                        errors.REQUEST_CANCELLED,
                        "Request cancelled: the server is shutting down",
                    )
                )
            raise
        finally:
            del self._requests[request.id]
            self._running -= 1
            while self._queue and self._running < self._max_inflight:
                queued = self._queue.popleft()
                self._queued_bytes -= queued.size
                self._start(queued)
            self._check_drained()
        if response is None:
            response = {
                "jsonrpc": "2.0",
                "id": request.id,
                "error": {"code": errors.REQUEST_CANCELLED, "message": "Request cancelled"},
            }
        await self._channel.write(_encode(response))
        if request.ctx is not None:
            for callback in request.ctx.after_response:
                await callback()

    def _check_drained(self) -> None:
        if self._closed and not self._requests:
            self._drained.set()

    async def _dispatch(
        self, message: dict[str, Any], request_id: RequestId, request: _Request | None = None
    ) -> dict[str, Any] | None:
        """Run the handler through jsonrpcserver; the response dict (None for a
        notification)."""
        ctx = RequestContext(self, request_id, message["method"])
        if request is not None:
            request.ctx = ctx
        response = await async_dispatch_to_serializable(
            "",
            self._methods,
            context=ctx,
            deserializer=lambda _: message,
            validator=lambda request: request,
        )
        assert not isinstance(response, list)
        return response
