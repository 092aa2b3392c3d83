"""Finding files by glob and text by regex, bounded so one call never floods the model
nor holds the process.

Patterns and globs are matched with RE2, in time linear in the text: a pattern such
as ``(a+)+$`` cannot backtrack for minutes the way Python's ``re`` would, holding the
GIL and so every session. Walks run in a worker thread that a cancelled turn leaves
at once (``in_worker``); the worker gives up at its next file or folder. One call
looks at a bounded number of entries and reads a bounded number of bytes, and the
result says what was left out. Walks go from folder descriptor to folder descriptor
and never through a link, so a folder swapped for a link mid-walk cannot lead
outside the roots.

Walks skip ``.git`` and what ``.gitignore``, ``.ignore`` and ``.git/info/exclude``
exclude (read with ``pathspec``, matched by its RE2 backend), as git and ripgrep
do; so ``node_modules`` or ``.venv`` do not drown the answer. A folder the call
names itself is searched even when ignored.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pathspec
import re2  # type: ignore[import-untyped]  # google-re2 ships no type hints: see Regex
from pydantic import Field

from acp_server.agent.tools.base import (
    Abandoned,
    ToolContext,
    ToolError,
    ToolKind,
    ToolOutcome,
    in_worker,
)
from acp_server.agent.tools.builtin import Arguments, BuiltinTool
from acp_server.agent.tools.paths import (
    FOLDER,
    Moved,
    allowed_roots,
    at_path,
    display_path,
    open_nofollow,
    resolve_in_roots,
)

MAX_LINE_CHARS = 300
SKIPPED_DIRS = frozenset({".git"})
IGNORE_FILES = ((".git", "info", "exclude"), (".gitignore",), (".ignore",))
"""Read in this order in each folder, so a later file's rule wins over an earlier one's."""
_MAX_IGNORE_BYTES = 256_000
_BINARY_SNIFF = 8192
_READ = os.O_RDONLY | os.O_NONBLOCK


class _Match(Protocol):
    def start(self) -> int: ...


class Regex(Protocol):
    """A compiled ``re2`` pattern, as far as this module uses one."""

    def search(self, text: str | bytes, pos: int = 0) -> _Match | None: ...

    def fullmatch(self, text: str | bytes) -> _Match | None: ...


Found = Generator[tuple[int, str, str], None, None]
"""Files as (folder fd, name, posix path relative to the search folder)."""
Rules = tuple[tuple[str, int, pathspec.GitIgnoreSpec], ...]
"""Ignore rules in force, shallowest first, as (lead, skip, spec): a path relative to
the search folder is checked against ``spec`` as ``lead + path[skip:]``."""

_LINE_ONLY = re.compile(r"\\[Az]|\(\?[a-zA-Z]*-")
"""Patterns whose meaning changes when searched across a whole buffer at once."""
_UNSUPPORTED = (
    "invalid perl operator",
    "invalid escape sequence",
    "bad repetition operator",
    "invalid repetition size",
)


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one call may look at; whatever is cut is said in the result."""

    found: int = 500
    matches: int = 200
    entries: int = 200_000
    """Files and folders one walk looks at."""
    depth: int = 64
    """Folders nested deeper are not entered."""
    file_bytes: int = 4_000_000
    """Bytes searched in one file; the rest of a longer file is not."""
    total_bytes: int = 256_000_000
    """Bytes one search reads in all."""


def _compile(pattern: str, ignore_case: bool = False, one_line: bool = False) -> Regex:
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own line on stderr
    options.case_sensitive = not ignore_case
    options.never_nl = one_line
    regex: Regex = re2.compile(pattern, options)
    return regex


def _glob_source(pattern: str) -> str:
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
            out.append("(?:" + "|".join(_glob_source(o) for o in options) + ")")
            i = end
        else:
            out.append(re2.escape(char))
        i += 1
    return "".join(out)


