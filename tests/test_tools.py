"""The built-in tools on real temporary folders, real files and real processes.

The only stand-in is ``Editor``, a recording double of the *editor's* side of
``fs/*`` and ``terminal/*``; the end-to-end version runs against the real client.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from acp_server.agent.tools import files, search
from acp_server.agent.tools.base import (
    ExitStatus,
    ToolContext,
    ToolError,
    ToolOutcome,
    in_worker,
)
from acp_server.agent.tools.paths import resolve_in_roots
from acp_server.agent.tools.registry import ToolSet, builtin_tools


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A small project: the session's cwd and only root."""
    root = tmp_path / "proj"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "main.py").write_text("import os\n\ndef main():\n    return 1\n")
    (root / "src" / "pkg" / "util.py").write_text("def helper():\n    return 'TODO'\n")
    (root / "README.md").write_text("# Demo\nTODO: write docs\n")
    (root / "notes.txt").write_text("".join(f"line {n}\n" for n in range(1, 11)))
    (root / ".git").mkdir()
    (root / ".git" / "config.py").write_text("TODO = 'never shown'\n")
    (root / "blob.bin").write_bytes(b"\x00\x01TODO\x00")
    return root


def make_ctx(cwd: Path, *extra_roots: Path, **options: Any) -> ToolContext:
    return ToolContext(session_id="s1", cwd=cwd, roots=[cwd, *extra_roots], **options)


TOOLS = {tool.name: tool for tool in builtin_tools()}


async def run(name: str, ctx: ToolContext, /, **arguments: Any) -> ToolOutcome:
    return await TOOLS[name].run(arguments, ctx)


