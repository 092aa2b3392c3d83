"""The stdio channel under a slow reader: whole messages, in order, never interleaved."""

from __future__ import annotations

import os

import anyio
import pytest

from acp_server.transport.stdio import StdioChannel

pytestmark = pytest.mark.anyio


async def test_a_full_pipe_keeps_messages_whole_and_in_order():
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    channel = StdioChannel(read_in, write_out)
    messages = [(f"{n:05d}:" + "x" * (n * 37 % 20_000)).encode() + b"\n" for n in range(400)]
    other = b"other-" + b"y" * 70_000 + b"\n"
    received = bytearray()

    async def slow_reader() -> None:
        os.set_blocking(read_out, False)
        total = sum(map(len, messages)) + len(other)
        while len(received) < total:
            try:
                received.extend(os.read(read_out, 4096))
            except BlockingIOError:
                await anyio.sleep(0.001)

    async def writer(part: list[bytes]) -> None:
        for message in part:
            await channel.write(message)

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_reader)
                # one writer, so the expected order is known; plus a second writer whose
                # lines must come out whole wherever they land
                tg.start_soon(writer, messages)
                tg.start_soon(writer, [other])
    finally:
        channel.close()
        for fd in (read_in, write_in, read_out, write_out):
            os.close(fd)
    lines = bytes(received).split(b"\n")[:-1]
    others = [line for line in lines if line.startswith(b"other-")]
    assert others == [b"other-" + b"y" * 70_000]
    assert [line + b"\n" for line in lines if not line.startswith(b"other-")] == messages