def glob_to_regex(pattern: str) -> Regex:
    """Compile a glob with ``**``, ``*``, ``?``, ``[...]`` and ``{a,b}`` for ``fullmatch``.

    ``fnmatch`` lets ``*`` cross ``/`` and knows neither ``**`` nor braces; and a glob
    with many stars is exactly what makes a backtracking matcher take forever.
    """
    return _compile(_glob_source(pattern))


def _glob_matcher(pattern: str) -> tuple[Regex, bool]:
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
    except re2.error as exc:
        raise ToolError(f"Invalid glob pattern {pattern!r}: {_re2_reason(exc)}.") from None


def _matches(rule: tuple[Regex, bool], relative: str) -> bool:
    regex, name_only = rule
    return regex.fullmatch(relative.rsplit("/", 1)[-1] if name_only else relative) is not None


def _re2_reason(exc: Exception) -> str:
    reason = exc.args[0] if exc.args else str(exc)
    return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)


class _Matcher:
    """Finds the lines of a buffer that a pattern matches, each in linear time.

    ``finder`` is the pattern across the whole buffer with ``^``/``$`` at line ends
    and ``never_nl``, so no match spans lines: one RE2 pass skips the lines that
    cannot match, and ``line`` confirms each candidate line on its own.
    """

    def __init__(self, pattern: str, ignore_case: bool) -> None:
        try:
            self.line: Regex = _compile(pattern, ignore_case)
            self.finder: Regex | None = None
            if not _LINE_ONLY.search(pattern):
                self.finder = _compile("(?m)" + pattern, ignore_case, one_line=True)
        except re2.error as exc:
            reason = _re2_reason(exc)
            hint = ""
            if reason.startswith(_UNSUPPORTED):
                hint = (
                    " search_text uses RE2 syntax, which matches in linear time and so has no "
                    "backreferences (\\1, (?P=name)), no lookahead or lookbehind ((?=, (?!, "
                    "(?<=, (?<!), no possessive or atomic groups and no repeat counts over "
                    "1000; \\Z is written \\z. Rewrite the pattern without them."
                )
            raise ToolError(f"Invalid regular expression {pattern!r}: {reason}.{hint}") from None

    def lines(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """(line number, line) for each matching line, in order."""
        data = data[:-1] if data.endswith(b"\n") else data
        if not data:
            return
        if self.finder is None:
            for number, line in enumerate(data.split(b"\n"), start=1):
                if self.line.search(line) is not None:
                    yield number, line
            return
        pos = counted = 0
        number = 1
        while (found := self.finder.search(data, pos)) is not None:
            start = data.rfind(b"\n", 0, found.start()) + 1
            end = data.find(b"\n", found.start())
            end = len(data) if end == -1 else end
            number += data.count(b"\n", counted, start)
            counted = start
            if self.line.search(data[start:end]) is not None:
                yield number, data[start:end]
            if end == len(data):
                return
            pos = end + 1


class _Walk:
    """One find or search: the walk of a folder, its budget, and what it left out."""

    def __init__(self, limits: Limits, stop: threading.Event) -> None:
        self.limits = limits
        self.stop = stop
        self.entries = 0
        self.bytes = 0
        self.too_many = self.too_deep = self.read_enough = False
        self.partly_read: list[str] = []

    def check(self) -> None:
        if self.stop.is_set():
            raise Abandoned

    def files(self, top: int, rules: Rules = ()) -> Found:
        """Files under the folder ``top``, sorted, as (folder fd, name, posix path
        relative to top); skips .git and what the ignore files (``rules`` from the
        folders above top, then each folder's own) exclude.

        A folder's files come before its subfolders. Links are listed as files,
        except links to folders, which (like subfolders that turn out to be links)
        are skipped.
        """
        yield from self._folder(top, "", 0, rules)

    def _folder(
        self, folder: int, prefix: str, depth: int, rules: Rules
    ) -> Iterator[tuple[int, str, str]]:
        self.check()
        entries: list[os.DirEntry[str]] = []
        with os.scandir(folder) as scan:
            for entry in scan:
                if self.entries >= self.limits.entries:
                    self.too_many = True
                    break
                self.entries += 1
                entries.append(entry)
        entries.sort(key=lambda entry: entry.name.lower())
        own = _folder_rules(folder, {entry.name for entry in entries})
        if own is not None:
            rules = (*rules, ("", len(prefix), own))
        subfolders: list[str] = []
        for entry in entries:
            self.check()
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
                if is_folder and entry.name in SKIPPED_DIRS:
                    continue
                if not is_folder and entry.is_symlink() and entry.is_dir():
                    continue
            except OSError:
                continue
            if rules and _ignored(rules, prefix + entry.name, is_folder):
                continue
            if is_folder:
                subfolders.append(entry.name)
            else:
                yield folder, entry.name, prefix + entry.name
        if subfolders and depth >= self.limits.depth:
            self.too_deep = True
            return
        for name in subfolders:
            if self.too_many:
                return
            try:
                child = open_nofollow(folder, name, FOLDER)
            except (Moved, OSError):
                continue
            try:
                yield from self._folder(child, f"{prefix}{name}/", depth + 1, rules)
            finally:
                os.close(child)

    def read(self, fd: int, shown: str) -> bytes | None:
        """The searchable head of a text file (taking ownership of ``fd``); None for
        binary files, and for every file once the byte budget is spent."""
        with open(fd, "rb") as raw:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            room = self.limits.total_bytes - self.bytes
            if room <= 0:
                self.read_enough = True
                return None
            head = raw.read(min(_BINARY_SNIFF, room))
            if b"\x00" in head:
                return None
            want = min(self.limits.file_bytes, room)
            data = head + raw.read(max(0, want - len(head)))
            self.bytes += len(data)
            if raw.read(1):
                if want < self.limits.file_bytes:
                    self.read_enough = True
                else:
                    self.partly_read.append(shown)
                cut = data.rfind(b"\n")
                data = data[: cut + 1] if cut != -1 else data
        return data.replace(b"\r\n", b"\n") if b"\r\n" in data else data

    def notes(self) -> list[str]:
        limits, notes = self.limits, []
        if self.partly_read:
            names = ", ".join(self.partly_read[:5])
            more = f" and {len(self.partly_read) - 5} more" if len(self.partly_read) > 5 else ""
            notes.append(
                f"[only the first {limits.file_bytes:,} bytes of these large files were "
                f"searched: {names}{more}]"
            )
        if self.read_enough:
            notes.append(
                f"[stopped after reading {limits.total_bytes:,} bytes; narrow the path or glob]"
            )
        if self.too_many:
            notes.append(
                f"[looked at the first {limits.entries:,} files and folders only; narrow the path]"
            )
        if self.too_deep:
            notes.append(f"[folders nested more than {limits.depth} levels deep were skipped]")
        return notes


def _ignored(rules: Rules, relative: str, is_folder: bool) -> bool:
    """Whether the deepest rule that speaks about ``relative`` ignores it (git's order)."""
    path = relative + "/" if is_folder else relative
    for lead, skip, spec in reversed(rules):
        verdict = spec.check_file(lead + path[skip:]).include
        if verdict is not None:
            return verdict
    return False


def _folder_rules(folder: int, names: set[str] | None = None) -> pathspec.GitIgnoreSpec | None:
    """The ignore rules a folder's own files set (``names``: its entries, when known)."""
    lines: list[str] = []
    for parts in IGNORE_FILES:
        if names is None or parts[0] in names:
            lines += _small_text(folder, parts)
    return _spec(lines) if lines else None


def _small_text(folder: int, parts: tuple[str, ...]) -> list[str]:
    """The lines of a small file under ``folder``, reached without following links."""
    opened: list[int] = []
    try:
        at = folder
        for part in parts[:-1]:
            at = open_nofollow(at, part, FOLDER)
            opened.append(at)
        with open(open_nofollow(at, parts[-1], _READ), "rb") as raw:
            if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
                return []
            data = raw.read(_MAX_IGNORE_BYTES)
    except (Moved, OSError):
        return []
    finally:
        for fd in opened:
            os.close(fd)
    return data.decode("utf-8", errors="replace").splitlines()


def _spec(lines: list[str]) -> pathspec.GitIgnoreSpec | None:
    """The rules, keeping what can be read of a broken ignore file."""
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines, backend="re2")
    except Exception:
        kept = [line for line in lines if _spec_or_none([line]) is not None]
        return _spec_or_none(kept)


