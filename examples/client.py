"""Drive acp-server with the official ACP Python client (``pip install agent-client-protocol``).

    python examples/client.py "explain this project" [--cwd DIR] [-- extra acp-server args]

It starts ``acp-server`` (the echo model unless OPENAI_API_KEY / ANTHROPIC_API_KEY is
set), opens a session in DIR, sends one prompt, prints the streamed reply, then lists
the stored sessions: run it twice and the list grows, because sessions persist.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from typing import Any

from acp import spawn_agent_process, text_block
from acp.schema import AgentMessageChunk, AgentThoughtChunk, ClientCapabilities, ToolCallStart


class PrintingClient:
    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        if isinstance(update, AgentMessageChunk) and hasattr(update.content, "text"):
            print(update.content.text, end="", flush=True)
        elif isinstance(update, AgentThoughtChunk) and hasattr(update.content, "text"):
            print(f"\x1b[2m{update.content.text}\x1b[0m", end="", flush=True)
        elif isinstance(update, ToolCallStart):
            print(f"\n[tool] {update.title}", flush=True)

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any
    ) -> Any:
        from acp.schema import AllowedOutcome, RequestPermissionResponse

        answer = input(f"\nAllow {tool_call.title}? [y/N] ").strip().lower()
        choice = "allow_once" if answer == "y" else "reject_once"
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=choice)
        )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompt")
    parser.add_argument("--cwd", default=os.getcwd())
    parser.add_argument("server_args", nargs="*")
    args = parser.parse_args()
    command = shutil.which("acp-server") or sys.executable
    prefix = [] if command.endswith("acp-server") else ["-m", "acp_server"]
    async with spawn_agent_process(PrintingClient(), command, *prefix, *args.server_args) as (
        conn,
        _,
    ):
        await conn.initialize(protocol_version=1, client_capabilities=ClientCapabilities())
        session = await conn.new_session(cwd=os.path.abspath(args.cwd), mcp_servers=[])
        reply = await conn.prompt(session_id=session.session_id, prompt=[text_block(args.prompt)])
        print(f"\n\n(stop reason: {reply.stop_reason})")
        listed = await conn.list_sessions()
        print(f"{len(listed.sessions)} stored session(s) on the first page:")
        for info in listed.sessions:
            print(f"  {info.session_id}  {info.title or '(untitled)'}  {info.cwd}")


if __name__ == "__main__":
    asyncio.run(main())
