"""Sandboxed test runs of a workflow's change set (CheckRun rows of kind test and setup).

A run is requested (by the IDE through the API, or by the autopilot when TESTING starts),
queued on the Tasks queue and executed by a worker, never in a web process:

1. the workspace: the repository at its base with the current change set applied
   (`integrations.workspace`), in a throwaway tree;
2. the setup step, when the project has one, runs once per set of dependency files: its
   result lives in a cache directory (mounted at /deps) keyed by their hash;
3. the test step, without network, in the sandbox backend; pytest writes JUnit XML
   (through PYTEST_ADDOPTS), whose counts become the run's figures.

Output lines stream to the workflow's websocket as `check.output` frames (not persisted);
`check.started` and `check.finished` go into the event log. The output kept is the tail,
scrubbed of the project's secrets; the full log and the JUnit file are kept as sha256.
At most one test run per workflow is queued or running (a database constraint).
"""

import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_tasks import task

from integrations.change_set import UnsafeChangeSet
from integrations.sandbox import SandboxLimits, SandboxRequest, SandboxResult
from integrations.sandbox.junit import JUnitReport, junit_parse
from integrations.secrets import secret_scrub
from integrations.workspace import (
    ChangeSetConflict,
    WorkspaceError,
    dependency_files_hash,
    detect_test_command,
    workspace_open,
)
from workflows.broadcast import workflow_live_frame_send
from workflows.errors import ActionForbidden, CheckUnavailable, TransitionConflict
from workflows.models import CheckRun, Workflow
from workflows.request_ids import request_id_current
from workflows.services import Actor, workflow_event_record, workflow_lock
from workflows.states import EventType, MemberRole
from workflows.verification import (
    change_set_current,
    project_secrets,
    repository_source,
    sandbox_backend,
    sandbox_enabled,
    test_run_current,
)

logger = logging.getLogger(__name__)

JUNIT_NAME = "junit.xml"
FAILURE_TEXT_CHARS = 2000


# --- requesting and cancelling -----------------------------------------------------------


def check_run_request(*, workflow_id: Any, actor: Actor, kind: str = "test") -> CheckRun:
    """Queue a test run of the workflow's current change set (409 while one is active)."""
    if kind != CheckRun.Kind.TEST:
        raise CheckUnavailable(f"only test runs can be requested; {kind} checks run by themselves")
    with transaction.atomic():
        workflow, member_role = workflow_lock(workflow_id=workflow_id, actor=actor)
        if member_role == MemberRole.VIEWER:
            raise ActionForbidden("running checks needs project role owner or developer")
        run = _queue(workflow, actor)
    return run


def check_run_for_testing(
    *,
    workflow: Workflow,
    actor: Actor,
    should_stop: Callable[[], bool],
    on_output: Callable[[dict], None] | None = None,
) -> CheckRun | None:
    """The finished test run of the workflow's current change set: the latest one, or one
    run here and now (the caller is a worker). None when the sandbox is off, nothing was
    built, or `should_stop` said stop while it waited. `on_output` gets the `check.output`
    frames of a run made here."""
    if not sandbox_enabled():
        return None
    run = test_run_current(workflow)
    if run is None:
        try:
            with transaction.atomic():
                locked, _ = workflow_lock(workflow_id=workflow.id, actor=Actor.system())
                run = _queue(locked, actor, enqueue=False)
        except (CheckUnavailable, TransitionConflict):
            run = test_run_current(workflow)
            if run is None:
                return None
        check_run_execute(check_id=run.id, should_stop=should_stop, on_output=on_output)
    deadline = time.monotonic() + settings.TOPDOG_SANDBOX_LIMITS["wall_seconds"] * 2 + 60
    while True:
        run.refresh_from_db()
        if not run.is_active:
            return run
        if should_stop() or time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def _queue(workflow: Workflow, actor: Actor, *, enqueue: bool = True) -> CheckRun:
    if not sandbox_enabled():
        raise CheckUnavailable(
            "the sandbox is off on this server (TOPDOG_SANDBOX): nothing can run; install "
            "bubblewrap or set TOPDOG_SANDBOX=subprocess"
        )
    change_set = change_set_current(workflow)
    if change_set is None:
        raise CheckUnavailable(
            f"nothing to test yet: workflow is in {workflow.state} and IMPLEMENTATION has not "
            "produced a change set"
        )
    active = CheckRun.objects.filter(workflow=workflow, kind="test", status__in=CheckRun.ACTIVE)
    if active.exists():
        raise _busy(workflow)
    try:
        with transaction.atomic():
            run = CheckRun.objects.create(
                workflow=workflow,
                phase_result=change_set,
                attempt=change_set.attempt,
                kind=CheckRun.Kind.TEST,
                backend=sandbox_backend().name,
                isolated=sandbox_backend().isolated,
                requested_by=actor.name,
                request_id=request_id_current(),
                created_by=actor.user,
            )
    except IntegrityError:
        raise _busy(workflow) from None
    if enqueue:
        transaction.on_commit(
            lambda: check_run_task.enqueue(str(run.id), request_id=run.request_id or None)
        )
    return run


