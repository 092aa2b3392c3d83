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
                tg.start_soon(channel.run_writer)
                async with anyio.create_task_group() as work:
                    work.start_soon(slow_reader)
                    # one writer, so the expected order is known; plus a second writer
                    # whose lines must come out whole wherever they land
                    work.start_soon(writer, messages)
                    work.start_soon(writer, [other])
                tg.cancel_scope.cancel()
    finally:
        channel.close()
        for fd in (read_in, write_in, read_out, write_out):
            os.close(fd)
    lines = bytes(received).split(b"\n")[:-1]
    others = [line for line in lines if line.startswith(b"other-")]
    assert others == [b"other-" + b"y" * 70_000]
    assert [line + b"\n" for line in lines if not line.startswith(b"other-")] == messages


async def test_what_is_queued_when_the_writer_stops_is_flushed_whole():
    """Shutdown cancels the writer wherever it is, even halfway through a pipe-full
    write; ``flush`` then sends the rest, so the editor still gets whole lines."""
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    channel = StdioChannel(read_in, write_out)
    messages = [f"{n:04d}:".encode() + b"z" * 3_000 + b"\n" for n in range(200)]
    received = bytearray()
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(channel.run_writer)
                for message in messages:
                    await channel.write(message)
                await anyio.sleep(0.05)  # the writer fills the pipe and waits on it
                tg.cancel_scope.cancel()
            async with anyio.create_task_group() as tg:
                tg.start_soon(channel.flush, 10.0)
                os.set_blocking(read_out, False)
                while len(received) < sum(map(len, messages)):
                    try:
                        received.extend(os.read(read_out, 65536))
                    except BlockingIOError:
                        await anyio.sleep(0.001)
    finally:
        channel.close()
        for fd in (read_in, write_in, read_out, write_out):
            os.close(fd)
    assert bytes(received) == b"".join(messages)


async def test_writes_after_the_editor_closed_its_end_are_dropped():
    """Before this was handled, the writer task died with BrokenPipeError (failing the
    task group) and writers past the high-water mark waited for room forever."""
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    channel = StdioChannel(read_in, write_out)
    os.close(read_out)
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(channel.run_writer)
                for _ in range(3):
                    await channel.write(b"x" * 2_000_000 + b"\n")  # past the high water
                tg.cancel_scope.cancel()
            await channel.flush(1.0)
    finally:
        channel.close()
        for fd in (read_in, write_in, write_out):
            os.close(fd)
