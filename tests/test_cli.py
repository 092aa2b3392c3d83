"""The management commands, run as the real ``acp-server`` process on real databases.

Data comes from the real server over stdio (echo provider) or from ``SessionStore``
directly; every command's output, exit code and one-line errors are checked. Independent
commands run side by side to keep the file fast.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest

from acp_server.config.settings import RetentionSettings
from acp_server.retention import DAY_MS, retention_loop
from acp_server.sessions.model import (
    ItemKind,
    NewItem,
    SessionRecord,
    SessionType,
    Turn,
    TurnStatus,
    Usage,
    now_ms,
)
from acp_server.storage.store import SessionStore
from tests.backends import open_store, sqlite_url
from tests.harness import INIT, SERVER, raw_server, server_env

UNREACHABLE_PG = "postgresql://x@127.0.0.1:1/db"

Call = Sequence[str] | tuple[Sequence[str], dict[str, str]]


def cli(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``acp-server ARGS`` with a clean environment rooted at ``home``."""
    return subprocess.run(
        [*SERVER, *args],
        env=server_env(home, {"ACP_SERVER_LOG_LEVEL": "warning", **(env or {})}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli_all(home: Path, calls: Sequence[Call]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands side by side; results in the order given."""

    def one(call: Call) -> subprocess.CompletedProcess[str]:
        if isinstance(call, tuple) and len(call) == 2 and isinstance(call[1], dict):
            return cli(home, *call[0], env=call[1])
        return cli(home, *call)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, calls))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("acp-server: ") and "Traceback" not in result.stderr
    return lines[0]


def run(coro: Any, *args: Any) -> Any:
    return anyio.run(coro, *args)


# data


def text_item(kind: ItemKind, text: str, turn_id: str | None) -> NewItem:
    data: dict[str, Any] = (
        {"content": [{"type": "text", "text": text}]} if kind == ItemKind.USER else {"text": text}
    )
    return NewItem(kind=kind, message_id=f"m-{text[:20]}", data=data, turn_id=turn_id)


async def add_turn(
    store: SessionStore,
    session_id: str,
    turn_id: str,
    items: list[NewItem],
    *,
    usage: Usage | None = None,
    provider: str = "openai",
    model: str = "gpt-test",
    started_at: int | None = None,
) -> None:
    turn = Turn(id=turn_id, session_id=session_id, provider=provider, model=model)
    if started_at is not None:
        turn.started_at = started_at
    await store.start_turn(turn)
    for item in items:
        await store.append_item(session_id, item)
    turn.status, turn.stop_reason = TurnStatus.COMPLETED, "end_turn"
    turn.usage = usage or Usage()
    await store.finish_turn(turn, turn.usage.input_tokens)


TOOL_RESULT = "# demo project\nsecond line with ``` fence"


async def seed(url: str) -> None:
    """Session ``sess-a`` (every item kind), its subagent child, ``sess-b`` in another
    directory, and a hidden session."""
    store = await open_store(url)
    try:
        a = SessionRecord(
            id="sess-a",
            cwd="/work/alpha",
            additional_directories=["/work/shared"],
            provider="openai",
            model="gpt-test",
            mode="ask",
            config={"effort": "high"},
        )
        await store.create_session(a)
        await store.update("sess-a").title("Fix the parser").apply()
        tool = {
            "toolCallId": "call-1",
            "name": "read_file",
            "title": "Read README.md",
            "kind": "read",
            "status": "completed",
            "rawInput": {"path": "README.md"},
            "result": TOOL_RESULT,
            "isError": False,
        }
        plan = {
            "entries": [
                {"content": "read the code", "priority": "high", "status": "completed"},
                {"content": "write the fix", "priority": "high", "status": "in_progress"},
            ]
        }
        await add_turn(
            store,
            "sess-a",
            "turn-a",
            [
                NewItem(
                    kind=ItemKind.USER,
                    message_id="u1",
                    data={
                        "content": [
                            {"type": "text", "text": "Please fix the parser"},
                            {
                                "type": "resource_link",
                                "uri": "file:///work/alpha/p.py",
                                "name": "p.py",
                            },
                        ]
                    },
                    turn_id="turn-a",
                ),
                text_item(ItemKind.THOUGHT, "Let me look at the file first", "turn-a"),
                NewItem(kind=ItemKind.TOOL_CALL, message_id="call-1", data=tool, turn_id="turn-a"),
                NewItem(kind=ItemKind.PLAN, message_id="plan-1", data=plan, turn_id="turn-a"),
                text_item(ItemKind.AGENT, "The parser is fixed now.", "turn-a"),
            ],
            usage=Usage(input_tokens=100, output_tokens=20, cost=0.5),
        )
        await store.set_extension_state("sess-a", "todo.v1", {"items": ["a", "b"]})
        child = SessionRecord(
            id="sess-child", type=SessionType.SUBAGENT, parent_id="sess-a", cwd="/work/alpha"
        )
        await store.create_session(child)
        await add_turn(
            store,
            "sess-child",
            "turn-child",
            [text_item(ItemKind.USER, "subtask", "turn-child")],
            usage=Usage(input_tokens=10, output_tokens=5, cost=0.1),
        )
        await store.create_session(
            SessionRecord(id="sess-hidden", type=SessionType.HIDDEN, cwd="/work/alpha")
        )
        await store.create_session(SessionRecord(id="sess-b", cwd="/work/beta", title="Beta"))
        await add_turn(
            store,
            "sess-b",
            "turn-b",
            [
                text_item(ItemKind.USER, "hello beta", "turn-b"),
                text_item(ItemKind.AGENT, "hi", "turn-b"),
            ],
            usage=Usage(input_tokens=7, output_tokens=3, cost=0.01),
            provider="anthropic",
            model="claude-test",
        )
    finally:
        await store.close()


def without_ids(document: dict[str, Any]) -> dict[str, Any]:
    """An export with its session and turn ids (and export time) replaced by stand-ins."""
    doc = json.loads(json.dumps(document))
    doc.pop("exported_at")
    doc["session"]["id"] = "S"
    turn_names = {turn["id"]: f"T{n}" for n, turn in enumerate(doc["turns"])}
    for turn in doc["turns"]:
        turn["id"] = turn_names[turn["id"]]
    for item in doc["items"]:
        item["turn_id"] = turn_names.get(item["turn_id"], item["turn_id"])
    return doc


# tests


def test_sessions_made_by_the_server_are_listed_shown_and_exported(
    home: Path, workspace: Path
) -> None:
    async def converse() -> str:
        env = server_env(home, {"ACP_SERVER_LOG_LEVEL": "warning"})
        async with raw_server([], env, spawn=True) as server:  # the default database
            await server.request("initialize", INIT)
            new = await server.request("session/new", {"cwd": str(workspace), "mcpServers": []})
            sid = new["result"]["sessionId"]
            for text in ("hello from the editor", "and a second prompt"):
                prompt = [{"type": "text", "text": text}]
                answer = await server.request(
                    "session/prompt", {"sessionId": sid, "prompt": prompt}
                )
                assert answer["result"]["stopReason"] == "end_turn"
            return str(sid)

    sid = run(converse)
    markdown = home / "out.md"
    listing, shown, exported, listed_json = cli_all(
        home,
        [
            ["sessions", "list"],
            ["sessions", "show", sid],
            ["sessions", "export", sid, "--format", "markdown", "-o", str(markdown)],
            ["sessions", "list", "--json", "--cwd", str(workspace)],
        ],
    )
    header, row = ok(listing).splitlines()
    assert header.split() == ["ID", "UPDATED", "TITLE", "MESSAGES", "CWD"]
    assert row.startswith(sid) and row.endswith(str(workspace)) and " 4 " in row
    text = ok(shown)
    assert "hello from the editor" in text and "Echo: and a second prompt" in text
    assert "4 in 2 turns" in text and str(workspace) in text
    assert str(markdown) in ok(exported)
    md = markdown.read_text()
    assert "## User" in md and "## Agent" in md
    assert "hello from the editor" in md and "Echo: hello from the editor" in md
    data = json.loads(ok(listed_json))
    assert data["total"] == 1 and data["sessions"][0]["id"] == sid


def test_list_export_import_insights(persistent_db_url: str, home: Path) -> None:
    run(seed, persistent_db_url)
    db = ["--database-url", persistent_db_url]
    exported = home / "a.json"
    listing, insights, export = cli_all(
        home,
        [
            ["sessions", "list", "--json", *db],
            ["sessions", "insights", "--json", *db],
            ["sessions", "export", "sess-a", "-o", str(exported), *db],
        ],
    )
    listed = json.loads(ok(listing))
    assert [s["id"] for s in listed["sessions"]] == ["sess-b", "sess-a"]
    assert listed["total"] == 2

    report = json.loads(ok(insights))
    assert report["totals"] == {
        "sessions": 2,
        "messages": 7,
        "turns": 3,
        "input_tokens": 117,
        "output_tokens": 28,
        "cached_tokens": 0,
        "cost": pytest.approx(0.61),
    }
    assert len(report["days"]) == 30
    today = report["days"][-1]
    assert (today["turns"], today["sessions"], today["new_sessions"]) == (3, 2, 2)
    assert sum(day["turns"] for day in report["days"]) == 3
    models = {(m["provider"], m["model"]): m for m in report["models"]}
    assert models["openai", "gpt-test"]["turns"] == 2
    assert models["openai", "gpt-test"]["sessions"] == 1  # the subagent is not counted
    assert models["anthropic", "claude-test"]["input_tokens"] == 7
    directories = {d["cwd"]: d for d in report["directories"]}
    assert directories["/work/alpha"]["sessions"] == 1
    assert directories["/work/alpha"]["messages"] == 5
    assert directories["/work/beta"]["cost"] == pytest.approx(0.01)

    assert str(exported) in ok(export)
    original = json.loads(exported.read_text())
    assert (original["format"], original["version"]) == ("acp-server.session", 1)
    assert len(original["items"]) == 5 and len(original["turns"]) == 1
    new_id = ok(cli(home, "sessions", "import", str(exported), *db)).strip()
    assert new_id and new_id != "sess-a"
    again = json.loads(ok(cli(home, "sessions", "export", new_id, *db)))
    assert again["session"]["id"] == new_id
    assert again["turns"][0]["id"] != original["turns"][0]["id"]
    assert without_ids(again) == without_ids(original)


def test_no_command_writes_an_mcp_secret(tmp_path: Path, home: Path) -> None:
    """Even a row that holds secrets (written by a version with fewer redaction rules,
    or a file imported from elsewhere) never reaches a command's output or the import."""
    servers = [
        {
            "type": "http",
            "name": "api",
            "url": "https://me:pw-Xy12@h/mcp?token=tk-Zw34",
            "headers": [{"name": "Authorization", "value": "Bearer hd-Qa56"}],
        },
        {"name": "gh", "command": "gh-mcp", "args": ["--api-key", "ak-Rt78"], "env": []},
    ]
    secrets = ("pw-Xy12", "tk-Zw34", "hd-Qa56", "ak-Rt78")
    url = sqlite_url(tmp_path)

    async def store_raw() -> None:
        async with await open_store(url) as store:
            await store.create_session(
                SessionRecord(id="sess-m", cwd="/work/m", mcp_servers=servers)
            )

    run(store_raw)
    db = ["--database-url", url]
    exported = tmp_path / "m.json"
    outputs = cli_all(
        home,
        [
            ["sessions", "export", "sess-m", "-o", str(exported), *db],
            ["sessions", "export", "sess-m", *db],
            ["sessions", "show", "sess-m", "--json", *db],
            ["sessions", "list", "--json", *db],
        ],
    )
    stored = json.loads(exported.read_text())["session"]["mcp_servers"]
    assert [server["name"] for server in stored] == ["api", "gh"]
    assert stored[0]["url"] == "https://me:<redacted>@h/mcp?token=<redacted>"
    leaky = tmp_path / "leaky.json"
    leaky.write_text(exported.read_text().replace("<redacted>", "pw-Xy12"))
    new_id = ok(cli(home, "sessions", "import", str(leaky), *db)).strip()
    assert new_id
    texts = [ok(result) for result in outputs] + [exported.read_text()]
    raw = b"".join(path.read_bytes() for path in tmp_path.glob("sessions.db*"))
    for secret in secrets:
        assert all(secret not in text for text in texts), secret
    assert raw.count(b"pw-Xy12") == 1, "only the row written behind the server's back"


def test_show_and_markdown_render_every_item_kind(tmp_path: Path, home: Path) -> None:
    url = sqlite_url(tmp_path)
    run(seed, url)
    db = ["--database-url", url]
    shown, as_json, markdown, several, everything = cli_all(
        home,
        [
            ["sessions", "show", "sess-a", *db],
            ["sessions", "show", "sess-a", "--json", *db],
            ["sessions", "export", "sess-a", "--format", "markdown", *db],
            ["sessions", "show", "sess-b", "nope", *db],
            ["sessions", "list", "--all", "--limit", "3", *db],
        ],
    )
    text = ok(shown)
    for expected in (
        "Fix the parser",
        "/work/alpha",
        "/work/shared",
        "openai / gpt-test",
        "100 input, 20 output",
        "$0.5000",
        "5 in 1 turn\n",
        "Please fix the parser",
        "[link: p.py <file:///work/alpha/p.py>]",
        "💭 Let me look at the file first",
        "⚙ Read README.md [completed]",
        "│ # demo project",
        "[x] read the code",
        "[ ] write the fix (in progress)",
        "The parser is fixed now.",
    ):
        assert expected in text, expected
    document = json.loads(ok(as_json))
    assert document["session"]["id"] == "sess-a"
    assert document["extension_state"] == {"todo.v1": {"items": ["a", "b"]}}

    md = ok(markdown)
    assert md.startswith("# Fix the parser\n")
    for expected in (
        "Please fix the parser",
        "[p.py](file:///work/alpha/p.py)",
        "> 💭 Let me look at the file first",
        "**Tool call:** Read README.md — *completed*",
        "````\n" + TOOL_RESULT + "\n````",
        "- [x] read the code",
        "- [ ] write the fix (in progress)",
        "The parser is fixed now.",
    ):
        assert expected in md, expected

    assert "hello beta" in several.stdout
    assert "nope" in one_line_error(several, 1)

    header, *rows, more = ok(everything).splitlines()
    assert header.split() == ["ID", "TYPE", "UPDATED", "TITLE", "MESSAGES", "CWD"]
    assert [row.split()[:2] for row in rows] == [
        ["sess-b", "user"],
        ["sess-hidden", "hidden"],
        ["sess-child", "subagent"],
    ]
    assert more == "(3 of 4 sessions shown; --limit 4 shows all)"


def test_rename_and_delete(tmp_path: Path, home: Path) -> None:
    url = sqlite_url(tmp_path)
    run(seed, url)
    db = ["--database-url", url]
    renamed = cli(home, "sessions", "rename", "sess-b", "My  own title", *db)
    assert "My own title" in ok(renamed)
    record = run(_get, url, "sess-b")
    assert (record.title, record.title_set_by_user) == ("My own title", True)

    deleted = cli(home, "sessions", "delete", "sess-a", "missing", "sess-b", *db)
    assert "missing" in one_line_error(deleted, 1)
    assert deleted.stdout.splitlines() == ["deleted session sess-a", "deleted session sess-b"]
    assert run(_get, url, "sess-child") is None  # children go with their parent
    assert ok(cli(home, "sessions", "list", *db)).strip() == "no sessions"


async def _get(url: str, session_id: str) -> SessionRecord | None:
    store = await open_store(url)
    try:
        return await store.get_session(session_id)
    finally:
        await store.close()


async def _seed_retention(url: str) -> None:
    store = await open_store(url)
    try:
        await store.create_session(SessionRecord(id="keep", cwd="/work/r"))
        old = now_ms() - 100 * DAY_MS
        await add_turn(
            store,
            "keep",
            "old-turn",
            [text_item(ItemKind.USER, "old question", "old-turn")],
            started_at=old,
        )
        await add_turn(
            store,
            "keep",
            "new-turn",
            [
                text_item(ItemKind.USER, "new question", "new-turn"),
                text_item(ItemKind.AGENT, "new answer", "new-turn"),
            ],
        )
        await store.add_feedback(
            feedback_id="f-old-turn", session_id="keep", turn_id="old-turn", rating=1
        )
        await store.add_feedback(
            feedback_id="f-old", session_id="keep", turn_id="new-turn", rating=2, created_at=old
        )
        await store.add_feedback(
            feedback_id="f-new", session_id="keep", turn_id="new-turn", rating=3
        )
    finally:
        await store.close()


async def _state(url: str) -> tuple[SessionRecord | None, list[str], list[str], int]:
    from sqlalchemy import func, select

    from acp_server.storage import tables

    store = await open_store(url)
    try:
        turns = [turn.id for turn in await store.list_turns("keep")]
        items = [item.message_id for item in await store.load_items("keep")]
        async with store.engine.connect() as conn:
            feedback = await conn.scalar(select(func.count()).select_from(tables.feedback))
        return await store.get_session("keep"), turns, items, int(feedback or 0)
    finally:
        await store.close()


def test_retention_run_deletes_only_old_turns_and_feedback(tmp_path: Path, home: Path) -> None:
    url = sqlite_url(tmp_path)
    run(_seed_retention, url)
    result = cli(
        home,
        "retention",
        "run",
        "--database-url",
        url,
        env={"DATA_RETENTION_TASK_DAYS": "60", "DATA_RETENTION_FEEDBACK_DAYS": "30"},
    )
    out = ok(result)
    assert "deleted 1 turn (with their messages) older than 60 days" in out
    assert "deleted 1 feedback entry older than 30 days" in out
    assert "scheduled retention is off" in out
    record, turns, items, feedback = run(_state, url)
    assert record is not None and record.message_count == 2
    assert turns == ["new-turn"]
    assert items == ["m-new question", "m-new answer"]
    assert feedback == 1  # f-new; f-old-turn went with its turn


@pytest.mark.anyio
async def test_retention_loop_runs_when_enabled(anyio_backend: str) -> None:
    store = await SessionStore.open(None, memory=True)
    try:
        await store.create_session(SessionRecord(id="keep", cwd="/work/r"))
        old = now_ms() - 10 * DAY_MS
        await add_turn(store, "keep", "old", [], started_at=old)
        await add_turn(store, "keep", "new", [])
        await retention_loop(store, RetentionSettings(enabled=False))  # returns at once
        assert len(await store.list_turns("keep")) == 2
        policy = RetentionSettings(enabled=True, task_retention_days=5)
        async with anyio.create_task_group() as tg:
            tg.start_soon(retention_loop, store, policy)
            for _ in range(500):
                if len(await store.list_turns("keep")) == 1:
                    break
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        assert [turn.id for turn in await store.list_turns("keep")] == ["new"]
    finally:
        await store.close()


def test_db_upgrade_and_current(tmp_path: Path, home: Path) -> None:
    url = sqlite_url(tmp_path)
    path = tmp_path / "sessions.db"
    db = ["--database-url", url]
    assert ok(cli(home, "db", "current", *db)).strip() == "not initialised"
    assert not path.exists()
    upgraded = ok(cli(home, "db", "upgrade", *db)).strip()
    assert upgraded == f"database {url} is at revision 0001 (was not initialised)"
    assert ok(cli(home, "db", "current", *db)).strip() == "0001"

    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    listing, upgrade = cli_all(home, [["sessions", "list", *db], ["db", "upgrade", *db]])
    assert "newer than this acp-server" in one_line_error(listing, 2)
    assert "upgrade acp-server" in one_line_error(upgrade, 2)


def test_doctor_passes_and_fails(tmp_path: Path, home: Path) -> None:
    url = sqlite_url(tmp_path)
    run(_get, url, "none")  # creates and migrates the database
    config = tmp_path / "acp.yaml"
    config.write_text("provider:\n  name: openai\n  model: gpt-test\n")
    fresh, current, unreachable, keyless = cli_all(
        home,
        [
            ["doctor"],
            (
                ["doctor", "--config", str(config), "--database-url", url],
                {"OPENAI_API_KEY": "sk-very-secret"},
            ),
            ["doctor", "--database-url", UNREACHABLE_PG],
            (["doctor"], {"ACP_SERVER_PROVIDER": "anthropic"}),
        ],
    )
    lines = ok(fresh).splitlines()
    assert all(line.startswith("✓ ") for line in lines[:-1]) and lines[-1] == "all checks passed"
    assert any(line.startswith("✓ data dir:") for line in lines)
    assert any("does not exist yet" in line for line in lines)

    out = ok(current)
    assert f"✓ config file: {config}" in out
    assert "✓ provider: openai, gpt-test; API key set" in out
    assert "✓ schema: revision 0001, current" in out
    assert "sk-very-secret" not in out + current.stderr

    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    bad = [line for line in unreachable.stdout.splitlines() if line.startswith("✗")]
    assert len(bad) == 1 and "database:" in bad[0] and "127.0.0.1:1" in bad[0]
    assert unreachable.stdout.splitlines()[-1] == "1 problem found"

    assert keyless.returncode == 1
    assert "✗ provider: anthropic" in keyless.stdout and "ANTHROPIC_API_KEY" in keyless.stdout


def serve_once(home: Path, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Start the server, ask for the session list (which waits for the database), EOF."""
    return subprocess.run(
        [*SERVER, *args],
        input=(
            '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":1}}\n'
            '{"jsonrpc":"2.0","id":1,"method":"session/list","params":{}}\n'
        ),
        env=server_env(home, {"ACP_SERVER_LOG_LEVEL": "warning"}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_doctor_fails_wherever_the_server_cannot_start(tmp_path: Path, home: Path) -> None:
    clash = tmp_path / "clash.db"
    with sqlite3.connect(clash) as conn:
        conn.execute("CREATE TABLE feedback (note TEXT)")
    newer = tmp_path / "newer"
    newer.mkdir()
    run(_get, sqlite_url(newer), "none")
    with sqlite3.connect(newer / "sessions.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    script = tmp_path / "bad-script.yaml"
    script.write_text("turns: seven\n")
    cases = [
        (["--database-url", f"sqlite:///{clash}"], "already has a table named feedback"),
        (["--database-url", sqlite_url(newer)], "database schema 9999"),
        (["--memory", "--provider", f"script:{script}"], f"the script {script} is not a valid"),
    ]
    with ThreadPoolExecutor(max_workers=len(cases) * 2) as pool:
        serving = [pool.submit(serve_once, home, args) for args, _ in cases]
        checking = [pool.submit(cli, home, "doctor", *args) for args, _ in cases]
        served = [future.result() for future in serving]
        doctors = [future.result() for future in checking]
    for (args, expected), server, doctor in zip(cases, served, doctors, strict=True):
        problem = one_line_error(server, 2).removeprefix("acp-server: ")
        assert expected in problem, (args, problem)
        assert doctor.returncode == 1, (args, doctor.stdout)
        failed = [line for line in doctor.stdout.splitlines() if line.startswith("✗ ")]
        assert len(failed) == 1 and failed[0].endswith(f": {problem}"), (args, doctor.stdout)
        assert doctor.stdout.splitlines()[-1] == "1 problem found"
    with sqlite3.connect(clash) as conn:  # doctor changed nothing
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert names == {"feedback"}


def test_errors_are_one_plain_line(tmp_path: Path, home: Path) -> None:
    url = sqlite_url(tmp_path)
    run(seed, url)
    db = ["--database-url", url]
    bad_item = tmp_path / "bad-item.json"
    bad_item.write_text(json.dumps(export_file(items=[{"seq": 1, "kind": "song"}])))
    cases: list[tuple[list[str], int, str]] = [
        (["sessions", "show", "nope"], 1, "no session 'nope'"),
        (["sessions", "export", "nope"], 1, "no session 'nope'"),
        (["sessions", "rename", "nope", "t"], 1, "no session 'nope'"),
        (["sessions", "list", "--memory"], 2, "memory mode"),
        (["sessions", "list", "--limit", "0"], 2, "--limit"),
        (["sessions", "insights", "--database-url", UNREACHABLE_PG], 2, "cannot reach PostgreSQL"),
        (["sessions", "list", "--database-url", "oracle://u@h/db"], 2, "unsupported database URL"),
        (["sessions", "import", str(bad_item)], 2, "items[0].kind"),
        (["sessions", "export", "sess-a", "-o", str(tmp_path / "no" / "x")], 2, "cannot write"),
    ]
    calls = [[*args, *db] if "--database-url" not in args else args for args, _, _ in cases]
    for (args, code, expected), result in zip(cases, cli_all(home, calls), strict=True):
        assert expected in one_line_error(result, code), (args, result.stderr)


def export_file(**fields: Any) -> dict[str, Any]:
    return {
        "format": "acp-server.session",
        "version": 1,
        "session": {"id": "x", "cwd": "/w"},
        **fields,
    }


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        ("{", "is not JSON"),
        ('{"hello": 1}', 'not an acp-server session export (it has no "format"'),
        ('{"format": "acp-server.session", "version": 7}', "newer acp-server (format version 7)"),
        (json.dumps(export_file(session={"id": "x"})), "session.cwd: Field required"),
        (
            json.dumps(export_file(items=[{"seq": 1, "kind": "song"}])),
            "items[0].kind: Input should be",
        ),
        (
            json.dumps(
                export_file(
                    items=[
                        {
                            "seq": 1,
                            "kind": "agent",
                            "message_id": "m",
                            "data": {},
                            "created_at": 1,
                            "turn_id": "t9",
                        }
                    ]
                )
            ),
            "item 1 names turn 't9', not in 'turns'",
        ),
    ],
)
def test_import_says_what_is_wrong_with_the_file(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    from acp_server.cli.common import CommandError
    from acp_server.cli.export import read_export

    path = tmp_path / "export.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CommandError) as caught:
        read_export(str(path))
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.code == 2
