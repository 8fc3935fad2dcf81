import pytest

from integrations.sandbox import (
    SandboxBackend,
    SandboxLimits,
    SandboxRequest,
    SandboxUnavailable,
    sandbox_backend_load,
    sandbox_environment,
)
from integrations.sandbox.base import interpreter_bin_dirs
from integrations.sandbox.bubblewrap import BubblewrapBackend
from integrations.sandbox.local import SubprocessBackend
from integrations.sandbox.off import OffBackend


@pytest.mark.parametrize(
    "name",
    [
        "GITHUB_TOKEN",
        "OPENAI_API_KEY",
        "SECRET_KEY",
        "DJANGO_SECRET",
        "MY_SECRET_THING",
        "DB_PASSWORD",
        "PASSWORD",
        "DATABASE_URL",
        "REDIS_URL",
        "github_token",
    ],
)
def test_environment_refuses_secret_looking_names(name):
    with pytest.raises(ValueError, match="secret"):
        sandbox_environment(extra={name: "x"})


@pytest.mark.parametrize("name", ["PATH", "HOME", "TOPDOG_DEPS", "1BAD", "A-B", ""])
def test_environment_refuses_fixed_and_invalid_names(name):
    with pytest.raises(ValueError):
        sandbox_environment(extra={name: "x"})


def test_environment_is_built_from_nothing(host_secrets):
    env = sandbox_environment(extra={"NODE_ENV": "test", "CI": "1"})
    assert env["HOME"] == "/workspace"
    assert env["LANG"] == "C.UTF-8"
    assert env["TMPDIR"] == "/tmp"
    assert env["TOPDOG_ARTIFACTS"] == "/artifacts"
    assert env["TOPDOG_DEPS"] == "/deps"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["NODE_ENV"] == "test" and env["CI"] == "1"
    path = env["PATH"].split(":")
    assert path[:2] == ["/deps/venv/bin", "/deps/bin"]
    assert path[-3:] == ["/usr/local/bin", "/usr/bin", "/bin"]
    assert path[2 : 2 + len(interpreter_bin_dirs())] == list(interpreter_bin_dirs())
    assert not set(env) & set(host_secrets)
    for value in env.values():
        assert "canary" not in value


def test_backend_load_by_short_name_and_dotted_path():
    assert isinstance(sandbox_backend_load("off"), OffBackend)
    assert isinstance(sandbox_backend_load("subprocess"), SubprocessBackend)
    loaded = sandbox_backend_load(
        "integrations.sandbox.bubblewrap.BubblewrapBackend", bwrap="/usr/bin/bwrap"
    )
    assert isinstance(loaded, BubblewrapBackend) and loaded.bwrap == "/usr/bin/bwrap"
    assert isinstance(loaded, SandboxBackend)
    with pytest.raises(ImportError):
        sandbox_backend_load("integrations.sandbox.base.NoSuchBackend")
    with pytest.raises(TypeError):
        sandbox_backend_load("integrations.sandbox.base.SandboxLimits")


def test_off_backend_never_runs(tmp_path):
    backend = OffBackend()
    assert backend.available() == (False, "sandbox is off")
    assert backend.isolated is False
    with pytest.raises(SandboxUnavailable, match="TOPDOG_SANDBOX"):
        backend.run(SandboxRequest(command="true", worktree=tmp_path))


def test_bubblewrap_missing_is_unavailable(tmp_path):
    backend = BubblewrapBackend(bwrap="/nonexistent/bwrap")
    ok, why = backend.available()
    assert not ok and "not installed" in why
    with pytest.raises(SandboxUnavailable):
        backend.run(SandboxRequest(command="true", worktree=tmp_path))


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        SandboxLimits(wall_seconds=0)
    with pytest.raises(ValueError):
        SandboxLimits(processes=-1)
