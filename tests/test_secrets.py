"""Secrets in MCP server lists never reach the database file, the logs or the editor's
notices, and what a user deletes does not stay readable in a SQLite file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from acp_server.sessions.model import ItemKind, NewItem, SessionRecord
from acp_server.sessions.redaction import (
    REDACTED,
    redact_args,
    redact_url,
    scrub_mcp_servers,
)
from acp_server.sessions.service import SessionService
from acp_server.storage.store import SessionStore
from tests.backends import sqlite_url
from tests.harness import INIT, raw_server, server_env

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://alice:pw@host/mcp", f"https://alice:{REDACTED}@host/mcp"),
        ("https://tok@host/mcp", f"https://{REDACTED}@host/mcp"),
        (
            "https://host/mcp?api_key=a&x=1&access_token=b&key=c&apiKey=d&max_tokens=5",
            f"https://host/mcp?api_key={REDACTED}&x=1&access_token={REDACTED}&key={REDACTED}"
            f"&apiKey={REDACTED}&max_tokens=5",
        ),
        ("https://host/cb#access_token=a", f"https://host/cb#access_token={REDACTED}"),
        ("https://host:8443/mcp?page=2&q=token", "https://host:8443/mcp?page=2&q=token"),
        ("ssh://git@github.com/org/repo", "ssh://git@github.com/org/repo"),
        ("http://[::1/mcp", REDACTED),
    ],
)
def test_url_credentials_are_redacted(url: str, stored: str) -> None:
    assert redact_url(url) == stored


@pytest.mark.parametrize(
    ("args", "stored"),
    [
        (["--token=x"], [f"--token={REDACTED}"]),
        (["--token", "x", "--verbose"], ["--token", REDACTED, "--verbose"]),
        (["--api-key", "x"], ["--api-key", REDACTED]),
        (["--password=x", "-token", "y"], [f"--password={REDACTED}", "-token", REDACTED]),
        (
            ["-e", "GITHUB_TOKEN=x", "-e", "GITHUB_TOKEN"],
            ["-e", f"GITHUB_TOKEN={REDACTED}", "-e", "GITHUB_TOKEN"],
        ),
        (["postgresql://me:x@db/app"], [f"postgresql://me:{REDACTED}@db/app"]),
        (["--url=https://h/?token=x"], [f"--url=https://h/?token={REDACTED}"]),
        (["--header", "Authorization: Bearer x"], ["--header", f"Authorization: {REDACTED}"]),
        (["--header=X-Api-Key:x"], [f"--header=X-Api-Key:{REDACTED}"]),
        (["--token", "--verbose"], ["--token", "--verbose"]),
    ],
)
def test_secret_arguments_are_redacted(args: list[str], stored: list[str]) -> None:
    assert redact_args(args) == stored


def test_ordinary_arguments_are_kept() -> None:
    args = [
        "-y",
        "@modelcontextprotocol/server-filesystem",
        "-p",
        "8080",
        "--max-tokens",
        "4096",
        "--token-file",
        "/run/token",
        "--no-auth",
        "/srv",
        "--keyword",
        "x",
        "key:value",
        "C:\\data",
        "https://example.com/docs?page=2",
    ]
    assert redact_args(args) == args


def test_a_server_that_lost_a_secret_is_not_restorable() -> None:
    servers = [
        {"name": "plain", "command": "srv", "args": ["--port", "1"], "env": []},
        {"name": "arg", "command": "srv", "args": ["--token", "x"], "env": []},
        {"type": "http", "name": "url", "url": "https://h/mcp?key=x", "headers": []},
        {"type": "http", "name": "user", "url": "https://a:b@h/mcp", "headers": []},
        {"name": "odd", "command": "srv", "args": 5, "env": "x", "headers": None, "url": 7},
    ]
    record = SessionRecord(id="s", cwd="/", mcp_servers=scrub_mcp_servers(servers))
    restorable, problems = SessionService.restorable_mcp_servers(record)
    assert [server["name"] for server in restorable] == ["plain", "odd"]
    assert len(problems) == 3
    assert all("was not restarted: its secrets are never stored" in p for p in problems)


SECRETS = ["pw-A1b2", "key-C3d4", "tok-E5f6", "key-G7h8", "pg-I9j0", "Bearer hd-K1l2"]
NEW_SECRETS = ["pw-M3n4", "tok-O5p6"]


def mcp_list(password: str, key: str, token: str, arg_key: str, pg: str, header: str) -> Any:
    return [
        {
            "type": "http",
            "name": "api",
            "url": f"http://alice:{password}@127.0.0.1:9/mcp?api_key={key}&team=7",
            "headers": [],
        },
        {
            "name": "gh",
            "command": "/nonexistent/mcp-server",
            "args": [
                f"--token={token}",
                "--api-key",
                arg_key,
                f"postgresql://me:{pg}@db/app",
                "--header",
                f"Authorization: {header}",
                "--max-tokens",
                "4096",
            ],
            "env": [],
        },
    ]


def db_bytes(directory: Path) -> bytes:
    """Every byte of the SQLite database, its WAL and shared-memory files."""
    return b"".join(path.read_bytes() for path in sorted(directory.glob("s.db*")))


async def test_mcp_secrets_never_reach_the_database_logs_or_notices(home, workspace, tmp_path):
    db_dir = tmp_path / "db"
    args = ["--database-url", f"sqlite:///{db_dir / 's.db'}"]
    first = mcp_list(*SECRETS)
    second = mcp_list(NEW_SECRETS[0], "key-Q7r8", NEW_SECRETS[1], "key-S9t0", "pg-U1v2", "w-X3")
    every = [*SECRETS, *NEW_SECRETS, "key-Q7r8", "key-S9t0", "pg-U1v2"]
    async with raw_server(args, server_env(home)) as server:
        await server.request("initialize", INIT)
        new = {"cwd": str(workspace), "mcpServers": first}
        sid = (await server.request("session/new", new))["result"]["sessionId"]
        await server.request("session/prompt", prompt(sid))
        load = {"sessionId": sid, "cwd": str(workspace), "mcpServers": second}
        assert "result" in await server.request("session/load", load)
        await server.request("session/prompt", prompt(sid))
    async with raw_server(args, server_env(home)) as again:
        await again.request("initialize", INIT)
        resume = {"sessionId": sid, "cwd": str(workspace)}
        assert "result" in await again.request("session/resume", resume)
        await again.request("session/prompt", prompt(sid))
    raw = db_bytes(db_dir)
    assert b"alice" in raw and b"--max-tokens" in raw, "the lists are stored, redacted"
    for secret in every:
        assert secret.encode() not in raw, secret
    said = notices(server, sid)
    assert "could not connect to http://alice:<redacted>@127.0.0.1:9/mcp" in said
    assert "'api' was not restarted" in notices(again, sid)
    assert "'gh' was not restarted" in notices(again, sid)
    for secret in every:
        for text in (server.stderr, again.stderr, said):
            assert secret not in text, secret


def prompt(sid: str) -> dict[str, Any]:
    return {"sessionId": sid, "prompt": [{"type": "text", "text": "hello"}]}


def notices(server: Any, sid: str) -> str:
    return "".join(
        u["content"]["text"]
        for u in server.updates(sid)
        if u["sessionUpdate"] == "agent_message_chunk"
    )


async def test_a_deleted_session_does_not_stay_in_the_sqlite_files(tmp_path: Path) -> None:
    marker = "hunter2-remember-me-0451"
    store = await SessionStore.open(sqlite_url(tmp_path).replace("sessions.db", "s.db"))
    try:
        for sid in ("gone", "kept"):
            await store.create_session(SessionRecord(id=sid, cwd="/tmp"))
        for n in range(10):  # interleaved, so the pages that had the marker live on
            for sid, text in (("kept", "still here"), ("gone", f"my password is {marker}")):
                item = NewItem(kind=ItemKind.AGENT, message_id=f"m{n}", data={"text": text})
                await store.append_item(sid, item)
        assert marker.encode() in db_bytes(tmp_path)
        async with store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA secure_delete")).scalar() == 1
        assert await store.delete_session("gone")
        raw = db_bytes(tmp_path)
        assert marker.encode() not in raw
        assert len(await store.load_items("kept")) == 10
    finally:
        await store.close()
    assert marker.encode() not in db_bytes(tmp_path)
