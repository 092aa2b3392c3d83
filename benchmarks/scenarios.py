"""The seven scenarios. Each measures every variant in the same run, interleaved.

Interleaving is what keeps ratios honest on a noisy machine: the variants of a
scenario are all running (idle) side by side and measured in turn, one sample each,
in an order rotated every round, so a burst of noise lands on all of them alike.
Every figure is a median over several runs; the samples are kept in the JSON.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import orjson

from benchmarks.backends import FLOOR, REPO, STACK, Variant, variants
from benchmarks.client import AgentError, AgentProcess, clean_env, spawn
from benchmarks.fake import BenchLLM, chunk_text, prompt_text, provider_seconds
from benchmarks.stats import Figure, median, percentile

SCENARIOS = ("cold", "turn", "stream", "load", "list", "concurrent", "memory", "shutdown")
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    cold_runs: int
    turn_rounds: int
    turn_turns: int
    turn_chunks: int
    stream_chunks: int
    stream_runs: int
    load_sizes: tuple[int, ...]
    load_runs: int
    list_sessions: int
    list_runs: int
    concurrent_sessions: int
    concurrent_turns: int
    concurrent_rounds: int
    memory_sessions: tuple[int, int]
    memory_runs: int
    warmup: bool = True
    """Run each fresh-process measurement once, unrecorded, before the recorded runs."""
    settle_s: float = 0.3
    """Pause before reading RSS, for deferred updates and the allocator to settle."""


FULL = Sizes(
    cold_runs=11,
    turn_rounds=7,
    turn_turns=10,
    turn_chunks=200,
    stream_chunks=5_000,
    stream_runs=11,
    load_sizes=(1_000, 10_000),
    load_runs=5,
    list_sessions=100_000,
    list_runs=25,
    concurrent_sessions=50,
    concurrent_turns=3,
    concurrent_rounds=5,
    memory_sessions=(100, 1_000),
    memory_runs=3,
)
SMOKE = Sizes(
    cold_runs=1,
    turn_rounds=1,
    turn_turns=3,
    turn_chunks=200,
    stream_chunks=500,
    stream_runs=1,
    load_sizes=(100, 300),
    load_runs=1,
    list_sessions=2_000,
    list_runs=2,
    concurrent_sessions=5,
    concurrent_turns=2,
    concurrent_rounds=1,
    memory_sessions=(10, 20),
    memory_runs=1,
    warmup=False,
    settle_s=0.05,
)


def rotate(items: Sequence[T], by: int) -> list[T]:
    """``items`` starting at position ``by`` (mod len): a different order each round."""
    if not items:
        return []
    k = by % len(items)
    return [*items[k:], *items[:k]]


_STARTED = time.perf_counter()


def _log(text: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:6.1f} s] {text}", file=sys.stderr, flush=True)


@dataclass
class Bench:
    """Everything a scenario needs, and where it puts its figures."""

    sizes: Sizes
    backends: list[str]
    llm: BenchLLM
    root: Path
    http: httpx.AsyncClient
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    log: Callable[[str], None] = _log

    @property
    def cwd(self) -> str:
        """The sessions' working directory."""
        path = self.root / "project"
        path.mkdir(exist_ok=True)
        return str(path)

    @property
    def env(self) -> dict[str, str]:
        return clean_env(
            str(self.root / "home"),
            {"OPENAI_BASE_URL": self.llm.base_url_openai, "OPENAI_API_KEY": "sk-bench"},
        )

    def names(self, *, floor: bool = True, stack: bool = False) -> list[str]:
        """The variants to run: the server's backends, after the baseline agents."""
        return [*([FLOOR] if floor else []), *([STACK] if stack else []), *self.backends]

    def add(
        self,
        key: str,
        scenario: str,
        metric: str,
        variant: str,
        samples: list[float],
        unit: str,
        *,
        higher: bool = False,
        baselines: tuple[str, ...] = (),
        note: str = "",
    ) -> Figure:
        figure = Figure(
            key, scenario, metric, variant, list(samples), unit, higher, baselines, note
        )
        self.figures.append(figure)
        return figure

    def spawn(self, variant: Variant) -> contextlib.AbstractAsyncContextManager[AgentProcess]:
        return spawn(variant.argv(), self.env, label=variant.name, cwd=str(REPO))

    async def provider_seconds(self, chunks: int) -> float:
        return await provider_seconds(self.http, self.llm.base_url_openai, chunks)


