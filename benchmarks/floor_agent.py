"""The floor: the least an ACP agent on the official Python SDK can do.

It answers ``initialize``, hands out session ids, and for each prompt streams the
fake OpenAI endpoint (``OPENAI_BASE_URL``) with httpx, forwarding every text delta as
an ``agent_message_chunk``. It keeps nothing: no history, no storage, no tools. httpx
is imported on the first prompt, so its cold start is the SDK's alone.

Run as ``python -m benchmarks.floor_agent``; used only by the benchmarks.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from typing import Any, cast

import acp
from acp.schema import (
    AgentCapabilities,
    InitializeResponse,
    NewSessionResponse,
    PromptResponse,
)


class FloorAgent:
    def __init__(self) -> None:
        self._conn: Any = None
        self._http: Any = None
        self._url = os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:9/v1").rstrip("/")

    def on_connect(self, conn: Any) -> None:
        self._conn = conn

    async def initialize(
        self, protocol_version: int, client_capabilities: Any = None, **kwargs: Any
    ) -> InitializeResponse:
        return InitializeResponse(
            protocol_version=acp.PROTOCOL_VERSION, agent_capabilities=AgentCapabilities()
        )

    async def new_session(
        self, cwd: str, mcp_servers: Any = None, **kwargs: Any
    ) -> NewSessionResponse:
        return NewSessionResponse(session_id=str(uuid.uuid4()))

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(timeout=120)
        text = "\n\n".join(getattr(block, "text", "") for block in prompt)
        body = {"model": "floor", "stream": True, "messages": [{"role": "user", "content": text}]}
        async with self._http.stream("POST", f"{self._url}/chat/completions", json=body) as reply:
            reply.raise_for_status()
            async for line in reply.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                for choice in json.loads(data).get("choices") or ():
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        await self._conn.session_update(
                            session_id, acp.update_agent_message_text(delta)
                        )
        return PromptResponse(stop_reason="end_turn")

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        return None


def main() -> None:
    # FloorAgent implements only what the benchmark calls; the SDK's router answers
    # "method not found" for the rest, so the cast to the full protocol is safe.
    asyncio.run(acp.run_agent(cast(acp.Agent, FloorAgent())))


if __name__ == "__main__":
    main()
