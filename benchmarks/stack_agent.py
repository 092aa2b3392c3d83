"""The stack floor: what the project's chosen libraries cost before any of its code runs.

It imports exactly the libraries ``acp-server`` needs at each step and nothing of
``acp_server``: for ``initialize``, argparse, anyio, pydantic with one model built and
used, and jsonrpcserver, whose dispatch answers; for the first ``session/*`` request,
SQLAlchemy's async engine (with the ORM it imports) and aiosqlite, the embedded store.
Its answers are minimal and it keeps nothing. Start-up and idle memory cannot go below
these figures without changing the stack, so the server's own share is the difference.

Run as ``python -m benchmarks.stack_agent``; used only by the benchmarks.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")  # as the server does


def _serve() -> None:
    import argparse

    import anyio  # noqa: F401  (the server's event loop library)
    import jsonrpcserver
    from pydantic import BaseModel

    argparse.ArgumentParser(prog="stack-agent").parse_args([])

    class Capabilities(BaseModel):
        loadSession: bool = True

    class InitializeResponse(BaseModel):
        protocolVersion: int
        agentCapabilities: Capabilities

    store_loaded = False

    def load_store() -> None:
        nonlocal store_loaded
        if not store_loaded:
            import aiosqlite  # noqa: F401
            import sqlalchemy.dialects.sqlite.aiosqlite
            import sqlalchemy.ext.asyncio  # noqa: F401

            store_loaded = True

    def initialize(**params: Any) -> jsonrpcserver.Result:
        answer = InitializeResponse.model_validate(
            {"protocolVersion": 1, "agentCapabilities": {"loadSession": True}}
        )
        return jsonrpcserver.Success(answer.model_dump())

    def new_session(**params: Any) -> jsonrpcserver.Result:
        load_store()
        return jsonrpcserver.Success({"sessionId": str(uuid.uuid4())})

    def list_sessions(**params: Any) -> jsonrpcserver.Result:
        load_store()
        return jsonrpcserver.Success({"sessions": []})

    methods = {
        "initialize": initialize,
        "session/new": new_session,
        "session/list": list_sessions,
    }
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        response = jsonrpcserver.dispatch(line.decode(), methods=methods)
        if response:
            out.write(response.encode() + b"\n")
            out.flush()


if __name__ == "__main__":
    _serve()
