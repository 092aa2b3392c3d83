"""``acp-server sessions insights``: totals and breakdowns, computed by the database.

Days are local calendar days (at the current UTC offset) over the last 30 days, built
from turns; models from turns; directories from sessions. Session counts leave subagent
and hidden sessions out; token and cost totals include them, since they were spent.
Turn-based figures cover what retention has kept.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from acp_server.cli.common import local_time, money, one_line, table

if TYPE_CHECKING:
    from acp_server.storage.store import SessionStore

DAYS = 30
TOP = 20
DAY_MS = 86_400_000
EPOCH = date(1970, 1, 1)


async def collect(store: SessionStore, *, now: datetime | None = None) -> dict[str, Any]:
    """The report as JSON-ready data; ``days`` lists every one of the last 30 days."""
    now = (now or datetime.now()).astimezone()
    offset = now.utcoffset() or timedelta(0)
    offset_ms = int(offset.total_seconds() * 1000)
    today = (int(now.timestamp() * 1000) + offset_ms) // DAY_MS
    first = today - (DAYS - 1)
    raw = await store.insights(
        since_ms=first * DAY_MS - offset_ms, utc_offset_ms=offset_ms, top=TOP
    )
    by_day = {row.pop("day"): row for row in raw["days"]}
    empty = {
        "new_sessions": 0,
        "turns": 0,
        "sessions": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost": 0.0,
    }
    days = [
        {"date": (EPOCH + timedelta(days=day)).isoformat(), **by_day.get(day, empty)}
        for day in range(first, today + 1)
    ]
    return {
        "generated_at": now.isoformat(timespec="seconds"),
        "utc_offset_minutes": offset_ms // 60_000,
        "totals": raw["totals"],
        "days": days,
        "models": raw["models"],
        "directories": raw["directories"],
    }


def _n(value: int) -> str:
    return f"{value:,}"


def _indented(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def to_text(report: dict[str, Any]) -> str:
    totals = report["totals"]
    figures = [
        ("sessions", _n(totals["sessions"])),
        ("messages", _n(totals["messages"])),
        ("turns", _n(totals["turns"])),
        ("input tokens", _n(totals["input_tokens"])),
        ("output tokens", _n(totals["output_tokens"])),
        ("cost", money(totals["cost"])),
    ]
    width = max(len(value) for _, value in figures)
    out = ["Totals (subagent and hidden sessions are not counted as sessions)"]
    out += [f"  {name:<14}{value:>{width}}" for name, value in figures]
    active = [day for day in report["days"] if day["turns"] or day["new_sessions"]]
    out += ["", f"Last {DAYS} days (local time)"]
    if active:
        out.append(
            _indented(
                table(
                    ["DATE", "SESSIONS", "NEW", "TURNS", "INPUT", "OUTPUT", "COST"],
                    [
                        [
                            d["date"],
                            d["sessions"],
                            d["new_sessions"],
                            d["turns"],
                            _n(d["input_tokens"]),
                            _n(d["output_tokens"]),
                            money(d["cost"]),
                        ]
                        for d in active
                    ],
                    right=range(1, 7),
                )
            )
        )
    else:
        out.append("  no activity")
    out += ["", "By model"]
    if report["models"]:
        out.append(
            _indented(
                table(
                    ["PROVIDER", "MODEL", "TURNS", "SESSIONS", "INPUT", "OUTPUT", "COST"],
                    [
                        [
                            m["provider"] or "-",
                            m["model"] or "-",
                            m["turns"],
                            m["sessions"],
                            _n(m["input_tokens"]),
                            _n(m["output_tokens"]),
                            money(m["cost"]),
                        ]
                        for m in report["models"]
                    ],
                    right=range(2, 7),
                )
            )
        )
    else:
        out.append("  no turns")
    out += ["", "By directory"]
    if report["directories"]:
        out.append(
            _indented(
                table(
                    [
                        "DIRECTORY",
                        "SESSIONS",
                        "MESSAGES",
                        "INPUT",
                        "OUTPUT",
                        "COST",
                        "LAST UPDATED",
                    ],
                    [
                        [
                            one_line(d["cwd"], 60),
                            d["sessions"],
                            d["messages"],
                            _n(d["input_tokens"]),
                            _n(d["output_tokens"]),
                            money(d["cost"]),
                            local_time(d["last_updated_at"]),
                        ]
                        for d in report["directories"]
                    ],
                    right=range(1, 6),
                )
            )
        )
    else:
        out.append("  no sessions")
    return "\n".join(out) + "\n"
