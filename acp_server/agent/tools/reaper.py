"""A supervisor per process, so that nothing started for a session outlives it or the server.

The server runs each local command and each stdio MCP server as ARGV under
:func:`supervised`: a fresh ``python -I -S`` that imports this module and (on Linux)

- becomes a *child subreaper*, so every orphaned descendant, even one that left the
  process group with ``setsid``, is re-parented to it and stays within reach;
- asks for a signal when the server dies (``PR_SET_PDEATHSIG``), however it dies,
  SIGKILL included (strictly: when the server thread that started it ends; the
  server starts processes from its event loop thread, which lives as long as it);
- runs ARGV in a process group of its own and, when ARGV exits, when it is asked
  to stop (SIGTERM, SIGINT, SIGHUP) or when the server is gone, kills every
  descendant, parents before children, until it has no child left.

With ``--report`` it tells the server, one line each on its stderr, how ARGV ended
(``exit N``, ``signal N`` or ``error TEXT``) and, last, how many leftover processes it
had to kill (``stopped N``). It then lingers after ARGV exits, until it is told to
stop or the leftovers end by themselves, so the server can give them a moment to
finish writing output. ARGV's stderr then goes to stdout.

It starts once per command, so it imports only the cheapest standard modules.
Elsewhere than on Linux :func:`supervised` returns ARGV unchanged and callers fall
back to process groups.
"""

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # signal minus its enum wrappers, whose import costs more than ours

SUPPORTED = sys.platform == "linux" and bool(sys.executable)

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_WATCHED = {signal.SIGCHLD, *_STOP}
_KILL_POLL = 0.05


_LAUNCH = (
    "import os, sys; sys.path.append({!r}); import reaper; os._exit(reaper.main(sys.argv[1:]))"
)
"""Imported, not run as a script: a script is compiled on every start, a module once."""


def supervised(argv: list[str], *, report: bool = False, term_grace: float = 0.0) -> list[str]:
    """The command line that runs ``argv`` under the supervisor, or ``argv`` itself.

    ``term_grace`` > 0 lets a stop request reach ARGV as SIGTERM first, killing only
    after that many seconds.
    """
    if not SUPPORTED:
        return argv
    launch = _LAUNCH.format(os.path.dirname(os.path.abspath(__file__)))
    options = ["--parent", str(os.getpid()), "--term-grace", repr(term_grace)]
    if report:
        options.append("--report")
    return [sys.executable, "-I", "-S", "-c", launch, *options, "--", *argv]


class _Supervisor:
    def __init__(self, argv: list[str], *, report: bool, term_grace: float) -> None:
        self.argv = argv
        self.report = report
        self.term_grace = term_grace
        self.me = os.getpid()
        self.child = 0
        self.status: int | None = None

    def run(self, parent: int) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        self._become_reaper()
        if os.getppid() != parent:
            return 1  # the server died before we could watch it
        try:
            self.child = os.posix_spawnp(
                self.argv[0],
                self.argv,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, 1, 2)] if self.report else None,
                setpgroup=0,
                setsigmask=(),
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self._say(f"error {reason}" if self.report else f"{self.argv[0]}: {reason}")
            return 127
        try:
            self._detach_stdio()
            stopping = self._wait_for_child()
            if stopping and self.term_grace > 0:
                self._terminate()
            elif not stopping and self.report:
                self._linger()
        finally:
            stopped = self._kill_all()
        if self.report:
            self._say(f"stopped {stopped}")
        return self._exit_code()

    def _become_reaper(self) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        one, none = ctypes.c_ulong(1), ctypes.c_ulong(0)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, one, none, none, none) != 0:
            self._say(f"note cannot become a subreaper: {os.strerror(ctypes.get_errno())}")
        death = ctypes.c_ulong(signal.SIGHUP)
        if libc.prctl(_PR_SET_PDEATHSIG, death, none, none, none) != 0:
            self._say(f"note cannot watch the server: {os.strerror(ctypes.get_errno())}")

    def _detach_stdio(self) -> None:
        """Hold no end of ARGV's pipes: their EOF must mean ARGV's processes are done."""
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)

    def _wait_for_child(self) -> bool:
        """Until ARGV exits (False) or a stop request arrives (True)."""
        while self.status is None:
            if signal.sigwaitinfo(_WATCHED).si_signo in _STOP:
                return True
            self._reap()
        return False

    def _terminate(self) -> None:
        """SIGTERM to ARGV's group, then up to ``term_grace`` seconds for ARGV to exit."""
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.term_grace
        while self.status is None and (left := deadline - time.monotonic()) > 0:
            signal.sigtimedwait({signal.SIGCHLD}, left)
            self._reap()

    def _linger(self) -> None:
        """After ARGV exits: until a stop request, or until no leftover remains."""
        while self._reap():
            info = signal.sigwaitinfo(_WATCHED)
            if info.si_signo in _STOP:
                return

    def _reap(self) -> bool:
        """Collect every exited child; whether any child is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid == self.child and self.status is None:
                self.status = status
                if self.report:
                    code = os.waitstatus_to_exitcode(status)
                    self._say(f"exit {code}" if code >= 0 else f"signal {-code}")

    def _kill_all(self) -> int:
        """SIGKILL every descendant; how many besides ARGV were still running.

        Only direct children are signalled, whose pids cannot be reused before we
        reap them; their own children are then re-parented to us for the next pass.
        """
        running = [pid for pid in _descendants(self.me) if pid != self.child and _running(pid)]
        self._signal_group(signal.SIGKILL)
        while True:
            for pid in _children(self.me):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not self._reap():
                return len(running)
            signal.sigtimedwait({signal.SIGCHLD}, _KILL_POLL)

    def _signal_group(self, signo: int) -> None:
        try:
            os.killpg(self.child, signo)
        except OSError:
            pass

    def _exit_code(self) -> int:
        if self.status is None:
            return 1
        code = os.waitstatus_to_exitcode(self.status)
        return code if code >= 0 else 128 - code

    def _say(self, line: str) -> None:
        try:
            os.write(2, f"{line}\n".encode(errors="replace"))
        except OSError:
            pass


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        children = _children(todo.pop())
        found += children
        todo += children
    return found


def _children(pid: int) -> list[int]:
    """From each thread's ``children`` list, or by a scan of /proc when the kernel has none."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as listing:
                children += [int(child) for child in listing.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{thread}"):
                continue  # the thread ended
            return [child for child in _all_pids() if _stat(child)[1:2] == [str(pid)]]
        except OSError:
            continue
    return children


def _running(pid: int) -> bool:
    """A zombie is not: it runs nothing and only waits to be reaped."""
    return _stat(pid)[:1] not in ([], ["Z"])


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, ..."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def main(args: list[str]) -> int:
    """``[--parent PID] [--term-grace S] [--report] -- ARGV...``

    Callers leave with ``os._exit``: the interpreter's teardown would be a third of
    our run time, and everything we print goes out unbuffered through ``os.write``.
    """
    parent, report, term_grace = os.getppid(), False, 0.0
    while args and args[0] != "--":
        option, *args = args
        if option == "--report":
            report = True
        elif option == "--parent":
            parent, *args = int(args[0]), *args[1:]
        elif option == "--term-grace":
            term_grace, *args = float(args[0]), *args[1:]
        else:
            raise SystemExit(f"reaper: unknown option {option}")
    argv = args[1:]
    if not argv:
        raise SystemExit("reaper: no command given")
    return _Supervisor(argv, report=report, term_grace=term_grace).run(parent)


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
