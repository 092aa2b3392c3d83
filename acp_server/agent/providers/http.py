"""What the HTTP providers share: the client, SSE parsing, errors and retries.

httpx is imported when the first request is made, not with the provider: with its TLS
setup it costs ~60 ms that opening a session (which only asks for the model list)
should not pay.

Every failure leaves here as a ``ProviderError`` worded for the person at the editor:
which endpoint, what went wrong, which setting to check. Credentials never appear:
messages name the environment variable, never its value, and the endpoint's own error
text is scrubbed of anything that looks like a key.
"""

from __future__ import annotations

import email.utils
import errno
import random
import re
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import orjson

from acp_server.agent.providers.base import ProviderError, ProviderErrorKind, StreamEvent
from acp_server.config.settings import ProviderSettings

if TYPE_CHECKING:
    import httpx

# ---- client --------------------------------------------------------------------------


class Client:
    """One pooled httpx client per provider, made on its first request."""

    def __init__(self, settings: ProviderSettings):
        self._settings = settings
        self._client: httpx.AsyncClient | None = None

    def get(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            settings = self._settings
            # ``read`` bounds the silence between bytes.
            timeout = httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.request_timeout,
                write=settings.request_timeout,
                pool=settings.connect_timeout,
            )
            self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def display_url(url: str) -> str:
    """The URL without user info, query or fragment, safe to show and log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


# ---- server-sent events --------------------------------------------------------------


@dataclass(slots=True)
class SSEEvent:
    event: str
    data: str


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """Parse ``text/event-stream`` lines; an event is dispatched at each blank line."""
    event = ""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield SSEEvent(event or "message", "\n".join(data))


def parse_json(data: str) -> Any:
    """Parse one event payload; garbage from the endpoint is a server error."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProviderError(
            ProviderErrorKind.SERVER,
            f"the model endpoint sent data that is not JSON: {trim(data, 200)!r}",
            retryable=True,
        ) from None


INVALID_ARGUMENTS_KEY = "_raw"


def parse_arguments(text: str) -> dict[str, Any]:
    """Streamed tool-call arguments as an object.

    Text that is not a JSON object is passed on as ``{"_raw": text}`` rather than
    failing the turn: the tool rejects it and the model reads why and corrects itself.
    """
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {INVALID_ARGUMENTS_KEY: text}
    return value if isinstance(value, dict) else {INVALID_ARGUMENTS_KEY: text}


# ---- errors --------------------------------------------------------------------------


class HTTPProviderError(ProviderError):
    """A ``ProviderError`` that may carry the server's ``Retry-After`` in seconds."""

    def __init__(
        self,
        kind: ProviderErrorKind,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(kind, message, retryable=retryable)
        self.retry_after = retry_after


_KEYLIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}")
_CONTEXT_TOO_LONG = re.compile(
    r"context[_ ](length|window|size)|prompt is too long|too many tokens|maximum context"
    r"|input is too long|reduce the length",
    re.IGNORECASE,
)


