"""The subprocess backend: the same environment rules and limits, no isolation."""

import time

from integrations.sandbox import SandboxLimits
from integrations.sandbox.local import SubprocessBackend
from tests.integrations.sandbox.conftest import CANARY, LIMITS


def test_runs_in_the_worktree_with_host_paths(request_for, worktree, artifacts, host_secrets):
    backend = SubprocessBackend()
    assert backend.available() == (True, "")
    result = backend.run(request_for("pwd; env; echo made > out.txt"))
    assert result.status == "passed" and result.isolated is False
    assert result.backend == "subprocess"
    assert result.output.startswith(f"{worktree.resolve()}\n")
    env = dict(line.partition("=")[::2] for line in result.output.splitlines() if "=" in line)
    assert env["HOME"] == str(worktree.resolve())
    assert env["TOPDOG_ARTIFACTS"] == str(artifacts.resolve())
    assert CANARY not in result.output
    assert not set(env) & set(host_secrets)
    assert (worktree / "out.txt").read_text() == "made\n"


def test_limits_hold_without_isolation(request_for, worktree):
    backend = SubprocessBackend()
    limits = SandboxLimits(**{**LIMITS.__dict__, "wall_seconds": 1.5})
    timeout = backend.run(request_for("sleep 30", limits=limits))
    assert (timeout.status, timeout.reason) == ("timeout", "wall time limit 1.5 s")
    big = backend.run(request_for("dd if=/dev/zero of=big bs=1M count=10240"))
    assert big.status == "failed" and big.reason.startswith("write limit")
    assert (worktree / "big").stat().st_size <= LIMITS.write_bytes
    bomb = backend.run(request_for("python -c 'import os\nwhile True:\n    os.fork()'"))
    assert bomb.status == "failed" and f"process limit {LIMITS.processes}" in bomb.reason
    assert backend.run(request_for("echo ok")).output == "ok\n"


def test_a_background_child_does_not_outlive_the_run(request_for, worktree):
    result = SubprocessBackend().run(request_for("sleep 300 & echo $! > pid"))
    assert result.status == "passed"
    pid = int((worktree / "pid").read_text())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # SIGKILL was sent; it may take a moment to land
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} is still {state}")
