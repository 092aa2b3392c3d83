"""The examples run as a person runs them: ``examples/client.py`` in a subprocess with
no terminal, driving the real server."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.harness import server_env

REPO = Path(__file__).resolve().parents[1]


def client(home: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / "client.py"), *args],
        stdin=subprocess.DEVNULL,
        env=server_env(home, {"HOME": str(home), "ACP_SERVER_LOG_LEVEL": "warning", **env}),
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_the_client_example_drives_the_real_server(
    tmp_path: Path, home: Path, workspace: Path
) -> None:
    db = tmp_path / "from-the-environment.db"
    script = REPO / "examples" / "script-demo.yaml"
    runs = [
        (  # the documented form; a setting from the environment, one after "--"
            ["hello there", "--cwd", str(workspace), "--", "--provider", "echo"],
            {"ACP_SERVER_DATABASE_URL": f"sqlite:///{db}"},
        ),
        (  # the demo script writes a file, which asks permission: nobody to ask here
            ["write notes", "--cwd", str(workspace), "--", "--memory"],
            {"ACP_SERVER_PROVIDER": f"script:{script}"},
        ),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        echo, scripted = pool.map(lambda run: client(home, *run), runs)

    assert echo.returncode == 0, echo.stderr
    lines = echo.stdout.splitlines()
    assert lines[0] == "Echo: hello there"
    assert "(stop reason: end_turn)" in lines
    assert lines[-2] == "1 stored session(s) on the first page:"
    assert lines[-1].endswith(f"  hello there  {workspace}")
    assert db.is_file()

    assert scripted.returncode == 0, scripted.stderr
    out = scripted.stdout
    assert "[tool] Read README.md" in out and "[tool] Write NOTES.md" in out
    assert "Allow Write NOTES.md? no terminal to ask, so: rejected" in out
    assert "(stop reason: end_turn)" in out
    assert not (workspace / "NOTES.md").exists()
    assert "Traceback" not in echo.stderr + scripted.stderr