def alive(pid: int) -> bool:
    """A zombie counts as gone: it runs nothing, it only waits for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_gone(pid: int, seconds: float = 30.0) -> bool:
    """Whether ``pid`` is gone at once or soon; the bound is only a safety net."""
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ---- the sandbox ------------------------------------------------------------------


def test_relative_paths_resolve_against_the_session_cwd(ws: Path) -> None:
    assert resolve_in_roots("src/main.py", ws, [ws]) == (ws / "src/main.py").resolve()
    assert resolve_in_roots("src/../README.md", ws, [ws]) == (ws / "README.md").resolve()
    assert resolve_in_roots("new/dir/file.txt", ws, [ws]) == (ws / "new/dir/file.txt").resolve()


def test_escapes_are_refused(ws: Path, tmp_path: Path) -> None:
    with pytest.raises(ToolError) as refused:
        resolve_in_roots("/etc/passwd", ws, [ws])
    assert str(refused.value) == (
        f"/etc/passwd is outside this session's workspace ({ws.resolve()}); "
        "only files under that folder can be used."
    )
    with pytest.raises(ToolError, match="outside this session's workspace"):
        resolve_in_roots("../x", ws, [ws])
    with pytest.raises(ToolError, match="outside this session's workspace"):
        resolve_in_roots("src/../../proj2/file", ws, [ws])


def test_symlinks_pointing_outside_are_refused(ws: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (ws / "link.txt").symlink_to(outside / "secret.txt")
    (ws / "linkdir").symlink_to(outside)
    (ws / "dangling").symlink_to(outside / "not-yet")
    for path in ("link.txt", "linkdir/secret.txt", "linkdir/new-file.txt", "dangling"):
        with pytest.raises(ToolError, match="outside this session's workspace"):
            resolve_in_roots(path, ws, [ws])
    (ws / "inner").symlink_to(ws / "src")
    assert resolve_in_roots("inner/main.py", ws, [ws]) == (ws / "src/main.py").resolve()


def test_a_link_loop_is_a_clear_refusal(ws: Path) -> None:
    (ws / "a").symlink_to(ws / "b")
    (ws / "b").symlink_to(ws / "a")
    with pytest.raises(ToolError, match=r"a/x leads into a loop of symbolic links"):
        resolve_in_roots("a/x", ws, [ws])


@pytest.mark.anyio
async def test_a_fifo_in_the_workspace_is_refused_not_waited_on(ws: Path) -> None:
    os.mkfifo(ws / "pipe")
    ctx = make_ctx(ws)
    with pytest.raises(ToolError, match="pipe is not a regular file"):
        await run("read_file", ctx, path="pipe")
    with pytest.raises(ToolError, match="pipe"):
        await run("write_file", ctx, path="pipe", content="x")
    assert (await run("search_text", ctx, pattern="x", path="pipe")).model_text.startswith(
        "No matches"
    )


def test_a_sibling_with_a_common_prefix_is_outside(tmp_path: Path) -> None:
    a, ab = tmp_path / "a", tmp_path / "ab"
    a.mkdir()
    ab.mkdir()
    (ab / "f.txt").write_text("x")
    with pytest.raises(ToolError, match="outside"):
        resolve_in_roots(str(ab / "f.txt"), a, [a])
    with pytest.raises(ToolError, match="outside"):
        resolve_in_roots("../ab/f.txt", a, [a])


def test_additional_roots_are_allowed(ws: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "shared.py").write_text("x = 1\n")
    assert resolve_in_roots(str(lib / "shared.py"), ws, [ws, lib]) == (lib / "shared.py").resolve()
    assert resolve_in_roots("../lib/shared.py", ws, [ws, lib]) == (lib / "shared.py").resolve()
    with pytest.raises(ToolError) as refused:
        resolve_in_roots("/etc/passwd", ws, [ws, lib])
    assert f"({ws.resolve()}, {lib.resolve()}); only files under those folders" in str(
        refused.value
    )


@pytest.mark.anyio
async def test_every_tool_refuses_paths_outside_the_roots(ws: Path, tmp_path: Path) -> None:
    ctx = make_ctx(ws)
    outside = tmp_path / "elsewhere.txt"
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("read_file", {"path": "/etc/passwd"}),
        ("write_file", {"path": str(outside), "content": "x"}),
        ("edit_file", {"path": "../elsewhere.txt", "old_text": "a", "new_text": "b"}),
        ("list_directory", {"path": ".."}),
        ("find_files", {"pattern": "*", "path": "/etc"}),
        ("search_text", {"pattern": "root", "path": "/etc"}),
    ]
    for name, arguments in attempts:
        with pytest.raises(ToolError, match="outside this session's workspace"):
            await TOOLS[name].run(arguments, ctx)
    assert not outside.exists()


# ---- read_file ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_read_whole_file_and_ranges(ws: Path) -> None:
    ctx = make_ctx(ws)
    assert (await run("read_file", ctx, path="src/main.py")).model_text == (
        "import os\n\ndef main():\n    return 1\n"
    )
    assert (await run("read_file", ctx, path="notes.txt", line=3, limit=2)).model_text == (
        "line 3\nline 4\n"
    )
    assert (await run("read_file", ctx, path="notes.txt", line=9)).model_text == (
        "line 9\nline 10\n"
    )
    assert (await run("read_file", ctx, path="notes.txt", limit=1)).model_text == "line 1\n"
    past_end = await run("read_file", ctx, path="notes.txt", line=50)
    assert past_end.model_text == "[notes.txt has only 10 lines]"


@pytest.mark.anyio
async def test_read_refusals_are_clear(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(ws)
    with pytest.raises(ToolError, match=r"missing\.txt does not exist"):
        await run("read_file", ctx, path="missing.txt")
    with pytest.raises(ToolError, match="src is a folder; use list_directory"):
        await run("read_file", ctx, path="src")
    with pytest.raises(ToolError, match="binary"):
        await run("read_file", ctx, path="blob.bin")
    with pytest.raises(ToolError, match=r"line: Input should be greater than or equal to 1"):
        await run("read_file", ctx, path="notes.txt", line=0)
    monkeypatch.setattr(files, "MAX_READ_CHARS", 20)
    with pytest.raises(ToolError, match="more than read_file returns at once"):
        await run("read_file", ctx, path="notes.txt")
    assert (await run("read_file", ctx, path="notes.txt", line=2, limit=1)).model_text == "line 2\n"


def test_read_title_and_locations(ws: Path) -> None:
    tool, ctx = TOOLS["read_file"], make_ctx(ws)
    assert tool.title({"path": "notes.txt", "line": 3, "limit": 2}) == "Read notes.txt (lines 3-4)"
    assert tool.locations({"path": "notes.txt", "line": 3}, ctx) == [
        {"path": str((ws / "notes.txt").resolve()), "line": 3}
    ]
    assert tool.locations({"path": "/etc/passwd"}, ctx) == []
    assert tool.locations({}, ctx) == []


# ---- write_file and edit_file ------------------------------------------------------


@pytest.mark.anyio
async def test_write_new_file_creates_folders_and_reports_a_new_file_diff(ws: Path) -> None:
    outcome = await run("write_file", make_ctx(ws), path="docs/guide/intro.md", content="Hi\n")
    target = (ws / "docs/guide/intro.md").resolve()
    assert target.read_text() == "Hi\n"
    assert outcome.content == [
        {"type": "diff", "path": str(target), "oldText": None, "newText": "Hi\n"}
    ]
    assert outcome.model_text == "Created docs/guide/intro.md (1 line)."


@pytest.mark.anyio
async def test_write_existing_file_reports_the_old_text(ws: Path) -> None:
    outcome = await run("write_file", make_ctx(ws), path="README.md", content="# New\n")
    assert (ws / "README.md").read_text() == "# New\n"
    [diff] = outcome.content
    assert diff["oldText"] == "# Demo\nTODO: write docs\n" and diff["newText"] == "# New\n"
    assert outcome.model_text.startswith("Wrote README.md")


@pytest.mark.anyio
async def test_edit_exact_replacement_reports_the_whole_file(ws: Path) -> None:
    before = (ws / "src/main.py").read_text()
    outcome = await run(
        "edit_file", make_ctx(ws), path="src/main.py", old_text="return 1", new_text="return 2"
    )
    after = (ws / "src/main.py").read_text()
    assert after == before.replace("return 1", "return 2")
    path = str((ws / "src/main.py").resolve())
    assert outcome.content == [{"type": "diff", "path": path, "oldText": before, "newText": after}]
    assert outcome.model_text == "Edited src/main.py: replaced 1 occurrence."


@pytest.mark.anyio
async def test_edit_ambiguous_missing_and_replace_all(ws: Path) -> None:
    ctx = make_ctx(ws)
    (ws / "dup.txt").write_text("a = 1\nb = 1\n")
    with pytest.raises(ToolError, match=r"occurs 2 times in dup\.txt.*replace_all"):
        await run("edit_file", ctx, path="dup.txt", old_text="= 1", new_text="= 2")
    assert (ws / "dup.txt").read_text() == "a = 1\nb = 1\n"
    with pytest.raises(ToolError, match=r"old_text was not found in dup\.txt"):
        await run("edit_file", ctx, path="dup.txt", old_text="c = 1", new_text="c = 2")
    with pytest.raises(ToolError, match=r"nope\.txt does not exist; use write_file"):
        await run("edit_file", ctx, path="nope.txt", old_text="x", new_text="y")
    with pytest.raises(ToolError, match="old_text: String should have at least 1 character"):
        await run("edit_file", ctx, path="dup.txt", old_text="", new_text="y")
    outcome = await run(
        "edit_file", ctx, path="dup.txt", old_text="= 1", new_text="= 2", replace_all=True
    )
    assert (ws / "dup.txt").read_text() == "a = 2\nb = 2\n"
    assert outcome.model_text.endswith("replaced 2 occurrences.")


@pytest.mark.anyio
async def test_edit_keeps_crlf_files_exact(ws: Path) -> None:
    (ws / "win.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    await run("edit_file", make_ctx(ws), path="win.txt", old_text="one\ntwo", new_text="1\n2")
    assert (ws / "win.txt").read_bytes() == b"1\r\n2\r\nthree\r\n"


# ---- list_directory, find_files, search_text ---------------------------------------


@pytest.mark.anyio
async def test_list_directory(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx(ws)
    listing = (await run("list_directory", ctx)).model_text.splitlines()
    assert listing == [".git/", "blob.bin", "notes.txt", "README.md", "src/"]
    assert (await run("list_directory", ctx, path="src")).model_text == "main.py\npkg/"
    (ws / "empty").mkdir()
    assert (await run("list_directory", ctx, path="empty")).model_text == "empty is empty."
    with pytest.raises(ToolError, match=r"notes\.txt is a file"):
        await run("list_directory", ctx, path="notes.txt")
    monkeypatch.setattr(files, "MAX_LIST_ENTRIES", 2)
    bounded = (await run("list_directory", ctx)).model_text.splitlines()
    assert bounded == [".git/", "blob.bin", "[... and 4 more; use find_files to narrow down]"]


@pytest.mark.anyio
async def test_find_files(ws: Path) -> None:
    ctx = make_ctx(ws)
    assert (await run("find_files", ctx, pattern="**/*.py")).model_text.splitlines() == [
        "src/main.py",
        "src/pkg/util.py",
    ]
    assert (await run("find_files", ctx, pattern="*.py")).model_text.splitlines() == [
        "src/main.py",
        "src/pkg/util.py",
    ]
    assert (await run("find_files", ctx, pattern="src/*.py")).model_text == "src/main.py"
    assert (await run("find_files", ctx, pattern="*.{md,txt}")).model_text.splitlines() == [
        "notes.txt",
        "README.md",
    ]
    assert (await run("find_files", ctx, pattern="*.py", path="src/pkg")).model_text == (
        "src/pkg/util.py"
    )
    assert (await run("find_files", ctx, pattern="*.rs")).model_text == "No files match."
    one = search.FindFiles(search.Limits(found=1))
    bounded = (await one.run({"pattern": "**/*"}, ctx)).model_text.splitlines()
    assert bounded == ["blob.bin", "[stopped after 1 files; narrow the pattern or path]"]


@pytest.mark.anyio
async def test_search_text(ws: Path, tmp_path: Path) -> None:
    ctx = make_ctx(ws)
    hits = (await run("search_text", ctx, pattern=r"TODO")).model_text.splitlines()
    assert hits == ["README.md:2: TODO: write docs", "src/pkg/util.py:2: return 'TODO'"]
    only_py = await run("search_text", ctx, pattern="todo", glob="*.py", ignore_case=True)
    assert only_py.model_text == "src/pkg/util.py:2: return 'TODO'"
    one_file = await run("search_text", ctx, pattern=r"def \w+", path="src/main.py")
    assert one_file.model_text == "src/main.py:3: def main():"
    none = await run("search_text", ctx, pattern="absent_word")
    assert none.model_text == "No matches for /absent_word/ in ."
    with pytest.raises(ToolError, match=r"Invalid regular expression '\(unclosed'"):
        await run("search_text", ctx, pattern="(unclosed")

    outside = tmp_path / "outside.txt"
    outside.write_text("TODO secret\n")
    (ws / "sneaky.txt").symlink_to(outside)
    assert "secret" not in (await run("search_text", ctx, pattern="TODO")).model_text

    one = search.SearchText(search.Limits(matches=1))
    bounded = (await one.run({"pattern": "line"}, ctx)).model_text.splitlines()
    assert bounded == ["notes.txt:1: line 1", "[stopped after 1 matches; narrow the search]"]


@pytest.fixture
def ignoring(ws: Path) -> Path:
    """ws with ignore files at several levels, each hiding a TODO."""
    (ws / ".gitignore").write_text("node_modules/\n*.log\n!keep.log\n/build\n")
    (ws / ".git" / "info").mkdir()
    (ws / ".git" / "info" / "exclude").write_text("scratch.txt\n")
    (ws / "src" / ".ignore").write_text("generated.py\n")
    hidden = ["node_modules/pkg/index.js", "debug.log", "build/out.txt", "scratch.txt", "src/x.log"]
    for name in [*hidden, "src/generated.py", "keep.log", "src/build/kept.txt"]:
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).write_text("TODO here\n")
    return ws


@pytest.mark.anyio
async def test_find_and_search_honour_ignore_files(ignoring: Path) -> None:
    ctx = make_ctx(ignoring)
    found = (await run("find_files", ctx, pattern="**/*")).model_text.splitlines()
    assert found == [
        ".gitignore",
        "blob.bin",
        "keep.log",
        "notes.txt",
        "README.md",
        "src/.ignore",
        "src/main.py",
        "src/build/kept.txt",
        "src/pkg/util.py",
    ]
    hits = (await run("search_text", ctx, pattern="TODO")).model_text.splitlines()
    assert hits == [
        "keep.log:1: TODO here",
        "README.md:2: TODO: write docs",
        "src/build/kept.txt:1: TODO here",
        "src/pkg/util.py:2: return 'TODO'",
    ]
    in_src = (await run("search_text", ctx, pattern="TODO", path="src")).model_text
    assert in_src.splitlines() == [
        "src/build/kept.txt:1: TODO here",
        "src/pkg/util.py:2: return 'TODO'",
    ]


@pytest.mark.anyio
async def test_an_ignored_folder_named_as_the_path_is_searched(ignoring: Path) -> None:
    ctx = make_ctx(ignoring)
    inside = await run("search_text", ctx, pattern="TODO", path="node_modules")
    assert inside.model_text == "node_modules/pkg/index.js:1: TODO here"
    listed = await run("find_files", ctx, pattern="*.js", path="node_modules/pkg")
    assert listed.model_text == "node_modules/pkg/index.js"
    one_file = await run("search_text", ctx, pattern="TODO", path="debug.log")
    assert one_file.model_text == "debug.log:1: TODO here"


HOSTILE = "a" * 40 + "!\naaaa\n"
"""Python's re spends 2**40 steps on line 1 for (a+)+$; RE2 reads it once."""


