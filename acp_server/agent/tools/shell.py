"""Running a shell command: in an editor terminal when offered, else as a local process.

Either way the command gets a deadline, its output is bounded (the tail is kept, as
that is where errors are), and nothing outlives the call: a timed-out or cancelled
command is killed, and an editor terminal is always released.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any

import anyio
import anyio.abc
from anyio.streams.text import TextReceiveStream
from pydantic import Field

from acp_server.agent.tools import reaper
from acp_server.agent.tools.base import (
    ClientBridge,
    ExitStatus,
    ToolContext,
    ToolError,
    ToolKind,
    ToolOutcome,
)
from acp_server.agent.tools.builtin import Arguments, BuiltinTool
from acp_server.logs import get_logger

log = get_logger(__name__)

SHELL = "/bin/sh"
_EXIT_POLL = 0.02
_DRAIN_GRACE = 0.5
"""After the shell exits, how long a background child may keep the output pipe open."""
_CLEANUP_TIMEOUT = 5.0


class RunArgs(Arguments):
    command: str = Field(
        min_length=1,
        description="Shell command line, run with /bin/sh -c in the working directory.",
    )
    timeout_seconds: float | None = Field(
        None, gt=0, description="Stop the command after this many seconds (capped by the session)."
    )


class RunCommand(BuiltinTool[RunArgs]):
    name = "run_command"
    description = (
        "Run a shell command in the working directory and return its exit code and "
        "combined stdout/stderr (the tail, if long). stdin is closed; it cannot be interactive."
    )
    kind: ToolKind = "execute"
    mutates = True
    arguments = RunArgs

    def title(self, arguments: dict[str, Any]) -> str:
        args = self.try_parse(arguments)
        if args is None:
            return "Run command"
        first = args.command.strip().splitlines()[0] if args.command.strip() else ""
        return f"Run {first[:120]}"

    async def preview(self, arguments: dict[str, Any], ctx: ToolContext) -> list[dict[str, Any]]:
        command = self.parse(arguments).command
        return [{"type": "content", "content": {"type": "text", "text": f"$ {command}"}}]

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        args = self.parse(arguments)
        if "\0" in args.command:
            raise ToolError(
                "The command contains a NUL character (\\0), which no command line can "
                "hold; remove it."
            )
        timeout = min(args.timeout_seconds or ctx.command_timeout, ctx.command_timeout)
        if ctx.client is not None and ctx.client.can_terminal:
            return await _run_in_terminal(ctx.client, args.command, ctx, timeout)
        return await _run_local(args.command, ctx, timeout)


def _shell_args(command: str) -> list[str]:
    """``--`` ends the shell's options, so a command such as ``-n foo`` is run, not parsed."""
    return ["-c", "--", command]


async def _run_in_terminal(
    client: ClientBridge, command: str, ctx: ToolContext, seconds: float
) -> ToolOutcome:
    """ACP terminal flow: create, show it live, race exit against the deadline, release."""
    try:
        terminal_id = await client.create_terminal(
            SHELL, _shell_args(command), cwd=str(ctx.cwd), output_byte_limit=ctx.output_limit
        )
    except ToolError:
        raise
    except Exception as exc:
        raise ToolError(f"The editor could not start a terminal for the command: {exc}") from None
    shown = [{"type": "terminal", "terminalId": terminal_id}]
    settled = False
    try:
        if ctx.report is not None:
            await ctx.report(shown)
        status: ExitStatus | None = None
        with anyio.move_on_after(seconds):
            status = await client.wait_for_terminal_exit(terminal_id)
        timed_out = status is None
        if timed_out:
            await client.kill_terminal(terminal_id)
        output, truncated, exited = await client.terminal_output(terminal_id)
        settled = True
    except ToolError:
        raise
    except Exception as exc:
        raise ToolError(f"The editor's terminal failed while running the command: {exc}") from None
    finally:
        with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            await _release(client, terminal_id, kill_first=not settled)
    status = status or exited
    return ToolOutcome(
        _summary(output, truncated, status, seconds if timed_out else None),
        content=shown,
        raw_output=_raw(status, truncated, timed_out),
    )


async def _release(client: ClientBridge, terminal_id: str, *, kill_first: bool) -> None:
    """Every terminal must be released; a failure here must not hide the real outcome."""
    try:
        if kill_first:
            await client.kill_terminal(terminal_id)
    except Exception:
        log.warning("terminal_kill_failed", terminal_id=terminal_id, exc_info=True)
    try:
        await client.release_terminal(terminal_id)
    except Exception:
        log.warning("terminal_release_failed", terminal_id=terminal_id, exc_info=True)


