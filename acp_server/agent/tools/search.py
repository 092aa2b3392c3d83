"""Finding files by glob and text by regex, bounded so one call never floods the model.

Walks run in a worker thread and check for cancellation between files, so a
cancelled turn stops a long search instead of leaving it running. They go from
folder descriptor to folder descriptor and never through a link, so a folder
swapped for a link mid-walk cannot lead outside the roots.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import anyio.to_thread
from pydantic import Field

from acp_server.agent.tools.base import ToolContext, ToolError, ToolKind, ToolOutcome
from acp_server.agent.tools.paths import (
    FOLDER,
    Moved,
    at_path,
    display_path,
    open_nofollow,
    resolve_in_roots,
)
from acp_server.agent.tools.registry import Arguments, BuiltinTool

MAX_FOUND = 500
MAX_MATCHES = 200
MAX_LINE_CHARS = 300
MAX_SEARCH_FILE_BYTES = 2_000_000
SKIPPED_DIRS = frozenset({".git"})
_BINARY_SNIFF = 8192


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob with ``**``, ``*``, ``?``, ``[...]`` and ``{a,b}`` to a full-match regex.

    ``fnmatch`` lets ``*`` cross ``/`` and knows neither ``**`` nor braces.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end
        elif char == "{" and (end := pattern.find("}", i)) != -1:
            options = pattern[i + 1 : end].split(",")
            out.append("(?:" + "|".join(glob_to_regex(o).pattern[:-2] for o in options) + ")")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _glob_matcher(pattern: str) -> tuple[re.Pattern[str], bool]:
    """The regex, and whether it applies to the name only (a pattern without '/')."""
    pattern = pattern.strip()
    while pattern.startswith("./"):
        pattern = pattern[2:]
    if not pattern:
        raise ToolError("The glob pattern is empty; try something like **/*.py.")
    if pattern.startswith("/"):
        raise ToolError(
            "The glob pattern must be relative to the search folder; "
            "pass the folder as path and a pattern such as **/*.py."
        )
    try:
        return glob_to_regex(pattern), "/" not in pattern
    except re.error as exc:
        raise ToolError(f"Invalid glob pattern {pattern!r}: {exc}.") from None


def _matches(rule: tuple[re.Pattern[str], bool], relative: str) -> bool:
    regex, name_only = rule
    return regex.match(relative.rsplit("/", 1)[-1] if name_only else relative) is not None


def _walk(top: int) -> Iterator[tuple[int, str, str]]:
    """Files under the folder ``top``, sorted, as (folder fd, name, posix path relative
    to top); skips .git.

    A folder's files come before its subfolders. Links are listed as files, except
    links to folders, which (like subfolders that turn out to be links) are skipped.
    """
    yield from _walk_folder(top, "")


def _walk_folder(folder: int, prefix: str) -> Iterator[tuple[int, str, str]]:
    anyio.from_thread.check_cancelled()
    subfolders: list[str] = []
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name.lower())
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in SKIPPED_DIRS:
                    subfolders.append(entry.name)
                continue
            if entry.is_symlink() and entry.is_dir():
                continue
        except OSError:
            continue
        yield folder, entry.name, prefix + entry.name
    for name in subfolders:
        try:
            child = open_nofollow(folder, name, FOLDER)
        except (Moved, OSError):
            continue
        try:
            yield from _walk_folder(child, f"{prefix}{name}/")
        finally:
            os.close(child)


def _open_base(given: str, ctx: ToolContext, shown: str) -> int:
    """A descriptor for the file or folder a search starts from."""
    try:
        return at_path(
            given,
            ctx.cwd,
            ctx.roots,
            lambda folder, name: open_nofollow(folder, name, os.O_RDONLY | os.O_NONBLOCK),
        )
    except (FileNotFoundError, NotADirectoryError):
        raise ToolError(f"{shown} does not exist.") from None
    except OSError as exc:
        raise ToolError(f"Could not open {shown}: {(exc.strerror or str(exc)).lower()}.") from None


class FindArgs(Arguments):
    pattern: str = Field(
        description="Glob such as **/*.py or src/**/test_*.ts; a pattern without '/' "
        "matches file names at any depth."
    )
    path: str = Field(".", description="Folder to search; the working directory by default.")


class FindFiles(BuiltinTool[FindArgs]):
    name = "find_files"
    description = "Find files whose path matches a glob pattern (skips .git)."
    kind: ToolKind = "search"
    mutates = False
    arguments = FindArgs

    def title(self, arguments: dict[str, Any]) -> str:
        args = self.try_parse(arguments)
        return "Find files" if args is None else f"Find {args.pattern} in {args.path}"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        args = self.parse(arguments)
        base = resolve_in_roots(args.path, ctx.cwd, ctx.roots)
        rule = _glob_matcher(args.pattern)
        return ToolOutcome(await anyio.to_thread.run_sync(self._find, args.path, base, rule, ctx))

    @staticmethod
    def _find(given: str, base: Path, rule: tuple[re.Pattern[str], bool], ctx: ToolContext) -> str:
        shown = display_path(base, ctx.cwd)
        top = _open_base(given, ctx, shown)
        try:
            if not stat.S_ISDIR(os.fstat(top).st_mode):
                raise ToolError(f"{shown} is a file, not a folder.")
            found: list[str] = []
            for _, _, relative in _walk(top):
                if _matches(rule, relative):
                    if len(found) == MAX_FOUND:
                        found.append(
                            f"[stopped after {MAX_FOUND} files; narrow the pattern or path]"
                        )
                        break
                    found.append(display_path(base / relative, ctx.cwd))
        finally:
            os.close(top)
        return "\n".join(found) if found else "No files match."


class SearchArgs(Arguments):
    pattern: str = Field(min_length=1, description="Regular expression (Python syntax).")
    path: str = Field(
        ".", description="Folder or file to search; the working directory by default."
    )
    glob: str | None = Field(None, description="Only search files matching this glob, e.g. *.py.")
    ignore_case: bool = Field(False, description="Match without regard to case.")


class SearchText(BuiltinTool[SearchArgs]):
    name = "search_text"
    description = (
        "Search file contents with a regular expression. Returns 'file:line: text' lines; "
        "skips binary files and .git."
    )
    kind: ToolKind = "search"
    mutates = False
    arguments = SearchArgs

    def title(self, arguments: dict[str, Any]) -> str:
        args = self.try_parse(arguments)
        return "Search text" if args is None else f"Search /{args.pattern}/ in {args.path}"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        args = self.parse(arguments)
        base = resolve_in_roots(args.path, ctx.cwd, ctx.roots)
        try:
            regex = re.compile(args.pattern, re.IGNORECASE if args.ignore_case else 0)
        except re.error as exc:
            raise ToolError(f"Invalid regular expression {args.pattern!r}: {exc}.") from None
        rule = None if args.glob is None else _glob_matcher(args.glob)
        text = await anyio.to_thread.run_sync(self._search, args.path, base, regex, rule, ctx)
        return ToolOutcome(text)

    @staticmethod
    def _search(
        given: str,
        base: Path,
        regex: re.Pattern[str],
        rule: tuple[re.Pattern[str], bool] | None,
        ctx: ToolContext,
    ) -> str:
        shown = display_path(base, ctx.cwd)
        top = _open_base(given, ctx, shown)
        hits: list[str] = []
        try:
            if stat.S_ISDIR(os.fstat(top).st_mode):
                files: Iterator[tuple[int | None, str, str]] = iter(_walk(top))
            else:
                files, base = iter([(None, "", base.name)]), base.parent
            for folder, name, relative in files:
                if rule is not None and not _matches(rule, relative):
                    continue
                path = base / relative
                for number, line in _text_lines(folder, name, top, str(path), ctx):
                    if regex.search(line):
                        if len(hits) == MAX_MATCHES:
                            hits.append(f"[stopped after {MAX_MATCHES} matches; narrow the search]")
                            return "\n".join(hits)
                        text = line.strip()
                        if len(text) > MAX_LINE_CHARS:
                            text = text[:MAX_LINE_CHARS] + "…"
                        hits.append(f"{display_path(path, ctx.cwd)}:{number}: {text}")
        finally:
            os.close(top)
        return "\n".join(hits) if hits else f"No matches for /{regex.pattern}/ in {shown}"


def _text_lines(
    folder: int | None, name: str, top: int, path: str, ctx: ToolContext
) -> Iterator[tuple[int, str]]:
    """Numbered lines of a text file; nothing for binary, huge or unreadable files.

    ``folder`` None means the file is ``top`` itself. A link found by the walk is
    followed only through ``at_path``, so only when it stays inside the roots.
    """
    try:
        if folder is None:
            fd = os.dup(top)
        else:
            try:
                fd = open_nofollow(folder, name, os.O_RDONLY | os.O_NONBLOCK)
            except Moved:
                fd = at_path(
                    path,
                    ctx.cwd,
                    ctx.roots,
                    lambda at, last: open_nofollow(at, last, os.O_RDONLY | os.O_NONBLOCK),
                )
        with open(fd, "rb") as raw:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SEARCH_FILE_BYTES:
                return
            if b"\x00" in raw.read(_BINARY_SNIFF):
                return
            raw.seek(0)
            data = raw.read()
    except (OSError, ToolError):
        return
    yield from enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1)