def _busy(workflow: Workflow) -> TransitionConflict:
    return TransitionConflict(
        "a test run of this workflow is already queued or running; wait for its "
        "check.finished event or cancel it",
        current_state=workflow.state,
        allowed=[],
    )


def check_run_cancel(*, workflow_id: Any, check_id: Any, actor: Actor) -> CheckRun:
    """Cancel a queued run at once, a running one within a fraction of a second."""
    with transaction.atomic():
        workflow, member_role = workflow_lock(workflow_id=workflow_id, actor=actor)
        if member_role == MemberRole.VIEWER:
            raise ActionForbidden("cancelling checks needs project role owner or developer")
        run = CheckRun.objects.select_for_update().get(pk=check_id, workflow=workflow)
        if not run.is_active:
            raise TransitionConflict(
                f"check run is {run.status}; only a queued or running one can be cancelled",
                current_state=workflow.state,
                allowed=[],
            )
        if run.status == CheckRun.Status.QUEUED:
            _finish(run, status=CheckRun.Status.CANCELLED, reason=f"cancelled by {actor.name}")
        else:
            run.cancel_requested = True
            run.save(update_fields=["cancel_requested"])
    return run


# --- executing (workers only) --------------------------------------------------------------


@task()
def check_run_task(check_id: str, request_id: str | None = None) -> None:
    """Execute one queued check run (`request_id`: of the request that asked for it, bound
    to the task's log lines and events by the worker's task hook)."""
    check_run_execute(check_id=check_id)


def check_run_execute(
    *,
    check_id: Any,
    should_stop: Callable[[], bool] | None = None,
    on_output: Callable[[dict], None] | None = None,
) -> CheckRun | None:
    """Claim the queued run and execute it; the finished run, or None if it was not queued.
    `should_stop` (the autopilot's lease) cancels it like a cancel request does;
    `on_output` (an in-process observer: the CLI) gets each `check.output` frame too."""
    run = _claim(check_id)
    if run is None:
        return None
    workflow = Workflow.objects.select_related("project").get(pk=run.workflow_id)
    _event(run, EventType.CHECK_STARTED, {"backend": run.backend})
    cancelled = _CancelCheck(run.id, should_stop)
    try:
        outcome = _execute(run, workflow, cancelled, on_output)
    except (ChangeSetConflict, UnsafeChangeSet) as exc:
        outcome = _Outcome(CheckRun.Status.ERROR, f"the change set does not apply: {exc}")
    except WorkspaceError as exc:
        outcome = _Outcome(CheckRun.Status.ERROR, f"the workspace could not be made: {exc}")
    except Exception as exc:  # the run must end recorded, whatever broke
        logger.exception("check run %s failed", run.id)
        outcome = _Outcome(CheckRun.Status.ERROR, f"internal error: {type(exc).__name__}")
    return _complete(run, workflow, outcome)


@dataclass
class _Outcome:
    """What executing a run found, before it is written."""

    status: str
    reason: str = ""
    command: str = ""
    result: SandboxResult | None = None
    junit: JUnitReport | None = None
    junit_sha256: str = ""
    details: dict = field(default_factory=dict)


def _claim(check_id: Any) -> CheckRun | None:
    with transaction.atomic():
        run = CheckRun.objects.select_for_update().filter(pk=check_id).first()
        if run is None or run.status != CheckRun.Status.QUEUED:
            return None
        run.status = CheckRun.Status.RUNNING
        run.started_at = timezone.now()
        run.save(update_fields=["status", "started_at"])
    return run


def _execute(run: CheckRun, workflow: Workflow, cancelled: "_CancelCheck", on_output) -> _Outcome:
    project = workflow.project
    change_set = run.phase_result
    with workspace_open(
        root=settings.TOPDOG_WORKSPACE_DIR,
        source=repository_source(project),
        base_ref=project.default_branch,
        files=change_set.result["files"],
        max_mb=settings.TOPDOG_WORKSPACE_MAX_MB,
    ) as workspace:
        run.diff = workspace.diff()
        command = project.test_command or detect_test_command(workspace.path)
        details = {"base_sha": workspace.base_sha}
        if not command:
            details["no_tests"] = True
            return _Outcome(
                CheckRun.Status.ERROR,
                "no tests found: the tree has no Python tests or npm test script; set the "
                "project's test_command",
                details=details,
            )
        deps_dir, setup_failed = _setup(run, workflow, workspace.path, cancelled, on_output)
        if setup_failed:
            return _Outcome(CheckRun.Status.ERROR, setup_failed, command=command, details=details)
        return _test(
            run, workflow, workspace.path, deps_dir, command, cancelled, details, on_output
        )


