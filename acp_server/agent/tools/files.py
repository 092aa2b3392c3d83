"""Reading, writing and editing files, and listing folders.

When the editor offers ``fs/*`` the text goes through it: reads then see unsaved
buffers and writes land in the editor's view. Otherwise the tools use the disk,
always through ``at_path`` so what is opened is what was checked. Either way every
path is checked against the session's roots first.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Awaitable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
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
    Moved,
    at_path,
    display_path,
    open_nofollow,
    resolve_in_roots,
)

MAX_READ_CHARS = 1_000_000
"""A whole-file read larger than this is refused; ask for a line range instead."""
MAX_EDIT_BYTES = 16_000_000
"""write_file and edit_file read the old text whole (for the diff); larger files are refused."""
MAX_LIST_ENTRIES = 1_000
_BINARY_SNIFF = 8192
_READ_A_FOLDER = "is a folder; use list_directory to see what it holds"
_NOT_A_FILE = "is a folder, not a file"

T = TypeVar("T")


def _describe_os_error(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _read_disk(
    stop: threading.Event,
    given: str,
    ctx: ToolContext,
    shown: str,
    line: int | None,
    limit: int | None,
) -> str:
    """A slice of a file on disk, read lazily so a range of a huge file stays cheap."""

    def use(folder: int, name: str) -> str:
        with _open_regular(folder, name, shown, _READ_A_FOLDER) as raw:
            if b"\x00" in raw.read(_BINARY_SNIFF):
                raise ToolError(f"{shown} looks like a binary file; only text can be read.")
            size = os.fstat(raw.fileno()).st_size
            if line is None and limit is None and size > MAX_READ_CHARS:
                raise ToolError(
                    f"{shown} is {size:,} bytes, more than read_file returns at once "
                    f"({MAX_READ_CHARS:,}); pass line and limit to read part of it, "
                    "or search_text to find what you need."
                )
            raw.seek(0)
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
            return _take_lines(_bounded_lines(text, stop), shown, line, limit)

    try:
        return at_path(given, ctx.cwd, ctx.roots, use)
    except (FileNotFoundError, NotADirectoryError):
        raise ToolError(f"{shown} does not exist.") from None
    except OSError as exc:
        raise ToolError(f"Could not read {shown}: {_describe_os_error(exc)}.") from None


def _open_regular(folder: int, name: str, shown: str, if_folder: str) -> io.BufferedReader:
    """The file ``name`` in ``folder``, opened for reading if it is a regular file.

    ``O_NONBLOCK`` keeps a FIFO planted in the workspace from hanging the open.
    """
    fd = open_nofollow(folder, name, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return open(fd, "rb")
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise ToolError(f"{shown} {if_folder}.")
    raise ToolError(f"{shown} is not a regular file; only text files can be used.")


def _bounded_lines(text: io.TextIOWrapper, stop: threading.Event) -> Iterator[str]:
    """The file's lines, each cut to ``MAX_READ_CHARS``: one huge line never sits in
    memory whole, and a cancelled read stops between lines."""
    while line := text.readline(MAX_READ_CHARS):
        if stop.is_set():
            raise Abandoned
        if len(line) == MAX_READ_CHARS and not line.endswith("\n"):
            while (rest := text.readline(MAX_READ_CHARS)) and not rest.endswith("\n"):
                if stop.is_set():
                    raise Abandoned
            line += f"…[line cut at {MAX_READ_CHARS:,} characters]\n"
        yield line


def _take_lines(lines: Iterable[str], shown: str, line: int | None, limit: int | None) -> str:
    start = (line or 1) - 1
    taken: list[str] = []
    size = total = 0
    for number, text in enumerate(lines):
        total = number + 1
        if number < start:
            continue
        if limit is not None and len(taken) >= limit:
            break
        size += len(text)
        if size > MAX_READ_CHARS and taken:
            taken.append(f"\n[stopped before line {total}; pass line={total} to read on]\n")
            break
        taken.append(text)
    if start and not taken:
        return f"[{shown} has only {total} lines]"
    return "".join(taken)


def _cap(text: str, shown: str) -> str:
    if len(text) <= MAX_READ_CHARS:
        return text
    return text[:MAX_READ_CHARS] + f"\n[{shown} continues; pass line and limit to read the rest]\n"


async def _read_current(given: str, path: Path, shown: str, ctx: ToolContext) -> str | None:
    """The file's text as the editor sees it, or None when it does not exist yet."""
    if ctx.client is not None and ctx.client.can_read:
        if not await anyio.to_thread.run_sync(_exists_on_disk, given, ctx, shown):
            return None
        return await _editor("read", shown, ctx.client.read_text_file(str(path)))
    return await anyio.to_thread.run_sync(_read_whole, given, ctx, shown)


