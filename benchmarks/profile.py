"""Where a server's time goes: run one workload while py-spy samples the server.

    python -m benchmarks.profile stream --backend sqlite
    python -m benchmarks.profile turn1 --backend postgresql --top 40

Workloads: ``turn`` (200-chunk turns), ``turn1`` (1-chunk turns: what a turn costs
whatever its length), ``stream`` (5,000-chunk turns), ``load`` (session/load of 10,000
messages), ``concurrent`` (50 sessions x 3 turns at once). Prints the time per
operation and the functions with the most samples, self and inclusive (a function's
callees included; coroutine stacks are cut at each resumption, so inclusive shares
of async code are lower bounds). Needs py-spy (``pip install py-spy`` into the venv)
and permission to attach to a child process. The raw samples are kept (``--output``).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from benchmarks.backends import SERVER_BACKENDS, Variant, database, migrate
from benchmarks.client import AgentProcess, clean_env, spawn
from benchmarks.fake import BenchLLM, prompt_text
from benchmarks.scenarios import _all_at_once

WORKLOADS = ("turn", "turn1", "stream", "load", "concurrent")
_LINE = re.compile(r":\d+\)")


def summarize(raw: Path, top: int) -> str:
    """Self and inclusive sample shares by function from py-spy's raw output."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        n = int(count)
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    if not total:
        return "no samples (is the server busy long enough? can py-spy attach?)"
    out = [f"{total} samples", "", "self:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


async def workload(name: str, agent: AgentProcess, cwd: str, load_id: str | None) -> float:
    """Run the workload once; seconds per operation."""
    if name == "load":
        assert load_id is not None
        params = {"sessionId": load_id, "cwd": cwd, "mcpServers": []}
        loads = [
            (await agent.request("session/load", params, wait_s=600)).elapsed for _ in range(10)
        ]
        return statistics.median(loads)
    if name == "concurrent":
        sessions = [(await agent.new_session(cwd))[0] for _ in range(50)]
        await _all_at_once(agent, sessions, 1, 200)
        started = time.perf_counter()
        done = await _all_at_once(agent, sessions, 3, 200)
        return (time.perf_counter() - started) / len(done)
    chunks, count = {"turn": (200, 100), "turn1": (1, 300), "stream": (5_000, 10)}[name]
    times: list[float] = []
    while len(times) < count:  # 10 turns a session, as in the benchmark: history stays short
        session_id, _ = await agent.new_session(cwd)
        await agent.prompt(session_id, prompt_text(chunks, "warm-up: title"))
        for _ in range(10):
            times.append((await agent.prompt(session_id, prompt_text(chunks))).elapsed)
    return statistics.median(times)


async def main(args: argparse.Namespace) -> int:
    spy: str = args.spy
    output: Path = args.output or Path(tempfile.gettempdir()) / f"acp-{args.workload}.txt"
    llm = BenchLLM()
    with tempfile.TemporaryDirectory(prefix="acp-profile-") as root, llm:
        cwd = Path(root) / "project"
        cwd.mkdir()
        env = clean_env(
            str(Path(root) / "home"),
            {"OPENAI_BASE_URL": llm.base_url_openai, "OPENAI_API_KEY": "sk-bench"},
        )
        async with database(args.backend, Path(root), "profile") as url:
            load_id = None
            if args.workload == "load":
                if url is None:
                    print("load needs a database backend", file=sys.stderr)
                    return 2
                from benchmarks.populate import populate

                load_id = (
                    await populate(url, sessions=0, conversations=(10_000,), cwd=str(cwd))
                ).load[10_000]
            elif url is not None:
                await migrate(url)
            variant = Variant(args.backend, url)
            async with spawn(variant.argv(), env, label=args.backend) as agent:
                await agent.initialize()
                await agent.request("session/list", {})
                await workload(args.workload, agent, str(cwd), load_id)  # warm-up
                sampler = await anyio.open_process(
                    [
                        spy,
                        "record",
                        "-p",
                        str(agent.pid),
                        "-f",
                        "raw",
                        "-o",
                        str(output),
                        "-r",
                        str(args.rate),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    await anyio.sleep(1.0)  # py-spy attaches
                    per_op = await workload(args.workload, agent, str(cwd), load_id)
                finally:
                    sampler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    with anyio.move_on_after(30):
                        await sampler.wait()
    print(f"{args.workload} on {args.backend}: {per_op * 1000:.2f} ms per operation (median)")
    print(summarize(output, args.top))
    print(f"\nraw samples: {output}")
    return 0


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--backend", choices=SERVER_BACKENDS, default="sqlite")
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--output", type=Path, help="raw py-spy samples")
    args = parser.parse_args(argv)
    args.spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(args.spy).exists():
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    main_fn: Callable[[argparse.Namespace], Awaitable[int]] = main
    return anyio.run(main_fn, args)


if __name__ == "__main__":
    sys.exit(run())
