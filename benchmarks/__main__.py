"""``python -m benchmarks``: measure the server as editors and operators use it.

    python -m benchmarks                  # the full run (~3 min), results/latest.json
    python -m benchmarks --smoke          # tiny sizes, a few seconds (CI)
    python -m benchmarks --only stream,turn --backends memory,sqlite

Prints the table on stdout (progress on stderr) and writes the JSON file. Exits 0 even
when targets are missed (the table says which); 1 when a measurement itself failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

from benchmarks import report
from benchmarks.backends import SERVER_BACKENDS, compile_server, postgres_problem
from benchmarks.fake import BenchLLM
from benchmarks.scenarios import FULL, SCENARIOS, SMOKE, Bench, run_all
from benchmarks.stats import compute_ratios

RESULTS = Path(__file__).resolve().parent / "results"


def _list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run each")
    parser.add_argument(
        "--only",
        metavar="SCENARIO[,SCENARIO]",
        type=lambda t: _list(t, SCENARIOS, "scenario"),
        default=list(SCENARIOS),
        help=f"any of {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--backends",
        metavar="NAME[,NAME]",
        type=lambda t: _list(t, SERVER_BACKENDS, "backend"),
        default=list(SERVER_BACKENDS),
        help="memory,sqlite,postgresql (default)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="the JSON file (default: results/latest.json, or results/smoke.json with --smoke)",
    )
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="also replace the results section of benchmarks/README.md",
    )
    return parser.parse_args(argv)


async def _postgres_version() -> str | None:
    try:
        import asyncpg

        from benchmarks.backends import PG_HOST, PG_PORT, PG_USER

        conn = await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5
        )
        try:
            version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        return f"PostgreSQL {str(version).split()[0]}"
    except Exception:
        return None


async def main(args: argparse.Namespace) -> int:
    sizes = SMOKE if args.smoke else FULL
    backends = list(args.backends)
    notes: list[str] = []
    extra: dict[str, str] = {}
    if "postgresql" in backends:
        problem = await postgres_problem()
        if problem:
            backends.remove("postgresql")
            notes.append(f"PostgreSQL skipped: {problem}.")
            print(f"note: {notes[-1]}", file=sys.stderr)
        elif version := await _postgres_version():
            extra["postgresql"] = version
    selected = [s for s in SCENARIOS if s in args.only]
    compile_server()
    code = report.code_state()
    started = time.perf_counter()
    llm = BenchLLM()
    with tempfile.TemporaryDirectory(prefix="acp-bench-") as root, llm:
        async with httpx.AsyncClient(timeout=120) as http:
            bench = Bench(sizes, backends, llm, Path(root), http, notes=notes)
            await run_all(bench, selected)
    seconds = time.perf_counter() - started
    if report.code_state() != code:
        notes.append("The server's code changed while this ran: figures may mix two versions.")
    compute_ratios(bench.figures)
    report.judge(bench.figures, smoke=args.smoke)
    if args.smoke:
        notes.append("Smoke mode: tiny sizes and one run each; targets are not judged.")
    doc = report.document(
        bench.figures,
        notes=notes,
        command=report.command_line(),
        smoke=args.smoke,
        sizes=dataclasses.asdict(sizes),
        backends=backends,
        seconds=seconds,
        extra=extra,
        code=code,
    )
    text = report.markdown(doc, bench.figures)
    print(text)
    output = args.output or RESULTS / ("smoke.json" if args.smoke else "latest.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nresults written to {output}")
    if args.update_readme:
        if report.update_readme(text):
            print(f"table written to {report.README}")
        else:
            print(f"no results section in {report.README}; not updated", file=sys.stderr)
    return 0


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return anyio.run(main, args)


if __name__ == "__main__":
    sys.exit(run())