@pytest.mark.anyio
async def test_a_catastrophic_pattern_is_answered_in_linear_time(ws: Path) -> None:
    (ws / "hostile.txt").write_text(HOSTILE)
    ctx = make_ctx(ws)
    found = await run("search_text", ctx, pattern="(a+)+$", path="hostile.txt")
    assert found.model_text == "hostile.txt:2: aaaa"
    walked = await run("search_text", ctx, pattern="(a+)+$")
    assert walked.model_text == "hostile.txt:2: aaaa"
    many_stars = await run("find_files", ctx, pattern="*a*a*a*a*a*a*a*a*a*a*a*a*b", path=".")
    assert many_stars.model_text == "No files match."


@pytest.mark.anyio
async def test_search_semantics_are_per_line(ws: Path) -> None:
    (ws / "lines.txt").write_bytes(b"first x\r\nsecond\r\n\nx last\n")
    ctx = make_ctx(ws)

    async def lines(pattern: str) -> list[str]:
        text = (await run("search_text", ctx, pattern=pattern, path="lines.txt")).model_text
        return [] if text.startswith("No matches") else text.splitlines()

    assert await lines("x$") == ["lines.txt:1: first x"]
    assert await lines("^x") == ["lines.txt:4: x last"]
    assert await lines("^$") == ["lines.txt:3: "]
    assert await lines(r"x\s+s") == []  # no match runs from one line into the next
    assert await lines(r"\Asecond") == ["lines.txt:2: second"]
    assert await lines("(?i)SECOND") == ["lines.txt:2: second"]


