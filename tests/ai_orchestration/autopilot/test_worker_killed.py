"""A worker killed (SIGKILL) mid-run: another worker finishes, no phase is done twice."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from tests.ai_orchestration.faults.procs import database_url, wait_for
from tests.factories import workflow_for
from workflows.models import PhaseResult, Workflow, WorkItem
from workflows.services import Actor

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(settings.BASE_DIR)


def _spawn(command: str, *args: str, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "topdog.settings",
        # slow enough to be killed mid-stream, fast enough for CI
        "TOPDOG_OFFLINE_DELAY_MS": "40",
        "TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS": "1",
        # four heartbeats: a worker gives a lease up after three without a renewal, and a
        # busy machine can delay one
        "TOPDOG_AUTOPILOT_LEASE_SECONDS": "4",
        # the project's repository is not reachable from here; checks are not under test
        "TOPDOG_SANDBOX": "off",
    }
    env.pop("REDIS_URL", None)  # live frames are not under test here
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), command, *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def test_sigkilled_worker_is_replaced_and_no_phase_is_completed_twice(project, user, tmp_path):
    workflow = workflow_for(project, user, description="Survive a crash. Finish anyway.")
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    worker_args = ("--no-reload", "--interval", "0.1", "--no-startup-delay")
    first = _spawn("db_worker", *worker_args, log=tmp_path / "worker1.log")
    processes = [first]
    try:
        # the first worker is in the middle of a phase (past DISCOVERY, streaming)
        wait_for(
            lambda: AIRun.objects.filter(
                pk=run.pk, status=AIRun.Status.RUNNING, phases_completed__gte=2
            ).exists(),
            60,
            "the first worker to get going",
        )
        time.sleep(0.3)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_during = AIRun.objects.get(pk=run.pk)
        assert killed_during.status == AIRun.Status.RUNNING  # stranded with its lease

        processes.append(_spawn("db_worker", *worker_args, log=tmp_path / "worker2.log"))
        processes.append(
            _spawn("autopilot_watchdog", "--interval", "0.5", log=tmp_path / "watchdog.log")
        )
        wait_for(
            lambda: (
                print(
                    AIRun.objects.filter(pk=run.pk)
                    .values("status", "lease_expires_at", "executions", "phase")
                    .first(),
                    flush=True,
                )
                or Workflow.objects.get(pk=workflow.pk).state == "COMPLETE"
            ),
            90,
            "the workflow to complete on the second worker",
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()

    run.refresh_from_db()
    assert run.status == AIRun.Status.COMPLETED
    assert run.recoveries >= 1  # picked up again after the crash
    per_phase = {}
    for result in PhaseResult.objects.filter(workflow=workflow):
        per_phase[result.phase] = per_phase.get(result.phase, 0) + 1
    assert per_phase == dict.fromkeys(
        ["DISCOVERY", "PLANNING", "IMPLEMENTATION", "TESTING", "VERIFICATION", "DEPLOYMENT"], 1
    )
    # the watchdog, or the reaper a queued work item task runs first, picked it up
    logs = (tmp_path / "watchdog.log").read_text() + (tmp_path / "worker2.log").read_text()
    assert "re-queued run" in logs or "lost its worker" in logs
    # and no work item ran more than twice (once more if the kill caught it mid-item)
    runs = list(WorkItem.objects.filter(workflow=workflow).values_list("executions", flat=True))
    assert len(runs) == 4 and set(runs) <= {1, 2} and runs.count(2) <= 1
