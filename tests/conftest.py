import pytest

pytest_plugins = ["tests.backends"]


@pytest.fixture
def home(tmp_path):
    """A private HOME-like folder for one spawned server (config, data)."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def workspace(tmp_path):
    """A project folder to use as a session's cwd."""
    path = tmp_path / "project"
    path.mkdir()
    (path / "README.md").write_text("# demo project\n")
    return path