@pytest.mark.anyio
async def test_unsupported_regex_syntax_is_explained(ws: Path) -> None:
    ctx = make_ctx(ws)
    for pattern in (r"(a)\1", "foo(?=bar)", "(?<!x)y", r"end\Z"):
        with pytest.raises(ToolError) as refused:
            await run("search_text", ctx, pattern=pattern)
        message = str(refused.value)
        assert message.startswith(f"Invalid regular expression {pattern!r}: ")
        assert "RE2 syntax" in message and "no backreferences" in message


@pytest.mark.anyio
async def test_a_huge_file_is_searched_in_part_and_says_so(ws: Path) -> None:
    huge = ws / "huge.log"
    with huge.open("wb") as sparse:
        sparse.write(b"needle at the start\n" + b"x" * 10_000 + b"\n")
        sparse.truncate(5 * 1024**3)  # 5 GB, nearly all of it a hole
    found = (await run("search_text", make_ctx(ws), pattern="needle")).model_text.splitlines()
    assert found == [
        "huge.log:1: needle at the start",
        "[only the first 4,000,000 bytes of these large files were searched: huge.log]",
    ]


@pytest.mark.anyio
async def test_a_search_reads_a_bounded_number_of_bytes_and_entries(ws: Path) -> None:
    ctx = make_ctx(ws)
    (ws / "more").mkdir()
    for n in range(5):
        (ws / "more" / f"f{n}.txt").write_text(f"hit {n}\n" + "." * 50 + "\n")
    small = search.SearchText(search.Limits(total_bytes=150))
    found = (await small.run({"pattern": "hit", "path": "more"}, ctx)).model_text.splitlines()
    assert found == [
        "more/f0.txt:1: hit 0",
        "more/f1.txt:1: hit 1",
        "more/f2.txt:1: hit 2",
        "[stopped after reading 150 bytes; narrow the path or glob]",
    ]
    few = search.FindFiles(search.Limits(entries=3))
    listed = (await few.run({"pattern": "*.txt", "path": "more"}, ctx)).model_text.splitlines()
    *names, note = listed
    assert len(names) == 3 and set(names) < {f"more/f{n}.txt" for n in range(5)}
    assert note == "[looked at the first 3 files and folders only; narrow the path]"