def _spec_or_none(lines: list[str]) -> pathspec.GitIgnoreSpec | None:
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines, backend="re2")
    except Exception:
        return None


def _ancestor_rules(base: Path, ctx: ToolContext) -> Rules:
    """The ignore rules of the folders between the root and ``base``; none when they
    ignore ``base`` itself, since a folder the call names is searched as asked."""
    roots = [root for root in allowed_roots(ctx.cwd, ctx.roots) if base.is_relative_to(root)]
    root = max(roots, key=lambda r: len(r.parts))
    rules: list[tuple[str, int, pathspec.GitIgnoreSpec]] = []
    for folder in reversed(base.parents):
        if not folder.is_relative_to(root):
            continue
        try:
            spec = at_path(
                str(folder),
                ctx.cwd,
                ctx.roots,
                lambda at, name: _rules_of(open_nofollow(at, name, FOLDER)),
            )
        except (OSError, ToolError):
            continue
        if spec is not None:
            rules.append((base.relative_to(folder).as_posix() + "/", 0, spec))
    found = tuple(rules)
    return () if found and _ignored(found, "", is_folder=False) else found


def _rules_of(folder: int) -> pathspec.GitIgnoreSpec | None:
    try:
        return _folder_rules(folder)
    finally:
        os.close(folder)


