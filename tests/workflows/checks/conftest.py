"""A local git remote for checks against a repository base."""

import pytest

from tests.integrations.git_helpers import git


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
