"""Running git in tests, isolated from the user's and the system's configuration."""

import os
import subprocess


def git(*args, cwd, check=True) -> str:
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
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(done.stderr)
    return done.stdout


def write(root, files) -> None:
    """Write {path: text} below `root`, making directories as needed."""
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def subprocess_calls_record(monkeypatch) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, env) of every later subprocess.run call, which still runs."""
    calls = []
    real_run = subprocess.run

    def recording_run(argv, **kwargs):
        calls.append((argv, kwargs.get("env") or {}))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(subprocess, "run", recording_run)
    return calls
