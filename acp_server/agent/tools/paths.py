"""The sandbox: every path a tool touches must resolve inside the session's roots.

The check runs on fully resolved paths, so ``..``, symlinks (including one inside a
root that points outside it) and look-alike siblings (``/a/bc`` next to ``/a/b``)
cannot slip through a textual prefix test.

A check by name alone would not be enough: another process can swap a checked folder
for a link between the check and the open. So the disk tools never open a checked
path by name. ``at_path`` walks from the root's file descriptor one folder at a time
with ``O_NOFOLLOW`` and hands the tool the verified folder's descriptor; a link met
on the way means the path changed since the check, and the check runs again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from acp_server.agent.tools.base import ToolError

T = TypeVar("T")

FOLDER = os.O_RDONLY | os.O_DIRECTORY
"""Flags for ``open_nofollow`` to enter a folder."""
_ATTEMPTS = 8


class Moved(Exception):
    """A link stood where the check saw none: the path changed, so check it again."""


class Unresolvable(ToolError):
    """Resolving failed: a link loop, or a link replaced while it was being read."""


def allowed_roots(ctx_cwd: Path, roots: list[Path]) -> list[Path]:
    return [root.resolve() for root in roots] or [ctx_cwd.resolve()]


def resolve_in_roots(path: str, ctx_cwd: Path, roots: list[Path]) -> Path:
    """The resolved absolute path, or a ``ToolError`` the model can act on.

    Relative paths are taken from the session cwd, never from the process cwd.
    ``Path.resolve`` follows every symlink that exists, including dangling ones,
    and keeps a not-yet-existing tail as written, so a new file is judged by its
    nearest existing parent.
    """
    if not path.strip():
        raise ToolError("The path is empty; give a file or folder path.")
    if "\x00" in path:
        raise ToolError("The path contains a NUL character.")
    allowed = allowed_roots(ctx_cwd, roots)
    try:
        resolved = (ctx_cwd / path).resolve()
    except RuntimeError:
        raise Unresolvable(f"{path} leads into a loop of symbolic links.") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise Unresolvable(f"Could not resolve {path}: {reason}.") from None
    if any(resolved.is_relative_to(root) for root in allowed):
        return resolved
    where = ", ".join(str(root) for root in allowed)
    shown = path if Path(path).is_absolute() and Path(path) == resolved else f"{path} ({resolved})"
    noun = "that folder" if len(allowed) == 1 else "those folders"
    raise ToolError(
        f"{shown} is outside this session's workspace ({where}); "
        f"only files under {noun} can be used."
    )


def at_path(
    path: str,
    ctx_cwd: Path,
    roots: list[Path],
    use: Callable[[int, str], T],
    *,
    make_parents: bool = False,
) -> T:
    """``use(folder_fd, name)`` on the entry ``path`` names, reached without following a link.

    ``use`` must open or stat ``name`` relative to ``folder_fd`` without following a
    link (``open_nofollow``, ``follow_symlinks=False``) and raise ``Moved`` on one;
    the whole check then starts again, so a link that stays inside the roots still
    leads to its target, and one that leads out is refused. For a root itself the
    name is ``"."``. ``make_parents`` creates missing folders on the way. OSErrors
    (a missing folder, a file where a folder should be) reach the caller.
    """
    failure: ToolError | None = None
    for _ in range(_ATTEMPTS):
        try:
            resolved = resolve_in_roots(path, ctx_cwd, roots)
            folder, name = _open_parent(resolved, allowed_roots(ctx_cwd, roots), make_parents)
        except Unresolvable as exc:
            failure = exc
            continue
        except Moved:
            continue
        try:
            return use(folder, name)
        except Moved:
            continue
        finally:
            os.close(folder)
    if failure is not None:
        raise failure
    raise ToolError(
        f"{path} kept changing while it was being opened (a folder on the way was "
        "replaced by a link); try again."
    )


def open_nofollow(folder: int, name: str, flags: int, mode: int = 0o666) -> int:
    """``os.open`` of ``name`` in ``folder`` that never goes through a link (``Moved``)."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=folder)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and is_link(folder, name):
            raise Moved(name) from None
        raise


def is_link(folder: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_parent(resolved: Path, roots: list[Path], make_parents: bool) -> tuple[int, str]:
    """The verified folder holding ``resolved``, and the last part of its name."""
    holding = [root for root in roots if resolved.is_relative_to(root)]
    if not holding:
        raise Moved(str(resolved))  # a root itself moved since the check
    root = max(holding, key=lambda r: len(r.parts))
    parts = resolved.relative_to(root).parts
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            child = _enter(folder, part, make_parents)
            os.close(folder)
            folder = child
    except BaseException:
        os.close(folder)
        raise
    return folder, parts[-1] if parts else "."


def _enter(folder: int, name: str, make: bool) -> int:
    try:
        return open_nofollow(folder, name, FOLDER)
    except FileNotFoundError:
        if not make:
            raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=folder)
    return open_nofollow(folder, name, FOLDER)


def display_path(path: Path, ctx_cwd: Path) -> str:
    """How a path is shown to the model: relative to the cwd when under it."""
    try:
        relative = path.relative_to(ctx_cwd.resolve())
    except ValueError:
        return str(path)
    return relative.as_posix() or "."
