"""`manage.py run_workflow` in a real process whose stdout is a terminal (a pty): the
model's text streams as it comes; and the real exit status of a usage error."""

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)

REPO_ROOT = Path(__file__).resolve().parents[3]


def manage(*args: str, stdout: int | None = None, stderr: int | None = None):
    """Start `manage.py ARGS` on the test database, in its own process."""
    env = {**os.environ, "TOPDOG_SANDBOX": "off", "TOPDOG_OFFLINE_DELAY_MS": "5"}
    env.pop("NO_COLOR", None)
    name = str(connection.settings_dict["NAME"])
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ai_orchestration.commands.manage_on_test_db", name, *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )


def read_all(fd: int, process: subprocess.Popen, timeout: float = 60) -> str:
    """Everything written to the pty until the process exits (read as it comes, so a
    full pty buffer never blocks the writer)."""
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the other side is closed
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    return b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_the_models_text_streams_in_colour(project, user):
    leader, follower = pty.openpty()
    process = manage("run_workflow", "--project", "demo", "Add dark mode", stdout=follower)
    os.close(follower)
    try:
        out = read_all(leader, process)
        code = process.wait(timeout=30)
    finally:
        os.close(leader)

    assert code == 0, out
    assert "▸ DISCOVERY · Q Assistant is writing" in out
    # the evidence itself, as the model wrote it, dimmed, then the result line
    streamed = out[out.index("▸ DISCOVERY") : out.index("✓ DISCOVERY")]
    assert '"requirements"' in streamed and "\x1b[2m" in streamed
    assert "tokens so far" not in out  # the text itself is the progress on a terminal
    assert "COMPLETE  run completed" in out


def test_no_color_streams_the_text_without_escapes(project, user):
    leader, follower = pty.openpty()
    process = manage(
        "run_workflow", "--project", "demo", "--no-color", "Add dark mode", stdout=follower
    )
    os.close(follower)
    try:
        out = read_all(leader, process)
        code = process.wait(timeout=30)
    finally:
        os.close(leader)

    assert code == 0, out
    streamed = out[out.index("▸ DISCOVERY") : out.index("✓ DISCOVERY")]
    assert '"requirements"' in streamed
    assert "\x1b[" not in out


def test_a_usage_error_exits_4_from_the_command_line(db):
    process = manage("run_workflow", "no project given", stderr=subprocess.PIPE)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 4
    assert b"the following arguments are required: --project" in err