def _test(
    run: CheckRun,
    workflow: Workflow,
    tree: Path,
    deps_dir: Path | None,
    command: str,
    cancelled: "_CancelCheck",
    details: dict,
    on_output: Callable[[dict], None] | None,
) -> _Outcome:
    with tempfile.TemporaryDirectory(prefix="topdog-artifacts-") as artifacts:
        artifacts_dir = Path(artifacts)
        inside = "/artifacts" if sandbox_backend().isolated else artifacts
        env = {
            **workflow.project.sandbox_env,
            "PYTEST_ADDOPTS": f"--junitxml={inside}/{JUNIT_NAME} -p no:cacheprovider",
            "JEST_JUNIT_OUTPUT_FILE": f"{inside}/{JUNIT_NAME}",
            "CI": "true",
        }
        frames = _OutputFrames(run, on_output)
        result = sandbox_backend().run(
            SandboxRequest(
                command=command,
                worktree=tree,
                env=env,
                network=False,
                limits=SandboxLimits(**settings.TOPDOG_SANDBOX_LIMITS),
                deps_dir=deps_dir,
                deps_writable=False,
                artifacts_dir=artifacts_dir,
                log_path=artifacts_dir / "output.log",
            ),
            on_output=frames,
            should_cancel=cancelled,
        )
        frames.flush()
        junit_file = artifacts_dir / JUNIT_NAME
        junit = junit_parse(junit_file) if junit_file.is_file() else None
        junit_sha = _sha256_file(junit_file) if junit is not None else ""
    return _Outcome(
        result.status,
        result.reason,
        command=command,
        result=result,
        junit=junit,
        junit_sha256=junit_sha,
        details=details,
    )


def _setup(
    run: CheckRun,
    workflow: Workflow,
    tree: Path,
    cancelled: "_CancelCheck",
    on_output: Callable[[dict], None] | None,
) -> tuple[Path | None, str]:
    """The dependency cache for this tree, set up if needed: (its dir, why setup failed)."""
    project = workflow.project
    if not project.setup_command:
        return None, ""
    digest = dependency_files_hash(tree) or "none"
    key = hashlib.sha256(f"{project.id}:{project.setup_command}:{digest}".encode()).hexdigest()
    deps_dir = Path(settings.TOPDOG_WORKSPACE_DIR) / "deps" / key[:24]
    if (deps_dir / ".topdog-ready").is_file():
        deps_dir.touch()
        return deps_dir, ""
    shutil.rmtree(deps_dir, ignore_errors=True)
    deps_dir.mkdir(parents=True)
    setup = CheckRun.objects.create(
        workflow=workflow,
        phase_result=run.phase_result,
        attempt=run.attempt,
        kind=CheckRun.Kind.SETUP,
        backend=run.backend,
        isolated=run.isolated,
        command=project.setup_command,
        status=CheckRun.Status.RUNNING,
        started_at=timezone.now(),
        requested_by=run.requested_by,
        details={"dependency_files_sha256": digest},
    )
    frames = _OutputFrames(setup, on_output)
    result = sandbox_backend().run(
        SandboxRequest(
            command=project.setup_command,
            worktree=tree,
            env=dict(project.sandbox_env),
            network=settings.TOPDOG_SANDBOX_SETUP_NETWORK,
            limits=SandboxLimits(**settings.TOPDOG_SANDBOX_LIMITS),
            deps_dir=deps_dir,
            deps_writable=True,
        ),
        on_output=frames,
        should_cancel=cancelled,
    )
    frames.flush()
    _complete(setup, workflow, _Outcome(result.status, result.reason, result=result))
    if result.status != CheckRun.Status.PASSED:
        shutil.rmtree(deps_dir, ignore_errors=True)
        return None, f"the setup step {result.status} (check run {setup.id}): {result.reason}"
    (deps_dir / ".topdog-ready").write_text(digest)
    return deps_dir, ""


