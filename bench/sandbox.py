"""Sandbox overhead: the same `python -m pytest -q` on a tiny test dir, direct vs bubblewrap.

Both sides get the sandbox environment and the same interpreter; "direct" is a plain
subprocess in the test dir, "bwrap" goes through `BubblewrapBackend.run` (namespaces,
mounts, limits, output handling). Runs alternate, after one warm-up of each, and the p50
of each side is reported: direct_ms, bwrap_ms, their ratio and delta. Prints nothing.

The dependency cache (`bench_sandbox_cache`, needs Django and the bench database): a
project whose repository is a local bare git remote vendoring a one-module wheel, with a
`setup_command` that makes a venv in /deps and installs the wheel from the tree (no
network, no index), and a `test_command` whose tests import it. Its workflow is walked
to TESTING through the services, then `check_run_execute` runs its tests twice, on
bubblewrap: the first with an empty workspace root (mirror cloned, setup run, tests),
the second with the same dependency files (mirror fetched, /deps from the cache, tests).
"""

import base64
import hashlib
import io
import os
import statistics
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

from integrations.sandbox import SandboxRequest, sandbox_environment
from integrations.sandbox.bubblewrap import BubblewrapBackend

COMMAND = "python -m pytest -q -p no:cacheprovider"
# The sandbox runs TopDog's own interpreter. In a development venv that interpreter also
# carries requirements-dev's and requirements-bench's pytest plugins (langgraph pulls in
# langsmith's, which alone costs seconds at startup); a production install has none. Both
# sides of both measurements run without plugin autoload, so they time the sandbox and
# the cache, not the plugins a bench venv happens to hold.
NO_PLUGINS = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
TINY_TEST = "def test_one():\n    assert 1 + 1 == 2\n\n\ndef test_two():\n    assert 'a' in 'ab'\n"

# Targets of the sandbox part (issue 11).
LIMITS = {"ratio": 1.3, "delta_ms": 150.0, "static_ms": 50.0, "cache_speedup": 5.0}

# The cache bench's project: a venv outside PATH's /deps/venv (whose python has no pytest),
# the vendored wheel installed into it, its site-packages on the tests' PYTHONPATH.
SETUP_COMMAND = (
    "python -m venv /deps/env && /deps/env/bin/python -m pip install --quiet --no-index "
    "--disable-pip-version-check --find-links /workspace/wheels benchpkg==1.0"
)
TEST_COMMAND = "PYTHONPATH=$(echo /deps/env/lib/python3*/site-packages) python -m pytest -q"
BENCHPKG = "def double(x):\n    return 2 * x\n\n\nVERSION = '1.0'\n"
BASE_TEST = "import benchpkg\n\n\ndef test_version():\n    assert benchpkg.VERSION == '1.0'\n"
CHANGE_TEST = "from benchpkg import double\n\n\ndef test_double():\n    assert double(21) == 42\n"


def _direct(worktree: Path) -> float:
    env = sandbox_environment(extra=NO_PLUGINS, home=str(worktree), deps=str(worktree / ".deps"))
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
    result = backend.run(SandboxRequest(command=COMMAND, worktree=worktree, env=NO_PLUGINS))
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
        "runs": runs,
        "direct_ms": round(direct_ms, 1),
        "bwrap_ms": round(bwrap_ms, 1),
        "ratio": round(bwrap_ms / direct_ms, 3),
        "delta_ms": round(bwrap_ms - direct_ms, 1),
    }


