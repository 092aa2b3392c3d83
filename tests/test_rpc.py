"""The JSON-RPC connection in-process, on OS pipes: exactly one answer per request."""

from __future__ import annotations

import json
import os
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from acp_server.transport.rpc import Connection, RequestContext
from acp_server.transport.stdio import StdioChannel

pytestmark = pytest.mark.anyio


async def test_a_cancel_while_the_answer_waits_for_room_still_gives_one_answer():
    """The editor stops reading: one big answer fills the pipe, the next (bigger than
    the write queue) waits for room; then the editor cancels that second request. It
    used to get the answer and a -32800 as well."""
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    channel = StdioChannel(read_in, write_out)

    answered = {1: anyio.Event(), 2: anyio.Event()}

    async def big(ctx: RequestContext, params: dict[str, Any]) -> Any:
        assert isinstance(ctx.request_id, int)
        answered[ctx.request_id].set()
        return {"blob": "x" * (3 << 20)}

    connection = Connection(channel, {"big": big})
    received = bytearray()

    async def read_all() -> None:
        os.set_blocking(read_out, False)
        while True:
            try:
                chunk = os.read(read_out, 1 << 16)
            except BlockingIOError:
                await anyio.wait_readable(read_out)
                continue
            if not chunk:
                return
            received.extend(chunk)

    served = anyio.Event()

    async def serve() -> None:
        await connection.serve()
        served.set()

    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                os.write(write_in, b'{"jsonrpc":"2.0","id":1,"method":"big","params":{}}\n')
                await answered[1].wait()
                await wait_all_tasks_blocked()  # the first answer fills the pipe
                os.write(write_in, b'{"jsonrpc":"2.0","id":2,"method":"big","params":{}}\n')
                await answered[2].wait()
                await wait_all_tasks_blocked()  # the second is queued, waiting for room
                os.write(
                    write_in,
                    b'{"jsonrpc":"2.0","method":"$/cancel_request","params":{"requestId":2}}\n',
                )
                await wait_all_tasks_blocked()
                os.close(write_in)
                write_in = -1
                tg.start_soon(read_all)  # the editor reads again
                await served.wait()
                channel.close()
                os.close(write_out)
                write_out = -1
    finally:
        for fd in (read_in, write_in, read_out, write_out):
            if fd >= 0:
                os.close(fd)
    answers = [json.loads(line) for line in bytes(received).splitlines()]
    assert [a.get("id") for a in answers] == [1, 2]
    assert all("result" in answer for answer in answers), [str(a)[:200] for a in answers]


async def test_at_shutdown_every_request_is_still_answered_once():
    """Stdin closes with requests running and more queued behind them: once the drain
    time is up, each one is answered -32800 (they used to get no answer at all)."""
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    channel = StdioChannel(read_in, write_out)

    async def stuck(ctx: RequestContext, params: dict[str, Any]) -> Any:
        await anyio.sleep_forever()

    connection = Connection(channel, {"stuck": stuck}, max_inflight=2)
    requests = b"".join(
        json.dumps({"jsonrpc": "2.0", "id": n, "method": "stuck", "params": {}}).encode() + b"\n"
        for n in range(6)
    )
    try:
        os.write(write_in, requests)
        os.close(write_in)
        write_in = -1
        with anyio.fail_after(30):
            await connection.serve(drain_seconds=0)
        channel.close()
        os.close(write_out)
        write_out = -1
        received = b""
        while chunk := os.read(read_out, 1 << 16):
            received += chunk
    finally:
        for fd in (read_in, write_in, read_out, write_out):
            if fd >= 0:
                os.close(fd)
    answers = [json.loads(line) for line in received.splitlines()]
    assert sorted(a["id"] for a in answers) == list(range(6))
    assert {a["error"]["code"] for a in answers} == {-32800}