async def _editor(action: str, shown: str, request: Awaitable[T]) -> T:
    """An ``fs/*`` request; whatever the editor answers instead becomes a ToolError."""
    try:
        return await request
    except ToolError:
        raise
    except Exception as exc:
        raise ToolError(f"The editor could not {action} {shown}: {exc}") from None


def _exists_on_disk(given: str, ctx: ToolContext, shown: str) -> bool:
    def use(folder: int, name: str) -> bool:
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            raise Moved(name)
        if stat.S_ISDIR(mode):
            raise ToolError(f"{shown} {_NOT_A_FILE}.")
        return True

    try:
        return at_path(given, ctx.cwd, ctx.roots, use)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise ToolError(f"Could not read {shown}: {_describe_os_error(exc)}.") from None


def _read_whole(given: str, ctx: ToolContext, shown: str) -> str | None:
    def use(folder: int, name: str) -> str:
        with _open_regular(folder, name, shown, _NOT_A_FILE) as raw:
            size = os.fstat(raw.fileno()).st_size
            if size > MAX_EDIT_BYTES:
                raise ToolError(
                    f"{shown} is {size:,} bytes; write_file and edit_file only change files "
                    f"up to {MAX_EDIT_BYTES:,} bytes."
                )
            return raw.read(MAX_EDIT_BYTES + 1).decode("utf-8", errors="replace")

    try:
        return at_path(given, ctx.cwd, ctx.roots, use)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ToolError(f"Could not read {shown}: {_describe_os_error(exc)}.") from None


def _write_disk(given: str, ctx: ToolContext, shown: str, content: str | None) -> None:
    """Create the parent folders and, unless the editor writes it, the file itself."""

    def use(folder: int, name: str) -> None:
        if content is None:
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK
        with open(open_nofollow(folder, name, flags), "w", encoding="utf-8", newline="") as text:
            if not stat.S_ISREG(os.fstat(text.fileno()).st_mode):
                raise ToolError(f"{shown} is not a regular file; only text files can be used.")
            text.write(content)

    try:
        at_path(given, ctx.cwd, ctx.roots, use, make_parents=True)
    except OSError as exc:
        raise ToolError(f"Could not write {shown}: {_describe_os_error(exc)}.") from None


async def _write(given: str, path: Path, shown: str, content: str, ctx: ToolContext) -> None:
    via_editor = ctx.client is not None and ctx.client.can_write
    await anyio.to_thread.run_sync(_write_disk, given, ctx, shown, None if via_editor else content)
    if ctx.client is not None and via_editor:
        await _editor("write", shown, ctx.client.write_text_file(str(path), content))


def _diff(path: Path, old: str | None, new: str) -> dict[str, Any]:
    return {"type": "diff", "path": str(path), "oldText": old, "newText": new}


def _lines(text: str) -> str:
    count = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    return "1 line" if count == 1 else f"{count} lines"


def _location(given: str, ctx: ToolContext, line: int | None = None) -> list[dict[str, Any]]:
    try:
        path = resolve_in_roots(given, ctx.cwd, ctx.roots)
    except ToolError:
        return []
    location: dict[str, Any] = {"path": str(path)}
    if line is not None:
        location["line"] = line
    return [location]


