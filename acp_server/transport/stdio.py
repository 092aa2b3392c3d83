"""Newline-delimited messages over stdin/stdout, without threads.

Pipes are switched to non-blocking mode and awaited with anyio's ``wait_readable`` /
``wait_writable``, so a blocked editor never blocks the event loop and shutdown never
waits on a thread stuck in ``read``. Regular files (``acp-server < requests.jsonl``)
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
        self._lock = anyio.Lock()
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
        """Write one whole message; messages never interleave, and a cancelled writer
        never leaves half a line on the wire.

        The common case is one non-blocking ``os.write`` with no await: on one event
        loop nothing can run in between, so no lock is needed. Only a pipe that is full
        (the editor reads slowly) takes the locked, shielded path, and while it holds
        the lock every later message queues behind it, keeping the order.
        """
        if not self._lock.locked():
            try:
                written = os.write(self._out, data)
            except BlockingIOError:
                written = 0
            if written == len(data):
                return
            self._lock.acquire_nowait()
            with anyio.CancelScope(shield=True):
                try:
                    await self._write_all(memoryview(data)[written:])
                finally:
                    self._lock.release()
            return
        with anyio.CancelScope(shield=True):
            async with self._lock:
                await self._write_all(memoryview(data))

    async def _write_all(self, view: memoryview) -> None:
        while view:
            try:
                written = os.write(self._out, view)
            except BlockingIOError:
                await anyio.wait_writable(self._out)
                continue
            view = view[written:]

    def close(self) -> None:
        for fd, blocking in self._saved.items():
            try:
                os.set_blocking(fd, blocking)
            except OSError:
                pass
        self._saved.clear()
