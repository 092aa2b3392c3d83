"""Newline-delimited messages over stdin/stdout, without threads.

Pipes are switched to non-blocking mode and awaited with anyio's ``wait_readable`` /
``wait_writable``, so a blocked editor never blocks the event loop and shutdown never
waits on a thread stuck in ``read``. Output goes through one writer task that batches
whatever was queued while it waited. Regular files (``acp-server < requests.jsonl``)
never block and are read directly. Original fd flags are restored on close, so a
terminal shared with a shell is left as it was.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

_CHUNK = 1 << 16
_HIGH_WATER = 1 << 20


@dataclass(slots=True, frozen=True)
class Oversized:
    """A line longer than the limit; its bytes were discarded."""

    size: int


def _pollable(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


class StdioChannel:
    def __init__(self, fd_in: int = 0, fd_out: int = 1, *, max_line_bytes: int = 50 << 20):
        self._in = fd_in
        self._out = fd_out
        self._max = max_line_bytes
        self._queue: list[bytes] = []
        self._queued = 0
        self._unsent: memoryview | None = None
        self._wake = anyio.Event()
        self._room = anyio.Event()
        self._gone = False
        self._saved: dict[int, bool] = {}
        for fd in (fd_in, fd_out):
            if _pollable(fd):
                self._saved[fd] = os.get_blocking(fd)
                os.set_blocking(fd, False)

    @property
    def max_line_bytes(self) -> int:
        return self._max

    async def lines(self) -> AsyncIterator[bytes | Oversized]:
        """Yield each line (without its newline) until EOF."""
        pending = bytearray()
        skipping = 0  # bytes of an oversized line being discarded
        while True:
            chunk = await self._read()
            if not chunk:
                break
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                if end < 0:
                    rest = len(chunk) - start
                    if skipping:
                        skipping += rest
                    elif len(pending) + rest > self._max:
                        skipping = len(pending) + rest
                        pending.clear()
                    else:
                        pending += chunk[start:]
                    break
                if skipping:
                    yield Oversized(skipping + end - start)
                    skipping = 0
                elif len(pending) + end - start > self._max:
                    yield Oversized(len(pending) + end - start)
                    pending.clear()
                elif pending:
                    pending += chunk[start:end]
                    yield bytes(pending)
                    pending.clear()
                else:
                    yield chunk[start:end]
                start = end + 1
        if skipping:
            yield Oversized(skipping)
        elif pending.strip():
            yield bytes(pending)

    async def _read(self) -> bytes:
        while True:
            try:
                return os.read(self._in, _CHUNK)
            except BlockingIOError:
                await anyio.wait_readable(self._in)

    async def write(self, data: bytes) -> None:
        """Queue one whole message for ``run_writer``, which must be running.

        Messages keep their order and never interleave. The writer sends everything
        queued since its last pass with one ``os.write``, so the chunks of a streamed
        reply parsed from one read of the model's socket cost one syscall, not one each
        (and wake the editor once). Past 1 MiB queued (the editor reads slowly),
        writers wait for room; a message is queued whole before that, so a cancelled
        writer never leaves half a line.
        """
        if self._gone:
            return
        self._queue.append(data)
        self._queued += len(data)
        self._wake.set()
        while self._queued > _HIGH_WATER and not self._gone:
            await self._room.wait()

    async def run_writer(self) -> None:
        """Send what ``write`` queues, until cancelled; then ``flush`` sends the rest."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self._send_queued()

    async def flush(self, seconds: float) -> None:
        """Send whatever is still queued (at shutdown, once ``run_writer`` has stopped),
        giving up after ``seconds`` if the editor has stopped reading."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(seconds):
            await self._send_queued()

    async def _send_queued(self) -> None:
        while self._unsent is not None or self._queue:
            if self._unsent is None:
                self._unsent = memoryview(b"".join(self._queue))
                self._queue.clear()
                self._queued = 0
                self._room.set()
                self._room = anyio.Event()
            try:
                await self._write_unsent()
            except OSError:
                # The editor closed its end: nothing written from now on can arrive.
                self._gone = True
                self._unsent = None
                self._queue.clear()
                self._queued = 0
                self._room.set()
                return

    async def _write_unsent(self) -> None:
        """Write ``_unsent`` to its end, keeping what is left there if cancelled."""
        while self._unsent:
            try:
                written = os.write(self._out, self._unsent)
            except BlockingIOError:
                await anyio.wait_writable(self._out)
                continue
            self._unsent = self._unsent[written:]
        self._unsent = None

    def close(self) -> None:
        for fd, blocking in self._saved.items():
            try:
                os.set_blocking(fd, blocking)
            except OSError:
                pass
        self._saved.clear()
