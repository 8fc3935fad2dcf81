"""Sandbox overhead: the same `python -m pytest -q` on a tiny test dir, direct vs bubblewrap.

Both sides get the sandbox environment and the same interpreter; "direct" is a plain
subprocess in the test dir, "bwrap" goes through `BubblewrapBackend.run` (namespaces,
mounts, limits, output handling). Runs alternate, after one warm-up of each, and the p50
of each side is reported: direct_ms, bwrap_ms, their ratio and delta. Prints nothing.
"""

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from integrations.sandbox import SandboxRequest, sandbox_environment
from integrations.sandbox.bubblewrap import BubblewrapBackend

COMMAND = "python -m pytest -q -p no:cacheprovider"
TINY_TEST = "def test_one():\n    assert 1 + 1 == 2\n\n\ndef test_two():\n    assert 'a' in 'ab'\n"


def _direct(worktree: Path) -> float:
    env = sandbox_environment(extra={}, home=str(worktree), deps=str(worktree / ".deps"))
    started = time.perf_counter()
    subprocess.run(
        ["/bin/sh", "-c", COMMAND],
        cwd=worktree,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
    )
    return (time.perf_counter() - started) * 1000


def _sandboxed(backend: BubblewrapBackend, worktree: Path) -> float:
    started = time.perf_counter()
    result = backend.run(SandboxRequest(command=COMMAND, worktree=worktree))
    elapsed = (time.perf_counter() - started) * 1000
    if result.status != "passed":
        raise RuntimeError(f"the sandboxed pytest run {result.status}: {result.output[-500:]}")
    return elapsed


def bench_sandbox_overhead(*, runs: int = 7) -> dict:
    """p50 wall time of the tiny pytest run direct and through bubblewrap, in ms."""
    backend = BubblewrapBackend()
    ok, why = backend.available()
    if not ok:
        raise RuntimeError(f"bubblewrap cannot run here: {why}")
    with tempfile.TemporaryDirectory(prefix="topdog-bench-sandbox-") as tmp:
        worktree = Path(tmp)
        (worktree / "test_tiny.py").write_text(TINY_TEST)
        _direct(worktree), _sandboxed(backend, worktree)  # warm caches on both sides
        direct, bwrap = [], []
        for _ in range(runs):
            direct.append(_direct(worktree))
            bwrap.append(_sandboxed(backend, worktree))
    direct_ms = statistics.median(direct)
    bwrap_ms = statistics.median(bwrap)
    return {
        "direct_ms": round(direct_ms, 1),
        "bwrap_ms": round(bwrap_ms, 1),
        "ratio": round(bwrap_ms / direct_ms, 3),
        "delta_ms": round(bwrap_ms - direct_ms, 1),
    }
