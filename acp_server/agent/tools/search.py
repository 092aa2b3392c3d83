"""Finding files by glob and text by regex, bounded so one call never floods the model.

Walks run in a worker thread and check for cancellation between files, so a
cancelled turn stops a long search instead of leaving it running.
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
from acp_server.agent.tools.paths import display_path, resolve_in_roots
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


def _walk(base: Path) -> Iterator[tuple[Path, str]]:
    """Files under base, sorted, as (path, posix path relative to base); skips .git."""
    for folder, dirs, files in os.walk(base, followlinks=False):
        anyio.from_thread.check_cancelled()
        dirs[:] = sorted((d for d in dirs if d not in SKIPPED_DIRS), key=str.lower)
        for name in sorted(files, key=str.lower):
            path = Path(folder, name)
            yield path, path.relative_to(base).as_posix()


def _folder(path: Path, shown: str) -> Path:
    if not path.exists():
        raise ToolError(f"{shown} does not exist.")
    if not path.is_dir():
        raise ToolError(f"{shown} is a file, not a folder.")
    return path


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
        return ToolOutcome(await anyio.to_thread.run_sync(self._find, base, rule, ctx.cwd))

    @staticmethod
    def _find(base: Path, rule: tuple[re.Pattern[str], bool], cwd: Path) -> str:
        _folder(base, display_path(base, cwd))
        found: list[str] = []
        for path, relative in _walk(base):
            if _matches(rule, relative):
                if len(found) == MAX_FOUND:
                    found.append(f"[stopped after {MAX_FOUND} files; narrow the pattern or path]")
                    break
                found.append(display_path(path, cwd))
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
        text = await anyio.to_thread.run_sync(self._search, base, regex, rule, ctx)
        return ToolOutcome(text)

    @staticmethod
    def _search(
        base: Path,
        regex: re.Pattern[str],
        rule: tuple[re.Pattern[str], bool] | None,
        ctx: ToolContext,
    ) -> str:
        shown = display_path(base, ctx.cwd)
        if not base.exists():
            raise ToolError(f"{shown} does not exist.")
        files = [(base, base.name)] if base.is_file() else _walk(base)
        roots = [root.resolve() for root in ctx.roots] or [ctx.cwd.resolve()]
        hits: list[str] = []
        for path, relative in files:
            if rule is not None and not _matches(rule, relative):
                continue
            if path.is_symlink() and not any(path.resolve().is_relative_to(r) for r in roots):
                continue
            for number, line in _text_lines(path):
                if regex.search(line):
                    if len(hits) == MAX_MATCHES:
                        hits.append(f"[stopped after {MAX_MATCHES} matches; narrow the search]")
                        return "\n".join(hits)
                    text = line.strip()
                    if len(text) > MAX_LINE_CHARS:
                        text = text[:MAX_LINE_CHARS] + "…"
                    hits.append(f"{display_path(path, ctx.cwd)}:{number}: {text}")
        return "\n".join(hits) if hits else f"No matches for /{regex.pattern}/ in {shown}"


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of a text file; nothing for binary, huge or unreadable files."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SEARCH_FILE_BYTES:
            return
        with path.open("rb") as raw:
            if b"\x00" in raw.read(_BINARY_SNIFF):
                return
            raw.seek(0)
            data = raw.read()
    except OSError:
        return
    yield from enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1)
