import os
from pathlib import Path

import pytest

from integrations.workspace import RepoSource
from tests.integrations.git_helpers import git, write

BASE_FILES = {
    "README.md": "# App\n",
    "app/main.py": "def main():\n    return 1\n",
    "app/util.py": "X = 1\n",
    "requirements.txt": "Django>=5.2\n",
    "old/legacy.py": "legacy = True\n",
}


class Origin:
    """A bare repository (the remote) and the clone that pushes commits to it."""

    def __init__(self, tmp_path: Path, name: str = "origin"):
        self.bare = tmp_path / f"{name}.git"
        self.seed = tmp_path / f"{name}-seed"
        self.outside = tmp_path / "outside"
        self.outside.mkdir(exist_ok=True)
        git("init", "--quiet", "--bare", "-b", "main", str(self.bare), cwd=tmp_path)
        git("init", "--quiet", "-b", "main", str(self.seed), cwd=tmp_path)
        write(self.seed, BASE_FILES)
        # Links out of the tree: to a directory, and to a file.
        os.symlink(str(self.outside), self.seed / "escape")
        os.symlink("../outside/secret.txt", self.seed / "link.txt")
        self.main = self.commit("seed")

    def commit(self, message: str, files: dict | None = None, branch: str = "main") -> str:
        if files:
            write(self.seed, files)
        git("add", "-A", cwd=self.seed)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.seed)
        git("push", "--quiet", str(self.bare), f"HEAD:refs/heads/{branch}", cwd=self.seed)
        return git("rev-parse", "HEAD", cwd=self.seed).strip()

    def source(self, **extra) -> RepoSource:
        return RepoSource(url=f"file://{self.bare}", allow_local=True, **extra)


@pytest.fixture
def origin(tmp_path) -> Origin:
    return Origin(tmp_path)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "workspaces"
