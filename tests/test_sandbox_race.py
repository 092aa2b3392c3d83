"""The sandbox against a local process that swaps a checked folder for a link.

A second process flips ``box`` (a real folder in the workspace) to a link to a
folder outside and back, as fast as it can, while the tools read and write through
``box`` hundreds of times. The flip is one ``renameat2(RENAME_EXCHANGE)``, so ``box``
is always there, a folder or a link. A tool may fail then (the path changed, or now
leads outside) but it must never show the outside folder or write into it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from acp_server.agent.tools.base import ToolContext, ToolError
from acp_server.agent.tools.registry import builtin_tools

TOOLS = {tool.name: tool for tool in builtin_tools()}
ROUNDS = 200
SECRET = "SECRET-outside"

SWAPPER = r"""
import ctypes, os, sys
box, outside, started = sys.argv[1:4]
link = box + ".link"
os.symlink(outside, link)
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
open(started, "w").close()
while True:
    if libc.renameat2(AT_FDCWD, box.encode(), AT_FDCWD, link.encode(), RENAME_EXCHANGE):
        raise OSError(ctypes.get_errno(), "renameat2")
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    (ws / "box").mkdir(parents=True)
    (ws / "box" / "data.txt").write_text("inside\n")
    outside.mkdir()
    (outside / "data.txt").write_text(SECRET + "\n")
    (outside / f"{SECRET}.txt").write_text(SECRET + "\n")
    return ws, outside


@pytest.fixture
def swapping(setup: tuple[Path, Path], tmp_path: Path) -> Iterator[None]:
    ws, outside = setup
    started = tmp_path / "started"
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(ws / "box"), str(outside), str(started)]
    )
    try:
        while not started.exists():
            assert swapper.poll() is None, "the swapper died"
        yield
        assert swapper.poll() is None, "the swapper stopped early"
    finally:
        swapper.kill()
        swapper.wait()


async def attempt(name: str, ctx: ToolContext, **arguments: Any) -> str:
    """What the model would see: the outcome's text and content, or the refusal
    (an unexpected exception is what the agent loop would report instead)."""
    try:
        outcome = await TOOLS[name].run(arguments, ctx)
    except ToolError as exc:
        return str(exc)
    except Exception as exc:
        return f"{name} failed unexpectedly: {type(exc).__name__}"
    return f"{outcome.model_text}\n{outcome.content}"


@pytest.mark.anyio
async def test_a_folder_swapped_for_a_link_never_leads_outside(
    setup: tuple[Path, Path], swapping: None
) -> None:
    ws, outside = setup
    ctx = ToolContext(session_id="race", cwd=ws, roots=[ws])
    leaks: list[str] = []
    for i in range(ROUNDS):
        seen = [
            await attempt("read_file", ctx, path="box/data.txt"),
            await attempt("write_file", ctx, path="box/data.txt", content=f"inside {i}\n"),
            await attempt("write_file", ctx, path=f"box/made-{i}/new.txt", content="new\n"),
        ]
        if i % 4 == 0:
            seen += [
                await attempt("list_directory", ctx, path="box"),
                await attempt("find_files", ctx, pattern="*", path="box"),
                await attempt("search_text", ctx, pattern="SECRET", path="box"),
                await attempt("search_text", ctx, pattern="SECRET", path="box/data.txt"),
            ]
        leaks += [text for text in seen if SECRET in text]
    made_outside = len(list(outside.iterdir())) - 2
    overwritten = (outside / "data.txt").read_text() != SECRET + "\n"
    assert (len(leaks), made_outside, overwritten) == (0, 0, False), (
        f"{len(leaks)} results showed the outside folder, {made_outside} folders were "
        f"made outside, the outside file was overwritten: {overwritten}"
    )


@pytest.mark.anyio
async def test_links_that_stay_inside_the_roots_still_work(setup: tuple[Path, Path]) -> None:
    ws, _ = setup
    (ws / "alias").symlink_to(ws / "box")
    (ws / "box" / "note.txt").symlink_to(ws / "box" / "data.txt")
    ctx = ToolContext(session_id="links", cwd=ws, roots=[ws])
    assert (await TOOLS["read_file"].run({"path": "alias/data.txt"}, ctx)).model_text == "inside\n"
    assert (await TOOLS["read_file"].run({"path": "box/note.txt"}, ctx)).model_text == "inside\n"
    await TOOLS["write_file"].run({"path": "alias/deep/new.txt", "content": "x"}, ctx)
    assert (ws / "box" / "deep" / "new.txt").read_text() == "x"
    listing = await TOOLS["list_directory"].run({"path": "alias"}, ctx)
    assert listing.model_text == "data.txt\ndeep/\nnote.txt"
    found = await TOOLS["search_text"].run({"pattern": "inside", "path": "box"}, ctx)
    assert found.model_text == "box/data.txt:1: inside\nbox/note.txt:1: inside"