class _PathArgs(Arguments):
    path: str


PathArgsT = TypeVar("PathArgsT", bound=_PathArgs)


class _PathTool(BuiltinTool[PathArgsT]):
    """A tool about one path: its title names the path, its location points at it."""

    verb = "Use"
    noun = "file"

    def title(self, arguments: dict[str, Any]) -> str:
        args = self.try_parse(arguments)
        return f"{self.verb} {self.noun}" if args is None else f"{self.verb} {args.path}"

    def locations(self, arguments: dict[str, Any], ctx: ToolContext) -> list[dict[str, Any]]:
        args = self.try_parse(arguments)
        return [] if args is None else _location(args.path, ctx)


class ReadArgs(Arguments):
    path: str = Field(description="File to read, relative to the working directory or absolute.")
    line: int | None = Field(None, ge=1, description="First line to read (1-based).")
    limit: int | None = Field(None, ge=1, description="How many lines to read.")


class ReadFile(BuiltinTool[ReadArgs]):
    name = "read_file"
    description = (
        "Read a text file. Returns its exact content (as the editor sees it, unsaved "
        "changes included). Use line and limit to read part of a large file."
    )
    kind: ToolKind = "read"
    mutates = False
    arguments = ReadArgs

    def title(self, arguments: dict[str, Any]) -> str:
        args = self.try_parse(arguments)
        if args is None:
            return "Read file"
        if args.line is None and args.limit is None:
            return f"Read {args.path}"
        first = args.line or 1
        last = "" if args.limit is None else str(first + args.limit - 1)
        return f"Read {args.path} (lines {first}-{last})"

    def locations(self, arguments: dict[str, Any], ctx: ToolContext) -> list[dict[str, Any]]:
        args = self.try_parse(arguments)
        return [] if args is None else _location(args.path, ctx, args.line or 1)

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        args = self.parse(arguments)
        path = resolve_in_roots(args.path, ctx.cwd, ctx.roots)
        shown = display_path(path, ctx.cwd)
        if ctx.client is not None and ctx.client.can_read:
            request = ctx.client.read_text_file(str(path), args.line, args.limit)
            text = _cap(await _editor("read", shown, request), shown)
        else:
            text = await in_worker(
                lambda stop: _read_disk(stop, args.path, ctx, shown, args.line, args.limit)
            )
        return ToolOutcome(text if text else f"[{shown} is empty]")


class WriteArgs(_PathArgs):
    path: str = Field(description="File to create or overwrite.")
    content: str = Field(description="The complete new content of the file.")


class WriteFile(_PathTool[WriteArgs]):
    name = "write_file"
    description = (
        "Create a file, or replace a file's whole content. Parent folders are created. "
        "To change part of an existing file prefer edit_file."
    )
    kind: ToolKind = "edit"
    mutates = True
    arguments = WriteArgs

    verb = "Write"

    async def preview(self, arguments: dict[str, Any], ctx: ToolContext) -> list[dict[str, Any]]:
        args = self.parse(arguments)
        path = resolve_in_roots(args.path, ctx.cwd, ctx.roots)
        old = await _read_current(args.path, path, display_path(path, ctx.cwd), ctx)
        return [_diff(path, old, args.content)]

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        args = self.parse(arguments)
        path = resolve_in_roots(args.path, ctx.cwd, ctx.roots)
        shown = display_path(path, ctx.cwd)
        old = await _read_current(args.path, path, shown, ctx)
        await _write(args.path, path, shown, args.content, ctx)
        verb = "Created" if old is None else "Wrote"
        return ToolOutcome(
            f"{verb} {shown} ({_lines(args.content)}).",
            content=[_diff(path, old, args.content)],
        )


class EditArgs(_PathArgs):
    path: str = Field(description="File to edit.")
    old_text: str = Field(
        min_length=1,
        description="Exact text to replace, including whitespace; it must occur once "
        "unless replace_all is set.",
    )
    new_text: str = Field(description="Replacement text.")
    replace_all: bool = Field(False, description="Replace every occurrence of old_text.")


