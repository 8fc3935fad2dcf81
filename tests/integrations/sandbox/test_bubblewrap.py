"""The bubblewrap backend against hostile commands, on the real bwrap (no mocks).

Every case must end as failed or timeout with the limit as reason, leave the backend able
to run the next request, change nothing outside the worktree, and show no secret."""

import hashlib
import os
import secrets
import socket
import time
from pathlib import Path

import pytest

from integrations.sandbox import SandboxLimits, bubblewrap, junit_parse
from integrations.sandbox.base import LIVE_LINES_MAX, LIVE_TRUNCATED, LOG_MAX_BYTES
from integrations.sandbox.bubblewrap import SANDBOX_UID_BASE, SANDBOX_UID_SPAN
from tests.integrations.sandbox.conftest import CANARY, LIMITS

CHECKOUT = Path(__file__).resolve().parents[3]

# The sandbox uids this test process's runs were given: another suite running sandboxes
# on the same machine at the same time uses other (random) uids, so its processes are
# not mistaken for ours.
USED_UIDS: set[int] = set()


@pytest.fixture(autouse=True)
def _record_sandbox_uids(monkeypatch):
    real = secrets.randbelow

    def recording(span: int) -> int:
        value = real(span)
        USED_UIDS.add(SANDBOX_UID_BASE + value)
        return value

    monkeypatch.setattr(bubblewrap.secrets, "randbelow", recording)


