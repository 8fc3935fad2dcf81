"""Task workers and the watchdog, as real processes, under database and Redis faults.

`pg_terminate_backend` of every connection of a process is what a PostgreSQL restart
does to it; the processes must go on (workflows/supervision.py, ai_orchestration/
watchdog.py) and the autopilot run in flight must complete with no manual action.
"""

import pytest
from django_tasks_db.models import DBTaskResult

from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from tests.ai_orchestration.faults.procs import (
    LEASE_SECONDS,
    backend_pids,
    backends_terminate,
    beat_of,
    free_port,
    run_wait_finished,
    running,
    start_task_worker,
    start_watchdog,
    wait_for,
)
from tests.conftest import on_postgres
from tests.factories import workflow_for
from workflows.models import PhaseResult, WorkerBeat, Workflow
from workflows.services import Actor
from workflows.states import PHASES

pytestmark = pytest.mark.django_db(transaction=True)


def _each_phase_once(workflow: Workflow) -> None:
    phases = list(PhaseResult.objects.filter(workflow=workflow).values_list("phase", flat=True))
    assert sorted(phases) == sorted(PHASES)


def _beats_after(proc, kind, seen):
    beat = beat_of(proc, kind)
    return beat if beat and beat.last_seen_at > seen else None


@on_postgres
def test_worker_and_watchdog_outlive_every_connection_ended_idle_and_mid_run(
    project, user, tmp_path
):
    worker, watchdog = start_task_worker(tmp_path), start_watchdog(tmp_path)
    with running(worker, watchdog):
        # given: both running, with their pooled connections open
        wait_for(lambda: beat_of(worker, "worker") and beat_of(watchdog, "watchdog"), 30, "beats")
        wait_for(lambda: len(backend_pids(worker)) >= 2, 10, "the worker's pool")

        # when: every connection of both is ended while they are idle
        idle = beat_of(worker, "worker").last_seen_at
        assert backends_terminate(worker, watchdog) >= 2
        # then: both go on (their beats move on) ...
        wait_for(lambda: _beats_after(worker, "worker", idle), 15, "the worker's next beat")
        wait_for(lambda: _beats_after(watchdog, "watchdog", idle), 15, "the watchdog's next beat")

        # ... and take work: a run, whose connections are ended again mid-phase
        workflow = workflow_for(project, user, description="Outlive a restart. Finish anyway.")
        run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
        wait_for(
            lambda: (
                AIRun.objects.filter(pk=run.pk, phases_completed__gte=1).exists()
                and DBTaskResult.objects.running().exists()
            ),
            30,
            "the worker to be in the middle of a phase",
        )
        assert backends_terminate(worker, watchdog) >= 1
        run = run_wait_finished(run.pk, 90)

        assert worker.alive() and watchdog.alive()
    assert run.status == AIRun.Status.COMPLETED, run.error
    assert Workflow.objects.get(pk=workflow.pk).state == "COMPLETE"
    _each_phase_once(workflow)
    assert not DBTaskResult.objects.running().exists()
    # each stopped cleanly on SIGTERM afterwards, and said so
    assert worker.process.returncode == 0 and watchdog.process.returncode == 0
    assert WorkerBeat.objects.filter(stopped_at__isnull=False).count() == 2


def test_a_killed_workers_running_task_row_is_failed_by_the_watchdog(project, user, tmp_path):
    slow = {"TOPDOG_OFFLINE_DELAY_MS": "200"}
    worker = start_task_worker(tmp_path, env=slow)
    with running(worker):
        workflow = workflow_for(project, user, description="Die mid-phase.")
        run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
        row = wait_for(
            lambda: (
                AIRun.objects.filter(pk=run.pk, status=AIRun.Status.RUNNING).exists()
                and DBTaskResult.objects.running().first()
            ),
            30,
            "the worker to be working the run",
        )
        # the task row names the worker by the id of its beat
        beat = WorkerBeat.objects.get(worker_id=row.worker_ids[-1])
        assert (beat.kind, beat.pid) == ("worker", worker.pid)

        # when: the worker is killed in the middle of the task
        worker.kill()
    assert DBTaskResult.objects.get(pk=row.pk).status == "RUNNING"  # stranded

    # then: a watchdog fails the row once the worker has been silent for two leases,
    # and re-queues the run whose lease expired
    watchdog = start_watchdog(tmp_path)
    with running(watchdog):
        failed = wait_for(
            lambda: DBTaskResult.objects.filter(pk=row.pk, status="FAILED").first(),
            10 + 2 * LEASE_SECONDS,
            "the stranded task row to be failed",
        )
        wait_for(
            lambda: AIRun.objects.filter(pk=run.pk, recoveries__gte=1).exists(),
            10,
            "the run to be re-queued",
        )
    assert failed.exception_class_path == "workflows.workers.WorkerLost"
    assert beat.worker_id in failed.traceback
    assert failed.finished_at is not None
    assert f"failed task {row.pk}" in watchdog.output()
    assert "re-queued run" in watchdog.output()


def test_a_run_completes_while_redis_is_down(project, user, tmp_path):
    redis_down = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    worker = start_task_worker(tmp_path, env=redis_down)
    watchdog = start_watchdog(tmp_path, env=redis_down)
    with running(worker, watchdog):
        workflow = workflow_for(project, user, description="Work without Redis.")
        run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
        run = run_wait_finished(run.pk, 90)
        assert worker.alive() and watchdog.alive()

    assert run.status == AIRun.Status.COMPLETED, run.error
    _each_phase_once(workflow)
