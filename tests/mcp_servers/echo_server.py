"""A real MCP stdio server for the extension tests, written with the official SDK
(``MCPServer``, the 2.x name of FastMCP).

Run as ``python echo_server.py [name]``; the optional name prefixes the ``echo``
reply, so tests can tell two servers apart. ``ECHO_HTTP_PORT`` serves streamable HTTP on
that port of 127.0.0.1 instead of stdio. For start-up tests, environment variables:

- ``ECHO_PID_FILE``: write the process id there as it starts;
- ``ECHO_HOLD_UNTIL``: a path; do not read stdin (so leave ``initialize`` unanswered)
  until it exists, for at most ``ECHO_HOLD_SECONDS`` (default 60);
- ``ECHO_READY_FILE``: created once the hold is over, just before serving;
- ``ECHO_FAIL``: after the hold, print this on stderr and exit 1 instead of serving.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import (
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    TextContent,
    TextResourceContents,
    ToolAnnotations,
)

LABEL = sys.argv[1] if len(sys.argv) > 1 else "echo"

server = MCPServer(LABEL)


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return f"{LABEL}: {text}"


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def pid() -> int:
    """This server's process id, so a test can check the process is gone."""
    return os.getpid()


@server.tool()
def spawn() -> int:
    """Start a child in a session of its own, which nothing but a supervisor can find
    once this server is gone; its process id."""
    child = subprocess.Popen(
        ["sleep", "3600"],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return child.pid


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def env(name: str) -> str:
    """One environment variable, or an empty string."""
    return os.environ.get(name, "")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def cwd() -> str:
    """The folder the server runs in."""
    return os.getcwd()


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def header(name: str, ctx: Context) -> str:
    """One header of the HTTP request that called this tool, or an empty string."""
    return (ctx.headers or {}).get(name, "")


@server.tool()
def fail(message: str) -> str:
    """Always fails, to exercise tool errors."""
    raise ToolError(message)


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def media() -> list[ContentBlock]:
    """A text, an image and an embedded resource, to exercise content conversion."""
    return [
        TextContent(text="see attached"),
        ImageContent(data="iVBORw0KGgo=", mime_type="image/png"),
        EmbeddedResource(resource=TextResourceContents(uri="file:///notes.txt", text="hello")),
    ]


@server.tool()
def crash() -> str:
    """Exit at once without answering: a server that died mid-session."""
    os._exit(3)


def _start_up() -> None:
    if pid_file := os.environ.get("ECHO_PID_FILE"):
        Path(f"{pid_file}.tmp").write_text(str(os.getpid()))
        os.replace(f"{pid_file}.tmp", pid_file)
    if hold := os.environ.get("ECHO_HOLD_UNTIL"):
        deadline = time.monotonic() + float(os.environ.get("ECHO_HOLD_SECONDS", "60"))
        while not Path(hold).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    if ready := os.environ.get("ECHO_READY_FILE"):
        Path(ready).touch()
    if failure := os.environ.get("ECHO_FAIL"):
        print(failure, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _start_up()
    if port := os.environ.get("ECHO_HTTP_PORT"):
        server.run("streamable-http", port=int(port))
    else:
        server.run("stdio")
