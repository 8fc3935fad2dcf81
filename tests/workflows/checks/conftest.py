"""Checks run for real: bubblewrap where it works (CI installs it and sets
TOPDOG_REQUIRE_SANDBOX, so a missing sandbox fails there instead of skipping)."""

import os
import shutil
import subprocess

import pytest

from integrations.sandbox.bubblewrap import BubblewrapBackend


def _bubblewrap_works() -> tuple[bool, str]:
    if shutil.which("bwrap") is None:
        return False, "bwrap is not installed"
    return BubblewrapBackend().available()


@pytest.fixture
def sandbox(settings, tmp_path):
    """The bubblewrap sandbox, with workspaces under the test's own directory."""
    works, reason = _bubblewrap_works()
    if not works:
        if os.environ.get("TOPDOG_REQUIRE_SANDBOX"):
            pytest.fail(f"TOPDOG_REQUIRE_SANDBOX is set but bubblewrap does not work: {reason}")
        pytest.skip(f"bubblewrap does not work here: {reason}")
    settings.TOPDOG_SANDBOX = "bubblewrap"
    settings.TOPDOG_WORKSPACE_DIR = tmp_path / "workspaces"
    settings.TOPDOG_SANDBOX_LIMITS = {
        **settings.TOPDOG_SANDBOX_LIMITS,
        "wall_seconds": 60,
        "memory_bytes": 1024**3,
    }
    return settings


@pytest.fixture
def no_repository(project):
    """The project has no repository: checks start from an empty tree."""
    project.repository = ""
    project.git_remote_url = ""
    project.save()
    return project


def git(*args: str, cwd) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd),
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Seed",
        "GIT_AUTHOR_EMAIL": "seed@example.com",
        "GIT_COMMITTER_NAME": "Seed",
        "GIT_COMMITTER_EMAIL": "seed@example.com",
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def local_remote(settings, project, tmp_path):
    """The project's repository is a local bare git remote whose main branch holds one
    module and its test (file:// remotes allowed for this test)."""
    settings.TOPDOG_GIT_ALLOW_LOCAL_REMOTES = True
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (seed / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    )
    git("init", "-q", "-b", "main", cwd=seed)
    git("add", ".", cwd=seed)
    git("commit", "-q", "-m", "seed", cwd=seed)
    bare = tmp_path / "origin.git"
    git("clone", "-q", "--bare", str(seed), str(bare), cwd=tmp_path)
    project.repository = ""
    project.git_remote_url = f"file://{bare}"
    project.default_branch = "main"
    project.save()
    return bare
