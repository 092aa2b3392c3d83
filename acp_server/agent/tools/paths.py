"""The sandbox: every path a tool touches must resolve inside the session's roots.

The check runs on fully resolved paths, so ``..``, symlinks (including one inside a
root that points outside it) and look-alike siblings (``/a/bc`` next to ``/a/b``)
cannot slip through a textual prefix test.
"""

from __future__ import annotations

from pathlib import Path

from acp_server.agent.tools.base import ToolError


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
    allowed = [root.resolve() for root in roots] or [ctx_cwd.resolve()]
    resolved = (ctx_cwd / path).resolve()
    if any(resolved.is_relative_to(root) for root in allowed):
        return resolved
    where = ", ".join(str(root) for root in allowed)
    shown = path if Path(path).is_absolute() and Path(path) == resolved else f"{path} ({resolved})"
    noun = "that folder" if len(allowed) == 1 else "those folders"
    raise ToolError(
        f"{shown} is outside this session's workspace ({where}); "
        f"only files under {noun} can be used."
    )


def display_path(path: Path, ctx_cwd: Path) -> str:
    """How a path is shown to the model: relative to the cwd when under it."""
    try:
        relative = path.relative_to(ctx_cwd.resolve())
    except ValueError:
        return str(path)
    return relative.as_posix() or "."
