"""A raw JSON-lines ACP client: one process, one reader task, nothing else.

Deliberately not the SDK client: its import cost and per-message validation would be
measured along with the agent. Lines are parsed with orjson; ``session/update``
notifications are only counted (per session, with the arrival time of the first and
last message chunk), never kept, so a 5,000-chunk stream costs the client a few
milliseconds. Requests the agent sends to the client (permissions, fs) are refused.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import orjson

PROTOCOL_VERSION = 1
CLIENT_CAPABILITIES: dict[str, Any] = {
    "fs": {"readTextFile": False, "writeTextFile": False},
    "terminal": False,
}
STDERR_TAIL = 20_000


class AgentError(RuntimeError):
    """The agent answered with an error, or died, or did not answer in time."""


@dataclass(slots=True)
class Answer:
    """A response and when it was sent and received (``time.perf_counter``)."""

    message: dict[str, Any]
    sent_at: float
    received_at: float

    @property
    def result(self) -> Any:
        return self.message.get("result")

    @property
    def elapsed(self) -> float:
        return self.received_at - self.sent_at


@dataclass(slots=True)
class SessionCounts:
    updates: int = 0
    chunks: int = 0
    first_chunk_at: float = 0.0
    last_chunk_at: float = 0.0


@dataclass(slots=True)
class _Waiter:
    event: anyio.Event = field(default_factory=anyio.Event)
    message: dict[str, Any] | None = None
    received_at: float = 0.0


class AgentProcess:
    """A spawned agent speaking ACP over its stdin/stdout."""

    def __init__(self, process: anyio.abc.Process, spawned_at: float, label: str):
        self.process = process
        self.spawned_at = spawned_at
        self.label = label
        self.sessions: dict[str, SessionCounts] = {}
        self.stderr = bytearray()
        self._waiters: dict[int, _Waiter] = {}
        self._ids = 0
        self._closed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def counts(self, session_id: str) -> SessionCounts:
        counts = self.sessions.get(session_id)
        if counts is None:
            counts = self.sessions[session_id] = SessionCounts()
        return counts

    def reset(self, session_id: str) -> SessionCounts:
        counts = self.sessions[session_id] = SessionCounts()
        return counts

    def stderr_tail(self, limit: int = 2_000) -> str:
        return bytes(self.stderr[-limit:]).decode("utf-8", "replace")

    def rss_kib(self) -> int:
        """Resident set size from /proc/PID/status (VmRSS, KiB)."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AgentError(f"{self.label}: no VmRSS in /proc/{self.pid}/status")

    # ---- sending ------------------------------------------------------------------------

    async def send(self, message: Mapping[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(orjson.dumps(message) + b"\n")

    def expect(self, request_id: int) -> None:
        """Wait for an answer to a request this client did not send (a replayed file)."""
        self._waiters[request_id] = _Waiter()

    async def start(self, method: str, params: Mapping[str, Any]) -> tuple[int, float]:
        """Send a request without waiting; returns its id and when it was sent."""
        self._ids += 1
        request_id = self._ids
        self._waiters[request_id] = _Waiter()
        sent_at = time.perf_counter()
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return request_id, sent_at

    async def finish(self, request_id: int, sent_at: float, *, wait_s: float = 120) -> Answer:
        """Wait for the answer of a request sent with ``start``; errors raise."""
        waiter = self._waiters[request_id]
        try:
            with anyio.fail_after(wait_s):
                await waiter.event.wait()
        except TimeoutError:
            raise AgentError(
                f"{self.label}: no answer to request {request_id} within {wait_s:g} s\n"
                f"{self.stderr_tail()}"
            ) from None
        finally:
            self._waiters.pop(request_id, None)
        message = waiter.message
        if message is None:
            raise AgentError(f"{self.label}: the agent exited\n{self.stderr_tail()}")
        if "error" in message:
            raise AgentError(f"{self.label}: error answer {message['error']}\n{self.stderr_tail()}")
        return Answer(message, sent_at, waiter.received_at)

    async def request(
        self, method: str, params: Mapping[str, Any], *, wait_s: float = 120
    ) -> Answer:
        request_id, sent_at = await self.start(method, params)
        return await self.finish(request_id, sent_at, wait_s=wait_s)

    # ---- ACP shorthands -----------------------------------------------------------------

    async def initialize(self) -> Answer:
        return await self.request(
            "initialize",
            {"protocolVersion": PROTOCOL_VERSION, "clientCapabilities": CLIENT_CAPABILITIES},
        )

    async def new_session(self, cwd: str) -> tuple[str, Answer]:
        answer = await self.request("session/new", {"cwd": cwd, "mcpServers": []})
        return str(answer.result["sessionId"]), answer

    async def prompt(self, session_id: str, text: str, *, wait_s: float = 120) -> Answer:
        params = {"sessionId": session_id, "prompt": [{"type": "text", "text": text}]}
        return await self.request("session/prompt", params, wait_s=wait_s)

    # ---- receiving ----------------------------------------------------------------------

    async def _read(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        try:
            async for chunk in self.process.stdout:
                now = time.perf_counter()
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if line:
                        await self._take(line, now)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._closed = True
            for waiter in self._waiters.values():
                waiter.event.set()

    async def _take(self, line: bytes, now: float) -> None:
        message = orjson.loads(line)
        method = message.get("method")
        if method == "session/update":
            params = message["params"]
            counts = self.sessions.get(params["sessionId"])
            if counts is None:
                counts = self.counts(params["sessionId"])
            counts.updates += 1
            if params["update"].get("sessionUpdate") == "agent_message_chunk":
                if not counts.chunks:
                    counts.first_chunk_at = now
                counts.chunks += 1
                counts.last_chunk_at = now
            return
        if method is not None:
            if "id" in message:  # a request to the client: refuse it
                await self.send(
                    {
                        "jsonrpc": "2.0",
                        "id": message["id"],
                        "error": {"code": -32601, "message": "not supported by the benchmark"},
                    }
                )
            return
        waiter = self._waiters.get(message.get("id"))
        if waiter is not None:
            waiter.message = message
            waiter.received_at = now
            waiter.event.set()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            async for chunk in self.process.stderr:
                self.stderr += chunk
                if len(self.stderr) > 2 * STDERR_TAIL:
                    del self.stderr[:-STDERR_TAIL]

    async def close(self, wait_s: float = 15) -> int:
        """Close stdin (the ACP way to stop an agent) and wait; kill if it lingers."""
        assert self.process.stdin is not None
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.process.stdin.aclose()
        with anyio.move_on_after(wait_s):
            return await self.process.wait()
        self.process.kill()
        return await self.process.wait()


@contextlib.asynccontextmanager
async def spawn(
    argv: Sequence[str], env: Mapping[str, str], *, label: str, cwd: str | None = None
) -> AsyncIterator[AgentProcess]:
    """Start an agent; ``spawned_at`` is taken just before the fork."""
    spawned_at = time.perf_counter()
    process = await anyio.open_process(list(argv), env=dict(env), cwd=cwd)
    agent = AgentProcess(process, spawned_at, label)
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent._read)
        tg.start_soon(agent._read_stderr)
        try:
            yield agent
        finally:
            with anyio.CancelScope(shield=True):
                await agent.close()
            tg.cancel_scope.cancel()


def clean_env(home: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The machine's environment without any acp-server or provider settings, with its
    own config and data directories."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ACP_SERVER_", "OPENAI_", "ANTHROPIC_", "DATA_RETENTION_"))
    }
    env.update(
        XDG_DATA_HOME=os.path.join(home, "data"),
        XDG_CONFIG_HOME=os.path.join(home, "config"),
    )
    env.update(extra or {})
    return env