def trim(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(slots=True)
class Endpoint:
    """How to name one configured endpoint in messages a person reads."""

    label: str
    """e.g. "the OpenAI-compatible endpoint"."""
    base_url: str
    key_env: str
    url_env: str
    api_key: str | None = field(repr=False)
    request_timeout: float
    connect_timeout: float

    @property
    def where(self) -> str:
        return f"{self.label} at {display_url(self.base_url)}"

    def scrub(self, text: str) -> str:
        if self.api_key:
            text = text.replace(self.api_key, "***")
        return _KEYLIKE.sub("sk-***", text)

    def status_error(self, status: int, body: bytes, headers: httpx.Headers) -> ProviderError:
        """Map an HTTP error response to a ``ProviderError``."""
        detail, code = _error_detail(body)
        detail = self.scrub(trim(detail)) if detail else ""
        said = f": {detail}" if detail else ""
        should_retry = headers.get("x-should-retry")
        if status in (401, 403):
            action = "check" if self.api_key else "set"
            return HTTPProviderError(
                ProviderErrorKind.AUTH,
                f"{self.where} rejected the API key ({status}); {action} {self.key_env}",
            )
        if status == 429:
            wait = retry_after_seconds(headers)
            hint = f"; it asks to wait {wait:g} s" if wait is not None else ""
            return HTTPProviderError(
                ProviderErrorKind.RATE_LIMIT,
                f"{self.where} is rate-limiting requests (429){said}{hint}",
                retryable=should_retry != "false",
                retry_after=wait,
            )
        too_long = code == "context_length_exceeded" or _CONTEXT_TOO_LONG.search(detail)
        if status == 413 or (status == 400 and too_long):
            return HTTPProviderError(
                ProviderErrorKind.CONTEXT_TOO_LONG,
                f"the conversation is too long for the model ({status}){said}",
            )
        if status == 408:
            return HTTPProviderError(
                ProviderErrorKind.TIMEOUT,
                f"{self.where} timed out handling the request (408){said}",
                retryable=should_retry != "false",
            )
        if status >= 500:
            what = "is overloaded" if status == 529 else f"failed with HTTP {status}"
            return HTTPProviderError(
                ProviderErrorKind.SERVER,
                f"{self.where} {what}{said}",
                retryable=should_retry != "false",
                retry_after=retry_after_seconds(headers),
            )
        if status == 404:
            return HTTPProviderError(
                ProviderErrorKind.BAD_REQUEST,
                f"{self.where} answered 404 (not found){said}; check {self.url_env} "
                "and the model name",
            )
        return HTTPProviderError(
            ProviderErrorKind.BAD_REQUEST,
            f"{self.where} rejected the request ({status}){said}",
            retryable=should_retry == "true",
        )

    def transport_error(self, exc: httpx.HTTPError) -> ProviderError:
        """Map a connection-level failure to a ``ProviderError``."""
        import httpx

        if isinstance(exc, httpx.ConnectTimeout):
            return ProviderError(
                ProviderErrorKind.UNREACHABLE,
                f"cannot reach {self.where}: no connection within "
                f"{self.connect_timeout:g} s; check {self.url_env} and the network",
                retryable=True,
            )
        if isinstance(exc, httpx.TimeoutException):
            return ProviderError(
                ProviderErrorKind.TIMEOUT,
                f"{self.where} sent nothing for {self.request_timeout:g} s; the model may "
                "be overloaded (the limit is provider.request_timeout)",
            )
        if isinstance(exc, httpx.ConnectError):
            return ProviderError(
                ProviderErrorKind.UNREACHABLE,
                f"cannot reach {self.where}: {_connect_reason(exc)}; check {self.url_env}",
                retryable=not _is_tls(exc),
            )
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return ProviderError(
                ProviderErrorKind.SERVER,
                f"{self.where} closed the connection before the answer was complete",
                retryable=True,
            )
        return ProviderError(
            ProviderErrorKind.UNREACHABLE,
            f"cannot talk to {self.where}: {self.scrub(trim(str(exc) or type(exc).__name__))}",
            retryable=True,
        )

    def ended_early(self) -> ProviderError:
        return ProviderError(
            ProviderErrorKind.SERVER,
            f"{self.where}: the stream ended early, before the model finished its answer",
            retryable=True,
        )

    def stream_error(self, payload: Any) -> ProviderError:
        """An error the endpoint reported inside an otherwise successful stream."""
        detail, _ = _error_detail(orjson.dumps(payload))
        overloaded = "overloaded" in detail.lower()
        return ProviderError(
            ProviderErrorKind.SERVER,
            f"{self.where} {'is overloaded' if overloaded else 'reported an error'}: "
            f"{self.scrub(trim(detail)) or 'no details'}",
            retryable=True,
        )

    @asynccontextmanager
    async def post_stream(
        self, client: Client, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """POST and yield the streaming response; every failure becomes a ProviderError."""
        import httpx

        try:
            async with client.get().stream(
                "POST", url, content=orjson.dumps(body), headers=headers
            ) as response:
                if response.status_code >= 400:
                    raise self.status_error(
                        response.status_code, await response.aread(), response.headers
                    )
                yield response
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None


def _error_detail(body: bytes) -> tuple[str, str | None]:
    """(message, code) from the error bodies OpenAI, Anthropic and local servers send."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip(), None
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, str):
        return error, None
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or error.get("msg")
        code = error.get("code") or error.get("type")
        return (str(message) if message else orjson.dumps(error).decode()), (
            str(code) if code else None
        )
    return str(error), None


def _causes(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    stack = [exc]
    while stack and len(found) < 32:
        current = stack.pop()
        found.append(current)
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        nxt = current.__cause__ or current.__context__
        if nxt is not None:
            stack.append(nxt)
    return found


def _connect_reason(exc: BaseException) -> str:
    import ssl

    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == (
            errno.ECONNREFUSED
        ):
            return "connection refused; is the server running?"
        if isinstance(cause, ConnectionResetError):
            return "the connection was reset"
        if isinstance(cause, ssl.SSLError):
            return f"the TLS handshake failed ({cause.reason or 'SSL error'})"
        if getattr(cause, "errno", None) in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "the network or host is unreachable"
    return trim(str(exc) or "connection failed", 200)


def _is_tls(exc: BaseException) -> bool:
    import ssl

    return any(isinstance(cause, ssl.SSLError) for cause in _causes(exc))


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if value := headers.get("retry-after-ms"):
        try:
            return max(float(value) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


# ---- retries -------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by a count and by wall time."""

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 30.0
    """A longer ``Retry-After`` is not waited for: the error is reported at once."""
    total_time: float = 60.0
    """No retry starts once this long has passed since the first attempt."""

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number ``retry`` (0-based), or None to give up."""
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        ceiling = min(self.max_delay, self.base_delay * 2.0**retry)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


async def with_retries(
    attempt: Callable[[], AsyncGenerator[StreamEvent, None]], policy: RetryPolicy
) -> AsyncIterator[StreamEvent]:
    """Run ``attempt`` again after retryable failures, but only before its first event:
    an answer already partly shown is never replayed."""
    started_at = time.monotonic()
    retry = 0
    while True:
        yielded = False
        stream = attempt()
        try:
            async for event in stream:
                yielded = True
                yield event
            return
        except ProviderError as error:
            if yielded or not error.retryable or retry >= policy.max_retries:
                raise
            wait = policy.delay(retry, getattr(error, "retry_after", None))
            if wait is None or time.monotonic() - started_at + wait > policy.total_time:
                raise
        finally:
            await stream.aclose()
        retry += 1
        await anyio.sleep(wait)


async def drain(events: AsyncIterator[Any], *, seconds: float = 1.0) -> None:
    """Read what follows the stream's last event (the terminating chunk), so the
    connection goes back to the pool instead of being closed: otherwise every model
    call pays a new TCP (and TLS) handshake. A server that keeps the stream open past
    its end is given up on after ``seconds``."""
    with anyio.move_on_after(seconds):
        async for _ in events:
            pass
