"""A fake LLM server: the one thing this project's tests fake.

It speaks real HTTP on 127.0.0.1, so the providers' whole network path (connection,
status codes, streaming SSE, timeouts) is exercised, whether the client is the test
process itself or a spawned ``acp-server``. Both APIs share one queue of ``Reply``
objects; each request takes the next one (or ``default_reply`` when the queue is
empty) and gets it rendered in the format of the endpoint it hit
(``POST /v1/chat/completions`` or ``POST /v1/messages``).

    with FakeLLM() as llm:
        llm.queue(Reply(text_chunks=["Hel", "lo"]))
        ...  # point a provider at llm.base_url_openai or llm.base_url_anthropic
        assert llm.requests[0]["messages"][-1]["content"] == "hi"
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

_TO_ANTHROPIC = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_TO_OPENAI = {value: key for key, value in _TO_ANTHROPIC.items()}
_BATCH = 512
"""Events per socket write when streaming without delay."""


@dataclass
class Reply:
    """One scripted answer.

    ``finish`` takes either API's words ("stop", "length", "tool_calls",
    "content_filter", or "end_turn", "max_tokens", "tool_use", "refusal") and is
    translated for the endpoint hit; "auto" derives it from ``tool_calls``; None ends
    the stream without any finish (a truncated answer).
    """

    text_chunks: list[str] = field(default_factory=list)
    thinking_chunks: list[str] = field(default_factory=list)
    tool_calls: list[tuple[str, str, dict[str, Any] | str]] = field(default_factory=list)
    """(id, name, arguments); a string is sent verbatim as the arguments' JSON text."""
    usage: tuple[int, int, int] | None = None
    """(input tokens including cached, output tokens, cached input tokens)."""
    finish: str | None = "auto"
    chunk_delay: float = 0.0
    status: int = 200
    error_body: dict[str, Any] | str | None = None
    """The exact error body; by default one in the endpoint's own format is built."""
    error_message: str | None = None
    error_code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stream_error: str | None = None
    """After the chunks, report this error inside the stream (as an overloaded
    Anthropic or a failing OpenAI-compatible server does) and end it."""
    endless: bool = False
    """Stream text chunks until the client hangs up."""
    hang: bool = False
    """Read the request and never answer."""
    together: int = 0
    """Hold the answer until this many requests have been open at once (10 s at most):
    only a client that sends them in parallel gets its answers without that wait."""
    signature: str = "sig-fake"
    """The Anthropic signature sent after thinking."""
    reasoning_field: str = "reasoning_content"
    """The OpenAI-compatible delta key for thinking ("reasoning" on some servers)."""
    argument_fragment: int = 7
    """Tool-call arguments are streamed in pieces of this many characters."""


class ReceivedRequest(dict[str, Any]):
    """The JSON body of one request (it is the dict), plus its path and headers."""

    def __init__(self, body: dict[str, Any], *, path: str, headers: dict[str, str]):
        super().__init__(body)
        self.path = path
        self.headers = headers

    @property
    def body(self) -> dict[str, Any]:
        return dict(self)


