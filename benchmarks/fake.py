"""The fake OpenAI endpoint the benchmarks stream from, and its own streaming time.

It is the test suite's ``FakeLLM`` (real HTTP on 127.0.0.1, no delay between chunks)
with one change: the reply is chosen by the request, not by a queue, so any number of
sessions can prompt at once. A prompt containing ``bench-chunks=N`` gets an N-chunk
text reply; the server's title request (system prompt "You name conversations.") gets
a two-word title. Requests are not recorded (50 sessions x many turns would pile up).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import httpx

from tests.fake_llm import FakeLLM, ReceivedRequest, Reply, _Handler

TITLE_SYSTEM = "You name conversations."
BACKLOG = 512
_MARKER = re.compile(r"bench-chunks=(\d+)")


def prompt_text(chunks: int, note: str = "") -> str:
    """A prompt that makes the fake answer with ``chunks`` text chunks."""
    return f"bench-chunks={chunks} {note}".strip()


def chunk_text(index: int) -> str:
    return f"word{index % 10} "


class _NoDelayHandler(_Handler):
    """TCP_NODELAY on the fake's sockets, as real HTTP front ends set it.

    ``http.server`` writes the headers, the events and the last chunk separately; with
    Nagle's algorithm on, a write waiting for the ACK of the previous one meets the
    client's delayed ACK and the reply stalls ~40 ms, at random. That stall belongs to
    the fake, not to the code measured."""

    disable_nagle_algorithm = True


class BenchLLM(FakeLLM):
    def __init__(self) -> None:
        super().__init__(default_reply=Reply(text_chunks=["ok"], usage=(10, 1, 0)))
        self._server.RequestHandlerClass = _NoDelayHandler
        # socketserver listens with a backlog of 5: 50 sessions connecting at once
        # would see resets. Listening again raises the backlog of the same socket.
        self._server.socket.listen(BACKLOG)
        self._by_size: dict[int, Reply] = {}
        self._size_lock = threading.Lock()
        self._title = Reply(text_chunks=["Bench ", "title"], usage=(40, 2, 0))

    def reply_of(self, chunks: int) -> Reply:
        with self._size_lock:
            reply = self._by_size.get(chunks)
            if reply is None:
                reply = Reply(
                    text_chunks=[chunk_text(i) for i in range(chunks)], usage=(200, chunks, 0)
                )
                self._by_size[chunks] = reply
            return reply

    def _take(self, request: ReceivedRequest) -> Reply:
        messages: list[Any] = request.get("messages") or []
        if messages and messages[0].get("content") == TITLE_SYSTEM:
            return self._title
        for message in reversed(messages):
            if message.get("role") == "user":
                found = _MARKER.search(str(message.get("content")))
                if found:
                    return self.reply_of(int(found.group(1)))
                break
        return self.default_reply


def request_body(chunks: int) -> dict[str, Any]:
    return {
        "model": "bench-model",
        "stream": True,
        "messages": [{"role": "user", "content": prompt_text(chunks)}],
    }


async def provider_seconds(client: httpx.AsyncClient, base_url: str, chunks: int) -> float:
    """The provider's own time: the same reply streamed straight to this process with
    httpx (pooled, kept-alive connection, as the server's), every byte read."""
    body = request_body(chunks)
    started = time.perf_counter()
    async with client.stream("POST", f"{base_url}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for _ in response.aiter_bytes():
            pass
    return time.perf_counter() - started