def sandbox_processes() -> list[int]:
    """Host pids running as a sandbox uid this process used: none may outlive a run."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{name}").st_uid
        except OSError:
            continue
        if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UID_SPAN and uid in USED_UIDS:
            pids.append(int(name))
    return pids


def owners(root: Path) -> set[int]:
    return {os.lstat(path).st_uid for path in [root, *root.rglob("*")]}


def assert_still_works(backend, request_for):
    result = backend.run(request_for("echo still here"))
    assert result.status == "passed", result
    assert result.output == "still here\n"
    assert no_sandbox_processes_left()


def no_sandbox_processes_left(seconds: float = 3.0) -> bool:
    """No sandbox process outlives a run (killed ones get a moment to be reaped)."""
    deadline = time.monotonic() + seconds
    while sandbox_processes():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_plain_run(bwrap_backend, request_for, worktree):
    result = bwrap_backend.run(request_for("pwd; echo hi > made.txt; cat README.md; exit 0"))
    assert result.status == "passed" and result.exit_code == 0
    assert result.output == "/workspace\na worktree\n"
    assert result.backend == "bubblewrap" and result.isolated is True
    assert (worktree / "made.txt").read_text() == "hi\n"
    # Whatever the sandbox uid wrote is handed back to the worktree's owner.
    assert owners(worktree) == {os.getuid()}
    failed = bwrap_backend.run(request_for("exit 3"))
    assert (failed.status, failed.exit_code, failed.reason) == ("failed", 3, "")


def test_loop_forever_times_out(bwrap_backend, request_for):
    limits = SandboxLimits(**{**LIMITS.__dict__, "wall_seconds": 2})
    started = time.monotonic()
    result = bwrap_backend.run(request_for("while :; do :; done", limits=limits))
    assert result.status == "timeout"
    assert result.reason == "wall time limit 2 s"
    assert time.monotonic() - started < 4
    assert_still_works(bwrap_backend, request_for)


def test_python_fork_bomb_hits_the_process_limit(bwrap_backend, request_for):
    bomb = "python -c 'import os\nwhile True:\n    os.fork()'"
    result = bwrap_backend.run(request_for(bomb))
    assert result.status in ("failed", "timeout"), result
    assert f"process limit {LIMITS.processes}" in result.reason
    assert_still_works(bwrap_backend, request_for)


def test_shell_fork_bomb_is_bounded(bwrap_backend, request_for):
    limits = SandboxLimits(**{**LIMITS.__dict__, "wall_seconds": 3})
    result = bwrap_backend.run(request_for("b(){ b | b & }; b; wait; sleep 60", limits=limits))
    assert result.status in ("failed", "timeout"), result
    assert f"process limit {LIMITS.processes}" in result.reason
    assert_still_works(bwrap_backend, request_for)


def test_allocating_8_gib_fails(bwrap_backend, request_for):
    result = bwrap_backend.run(request_for("python -c 'bytearray(8 << 30)'"))
    assert result.status == "failed"
    assert "MemoryError" in result.output
    assert result.reason == "memory limit 1 GiB"
    assert_still_works(bwrap_backend, request_for)


def test_writing_10_gb_into_one_file_is_stopped(bwrap_backend, request_for, worktree):
    result = bwrap_backend.run(request_for("dd if=/dev/zero of=big bs=1M count=10240"))
    assert result.status == "failed"
    assert result.reason.startswith(f"write limit {32} MiB")
    assert (worktree / "big").stat().st_size <= LIMITS.write_bytes
    assert_still_works(bwrap_backend, request_for)


def test_writing_many_files_is_stopped_by_the_total(bwrap_backend, request_for, worktree):
    command = "i=0; while :; do i=$((i+1)); head -c 8000000 /dev/zero > f$i; sleep 0.05; done"
    result = bwrap_backend.run(request_for(command))
    assert result.status == "failed"
    assert result.reason == "write limit 32 MiB"
    total = sum(path.stat().st_size for path in worktree.glob("f*"))
    assert LIMITS.write_bytes < total < 4 * LIMITS.write_bytes
    assert_still_works(bwrap_backend, request_for)


def test_tmp_is_bounded_too(bwrap_backend, request_for):
    result = bwrap_backend.run(request_for("dd if=/dev/zero of=/tmp/big bs=1M count=100"))
    assert result.status == "failed"
    assert "write limit" in result.reason or "No space left" in result.output


def test_printing_100_mb_ends(bwrap_backend, request_for, tmp_path):
    log = tmp_path / "run.log"
    lines: list[str] = []
    command = (
        "python -c \"import sys\nfor _ in range(1_000_000): sys.stdout.write('x' * 99 + '\\n')\""
    )
    result = bwrap_backend.run(request_for(command, log_path=log), on_output=lines.append)
    assert result.status == "failed"
    assert result.reason == "output limit 64 MiB"
    assert result.output_truncated
    assert len(result.output.encode()) <= LIMITS.output_bytes
    written = log.read_bytes()
    assert LOG_MAX_BYTES <= len(written) <= LOG_MAX_BYTES + 100
    assert written.endswith(b"[log truncated at 16 MiB]\n")
    assert hashlib.sha256(written).hexdigest() == result.log_sha256
    assert lines.count(LIVE_TRUNCATED) == 1
    assert len(lines) <= LIVE_LINES_MAX + 1
    assert_still_works(bwrap_backend, request_for)


def test_output_without_newlines_is_streamed_and_tailed(bwrap_backend, request_for):
    lines: list[str] = []
    result = bwrap_backend.run(
        request_for("head -c 100000 /dev/zero | tr '\\0' y"), on_output=lines.append
    )
    assert result.status == "passed"
    assert result.output == "y" * LIMITS.output_bytes and result.output_truncated
    assert "".join(lines) == "y" * 100_000


def test_no_network_not_even_the_hosts_loopback(bwrap_backend, request_for):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        script = (
            "import socket\n"
            f"for address in [('127.0.0.1', {port}), ('1.1.1.1', 80)]:\n"
            "    try:\n"
            "        socket.create_connection(address, timeout=2).close()\n"
            "        print('connected', address)\n"
            "    except OSError as exc:\n"
            "        print('refused', address, exc)\n"
        )
        result = bwrap_backend.run(request_for(f'python -c "{script}"'))
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert result.status == "passed"
    assert "connected" not in result.output
    assert "Network is unreachable" in result.output  # nothing left the namespace
    assert result.duration_ms < 2000


def test_no_secrets_inside(bwrap_backend, request_for, host_secrets, tmp_path):
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    (var_dir / "db.sqlite3").write_text(f"sqlite {CANARY}")
    command = (
        "env; echo ---; cat /proc/1/environ /proc/self/environ | tr '\\0' '\\n'; echo ---;"
        f" cat {var_dir}/db.sqlite3; ls {var_dir}; ls -a /root/.ssh /home /var;"
        f" cat /etc/shadow; ls {CHECKOUT}/manage.py {CHECKOUT}/topdog; true"
    )
    result = bwrap_backend.run(request_for(command))
    assert result.status == "passed"
    assert CANARY not in result.output
    names = {line.partition("=")[0] for line in result.output.splitlines() if "=" in line}
    assert not names & set(host_secrets)
    assert not [name for name in names if name.endswith(("_TOKEN", "_KEY"))]
    assert f"{var_dir}/db.sqlite3: No such file" in result.output
    assert "/root/.ssh': No such file" in result.output
    assert "/etc/shadow: No such file" in result.output
    assert f"{CHECKOUT}/manage.py': No such file" in result.output


def test_writes_outside_the_worktree_fail(bwrap_backend, request_for, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    command = (
        f"echo pwned > {outside}; echo pwned > /usr/pwned; echo pwned >> /etc/passwd;"
        " echo pwned > /tmp/inside-only; ln -s /etc/passwd link; ls -la link; true"
    )
    result = bwrap_backend.run(request_for(command))
    assert result.status == "passed"
    assert outside.read_text() == "original"
    assert not Path("/usr/pwned").exists()
    assert "pwned" not in Path("/etc/passwd").read_text()
    assert not Path("/tmp/inside-only").exists()
    assert "Read-only file system" in result.output


def test_deps_are_read_only_unless_writable(bwrap_backend, request_for, tmp_path):
    deps = tmp_path / "deps"
    (deps / "bin").mkdir(parents=True)
    tool = deps / "bin" / "hello-tool"
    tool.write_text("#!/bin/sh\necho hello from deps\n")
    tool.chmod(0o755)
    ro = bwrap_backend.run(request_for("hello-tool; touch /deps/new", deps_dir=deps))
    assert "hello from deps" in ro.output and ro.status == "failed"
    assert not (deps / "new").exists()
    rw = bwrap_backend.run(
        request_for("touch /deps/new", deps_dir=deps, deps_writable=True, network=False)
    )
    assert rw.status == "passed" and (deps / "new").exists()
    assert owners(deps) == {os.getuid()}


def test_pytest_runs_inside_and_junit_is_read(bwrap_backend, request_for, worktree, artifacts):
    (worktree / "test_tiny.py").write_text(
        "import pytest\n\n"
        "def test_one():\n    assert 1 + 1 == 2\n\n"
        "def test_two():\n    assert 'a' in 'abc'\n\n"
        "def test_bad():\n    assert 2 * 2 == 5, 'arithmetic is broken'\n\n"
        "@pytest.mark.skip(reason='not today')\ndef test_later():\n    pass\n"
    )
    # pytest starts slowly on a loaded machine: this run is not about the wall limit
    patient = SandboxLimits(**{**LIMITS.__dict__, "wall_seconds": 60, "cpu_seconds": 60})
    result = bwrap_backend.run(
        request_for(
            "python -m pytest -q -p no:cacheprovider --junitxml=/artifacts/junit.xml",
            limits=patient,
        )
    )
    assert result.exit_code == 1 and result.status == "failed", result.output
    assert "1 failed, 2 passed, 1 skipped" in result.output
    report = junit_parse(artifacts / "junit.xml")
    assert (report.tests, report.failures, report.errors, report.skipped) == (4, 1, 0, 1)
    assert report.failed[0].name == "test_bad"
    assert "arithmetic is broken" in report.failed[0].message


def test_output_arrives_live(bwrap_backend, request_for):
    seen: list[tuple[float, str]] = []
    result = bwrap_backend.run(
        request_for("echo first; sleep 1; echo second"),
        on_output=lambda line: seen.append((time.monotonic(), line)),
    )
    returned = time.monotonic()
    assert result.status == "passed"
    assert [line for _, line in seen] == ["first", "second"]
    assert returned - seen[0][0] > 0.8


def test_cancel_stops_the_run_quickly(bwrap_backend, request_for):
    asked = time.monotonic() + 0.5
    result = bwrap_backend.run(
        request_for("sleep 30"), should_cancel=lambda: time.monotonic() > asked
    )
    assert result.status == "cancelled" and result.reason == "cancelled"
    assert time.monotonic() - asked < 0.6
    assert_still_works(bwrap_backend, request_for)


def test_a_missing_worktree_is_an_error(bwrap_backend, request_for, tmp_path):
    result = bwrap_backend.run(request_for("true", worktree=tmp_path / "absent"))
    assert result.status == "error" and "not a directory" in result.reason