async def ready(agent: AgentProcess, variant: Variant) -> None:
    """Initialized, and (for the server) its session store open."""
    await agent.initialize()
    if not variant.is_floor:
        await agent.request("session/list", {})


@contextlib.asynccontextmanager
async def running(
    bench: Bench, names: list[str], tag: str
) -> AsyncIterator[dict[str, tuple[Variant, AgentProcess]]]:
    """Every variant in ``names`` started, initialized and idle, side by side."""
    async with variants(names, bench.root, tag) as vs, contextlib.AsyncExitStack() as stack:
        agents: dict[str, tuple[Variant, AgentProcess]] = {}
        for variant in vs:
            agent = await stack.enter_async_context(bench.spawn(variant))
            await ready(agent, variant)
            agents[variant.name] = (variant, agent)
        yield agents


def _ms(seconds: Sequence[float]) -> list[float]:
    return [s * 1000 for s in seconds]


def _check_chunks(agent: AgentProcess, session_id: str, expected: int) -> None:
    got = agent.sessions[session_id].chunks
    if got != expected:
        raise AgentError(f"{agent.label}: {got} message chunks arrived, {expected} expected")


# ---- 1. cold start --------------------------------------------------------------------


async def cold_start(bench: Bench) -> None:
    runs = bench.sizes.cold_runs
    names = bench.names(stack=True)
    init: dict[str, list[float]] = {n: [] for n in names}
    first_new: dict[str, list[float]] = {n: [] for n in names}
    first = 0 if bench.sizes.warmup else 1  # run 0 only warms the page cache
    async with variants(names, bench.root, "cold") as vs:
        for run in range(first, runs + 1):
            for variant in rotate(vs, run):
                async with bench.spawn(variant) as agent:
                    answer = await agent.initialize()
                    _, created = await agent.new_session(bench.cwd)
                if run:
                    init[variant.name].append(answer.received_at - agent.spawned_at)
                    first_new[variant.name].append(created.received_at - agent.spawned_at)
            bench.log(f"cold start: run {run}/{runs}")
    for name in names:
        bench.add(
            "cold.init",
            "cold start",
            "spawn → initialize answered",
            name,
            _ms(init[name]),
            "ms",
            baselines=(FLOOR, STACK, "memory"),
        )
    for name in names:
        bench.add(
            "cold.new",
            "cold start",
            "spawn → first session/new answered",
            name,
            _ms(first_new[name]),
            "ms",
            baselines=(FLOOR, STACK, "memory", "@spawn → initialize answered"),
        )


# ---- 2. per-turn overhead -------------------------------------------------------------


Live = dict[str, tuple[Variant, AgentProcess]]