@pytest.mark.anyio
async def test_a_line_longer_than_a_read_comes_cut(ws: Path) -> None:
    (ws / "one-line.txt").write_text("y" * (files.MAX_READ_CHARS + 10) + "\nnext\n")
    first = (await run("read_file", make_ctx(ws), path="one-line.txt", line=1, limit=1)).model_text
    assert (
        first
        == "y" * files.MAX_READ_CHARS + f"…[line cut at {files.MAX_READ_CHARS:,} characters]\n"
    )
    second = await run("read_file", make_ctx(ws), path="one-line.txt", line=2)
    assert second.model_text == "next\n"


@pytest.mark.anyio
async def test_write_and_edit_refuse_a_file_too_large_to_hold(ws: Path) -> None:
    with (ws / "big.txt").open("wb") as sparse:
        sparse.write(b"head\n")
        sparse.truncate(files.MAX_EDIT_BYTES + 1)
    ctx = make_ctx(ws)
    for name, arguments in [
        ("edit_file", {"path": "big.txt", "old_text": "head", "new_text": "x"}),
        ("write_file", {"path": "big.txt", "content": "x"}),
    ]:
        with pytest.raises(ToolError, match=r"big\.txt is 16,000,001 bytes; write_file and"):
            await TOOLS[name].run(arguments, ctx)
    assert (ws / "big.txt").stat().st_size == files.MAX_EDIT_BYTES + 1


@pytest.mark.anyio
async def test_a_cancelled_caller_does_not_wait_for_its_worker() -> None:
    started, finished = threading.Event(), threading.Event()

    def work(stop: threading.Event) -> str:
        started.set()
        stop.wait()  # a walk that would only end when told to
        finished.set()
        return "too late"

    async with anyio.create_task_group() as tg:
        tg.start_soon(in_worker, work)
        assert await anyio.to_thread.run_sync(started.wait, 30)
        tg.cancel_scope.cancel()
    assert await anyio.to_thread.run_sync(finished.wait, 30)


# ---- run_command, locally ----------------------------------------------------------