async def _run_local(command: str, ctx: ToolContext, seconds: float) -> ToolOutcome:
    """A supervised child (see ``reaper``), so a timeout can kill everything it started."""
    tail = _Tail(ctx.output_limit)
    try:
        # Shielded: cancelled after the fork, asyncio would SIGKILL the supervisor,
        # leaving what it had started behind. The spawn itself is quick.
        with anyio.CancelScope(shield=True):
            process = await anyio.open_process(
                reaper.supervised([SHELL, *_shell_args(command)], report=True),
                cwd=ctx.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if reaper.SUPPORTED else subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as exc:
        raise ToolError(f"Could not start the command: {exc.strerror or exc}.") from None
    try:
        report, timed_out = await _supervise(process, tail, seconds)
    finally:
        with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            await process.aclose()
    if report.error is not None:
        raise ToolError(f"Could not start the command: {report.error}.")
    output = tail.text()
    stopped = 0 if timed_out else report.stopped
    truncated = tail.dropped > 0
    return ToolOutcome(
        _summary(output, truncated, report.status, seconds if timed_out else None, stopped),
        content=[{"type": "content", "content": {"type": "text", "text": _fenced(output)}}],
        raw_output=_raw(report.status, truncated, timed_out) | {"stoppedProcesses": stopped},
    )


class _Report:
    """What the supervisor tells on its stderr: how the shell ended, what it stopped after."""

    def __init__(self) -> None:
        self.ended = anyio.Event()
        """The shell is done, or the supervisor is gone."""
        self.closed = anyio.Event()
        """Nothing more will be read: the supervisor is gone, or the reading was cancelled."""
        self.status: ExitStatus | None = None
        self.error: str | None = None
        self.stopped = 0

    def take(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        try:
            if word == "exit":
                self.status = ExitStatus(exit_code=int(rest))
            elif word == "signal":
                self.status = _exit_status(-int(rest))
            elif word == "error":
                self.error = rest
            elif word == "stopped":
                self.stopped = int(rest)
                return
            else:
                log.warning("supervisor_said", line=line)
                return
        except ValueError:
            log.warning("supervisor_said", line=line)
            return
        self.ended.set()

    async def read(self, stream: anyio.abc.ByteReceiveStream) -> None:
        buffer = ""
        try:
            async for text in TextReceiveStream(stream, errors="replace"):
                *lines, buffer = (buffer + text).split("\n")
                for line in lines:
                    self.take(line)
        finally:
            self.ended.set()
            self.closed.set()

    async def watch(self, process: anyio.abc.Process) -> None:
        """Without a supervisor: the shell's own exit is the end.

        Polled, not awaited: asyncio's ``wait()`` also waits for the pipes, which a
        background child may hold open for as long as it likes.
        """
        while process.returncode is None:  # noqa: ASYNC110 (see the docstring)
            await anyio.sleep(_EXIT_POLL)
        self.status = _exit_status(process.returncode)
        self.ended.set()
        self.closed.set()


async def _supervise(
    process: anyio.abc.Process, tail: _Tail, seconds: float
) -> tuple[_Report, bool]:
    """Read output until the shell ends and its pipe drains, then stop what it left behind.

    A background child may hold the pipe for as long as it likes, so it gets a short
    grace to finish writing; then it is stopped. Whether the deadline passed is the
    second item.
    """
    assert process.stdout is not None
    stdout = process.stdout
    report = _Report()
    drained = anyio.Event()

    async def read() -> None:
        async for chunk in stdout:
            tail.add(chunk)
        drained.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        if process.stderr is not None:
            tg.start_soon(report.read, process.stderr)
        else:
            tg.start_soon(report.watch, process)
        try:
            with anyio.move_on_after(seconds) as deadline:
                await report.ended.wait()
                with anyio.move_on_after(_DRAIN_GRACE):
                    await drained.wait()
        finally:
            with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
                await _stop(process, report)
            tg.cancel_scope.cancel()
    return report, deadline.cancelled_caught


async def _stop(process: anyio.abc.Process, report: _Report) -> None:
    """Have everything the command started killed.

    The supervisor does it when asked and then reports how many processes it
    stopped; without one, the shell's process group is killed if the shell is still
    running. Signals go through ``os``: asyncio's ``terminate()`` may reap the process
    behind its child watcher's back. Once reaped, a pid may be another process's.
    """
    if not reaper.SUPPORTED:
        if process.returncode is None:
            _kill_group(process.pid)
        return
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
    with anyio.move_on_after(_CLEANUP_TIMEOUT / 2):
        await report.closed.wait()
    if not report.closed.is_set() and process.returncode is None:
        log.warning("supervisor_unresponsive", pid=process.pid)
        _kill_group(process.pid)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _Tail:
    """The last ``limit`` bytes of a stream, and how many bytes before them were dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 1)
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess

    def text(self) -> str:
        data = bytes(self.data)
        if self.dropped:
            # Cutting at a byte count may split a character; start at the next one.
            skip = 0
            while skip < min(len(data), 3) and data[skip] & 0xC0 == 0x80:
                skip += 1
            data = data[skip:]
        return data.decode("utf-8", errors="replace")


def _exit_status(returncode: int | None) -> ExitStatus:
    if returncode is None or returncode >= 0:
        return ExitStatus(exit_code=returncode)
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    return ExitStatus(signal=name)


def _summary(
    output: str,
    truncated: bool,
    status: ExitStatus | None,
    timed_out_after: float | None,
    stopped: int = 0,
) -> str:
    if timed_out_after is not None:
        head = f"Timed out after {timed_out_after:g} s; the command was killed."
    elif status is None:
        head = "The command finished; its exit status is unknown."
    elif status.signal is not None:
        head = f"The command was killed by signal {status.signal}."
    else:
        head = f"Exit code: {status.exit_code}"
    if stopped:
        plural = "es" if stopped > 1 else ""
        head += f"\n[stopped {stopped} background process{plural} the command left running]"
    if not output:
        return f"{head}\n(no output)"
    note = "\n[output truncated: showing the end only]" if truncated else ""
    return f"{head}{note}\nOutput:\n{output}"


def _raw(status: ExitStatus | None, truncated: bool, timed_out: bool) -> dict[str, Any]:
    return {
        "exitCode": None if status is None else status.exit_code,
        "signal": None if status is None else status.signal,
        "timedOut": timed_out,
        "truncated": truncated,
    }


def _fenced(output: str) -> str:
    fence = "```"
    while fence in output:
        fence += "`"
    return f"{fence}console\n{output.rstrip()}\n{fence}" if output else "(no output)"