async def per_turn(bench: Bench, agents: Live) -> None:
    """Turns of ``turn_chunks`` chunks, and of one chunk (what a turn costs whatever
    its length); each minus the provider's own time for the same reply."""
    sizes = bench.sizes
    chunks = sizes.turn_chunks
    names = list(agents)
    totals: dict[str, list[float]] = {n: [] for n in names}
    firsts: dict[str, list[float]] = {n: [] for n in names}
    overheads: dict[str, list[float]] = {n: [] for n in names}
    fixed: dict[str, list[float]] = {n: [] for n in names}
    per_chunk: dict[str, list[float]] = {n: [] for n in names}
    provider: list[float] = []
    for rnd in range(sizes.turn_rounds):
        sessions: dict[str, str] = {}
        for name, (_, agent) in agents.items():
            sid, _ = await agent.new_session(bench.cwd)
            await agent.prompt(sid, prompt_text(chunks, "warm-up: title, connection"))
            sessions[name] = sid
        await bench.provider_seconds(chunks)
        long: dict[str, list[float]] = {n: [] for n in names}
        short: dict[str, list[float]] = {n: [] for n in names}
        own_long: list[float] = []
        own_short: list[float] = []
        for k in range(sizes.turn_turns):
            own_long.append(await bench.provider_seconds(chunks))
            own_short.append(await bench.provider_seconds(1))
            for name in rotate(names, k + rnd):
                agent, sid = agents[name][1], sessions[name]
                for size, times in ((chunks, long), (1, short)):
                    agent.reset(sid)
                    answer = await agent.prompt(sid, prompt_text(size))
                    _check_chunks(agent, sid, size)
                    times[name].append(answer.elapsed)
                    if size == chunks:
                        firsts[name].append(agent.sessions[sid].first_chunk_at - answer.sent_at)
        provider.extend(own_long)
        for name in names:
            totals[name].extend(long[name])
            over_long = median(long[name]) - median(own_long)
            over_short = median(short[name]) - median(own_short)
            overheads[name].append(over_long)
            fixed[name].append(over_short)
            per_chunk[name].append((over_long - over_short) / (chunks - 1))
        bench.log(f"per-turn: round {rnd + 1}/{sizes.turn_rounds}")
    what = f"{chunks}-chunk reply"
    bench.add(
        "turn.provider",
        "per-turn",
        f"prompt answered ({what})",
        "provider",
        _ms(provider),
        "ms",
        note="the same reply streamed straight to the benchmark with httpx",
    )
    for name in names:
        bench.add(
            "turn.total",
            "per-turn",
            f"prompt answered ({what})",
            name,
            _ms(totals[name]),
            "ms",
            baselines=("provider", "memory", FLOOR),
        )
    for name in names:
        bench.add(
            "turn.overhead",
            "per-turn",
            f"per-turn overhead ({what}, minus provider)",
            name,
            _ms(overheads[name]),
            "ms",
            baselines=("memory", FLOOR),
            note="median turn minus the provider's median, per round",
        )
    for name in names:
        bench.add(
            "turn.fixed",
            "per-turn",
            "per-turn overhead (1-chunk reply, minus provider)",
            name,
            _ms(fixed[name]),
            "ms",
            baselines=("memory", FLOOR),
            note="what a turn costs whatever its length",
        )
    for name in names:
        bench.add(
            "turn.chunk",
            "per-turn",
            "cost per chunk (from the two overheads)",
            name,
            [v * 1e6 for v in per_chunk[name]],
            "us",
            baselines=("memory", FLOOR),
            note=f"(overhead {chunks} chunks - overhead 1 chunk) / {chunks - 1}",
        )
    for name in names:
        bench.add(
            "turn.first",
            "per-turn",
            f"prompt → first chunk ({what})",
            name,
            _ms(firsts[name]),
            "ms",
            baselines=("memory", FLOOR),
        )


# ---- 3. streaming throughput ----------------------------------------------------------


async def streaming(bench: Bench, agents: Live) -> None:
    sizes = bench.sizes
    chunks = sizes.stream_chunks
    names = list(agents)
    rates: dict[str, list[float]] = {n: [] for n in names}
    provider: list[float] = []
    ceiling: list[float] = []
    replay = _replay_file(bench.root, chunks)
    sessions: dict[str, str] = {}
    for name, (_, agent) in agents.items():
        sid, _ = await agent.new_session(bench.cwd)
        await agent.prompt(sid, prompt_text(chunks, "warm-up"))
        sessions[name] = sid
    for run in range(sizes.stream_runs):
        provider.append(chunks / await bench.provider_seconds(chunks))
        ceiling.append(await _client_ceiling(replay, chunks))
        for name in rotate(names, run):
            agent, sid = agents[name][1], sessions[name]
            agent.reset(sid)
            answer = await agent.prompt(sid, prompt_text(chunks))
            _check_chunks(agent, sid, chunks)
            rates[name].append(chunks / (agent.sessions[sid].last_chunk_at - answer.sent_at))
        bench.log(f"streaming: run {run + 1}/{sizes.stream_runs}")
    metric = f"chunks/s delivered ({chunks:,}-chunk reply)"
    bench.add(
        "stream.rate",
        "streaming",
        metric,
        "provider",
        provider,
        "chunks/s",
        higher=True,
        note="the fake endpoint's own rate, read with httpx in the benchmark",
    )
    bench.add(
        "stream.rate",
        "streaming",
        metric,
        "client ceiling",
        ceiling,
        "chunks/s",
        higher=True,
        note="this client reading the same notifications from `cat`",
    )
    for name in names:
        bench.add(
            "stream.rate",
            "streaming",
            metric,
            name,
            rates[name],
            "chunks/s",
            higher=True,
            baselines=(FLOOR, "memory"),
            note="prompt sent → last agent_message_chunk received",
        )


def _replay_file(root: Path, chunks: int) -> Path:
    """What a streaming agent writes: ``chunks`` notifications, then the answer."""
    path = root / f"replay-{chunks}.jsonl"
    if not path.exists():
        message_id = "5f0c6d1e-8f63-4a52-9d0a-3c1b2a4e5f60"
        lines = [
            orjson.dumps(
                {
                    "jsonrpc": "2.0",
                    "method": "session/update",
                    "params": {
                        "sessionId": "replay",
                        "update": {
                            "sessionUpdate": "agent_message_chunk",
                            "messageId": message_id,
                            "content": {"type": "text", "text": chunk_text(i)},
                        },
                    },
                }
            )
            for i in range(chunks)
        ]
        answer = {"jsonrpc": "2.0", "id": 1, "result": {"stopReason": "end_turn"}}
        lines.append(orjson.dumps(answer))
        path.write_bytes(b"\n".join(lines) + b"\n")
    return path