@pytest.mark.anyio
async def test_run_command_reports_exit_code_and_output(ws: Path) -> None:
    outcome = await run("run_command", make_ctx(ws), command="echo out; echo err >&2; exit 3")
    assert outcome.model_text == "Exit code: 3\nOutput:\nout\nerr\n"
    assert outcome.raw_output == {
        "exitCode": 3,
        "signal": None,
        "timedOut": False,
        "truncated": False,
        "stoppedProcesses": 0,
    }
    assert outcome.content[0]["content"]["text"] == "```console\nout\nerr\n```"
    quiet = await run("run_command", make_ctx(ws), command="true")
    assert quiet.model_text == "Exit code: 0\n(no output)"


@pytest.mark.anyio
async def test_run_command_uses_the_session_cwd_without_chdir(ws: Path) -> None:
    before = os.getcwd()
    outcome = await run("run_command", make_ctx(ws / "src"), command="pwd; cat")
    assert outcome.model_text == f"Exit code: 0\nOutput:\n{(ws / 'src').resolve()}\n"
    assert os.getcwd() == before


@pytest.mark.anyio
async def test_run_command_timeout_kills_the_process_group(ws: Path) -> None:
    ctx = make_ctx(ws, command_timeout=30)
    with anyio.fail_after(60):  # a safety net: the sleeps outlast it, waiting for them fails
        outcome = await run(
            "run_command",
            ctx,
            command="sleep 3000 & echo $! > bg.pid; echo started; sleep 3000",
            timeout_seconds=0.5,
        )
    assert outcome.model_text == (
        "Timed out after 0.5 s; the command was killed.\nOutput:\nstarted\n"
    )
    assert outcome.raw_output["timedOut"] is True
    assert wait_until_gone(int((ws / "bg.pid").read_text()))


@pytest.mark.anyio
async def test_run_command_timeout_is_capped_by_the_session(ws: Path) -> None:
    outcome = await run(
        "run_command", make_ctx(ws, command_timeout=0.3), command="sleep 30", timeout_seconds=100
    )
    assert outcome.model_text.startswith("Timed out after 0.3 s")


@pytest.mark.anyio
async def test_cancelling_run_command_kills_the_process_group(ws: Path) -> None:
    ctx = make_ctx(ws)

    async def background() -> None:
        await run("run_command", ctx, command="sleep 30 & echo $! > bg.pid; wait")

    async with anyio.create_task_group() as tg:
        tg.start_soon(background)
        for _ in range(200):
            if (ws / "bg.pid").exists() and (ws / "bg.pid").read_text().strip():
                break
            await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert wait_until_gone(int((ws / "bg.pid").read_text()))


@pytest.mark.anyio
async def test_run_command_keeps_the_tail_of_long_output(ws: Path) -> None:
    outcome = await run("run_command", make_ctx(ws, output_limit=1000), command="seq 1 20000")
    text = outcome.model_text
    assert text.startswith("Exit code: 0\n[output truncated: showing the end only]\nOutput:\n")
    assert text.endswith("19999\n20000\n")
    assert len(text.split("Output:\n", 1)[1]) <= 1000
    assert outcome.raw_output["truncated"] is True


@pytest.mark.anyio
async def test_a_background_child_holding_the_pipe_is_stopped_when_the_command_ends(
    ws: Path,
) -> None:
    with anyio.fail_after(60):  # a safety net: the child sleeps far longer
        outcome = await run(
            "run_command", make_ctx(ws), command="sleep 3001 & echo $! > bg.pid; echo done"
        )
    assert outcome.model_text == (
        "Exit code: 0\n[stopped 1 background process the command left running]\nOutput:\ndone\n"
    )
    assert outcome.raw_output["stoppedProcesses"] == 1
    assert not alive(int((ws / "bg.pid").read_text()))


@pytest.mark.anyio
async def test_children_that_left_the_process_group_are_stopped_too(ws: Path) -> None:
    command = (
        "(setsid sh -c 'echo $$ > escaped.pid; exec sleep 3002' &); "
        "sh -c 'sleep 3003 & echo $! > orphan.pid'; "
        "until [ -s escaped.pid ]; do sleep 0.01; done; echo started"
    )
    outcome = await run("run_command", make_ctx(ws), command=command)
    assert outcome.model_text.startswith("Exit code: 0\n[stopped 2 background processes")
    assert not alive(int((ws / "escaped.pid").read_text()))
    assert not alive(int((ws / "orphan.pid").read_text()))


@pytest.mark.anyio
async def test_cancelling_stops_children_that_left_the_process_group(ws: Path) -> None:
    command = "(setsid sh -c 'echo $$ > escaped.pid; exec sleep 3004' &); sleep 3005"
    pid_file = ws / "escaped.pid"

    async def background() -> None:
        await run("run_command", make_ctx(ws), command=command)

    async with anyio.create_task_group() as tg:
        tg.start_soon(background)
        for _ in range(1500):
            if pid_file.exists() and pid_file.read_text().endswith("\n"):
                break
            await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert not alive(int((ws / "escaped.pid").read_text()))