def wheel_bytes(name: str = "benchpkg", version: str = "1.0") -> bytes:
    """A pure-Python wheel of one module, `name/__init__.py`, written by hand."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": BENCHPKG.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: topdog-bench\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return out.getvalue()


def _git(*args: str, cwd: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd),
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "Bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _remote(root: Path) -> Path:
    """A bare git remote whose main branch vendors the wheel, pins it, and tests it."""
    seed = root / "seed"
    (seed / "wheels").mkdir(parents=True)
    (seed / "wheels" / "benchpkg-1.0-py3-none-any.whl").write_bytes(wheel_bytes())
    (seed / "requirements.txt").write_text("benchpkg==1.0\n")
    (seed / "test_base.py").write_text(BASE_TEST)
    _git("init", "-q", "-b", "main", cwd=seed)
    _git("add", ".", cwd=seed)
    _git("commit", "-q", "-m", "seed", cwd=seed)
    bare = root / "origin.git"
    _git("clone", "-q", "--bare", str(seed), str(bare), cwd=root)
    return bare


def bench_sandbox_cache(*, base: object, pairs: int = 2) -> dict:
    """First and second `check_run_execute` of `pairs` fresh projects: p50 of each, in ms."""
    from django.contrib.auth import get_user_model
    from django.test import override_settings

    from workflows.check_runs import check_run_execute, check_run_request
    from workflows.evidence import EVIDENCE_EXAMPLES
    from workflows.models import CheckRun, Membership, Project
    from workflows.services import Actor, workflow_initialize, workflow_phase_complete
    from workflows.states import MemberRole, State

    user = get_user_model().objects.get(pk=base.user_id)
    actor = Actor.of(user)
    first, second, passed = [], [], set()
    for pair in range(pairs):
        with tempfile.TemporaryDirectory(prefix="topdog-bench-cache-") as tmp:
            root = Path(tmp)
            bare = _remote(root)
            project = Project.objects.create(
                slug=f"bench-cache-{pair}-{os.getpid()}",
                name=f"Bench cache {pair}",
                repository="",
                git_remote_url=f"file://{bare}",
                default_branch="main",
                setup_command=SETUP_COMMAND,
                test_command=TEST_COMMAND,
                sandbox_env=NO_PLUGINS,
            )
            Membership.objects.create(project=project, user=user, role=MemberRole.OWNER)
            workflow = workflow_initialize(
                project=project,
                requirements={"description": "Cache bench: double a number"},
                actor=actor,
            )
            change = {
                "commit_message": "test: double",
                "files": [{"path": "test_double.py", "action": "create", "content": CHANGE_TEST}],
            }
            evidence = {
                State.DISCOVERY: EVIDENCE_EXAMPLES[State.DISCOVERY],
                State.PLANNING: EVIDENCE_EXAMPLES[State.PLANNING],
                State.IMPLEMENTATION: change,
            }
            # Walked with the sandbox off, so the first run below starts from no mirror.
            with override_settings(TOPDOG_SANDBOX="off"):
                for result in evidence.values():
                    workflow_phase_complete(
                        workflow_id=workflow.id, ai_response="", result=result, actor=actor
                    )
            with override_settings(
                TOPDOG_SANDBOX="bubblewrap",
                TOPDOG_WORKSPACE_DIR=root / "workspaces",
                TOPDOG_GIT_ALLOW_LOCAL_REMOTES=True,
            ):
                for times in (first, second):
                    run = check_run_request(workflow_id=workflow.id, actor=actor)
                    started = time.perf_counter()
                    done = check_run_execute(check_id=run.id)
                    times.append((time.perf_counter() - started) * 1000)
                    if done is None or done.status != CheckRun.Status.PASSED:
                        status = done and (done.status, done.reason, done.output[-800:])
                        raise RuntimeError(f"the cache bench's test run did not pass: {status}")
                    passed.add(f"{done.tests_run} run, {done.tests_failed} failed")
            setups = CheckRun.objects.filter(workflow=workflow, kind=CheckRun.Kind.SETUP).count()
            if setups != 1:
                raise RuntimeError(f"expected one setup run for two test runs, found {setups}")
    first_ms, second_ms = statistics.median(first), statistics.median(second)
    return {
        "pairs": pairs,
        "first_ms": round(first_ms, 1),
        "second_ms": round(second_ms, 1),
        "first_runs_ms": [round(t, 1) for t in first],
        "second_runs_ms": [round(t, 1) for t in second],
        "speedup": round(first_ms / second_ms, 2),
        "setup_command": SETUP_COMMAND,
        "test_command": TEST_COMMAND,
        "tests": ", ".join(sorted(passed)),
    }