async def _client_ceiling(replay: Path, chunks: int) -> float:
    """The rate at which this client takes in notifications it does not have to wait
    for: ``cat`` of a pre-written stream (spawn included, so it is a lower bound)."""
    async with spawn(["cat", str(replay)], {}, label="cat") as agent:
        agent.expect(1)
        await agent.finish(1, agent.spawned_at)
    counts = agent.sessions["replay"]
    if counts.chunks != chunks:
        raise AgentError(f"client ceiling: {counts.chunks} of {chunks} chunks read")
    return chunks / (counts.last_chunk_at - agent.spawned_at)


# ---- 4 and 5. session/load and session/list on a big store -------------------------------


async def stored(bench: Bench, *, load: bool, listing: bool) -> None:
    from acp_server.storage.sessions import ListKey
    from acp_server.storage.store import SessionStore
    from benchmarks.populate import PAGE_SIZE, populate

    sizes = bench.sizes
    names = [n for n in bench.backends if n != "memory"]
    if "memory" in bench.backends:
        bench.notes.append(
            "session/load and session/list: memory mode is not measured (it starts empty "
            "and cannot be pre-populated); the baseline is the same query made in-process "
            'with SessionStore on the same database ("store:BACKEND").'
        )
    if not names:
        return
    async with variants(names, bench.root, "stored") as vs, contextlib.AsyncExitStack() as stack:
        filled = {}
        for variant in vs:
            assert variant.url is not None
            filled[variant.name] = await populate(
                variant.url,
                sessions=sizes.list_sessions if listing else 0,
                conversations=sizes.load_sizes if load else (),
                cwd=bench.cwd,
            )
            bench.log(f"populated {variant.name} in {filled[variant.name].seconds:.1f} s")
        stores = {v.name: await SessionStore.open(v.url) for v in vs}
        for store in stores.values():
            stack.push_async_callback(store.close)
        agents: dict[str, AgentProcess] = {}
        for variant in vs:
            agents[variant.name] = await stack.enter_async_context(bench.spawn(variant))
            await ready(agents[variant.name], variant)

        if load:
            for size in sizes.load_sizes:
                times: dict[str, list[float]] = {n: [] for n in names}
                direct: dict[str, list[float]] = {n: [] for n in names}
                for run in range(sizes.load_runs + 1):  # run 0 warms up
                    for name in rotate(names, run):
                        agent, sid = agents[name], filled[name].load[size]
                        agent.reset(sid)
                        answer = await agent.request(
                            "session/load",
                            {"sessionId": sid, "cwd": bench.cwd, "mcpServers": []},
                            wait_s=600,
                        )
                        if agent.sessions[sid].updates < size:
                            raise AgentError(f"{name}: session/load answered before the replay")
                        started = time.perf_counter()
                        items = await stores[name].load_items(sid, user_visible=True)
                        took = time.perf_counter() - started
                        assert len(items) == size
                        if run:
                            times[name].append(answer.elapsed)
                            direct[name].append(took)
                bench.log(f"session/load: {size:,} messages done")
                metric = f"session/load, {size:,} messages (all replayed)"
                for name in names:
                    bench.add(
                        "load.read",
                        "session/load",
                        metric,
                        f"store:{name}",
                        _ms(direct[name]),
                        "ms",
                        note="SessionStore.load_items in the benchmark process",
                    )
                for name in names:
                    bench.add(
                        f"load.{size}",
                        "session/load",
                        metric,
                        name,
                        _ms(times[name]),
                        "ms",
                        baselines=("store:{variant}",),
                    )

        if listing:

            def fixture(name: str) -> Any:
                assert filled[name].list is not None
                return filled[name].list

            def direct_list(
                cwd: str | None, key: Callable[[str], ListKey | None]
            ) -> Callable[[str], Awaitable[Any]]:
                return lambda name: stores[name].list_sessions(
                    cwd=cwd, after=key(name), limit=PAGE_SIZE
                )

            depth = fixture(names[0]).deep_position
            pages: list[
                tuple[str, str, Callable[[str], dict[str, Any]], Callable[[str], Awaitable[Any]]]
            ] = [
                ("list.first", "first page", lambda n: {}, direct_list(None, lambda n: None)),
                (
                    "list.deep",
                    f"deep page (after {depth:,} sessions)",
                    lambda n: {"cursor": fixture(n).deep_cursor},
                    direct_list(None, lambda n: fixture(n).deep_key),
                ),
                (
                    "list.cwd_first",
                    "first page, cwd filter",
                    lambda n: {"cwd": fixture(n).cwd},
                    direct_list(fixture(names[0]).cwd, lambda n: None),
                ),
                (
                    "list.cwd_deep",
                    "deep page, cwd filter",
                    lambda n: {"cwd": fixture(n).cwd, "cursor": fixture(n).cwd_deep_cursor},
                    direct_list(fixture(names[0]).cwd, lambda n: fixture(n).cwd_deep_key),
                ),
            ]
            # Every run takes each page kind in turn, so the deep/first ratio is not
            # confounded by noise drifting between blocks of measurements.
            page_times: dict[str, dict[str, list[float]]] = {
                page[0]: {n: [] for n in names} for page in pages
            }
            page_direct: dict[str, dict[str, list[float]]] = {
                page[0]: {n: [] for n in names} for page in pages
            }
            for run in range(sizes.list_runs + 1):  # run 0 warms up
                for key, _, params_of, direct_of in rotate(pages, run):
                    for name in rotate(names, run):
                        answer = await agents[name].request("session/list", params_of(name))
                        got = len(answer.result["sessions"])
                        if got != PAGE_SIZE:
                            raise AgentError(f"{name}: session/list gave {got} sessions")
                        started = time.perf_counter()
                        await direct_of(name)
                        took = time.perf_counter() - started
                        if run:
                            page_times[key][name].append(answer.elapsed)
                            page_direct[key][name].append(took)
            for key, label, _, _ in pages:
                metric = f"session/list {label}, {sizes.list_sessions:,} stored"
                for name in names:
                    bench.add(
                        key,
                        "session/list",
                        metric,
                        f"store:{name}",
                        _ms(page_direct[key][name]),
                        "ms",
                        note="SessionStore.list_sessions in the benchmark process",
                    )
                for name in names:
                    base: tuple[str, ...] = ("store:{variant}",)
                    if key == "list.deep":
                        base += (f"@session/list first page, {sizes.list_sessions:,} stored",)
                    if key == "list.cwd_deep":
                        base += (
                            f"@session/list first page, cwd filter, {sizes.list_sessions:,} stored",
                        )
                    bench.add(
                        key,
                        "session/list",
                        metric,
                        name,
                        _ms(page_times[key][name]),
                        "ms",
                        baselines=base,
                    )
            bench.log("session/list done")