@pytest.mark.anyio
async def test_a_command_starting_with_a_dash_is_run_not_taken_for_shell_options(
    ws: Path,
) -> None:
    for command in ("-n foo", "--version"):
        outcome = await run("run_command", make_ctx(ws), command=command)
        assert outcome.raw_output["exitCode"] == 127
        assert f"{command.split()[0]}: not found" in outcome.model_text


@pytest.mark.anyio
async def test_a_nul_character_in_a_command_is_a_plain_refusal(ws: Path) -> None:
    editor = Editor()
    for ctx in (make_ctx(ws), make_ctx(ws, client=editor)):
        with pytest.raises(ToolError, match=r"The command contains a NUL character"):
            await run("run_command", ctx, command="echo a\0b")
    assert editor.calls == []


@pytest.mark.anyio
async def test_bad_arguments_are_readable(ws: Path) -> None:
    with pytest.raises(ToolError) as bad:
        await TOOLS["run_command"].run({}, make_ctx(ws))
    assert str(bad.value) == "Invalid arguments for run_command: command: Field required."
    with pytest.raises(ToolError, match="timeout_seconds: Input should be greater than 0"):
        await run("run_command", make_ctx(ws), command="true", timeout_seconds=-1)


# ---- through the editor (ACP fs/* and terminal/*) ----------------------------------


class Editor:
    """Records what a tool asks of the editor and answers with canned content."""

    def __init__(
        self,
        files: dict[str, str] | None = None,
        *,
        can_read: bool = True,
        can_write: bool = True,
        can_terminal: bool = True,
        output: str = "ok\n",
        exit_code: int | None = 0,
        fail_output: bool = False,
    ) -> None:
        self.files = dict(files or {})
        self.can_read, self.can_write, self.can_terminal = can_read, can_write, can_terminal
        self.output, self.exit_code, self.fail_output = output, exit_code, fail_output
        self.calls: list[tuple[Any, ...]] = []

    async def read_text_file(
        self, path: str, line: int | None = None, limit: int | None = None
    ) -> str:
        self.calls.append(("read", path, line, limit))
        return self.files[path]

    async def write_text_file(self, path: str, content: str) -> None:
        self.calls.append(("write", path, content))
        self.files[path] = content

    async def create_terminal(
        self,
        command: str,
        args: list[str],
        cwd: str,
        env: dict[str, str] | None = None,
        output_byte_limit: int | None = None,
    ) -> str:
        self.calls.append(("create", command, args, cwd, output_byte_limit))
        return "term-1"

    async def terminal_output(self, terminal_id: str) -> tuple[str, bool, ExitStatus | None]:
        self.calls.append(("output", terminal_id))
        if self.fail_output:
            raise ConnectionError("editor went away")
        killed = ("kill", terminal_id) in self.calls
        status = ExitStatus(signal="SIGKILL") if killed else ExitStatus(exit_code=self.exit_code)
        return self.output, False, status

    async def wait_for_terminal_exit(self, terminal_id: str) -> ExitStatus:
        self.calls.append(("wait", terminal_id))
        if self.exit_code is None:
            await anyio.sleep_forever()
        return ExitStatus(exit_code=self.exit_code)

    async def kill_terminal(self, terminal_id: str) -> None:
        self.calls.append(("kill", terminal_id))

    async def release_terminal(self, terminal_id: str) -> None:
        self.calls.append(("release", terminal_id))

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


def recorder() -> tuple[
    list[list[dict[str, Any]]], Callable[[list[dict[str, Any]]], Awaitable[None]]
]:
    reports: list[list[dict[str, Any]]] = []

    async def report(content: list[dict[str, Any]]) -> None:
        reports.append(content)

    return reports, report


@pytest.mark.anyio
async def test_reads_go_through_the_editor_when_it_can_read(ws: Path) -> None:
    notes = str((ws / "notes.txt").resolve())
    editor = Editor({notes: "unsaved buffer\n"})
    ctx = make_ctx(ws, client=editor)
    outcome = await run("read_file", ctx, path="notes.txt", line=2, limit=5)
    assert outcome.model_text == "unsaved buffer\n"
    assert editor.calls == [("read", notes, 2, 5)]

    with pytest.raises(ToolError, match=r"The editor could not read README\.md: "):
        await run("read_file", ctx, path="README.md")

    cannot = Editor(can_read=False, can_write=False, can_terminal=False)
    outcome = await run("read_file", make_ctx(ws, client=cannot), path="notes.txt", limit=1)
    assert outcome.model_text == "line 1\n" and cannot.calls == []


