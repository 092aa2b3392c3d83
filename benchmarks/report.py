"""Targets, the printed table, the JSON file and the README section."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import platform
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.stats import Figure

README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
PERSISTENT = ("sqlite", "postgresql")
SERVERS = ("memory", *PERSISTENT)

Check = Callable[[Figure, dict[tuple[str, str], Figure]], bool | None]


def _ratio(figure: Figure, name: str, limit: float, *, at_least: bool = False) -> bool | None:
    ratio = figure.ratios.get(name)
    if ratio is None:
        return None
    return ratio >= limit if at_least else ratio <= limit


def _cold_new(figure: Figure, by_key: dict[tuple[str, str], Figure]) -> bool | None:
    floor = by_key.get(("cold.init", "floor"))
    return None if floor is None else figure.value < 1.5 * 0.4 * floor.value


def _deep(first_key: str) -> Check:
    def check(figure: Figure, by_key: dict[tuple[str, str], Figure]) -> bool | None:
        first = by_key.get((first_key, figure.variant))
        return None if first is None else figure.value <= 1.25 * first.value

    return check


# (figure key, variants, target as written, check)
TARGETS: list[tuple[str, tuple[str, ...], str, Check]] = [
    ("cold.init", SERVERS, "≤ 0.4x floor", lambda f, _: _ratio(f, "floor", 0.4)),
    ("cold.new", ("sqlite",), "< 0.6x floor's initialize (1.5x the initialize target)", _cold_new),
    ("cold.init", SERVERS, "≤ 1.25x stack", lambda f, _: _ratio(f, "stack", 1.25)),
    ("cold.new", SERVERS, "≤ 1.25x stack", lambda f, _: _ratio(f, "stack", 1.25)),
    ("turn.overhead", SERVERS, "< 5 ms", lambda f, _: f.value < 5),
    (
        "turn.overhead",
        ("sqlite",),
        "≤ 1.2x memory (persistence ≤ 20%)",
        lambda f, _: _ratio(f, "memory", 1.2),
    ),
    ("stream.rate", PERSISTENT, "≥ 5x floor", lambda f, _: _ratio(f, "floor", 5, at_least=True)),
    ("load.10000", PERSISTENT, "< 500 ms", lambda f, _: f.value < 500),
    ("list.first", PERSISTENT, "< 20 ms", lambda f, _: f.value < 20),
    ("list.deep", PERSISTENT, "< 20 ms", lambda f, _: f.value < 20),
    ("list.deep", PERSISTENT, "as fast as the first page (≤ 1.25x)", _deep("list.first")),
    ("list.cwd_first", PERSISTENT, "< 20 ms", lambda f, _: f.value < 20),
    ("list.cwd_deep", PERSISTENT, "< 20 ms", lambda f, _: f.value < 20),
    ("list.cwd_deep", PERSISTENT, "as fast as the first page (≤ 1.25x)", _deep("list.cwd_first")),
    ("memory.idle", SERVERS, "< 60 MB", lambda f, _: f.value < 60),
    ("memory.many", SERVERS, "< 100 MB (1,000 sessions)", lambda f, _: f.value < 100),
    ("shutdown.eof", SERVERS, "< 200 ms", lambda f, _: f.value < 200),
    ("shutdown.sigterm", SERVERS, "< 200 ms", lambda f, _: f.value < 200),
]


def judge(figures: list[Figure], *, smoke: bool) -> None:
    """Attach each target to its figures; in smoke mode the sizes differ, so none is judged."""
    by_key = {(f.key, f.variant): f for f in figures}
    for key, variants, text, check in TARGETS:
        for variant in variants:
            figure = by_key.get((key, variant))
            if figure is not None:
                figure.targets.append((text, None if smoke else check(figure, by_key)))


def missed(figures: list[Figure]) -> list[Figure]:
    return [f for f in figures if any(met is False for _, met in f.targets)]


# ---- formatting ---------------------------------------------------------------------------


def number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "ms":
        if abs(value) < 10:
            return f"{value:.2f}"
        return f"{value:.1f}" if abs(value) < 100 else f"{value:,.0f}"
    if unit in ("MB", "us"):
        return f"{value:.1f}"
    if unit == "turns/s":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def _ratios(figure: Figure) -> str:
    return ", ".join(f"{ratio:.2f}x {name}" for name, ratio in figure.ratios.items()) or "-"


def _targets(figure: Figure) -> str:
    parts = []
    for text, met in figure.targets:
        verdict = {True: "met", False: "**MISSED**", None: "not judged"}[met]
        parts.append(f"{text}: {verdict}")
    return "; ".join(parts)


def table(figures: list[Figure]) -> str:
    lines = [
        "| Scenario | Measure | Variant | Median | Range (runs) | Ratio | Target |",
        "|---|---|---|---:|---|---|---|",
    ]
    for f in figures:
        low, high = f.spread
        spread = f"{number(low, f.unit)}-{number(high, f.unit)} ({len(f.samples)})"
        lines.append(
            f"| {f.scenario} | {f.metric} | {f.variant} | {number(f.value, f.unit)} {f.unit} "
            f"| {spread} | {_ratios(f)} | {_targets(f)} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
    }


def code_state() -> dict[str, Any]:
    """The commit measured and the files changed on top of it (read-only git)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=README.parent.parent,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except OSError:
            return ""
        return done.stdout if done.returncode == 0 else ""

    changed = [
        line[3:]
        for line in git("status", "--porcelain").splitlines()
        if not line[3:].startswith("benchmarks/")
    ]
    diff = git("diff", "HEAD", "--", ".", ":(exclude)benchmarks")
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "changed": changed,
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16],
    }


