import os
import shutil
from pathlib import Path

import pytest

from integrations.sandbox import SandboxLimits, SandboxRequest
from integrations.sandbox.bubblewrap import BubblewrapBackend

# Small limits keep the hostile cases fast; every one still ends by the limit it tests.
LIMITS = SandboxLimits(
    wall_seconds=4,
    cpu_seconds=10,
    memory_bytes=1024**3,
    processes=64,
    write_bytes=32 * 1024**2,
    output_bytes=8 * 1024,
)
CANARY = "canary-7d1e9b3f0a2c"


@pytest.fixture(scope="session")
def bwrap_backend() -> BubblewrapBackend:
    """The real bubblewrap backend; skipped where it cannot run, unless CI requires it."""
    backend = BubblewrapBackend()
    ok, why = (False, "bwrap is not installed") if shutil.which("bwrap") is None else (True, "")
    if ok:
        ok, why = backend.available()
    if not ok:
        if os.environ.get("TOPDOG_REQUIRE_SANDBOX"):
            pytest.fail(f"TOPDOG_REQUIRE_SANDBOX is set but bubblewrap cannot run: {why}")
        pytest.skip(f"bubblewrap cannot run here: {why}")
    return backend


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    path = tmp_path / "worktree"
    path.mkdir(mode=0o700)  # as private as a real checkout can be
    (path / "README.md").write_text("a worktree\n")
    return path


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


@pytest.fixture
def request_for(worktree: Path, artifacts: Path):
    """A SandboxRequest against the test's worktree with the small limits."""

    def build(command: str, **overrides) -> SandboxRequest:
        fields = {
            "command": command,
            "worktree": worktree,
            "limits": LIMITS,
            "artifacts_dir": artifacts,
        }
        fields.update(overrides)
        return SandboxRequest(**fields)

    return build


@pytest.fixture
def host_secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credential-like variables set on the host for the test: none may reach a run."""
    values = {
        "TOPDOG_CANARY_TOKEN": CANARY,
        "SECRET_KEY": f"django-{CANARY}",
        "DATABASE_URL": f"postgres://u:{CANARY}@db/x",
        "REDIS_URL": f"redis://:{CANARY}@cache/0",
        "OPENAI_API_KEY": f"sk-{CANARY}",
        "GITHUB_TOKEN": f"ghp_{CANARY}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values