def _complete(run: CheckRun, workflow: Workflow, outcome: _Outcome) -> CheckRun:
    secrets = project_secrets(workflow.project)
    result, junit = outcome.result, outcome.junit
    if outcome.command:
        run.command = outcome.command
    run.details = {**run.details, **outcome.details}
    if result is not None:
        run.exit_code = result.exit_code
        run.duration_ms = result.duration_ms
        run.output = secret_scrub(result.output, secrets)
        run.output_truncated = result.output_truncated
        run.log_sha256 = result.log_sha256
        run.isolated = result.isolated
        run.backend = result.backend
    if junit is not None:
        run.tests_run = junit.tests
        run.tests_failed = junit.failures
        run.tests_errors = junit.errors
        run.tests_skipped = junit.skipped
        run.junit_sha256 = outcome.junit_sha256
        run.failures = [
            {
                "name": case.name,
                "classname": case.classname,
                "file": case.file,
                "message": secret_scrub(case.message, secrets)[:FAILURE_TEXT_CHARS],
                "text": secret_scrub(case.text, secrets)[:FAILURE_TEXT_CHARS],
            }
            for case in junit.failed
        ]
    if run.cancel_requested and outcome.status != CheckRun.Status.PASSED:
        outcome.status = CheckRun.Status.CANCELLED
    with transaction.atomic():
        _finish(run, status=outcome.status, reason=secret_scrub(outcome.reason, secrets))
    return run


def _finish(run: CheckRun, *, status: str, reason: str = "") -> None:
    run.status = status
    run.reason = reason or run.reason
    run.finished_at = timezone.now()
    if run.started_at and run.duration_ms is None:
        run.duration_ms = int((run.finished_at - run.started_at).total_seconds() * 1000)
    run.save()
    transaction.on_commit(
        lambda: _event(run, EventType.CHECK_FINISHED, check_run_event_data(run)), robust=True
    )


def check_run_event_data(run: CheckRun) -> dict:
    """What check.finished says of a run: enough to show it without another request."""
    return {
        "check_id": str(run.id),
        "kind": run.kind,
        "attempt": run.attempt,
        "status": run.status,
        "backend": run.backend,
        "isolated": run.isolated,
        "exit_code": run.exit_code,
        "tests_run": run.tests_run,
        "tests_failed": run.tests_failed,
        "tests_errors": run.tests_errors,
        "tests_skipped": run.tests_skipped,
        "duration_ms": run.duration_ms,
        "reason": run.reason,
    }


def _event(run: CheckRun, type_: str, data: dict) -> None:
    workflow_event_record(
        workflow_id=run.workflow_id,
        actor=Actor.system("sandbox"),
        type_=type_,
        data={"check_id": str(run.id), "kind": run.kind, **data},
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def check_runs_reap(*, now: Any = None) -> int:
    """End runs whose worker died: running for longer than any run may take."""
    now = now or timezone.now()
    limit = settings.TOPDOG_SANDBOX_LIMITS["wall_seconds"] * 2 + 120
    stale = CheckRun.objects.filter(
        status=CheckRun.Status.RUNNING, started_at__lt=now - timedelta(seconds=limit)
    )
    ended = 0
    for run in stale:
        with transaction.atomic():
            locked = CheckRun.objects.select_for_update(skip_locked=True).filter(
                pk=run.pk, status=CheckRun.Status.RUNNING
            )
            found = locked.first()
            if found is None:
                continue
            _finish(found, status=CheckRun.Status.ERROR, reason="its worker stopped mid-run")
            ended += 1
    return ended


class _CancelCheck:
    """should_cancel for the sandbox: a cancel request, or the caller's own stop."""

    INTERVAL = 0.25

    def __init__(self, check_id: Any, should_stop: Callable[[], bool] | None) -> None:
        self.check_id = check_id
        self.should_stop = should_stop
        self.checked = 0.0
        self.cancelled = False

    def __call__(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            return True
        now = time.monotonic()
        if not self.cancelled and now - self.checked >= self.INTERVAL:
            self.checked = now
            self.cancelled = CheckRun.objects.filter(
                pk=self.check_id, cancel_requested=True
            ).exists()
        return self.cancelled


class _OutputFrames:
    """Streams output lines as `check.output` frames, batched to ~5 frames a second."""

    INTERVAL = 0.2
    MAX_LINES = 200

    def __init__(self, run: CheckRun, on_frame: Callable[[dict], None] | None = None) -> None:
        self.run = run
        self.on_frame = on_frame
        self.secrets = project_secrets(run.workflow.project)
        self.lines: list[str] = []
        self.last = time.monotonic()

    def __call__(self, line: str) -> None:
        self.lines.append(secret_scrub(line, self.secrets))
        if len(self.lines) >= self.MAX_LINES or time.monotonic() - self.last >= self.INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            frame = {
                "type": "check.output",
                "workflow_id": str(self.run.workflow_id),
                "check_id": str(self.run.id),
                "kind": self.run.kind,
                "lines": self.lines,
            }
            workflow_live_frame_send(workflow_id=self.run.workflow_id, frame=frame)
            if self.on_frame is not None:
                self.on_frame(frame)
            self.lines = []
        self.last = time.monotonic()