def _open_base(given: str, ctx: ToolContext, shown: str) -> int:
    """A descriptor for the file or folder a search starts from."""
    try:
        return at_path(
            given, ctx.cwd, ctx.roots, lambda folder, name: open_nofollow(folder, name, _READ)
        )
    except (FileNotFoundError, NotADirectoryError):
        raise ToolError(f"{shown} does not exist.") from None
    except OSError as exc:
        raise ToolError(f"Could not open {shown}: {(exc.strerror or str(exc)).lower()}.") from None


def _open_found(folder: int, name: str, path: Path, ctx: ToolContext) -> int | None:
    """A file the walk found; a link is followed only through ``at_path``, so only
    when it stays inside the roots."""
    try:
        try:
            return open_nofollow(folder, name, _READ)
        except Moved:
            return at_path(
                str(path), ctx.cwd, ctx.roots, lambda at, last: open_nofollow(at, last, _READ)
            )
    except (OSError, ToolError):
        return None


class FindArgs(Arguments):
    pattern: str = Field(
        description="Glob such as **/*.py or src/**/test_*.ts; a pattern without '/' "
        "matches file names at any depth."
    )
    path: str = Field(".", description="Folder to search; the working directory by default.")


class FindFiles(BuiltinTool[FindArgs]):
    name = "find_files"
    description = (
        "Find files whose path matches a glob pattern. Skips .git and what .gitignore, "
        ".ignore and .git/info/exclude ignore; pass an ignored folder as path to look inside."
    )
    kind: ToolKind = "search"
    mutates = False
    arguments = FindArgs

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()

    def title(self, arguments: dict[str, Any]) -> str:
        args = self.try_parse(arguments)
        return "Find files" if args is None else f"Find {args.pattern} in {args.path}"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        args = self.parse(arguments)
        base = resolve_in_roots(args.path, ctx.cwd, ctx.roots)
        rule = _glob_matcher(args.pattern)
        return ToolOutcome(
            await in_worker(lambda stop: self._find(stop, args.path, base, rule, ctx))
        )

    def _find(
        self,
        stop: threading.Event,
        given: str,
        base: Path,
        rule: tuple[Regex, bool],
        ctx: ToolContext,
    ) -> str:
        shown = display_path(base, ctx.cwd)
        walk = _Walk(self.limits, stop)
        found: list[str] = []
        top = _open_base(given, ctx, shown)
        try:
            if not stat.S_ISDIR(os.fstat(top).st_mode):
                raise ToolError(f"{shown} is a file, not a folder.")
            for _, _, relative in walk.files(top, _ancestor_rules(base, ctx)):
                if _matches(rule, relative):
                    if len(found) == self.limits.found:
                        found.append(
                            f"[stopped after {self.limits.found} files; narrow the pattern or path]"
                        )
                        break
                    found.append(display_path(base / relative, ctx.cwd))
        finally:
            os.close(top)
        return "\n".join((found or ["No files match."]) + walk.notes())