class FakeLLM:
    """Starts on enter, stops on exit; see the module docstring."""

    def __init__(self, default_reply: Reply | None = None):
        self.default_reply = default_reply or Reply(text_chunks=["ok"], usage=(10, 1, 0))
        self._replies: deque[Reply] = deque()
        self._requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._open = 0
        self._most_open = 0
        self._streamed = 0
        self.stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url_openai(self) -> str:
        return f"{self.url}/v1"

    @property
    def base_url_anthropic(self) -> str:
        return self.url

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received so far, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    @property
    def most_open(self) -> int:
        """The most requests that were being answered at the same moment."""
        with self._lock:
            return self._most_open

    @property
    def streamed(self) -> int:
        """Stream events written so far, every reply together: a clock that runs at the
        fake's own pace (an event per ``chunk_delay``), for a test that must tell
        "at once" from "after a while" without reading the wall clock."""
        with self._lock:
            return self._streamed

    def pending(self) -> int:
        """Replies queued and not yet served."""
        with self._lock:
            return len(self._replies)

    def reset(self) -> None:
        with self._lock:
            self._replies.clear()
            self._requests.clear()
            self._most_open = self._open
            self._streamed = 0

    def start(self) -> FakeLLM:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        with self._changed:
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _take(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            return self._replies.popleft() if self._replies else self.default_reply

    def _opened(self, change: int) -> None:
        with self._changed:
            self._open += change
            self._most_open = max(self._most_open, self._open)
            self._changed.notify_all()

    def _gather(self, count: int) -> None:
        with self._changed:
            # Not _open: the first one released may finish before the others look.
            self._changed.wait_for(lambda: self._most_open >= count or self.stopping.is_set(), 10)

    def _count_streamed(self, events: int) -> None:
        with self._lock:
            self._streamed += events


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 512
    """socketserver's default backlog of 5 resets clients when many connect at once."""
    fake: FakeLLM

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-stream is normal here; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    disable_nagle_algorithm = True
    """http.server writes headers and events separately; with Nagle on, a write that
    waits for the previous one's ACK meets the client's delayed ACK and the reply
    stalls ~40 ms at random, a cost of the fake, not of the code under test."""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: tests read ``FakeLLM.requests`` instead."""

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/chat/completions":
            api = "openai"
        elif path == "/v1/messages":
            api = "anthropic"
        else:
            self._send_json(404, {"error": {"message": f"no route for {path}"}}, {})
            return
        headers = {key.lower(): value for key, value in self.headers.items()}
        fake = self.server.fake
        reply = fake._take(ReceivedRequest(body, path=path, headers=headers))
        fake._opened(+1)
        try:
            if reply.together:
                fake._gather(reply.together)
            self._answer(api, reply, str(body.get("model", "fake-model")))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        finally:
            fake._opened(-1)

    def _answer(self, api: str, reply: Reply, model: str) -> None:
        stopping = self.server.fake.stopping
        if reply.hang:
            stopping.wait(120)
            self.close_connection = True
            return
        if reply.status != 200:
            self._send_json(reply.status, _error_body(api, reply), reply.headers)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        events = (_openai_events if api == "openai" else _anthropic_events)(reply, model)
        if reply.chunk_delay > 0:
            for event in events:
                if stopping.wait(reply.chunk_delay):
                    self.close_connection = True
                    return
                self._write_chunk(event)
                self.server.fake._count_streamed(1)
        else:
            for batch in _batched(events, _BATCH):
                if stopping.is_set():
                    self.close_connection = True
                    return
                self._write_chunk(b"".join(batch))
                self.server.fake._count_streamed(len(batch))
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _send_json(self, status: int, body: Any, headers: dict[str, str]) -> None:
        text = isinstance(body, str)
        data = body.encode() if text else orjson.dumps(body)
        self.send_response(status)
        self.send_header("content-type", "text/plain" if text else "application/json")
        self.send_header("content-length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def _batched(events: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    iterator = iter(events)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _error_body(api: str, reply: Reply) -> dict[str, Any] | str:
    if reply.error_body is not None:
        return reply.error_body
    message = reply.error_message or f"fake error {reply.status}"
    if api == "openai":
        return {"error": {"message": message, "type": "fake_error", "code": reply.error_code}}
    return {"type": "error", "error": {"type": reply.error_code or "api_error", "message": message}}


def _arguments_text(arguments: dict[str, Any] | str) -> str:
    return arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _finish(reply: Reply, table: dict[str, str], auto: tuple[str, str]) -> str | None:
    if reply.finish is None:
        return None
    if reply.finish == "auto":
        return auto[0] if reply.tool_calls else auto[1]
    return table.get(reply.finish, reply.finish)


def _text(reply: Reply) -> Iterable[str]:
    return itertools.cycle(reply.text_chunks or ["tick "]) if reply.endless else reply.text_chunks


# ---- OpenAI chat-completions stream --------------------------------------------------


def _openai_events(reply: Reply, model: str) -> Iterator[bytes]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for text in reply.thinking_chunks:
        yield chunk({reply.reasoning_field: text})
    for text in _text(reply):
        yield chunk({"content": text})
    for index, (call_id, name, arguments) in enumerate(reply.tool_calls):
        opening = {"index": index, "id": call_id, "type": "function"}
        yield chunk({"tool_calls": [{**opening, "function": {"name": name, "arguments": ""}}]})
        for piece in _pieces(_arguments_text(arguments), reply.argument_fragment):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    if reply.stream_error is not None:
        error = {"message": reply.stream_error, "type": "server_error"}
        yield b"data: " + orjson.dumps({"error": error}) + b"\n\n"
        return
    finish = _finish(reply, _TO_OPENAI, ("tool_calls", "stop"))
    if finish is None:
        return
    yield chunk({}, finish)
    if reply.usage is not None:
        prompt, completion, cached = reply.usage
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
    yield b"data: [DONE]\n\n"


# ---- Anthropic messages stream -------------------------------------------------------


def _sse(payload: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (payload["type"].encode(), orjson.dumps(payload))


def _start(index: int, block: dict[str, Any]) -> bytes:
    return _sse({"type": "content_block_start", "index": index, "content_block": block})


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _sse({"type": "content_block_delta", "index": index, "delta": delta})


def _anthropic_events(reply: Reply, model: str) -> Iterator[bytes]:
    message: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if reply.usage is not None:
        prompt, _, cached = reply.usage
        message["usage"] = {
            "input_tokens": prompt - cached,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
            "output_tokens": 1,
        }
    yield _sse({"type": "message_start", "message": message})
    index = 0
    if reply.thinking_chunks:
        yield _start(index, {"type": "thinking", "thinking": ""})
        for text in reply.thinking_chunks:
            yield _delta(index, {"type": "thinking_delta", "thinking": text})
        yield _delta(index, {"type": "signature_delta", "signature": reply.signature})
        yield _sse({"type": "content_block_stop", "index": index})
        index += 1
    if reply.text_chunks or reply.endless:
        yield _start(index, {"type": "text", "text": ""})
        for text in _text(reply):
            yield _delta(index, {"type": "text_delta", "text": text})
        yield _sse({"type": "content_block_stop", "index": index})
        index += 1
    for call_id, name, arguments in reply.tool_calls:
        yield _start(index, {"type": "tool_use", "id": call_id, "name": name, "input": {}})
        for piece in _pieces(_arguments_text(arguments), reply.argument_fragment):
            yield _delta(index, {"type": "input_json_delta", "partial_json": piece})
        yield _sse({"type": "content_block_stop", "index": index})
        index += 1
    if reply.stream_error is not None:
        error = {"type": "overloaded_error", "message": reply.stream_error}
        yield _sse({"type": "error", "error": error})
        return
    finish = _finish(reply, _TO_ANTHROPIC, ("tool_use", "end_turn"))
    if finish is None:
        return
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": finish, "stop_sequence": None},
    }
    if reply.usage is not None:
        delta["usage"] = {"output_tokens": reply.usage[1]}
    yield _sse(delta)
    yield _sse({"type": "message_stop"})