# ---- 6. many sessions at once ---------------------------------------------------------


async def concurrent(bench: Bench, agents: Live) -> None:
    sizes = bench.sizes
    count, turns, chunks = sizes.concurrent_sessions, sizes.concurrent_turns, sizes.turn_chunks
    names = list(agents)
    rates: dict[str, list[float]] = {n: [] for n in names}
    p95s: dict[str, list[float]] = {n: [] for n in names}
    sessions: dict[str, list[str]] = {}
    for name, (_, agent) in agents.items():
        sessions[name] = [(await agent.new_session(bench.cwd))[0] for _ in range(count)]
        await _all_at_once(agent, sessions[name], 1, chunks)  # titles, connections
    for rnd in range(sizes.concurrent_rounds):
        for name in rotate(names, rnd):
            agent = agents[name][1]
            started = time.perf_counter()
            latencies = await _all_at_once(agent, sessions[name], turns, chunks)
            wall = time.perf_counter() - started
            rates[name].append(len(latencies) / wall)
            p95s[name].append(percentile(latencies, 95) * 1000)
        bench.log(f"concurrent: round {rnd + 1}/{sizes.concurrent_rounds}")
    what = f"{count} sessions x {turns} turns at once, {chunks}-chunk replies"
    for name in names:
        bench.add(
            "concurrent.rate",
            "concurrent",
            f"turns/s ({what})",
            name,
            rates[name],
            "turns/s",
            higher=True,
            baselines=("memory", FLOOR),
        )
    for name in names:
        bench.add(
            "concurrent.p95",
            "concurrent",
            f"p95 turn latency ({what})",
            name,
            p95s[name],
            "ms",
            baselines=("memory", FLOOR),
        )


