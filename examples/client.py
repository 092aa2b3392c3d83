"""Drive acp-server with the official ACP Python client.

    .venv/bin/pip install '.[examples]'     # acp-server and the client library
    .venv/bin/python examples/client.py "explain this project" [--cwd DIR] [-- acp-server args]

It starts ``acp-server`` (the echo model unless OPENAI_API_KEY / ANTHROPIC_API_KEY is
set; your whole environment reaches it, ``ACP_SERVER_*`` included), opens a session in
DIR, sends one prompt, prints the streamed reply, then lists the stored sessions: run
it twice and the list grows, because sessions persist. Everything after ``--`` goes to
``acp-server``, e.g. ``-- --provider script:examples/script-demo.yaml --memory``.

When the agent asks permission (an edit or a command, in the default ``ask`` mode) you
answer at the terminal; with no terminal to ask, the answer is "reject", and it says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    from acp import RequestError, spawn_agent_process, text_block
    from acp.schema import (
        AgentMessageChunk,
        AgentThoughtChunk,
        AllowedOutcome,
        ClientCapabilities,
        DeniedOutcome,
        RequestPermissionResponse,
        ToolCallStart,
    )
except ImportError:
    sys.exit(
        "examples/client.py needs the ACP client library: "
        ".venv/bin/pip install '.[examples]' (or: pip install agent-client-protocol)"
    )


DIM = sys.stdout.isatty()  # thoughts are shown dimmed on a terminal


class PrintingClient:
    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        if isinstance(update, AgentMessageChunk) and hasattr(update.content, "text"):
            print(update.content.text, end="", flush=True)
        elif isinstance(update, AgentThoughtChunk) and hasattr(update.content, "text"):
            text = update.content.text
            print(f"\x1b[2m{text}\x1b[0m" if DIM else text, end="", flush=True)
        elif isinstance(update, ToolCallStart):
            print(f"\n[tool] {update.title}", flush=True)

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any
    ) -> Any:
        allow = await asyncio.to_thread(ask, f"Allow {tool_call.title}?")
        kind = "allow" if allow else "reject"
        fitting = [option for option in options if option.kind.startswith(kind)]
        if not fitting:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        chosen = min(fitting, key=lambda option: not option.kind.endswith("_once"))
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=chosen.option_id)
        )


def ask(question: str) -> bool:
    """A yes/no question at the terminal; without one (or on EOF), no."""
    if not sys.stdin.isatty():
        print(f"\n{question} no terminal to ask, so: rejected", flush=True)
        return False
    try:
        return input(f"\n{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def server_command() -> list[str]:
    """acp-server of this Python's environment, else the one on PATH, else ``-m``."""
    beside = Path(sys.executable).parent / "acp-server"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("acp-server")
    return [found] if found else [sys.executable, "-m", "acp_server"]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our own arguments, and everything after ``--`` for acp-server."""
    ours, server_args = argv, []
    if "--" in argv:
        split = argv.index("--")
        ours, server_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        description="Send one prompt to acp-server and print the reply.",
        usage="%(prog)s PROMPT [--cwd DIR] [-- acp-server args]",
    )
    parser.add_argument("prompt")
    parser.add_argument("--cwd", default=".", help="the session's working directory")
    args = parser.parse_args(ours)
    args.cwd = os.path.abspath(args.cwd)
    return args, server_args


async def main() -> int:
    args, server_args = parse(sys.argv[1:])
    command, *prefix = server_command()
    # The SDK's spawn passes on only a few variables (HOME, PATH, ...) unless told more:
    # the server needs the API keys and ACP_SERVER_* settings. Its log goes to our stderr.
    env = {"ACP_SERVER_LOG_LEVEL": "warning", **os.environ}
    async with spawn_agent_process(
        PrintingClient(),
        command,
        *prefix,
        *server_args,
        env=env,
        transport_kwargs={"stderr": None},
    ) as (conn, process):
        try:
            await conn.initialize(protocol_version=1, client_capabilities=ClientCapabilities())
            session = await conn.new_session(cwd=args.cwd, mcp_servers=[])
            reply = await conn.prompt(
                session_id=session.session_id, prompt=[text_block(args.prompt)]
            )
        except RequestError as exc:
            print(f"\nclient.py: acp-server answered with an error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # the connection ended: the server stopped
            try:
                code = await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                print(f"\nclient.py: {exc}", file=sys.stderr)
            else:
                print(f"client.py: acp-server exited with code {code}", file=sys.stderr)
            return 1
        print(f"\n\n(stop reason: {reply.stop_reason})")
        listed = await conn.list_sessions()
        print(f"{len(listed.sessions)} stored session(s) on the first page:")
        for info in listed.sessions:
            print(f"  {info.session_id}  {info.title or '(untitled)'}  {info.cwd}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