@pytest.mark.anyio
async def test_writes_go_through_the_editor_when_it_can_write(ws: Path) -> None:
    readme = str((ws / "README.md").resolve())
    editor = Editor({readme: "# Unsaved\n"})
    ctx = make_ctx(ws, client=editor)

    outcome = await run("write_file", ctx, path="README.md", content="# Final\n")
    assert editor.calls == [("read", readme, None, None), ("write", readme, "# Final\n")]
    assert outcome.content[0]["oldText"] == "# Unsaved\n"
    assert (ws / "README.md").read_text() == "# Demo\nTODO: write docs\n"  # the editor writes

    editor.calls.clear()
    fresh = (ws / "new" / "file.txt").resolve()
    outcome = await run("write_file", ctx, path="new/file.txt", content="x")
    assert editor.calls == [("write", str(fresh), "x")]
    assert outcome.content[0]["oldText"] is None
    assert fresh.parent.is_dir()

    editor.calls.clear()
    await run("edit_file", ctx, path="README.md", old_text="Final", new_text="Done")
    assert editor.calls == [("read", readme, None, None), ("write", readme, "# Done\n")]


@pytest.mark.anyio
async def test_run_command_in_an_editor_terminal(ws: Path) -> None:
    editor = Editor(output="hello\n", exit_code=0)
    reports, report = recorder()
    ctx = make_ctx(ws, client=editor, report=report, output_limit=4096)
    outcome = await run("run_command", ctx, command="echo hello")
    assert editor.calls == [
        ("create", "/bin/sh", ["-c", "--", "echo hello"], str(ws), 4096),
        ("wait", "term-1"),
        ("output", "term-1"),
        ("release", "term-1"),
    ]
    assert reports == [[{"type": "terminal", "terminalId": "term-1"}]]
    assert outcome.content == [{"type": "terminal", "terminalId": "term-1"}]
    assert outcome.model_text == "Exit code: 0\nOutput:\nhello\n"


@pytest.mark.anyio
async def test_editor_terminal_timeout_kills_then_releases(ws: Path) -> None:
    editor = Editor(output="partial\n", exit_code=None)
    outcome = await run(
        "run_command", make_ctx(ws, client=editor), command="sleep 99", timeout_seconds=0.1
    )
    assert editor.names() == ["create", "wait", "kill", "output", "release"]
    assert (
        outcome.model_text == "Timed out after 0.1 s; the command was killed.\nOutput:\npartial\n"
    )


@pytest.mark.anyio
async def test_editor_terminal_is_released_on_cancel_and_on_failure(ws: Path) -> None:
    waiting = anyio.Event()

    class Waiting(Editor):
        async def wait_for_terminal_exit(self, terminal_id: str) -> ExitStatus:
            waiting.set()
            return await super().wait_for_terminal_exit(terminal_id)

    editor = Waiting(exit_code=None)

    async def command() -> None:
        await run("run_command", make_ctx(ws, client=editor), command="sleep 99")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(command)
            await waiting.wait()  # cancelled while it waits for the exit
            tg.cancel_scope.cancel()
    assert editor.names() == ["create", "wait", "kill", "release"]

    broken = Editor(fail_output=True)
    with pytest.raises(ToolError, match=r"editor's terminal failed.*editor went away"):
        await run("run_command", make_ctx(ws, client=broken), command="true")
    assert broken.names()[-2:] == ["kill", "release"]


# ---- the registry ------------------------------------------------------------------


def test_builtin_tools_describe_themselves(ws: Path) -> None:
    tools = builtin_tools()
    assert [tool.name for tool in tools] == [
        "read_file",
        "write_file",
        "edit_file",
        "list_directory",
        "find_files",
        "search_text",
        "run_command",
    ]
    kinds = {tool.name: (tool.kind, tool.mutates) for tool in tools}
    assert kinds["read_file"] == ("read", False)
    assert kinds["edit_file"] == ("edit", True)
    assert kinds["search_text"] == ("search", False)
    assert kinds["run_command"] == ("execute", True)
    for spec in ToolSet(tools).specs():
        assert spec.description and spec.input_schema["type"] == "object"
        assert "properties" in spec.input_schema
    schema = TOOLS["edit_file"].input_schema
    assert schema["required"] == ["path", "old_text", "new_text"]


@pytest.mark.anyio
async def test_toolset_runs_by_name_and_turns_errors_into_outcomes(ws: Path) -> None:
    toolset = ToolSet(builtin_tools())
    ctx = make_ctx(ws)
    assert "read_file" in toolset and len(toolset) == 7
    ok = await toolset.run("read_file", {"path": "notes.txt", "limit": 1}, ctx)
    assert ok == ToolOutcome("line 1\n")
    refused = await toolset.run("read_file", {"path": "/etc/passwd"}, ctx)
    assert refused.is_error and "outside this session's workspace" in refused.model_text
    unknown = await toolset.run("rm_rf", {}, ctx)
    assert unknown.is_error and unknown.model_text.startswith("There is no tool named 'rm_rf'")
    with pytest.raises(ValueError, match="two tools are named 'read_file'"):
        ToolSet([*builtin_tools(), TOOLS["read_file"]])
