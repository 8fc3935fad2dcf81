"""The watchdog (ai_orchestration/watchdog.py, `manage.py autopilot_watchdog`)."""

import io
import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import OperationalError
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from redis.exceptions import ConnectionError as RedisConnectionError

from ai_orchestration.autopilot.services import autopilot_orphans_requeue, autopilot_start
from ai_orchestration.models import AIRun
from ai_orchestration.watchdog import Watchdog, WatchdogReport, WatchdogThread
from tests.factories import workflow_for
from workflows.models import WorkerBeat
from workflows.services import Actor
from workflows.supervision import Backoff


def test_a_failing_round_is_logged_and_the_loop_goes_on(caplog):
    errors = [OperationalError("the database is restarting"), RedisConnectionError("refused")]
    rounds = threading.Semaphore(0)

    def tick(**kwargs):
        if errors:
            raise errors.pop(0)
        rounds.release()
        return WatchdogReport()

    thread = WatchdogThread(
        every=0.01, tick=tick, backoff=Backoff(initial=0.01, cap=0.02, healthy_after=60)
    )
    thread.start()
    try:
        for _ in range(3):
            assert rounds.acquire(timeout=10)
    finally:
        thread.stop()

    assert not thread.is_alive()
    assert thread.watchdog.failures == 2 and thread.watchdog.ticks >= 3
    assert "OperationalError: the database is restarting" in caplog.text
    assert "ConnectionError: refused" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_round_records_its_beat_fails_dead_task_rows_and_requeues_expired_runs(
    project, user, settings
):
    settings.TOPDOG_AUTOPILOT_LEASE_SECONDS = 5
    long_ago = timezone.now() - timedelta(minutes=5)
    run = autopilot_start(workflow_id=workflow_for(project, user).id, actor=Actor.of(user))
    AIRun.objects.filter(pk=run.pk).update(
        status=AIRun.Status.RUNNING, worker_id="gone", lease_expires_at=long_ago
    )
    WorkerBeat.objects.create(
        worker_id="dead", kind="worker", host="h", pid=1, started_at=long_ago, last_seen_at=long_ago
    )
    task = DBTaskResult.objects.filter(status="READY").first()
    DBTaskResult.objects.filter(pk=task.pk).update(
        status="RUNNING", worker_ids=["dead"], started_at=long_ago
    )
    reports = []
    watchdog = Watchdog(every=60, on_report=reports.append)

    pause = watchdog.run_once()

    assert pause == 60
    assert reports == [WatchdogReport(requeued=[run.pk], failed_tasks=[str(task.pk)])]
    assert AIRun.objects.get(pk=run.pk).status == AIRun.Status.QUEUED
    assert DBTaskResult.objects.get(pk=task.pk).status == "FAILED"
    beat = WorkerBeat.objects.get(kind="watchdog")
    assert beat.worker_id == watchdog.worker_id and beat.stopped_at is None


@pytest.mark.django_db
def test_the_command_once_prints_what_it_did_and_records_its_stop():
    out = io.StringIO()

    call_command("autopilot_watchdog", "--once", stdout=out)

    assert out.getvalue() == ""  # nothing to do
    beat = WorkerBeat.objects.get(kind="watchdog")
    assert beat.stopped_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_queued_run_whose_task_was_lost_is_queued_again(project, user, settings):
    """Its worker died after taking the task and before taking the run."""
    settings.TOPDOG_AUTOPILOT_LEASE_SECONDS = 5
    long_ago = timezone.now() - timedelta(minutes=5)
    lost = autopilot_start(workflow_id=workflow_for(project, user).id, actor=Actor.of(user))
    waiting = autopilot_start(workflow_id=workflow_for(project, user).id, actor=Actor.of(user))
    AIRun.objects.update(created_at=long_ago)
    lost_task = DBTaskResult.objects.get(args_kwargs__args__0=str(lost.pk))
    DBTaskResult.objects.filter(pk=lost_task.pk).update(status="FAILED", finished_at=long_ago)

    requeued = autopilot_orphans_requeue()

    assert requeued == [lost.pk]
    assert DBTaskResult.objects.filter(args_kwargs__args__0=str(lost.pk), status="READY").exists()
    assert AIRun.objects.get(pk=lost.pk).recoveries == 1
    # one with its task still queued is left alone, and nothing is queued twice
    assert DBTaskResult.objects.filter(args_kwargs__args__0=str(waiting.pk)).count() == 1
    assert autopilot_orphans_requeue() == []
