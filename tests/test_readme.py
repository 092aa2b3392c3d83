"""The README's promises about running the project, checked against what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
CI = (REPO / ".ci" / "run").read_text(encoding="utf-8")


def shell_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command_exactly() -> None:
    command = shell_blocks(README)[1]
    assert command.endswith(".venv/bin/pytest")
    assert command in CI.splitlines()


def test_the_readme_says_how_ci_makes_missing_databases_fail() -> None:
    """CI turns database skips into failures; someone running the tests should know how."""
    exported = re.findall(r"^export (\w+=\S+)$", CI, flags=re.M)
    assert exported, "CI sets how missing databases are treated"
    after_command = README.split(shell_blocks(README)[1], 1)[1].split("##", 1)[0]
    for assignment in exported:
        assert f"`{assignment}`" in after_command
    assert "minutes" in after_command