class SearchArgs(Arguments):
    pattern: str = Field(
        min_length=1,
        description="Regular expression in RE2 syntax (Python's re without backreferences "
        "or lookaround), matched against each line.",
    )
    path: str = Field(
        ".", description="Folder or file to search; the working directory by default."
    )
    glob: str | None = Field(None, description="Only search files matching this glob, e.g. *.py.")
    ignore_case: bool = Field(False, description="Match without regard to case.")


class SearchText(BuiltinTool[SearchArgs]):
    name = "search_text"
    description = (
        "Search file contents with a regular expression. Returns 'file:line: text' lines; "
        "skips binary files, .git and what .gitignore, .ignore and .git/info/exclude ignore "
        "(pass an ignored folder as path to search inside it)."
    )
    kind: ToolKind = "search"
    mutates = False
    arguments = SearchArgs

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()

    def title(self, arguments: dict[str, Any]) -> str:
        args = self.try_parse(arguments)
        return "Search text" if args is None else f"Search /{args.pattern}/ in {args.path}"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        args = self.parse(arguments)
        base = resolve_in_roots(args.path, ctx.cwd, ctx.roots)
        matcher = _Matcher(args.pattern, args.ignore_case)
        rule = None if args.glob is None else _glob_matcher(args.glob)
        text = await in_worker(
            lambda stop: self._search(stop, args.path, base, args.pattern, matcher, rule, ctx)
        )
        return ToolOutcome(text)

    def _search(
        self,
        stop: threading.Event,
        given: str,
        base: Path,
        pattern: str,
        matcher: _Matcher,
        rule: tuple[Regex, bool] | None,
        ctx: ToolContext,
    ) -> str:
        shown = display_path(base, ctx.cwd)
        walk = _Walk(self.limits, stop)
        top = _open_base(given, ctx, shown)
        try:
            if stat.S_ISDIR(os.fstat(top).st_mode):
                files = walk.files(top, _ancestor_rules(base, ctx))
            else:
                files, base = _only(base.name), base.parent
            with contextlib.closing(files):
                hits = self._hits(walk, files, top, base, matcher, rule, ctx)
        finally:
            os.close(top)
        return "\n".join((hits or [f"No matches for /{pattern}/ in {shown}"]) + walk.notes())

    def _hits(
        self,
        walk: _Walk,
        files: Iterator[tuple[int, str, str]],
        top: int,
        base: Path,
        matcher: _Matcher,
        rule: tuple[Regex, bool] | None,
        ctx: ToolContext,
    ) -> list[str]:
        hits: list[str] = []
        for folder, name, relative in files:
            if walk.read_enough:
                break
            if rule is not None and not _matches(rule, relative):
                continue
            path = base / relative
            fd = os.dup(top) if folder == -1 else _open_found(folder, name, path, ctx)
            data = None if fd is None else walk.read(fd, display_path(path, ctx.cwd))
            for number, line in matcher.lines(data or b""):
                walk.check()
                if len(hits) == self.limits.matches:
                    hits.append(f"[stopped after {self.limits.matches} matches; narrow the search]")
                    return hits
                hits.append(f"{display_path(path, ctx.cwd)}:{number}: {_shown_line(line)}")
        return hits


def _only(name: str) -> Found:
    """The one file a search was pointed at (its descriptor is the search's own)."""
    yield -1, "", name


def _shown_line(line: bytes) -> str:
    text = line.decode("utf-8", errors="replace").strip()
    return text[:MAX_LINE_CHARS] + "…" if len(text) > MAX_LINE_CHARS else text