def document(
    figures: list[Figure],
    *,
    notes: list[str],
    command: str,
    smoke: bool,
    sizes: dict[str, Any],
    backends: list[str],
    seconds: float,
    extra: dict[str, Any],
    code: dict[str, Any],
) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "mode": "smoke" if smoke else "full",
        "machine": {**machine(), **extra},
        "code": code,
        "backends": backends,
        "sizes": sizes,
        "seconds": round(seconds, 1),
        "notes": notes,
        "missed": [
            {
                "key": f.key,
                "variant": f.variant,
                "metric": f.metric,
                "median": f.value,
                "unit": f.unit,
                "targets": [t for t, met in f.targets if met is False],
            }
            for f in missed(figures)
        ],
        "figures": [f.as_json() for f in figures],
    }


def markdown(doc: dict[str, Any], figures: list[Figure]) -> str:
    m = doc["machine"]
    lines = [
        f"Run {doc['date']} ({doc['mode']} mode, {doc['seconds']:.0f} s), `{doc['command']}`",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, "
        f"SQLite {m['sqlite']}" + (f", {m['postgresql']}" if m.get("postgresql") else ""),
        "",
        f"Code: commit {doc['code']['commit'] or '?'}"
        + (
            f" plus uncommitted changes to {', '.join(doc['code']['changed'])}"
            if doc["code"]["changed"]
            else ""
        ),
        "",
        table(figures),
    ]
    if doc["notes"]:
        lines += ["", *[f"- {note}" for note in doc["notes"]]]
    gone = missed(figures)
    lines += [
        "",
        "Missed targets: "
        + (
            "; ".join(
                f"{f.metric} [{f.variant}] = {number(f.value, f.unit)} {f.unit}" for f in gone
            )
            if gone
            else "none"
        )
        + ".",
    ]
    return "\n".join(lines)


def update_readme(text: str) -> bool:
    """Replace the results block of benchmarks/README.md; False when it has none."""
    if not README.exists():
        return False
    content = README.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(content):
        return False
    README.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", content), encoding="utf-8")
    return True


def command_line() -> str:
    """The command as typed from the repository root (the venv's interpreter)."""
    python = os.path.relpath(sys.executable, README.parent.parent)
    if python.startswith(".."):
        python = sys.executable
    return " ".join([python, "-m", "benchmarks", *sys.argv[1:]])
