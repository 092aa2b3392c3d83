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