class EditFile(_PathTool[EditArgs]):
    name = "edit_file"
    description = (
        "Replace exact text in an existing file. old_text must match the file exactly "
        "(read it first) and be unique unless replace_all is true."
    )
    kind: ToolKind = "edit"
    mutates = True
    arguments = EditArgs

    verb = "Edit"

    async def preview(self, arguments: dict[str, Any], ctx: ToolContext) -> list[dict[str, Any]]:
        path, _, old, new, _ = await self._change(self.parse(arguments), ctx)
        return [_diff(path, old, new)]

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        args = self.parse(arguments)
        path, shown, old, new, count = await self._change(args, ctx)
        await _write(args.path, path, shown, new, ctx)
        what = "1 occurrence" if count == 1 else f"{count} occurrences"
        return ToolOutcome(f"Edited {shown}: replaced {what}.", content=[_diff(path, old, new)])

    async def _change(self, args: EditArgs, ctx: ToolContext) -> tuple[Path, str, str, str, int]:
        """(path, shown path, old text, new text, occurrences) of the edit."""
        path = resolve_in_roots(args.path, ctx.cwd, ctx.roots)
        shown = display_path(path, ctx.cwd)
        if args.old_text == args.new_text:
            raise ToolError("old_text and new_text are the same; there is nothing to change.")
        old = await _read_current(args.path, path, shown, ctx)
        if old is None:
            raise ToolError(f"{shown} does not exist; use write_file to create it.")
        old_text, new_text = args.old_text, args.new_text
        count = old.count(old_text)
        if count == 0 and "\r\n" in old and "\r\n" not in old_text:
            # The model writes "\n"; a CRLF file still deserves an exact match.
            old_text, new_text = old_text.replace("\n", "\r\n"), new_text.replace("\n", "\r\n")
            count = old.count(old_text)
        if count == 0:
            raise ToolError(
                f"old_text was not found in {shown}. It must match the file exactly, "
                "whitespace and indentation included; read the file again and copy the text."
            )
        if count > 1 and not args.replace_all:
            raise ToolError(
                f"old_text occurs {count} times in {shown}; include more surrounding lines "
                "to make it unique, or set replace_all to replace every occurrence."
            )
        return path, shown, old, old.replace(old_text, new_text), count


class ListArgs(_PathArgs):
    path: str = Field(".", description="Folder to list; the working directory by default.")


def _list_disk(given: str, ctx: ToolContext, shown: str) -> str:
    def use(folder: int, name: str) -> list[str]:
        fd = open_nofollow(folder, name, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise ToolError(f"{shown} is a file, not a folder; use read_file to read it.")
            with os.scandir(fd) as entries:
                return sorted(
                    (entry.name + "/" if entry.is_dir() else entry.name for entry in entries),
                    key=str.lower,
                )
        finally:
            os.close(fd)

    try:
        names = at_path(given, ctx.cwd, ctx.roots, use)
    except (FileNotFoundError, NotADirectoryError):
        raise ToolError(f"{shown} does not exist.") from None
    except OSError as exc:
        raise ToolError(f"Could not list {shown}: {_describe_os_error(exc)}.") from None
    if not names:
        return f"{shown} is empty."
    lines = names[:MAX_LIST_ENTRIES]
    if len(names) > MAX_LIST_ENTRIES:
        more = len(names) - MAX_LIST_ENTRIES
        lines.append(f"[... and {more} more; use find_files to narrow down]")
    return "\n".join(lines)


class ListDirectory(_PathTool[ListArgs]):
    name = "list_directory"
    description = "List a folder's entries; folders end with '/'."
    kind: ToolKind = "read"
    mutates = False
    arguments = ListArgs

    verb = "List"
    noun = "folder"

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        args = self.parse(arguments)
        path = resolve_in_roots(args.path, ctx.cwd, ctx.roots)
        shown = display_path(path, ctx.cwd)
        return ToolOutcome(await anyio.to_thread.run_sync(_list_disk, args.path, ctx, shown))