async def _all_at_once(
    agent: AgentProcess, sessions: list[str], turns: int, chunks: int
) -> list[float]:
    latencies: list[float] = []

    async def one(session_id: str) -> None:
        for _ in range(turns):
            agent.reset(session_id)
            answer = await agent.prompt(session_id, prompt_text(chunks), wait_s=600)
            _check_chunks(agent, session_id, chunks)
            latencies.append(answer.elapsed)

    async with anyio.create_task_group() as tg:
        for session_id in sessions:
            tg.start_soon(one, session_id)
    return latencies


# ---- 7. memory ------------------------------------------------------------------------


async def memory(bench: Bench) -> None:
    sizes = bench.sizes
    few, many = sizes.memory_sessions
    names = bench.names(stack=True)
    idle: dict[str, list[float]] = {n: [] for n in names}
    with_few: dict[str, list[float]] = {n: [] for n in names}
    with_many: dict[str, list[float]] = {n: [] for n in names}

    async def rss(agent: AgentProcess) -> float:
        await anyio.sleep(sizes.settle_s)
        return agent.rss_kib() / 1024

    async with variants(names, bench.root, "memory") as vs:
        for run in range(sizes.memory_runs):
            for variant in rotate(vs, run):
                async with bench.spawn(variant) as agent:
                    await ready(agent, variant)
                    idle[variant.name].append(await rss(agent))
                    for n in range(1, many + 1):
                        await agent.new_session(bench.cwd)
                        if n == few:
                            with_few[variant.name].append(await rss(agent))
                    with_many[variant.name].append(await rss(agent))
            bench.log(f"memory: run {run + 1}/{sizes.memory_runs}")
    for key, label, values in (
        ("memory.idle", "RSS idle (initialized, store open)", idle),
        ("memory.few", f"RSS with {few:,} open sessions", with_few),
        ("memory.many", f"RSS with {many:,} open sessions", with_many),
    ):
        for name in names:
            bench.add(
                key, "memory", label, name, values[name], "MB", baselines=(FLOOR, STACK, "memory")
            )


# ---- 8. shutdown ----------------------------------------------------------------------


async def shutdown(bench: Bench) -> None:
    """How long an idle agent takes to exit after stdin closes, and after SIGTERM: some
    editors close stdin and send SIGTERM ~100 ms later, killing a slow one mid-way."""
    runs = bench.sizes.cold_runs
    names = bench.names()
    after: dict[tuple[str, str], list[float]] = {}
    async with variants(names, bench.root, "shutdown") as vs:
        for run in range(runs):
            for variant in rotate(vs, run):
                for how in ("eof", "sigterm"):
                    async with bench.spawn(variant) as agent:
                        await ready(agent, variant)
                        started = time.perf_counter()
                        if how == "eof":
                            await agent.close()
                        else:
                            agent.process.send_signal(signal.SIGTERM)
                            await agent.process.wait()
                        elapsed = time.perf_counter() - started
                    after.setdefault((variant.name, how), []).append(elapsed)
            bench.log(f"shutdown: run {run + 1}/{runs}")
    for how, label in (("eof", "stdin closed → exited"), ("sigterm", "SIGTERM → exited")):
        for name in names:
            bench.add(
                f"shutdown.{how}",
                "shutdown",
                f"idle, {label}",
                name,
                _ms(after[(name, how)]),
                "ms",
                baselines=(FLOOR,),
            )


async def run_all(bench: Bench, selected: list[str]) -> None:
    """Run the selected scenarios. Per-turn, streaming and concurrency share one set of
    server processes (started once, each variant idle while another is measured)."""
    if "cold" in selected:
        bench.log("cold start")
        await cold_start(bench)
    live = [name for name in ("turn", "stream", "concurrent") if name in selected]
    if live:
        async with running(bench, bench.names(), "live") as agents:
            for name in live:
                bench.log(name)
                await {"turn": per_turn, "stream": streaming, "concurrent": concurrent}[name](
                    bench, agents
                )
    if "load" in selected or "list" in selected:
        bench.log("load / list")
        await stored(bench, load="load" in selected, listing="list" in selected)
    if "memory" in selected:
        bench.log("memory")
        await memory(bench)
    if "shutdown" in selected:
        bench.log("shutdown")
        await shutdown(bench)
    order = {name: i for i, name in enumerate(SCENARIOS)}
    bench.figures.sort(key=lambda f: order[f.key.split(".")[0]])
