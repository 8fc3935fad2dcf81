"""Worker beats and the task rows of dead workers (workflows/workers.py)."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.module_loading import import_string
from django_tasks_db.models import DBTaskResult

from workflows.models import WorkerBeat
from workflows.workers import (
    WorkerLost,
    task_queue_summary,
    task_results_of_dead_workers_fail,
    task_results_of_worker_fail,
    worker_beat_record,
    worker_beat_stop,
    worker_beats_alive,
    worker_beats_prune,
    worker_id_new,
)

pytestmark = pytest.mark.django_db

LEASE = 30


@pytest.fixture(autouse=True)
def _lease(settings):
    settings.TOPDOG_AUTOPILOT_LEASE_SECONDS = LEASE


def _beat(worker_id, *, seen_ago, stopped=False, kind="worker"):
    now = timezone.now()
    return WorkerBeat.objects.create(
        worker_id=worker_id,
        kind=kind,
        host="h",
        pid=1,
        started_at=now - timedelta(hours=1),
        last_seen_at=now - timedelta(seconds=seen_ago),
        stopped_at=now - timedelta(seconds=seen_ago) if stopped else None,
    )


def _task(*, status="RUNNING", worker_ids=(), started_ago=0, enqueued_ago=0):
    now = timezone.now()
    row = DBTaskResult.objects.create(
        status=status,
        args_kwargs={"args": [], "kwargs": {}},
        task_path="tests.nothing",
        backend_name="default",
        run_after=now - timedelta(seconds=enqueued_ago),
        worker_ids=list(worker_ids),
        started_at=now - timedelta(seconds=started_ago) if status == "RUNNING" else None,
    )
    # enqueued_at is auto_now_add: move it back afterwards
    DBTaskResult.objects.filter(pk=row.pk).update(enqueued_at=now - timedelta(seconds=enqueued_ago))
    return row


def test_a_worker_id_is_unique_and_fits_db_worker():
    ids = {worker_id_new(prefix="worker") for _ in range(50)}

    assert len(ids) == 50
    assert all(len(worker_id) <= 64 and worker_id.startswith("worker-") for worker_id in ids)
    assert len(worker_id_new(prefix="x" * 100)) == 64


def test_a_beat_is_written_once_then_moved_on_and_stopped():
    started = timezone.now()
    worker_beat_record(kind="worker", worker_id="w1", started_at=started)
    first = WorkerBeat.objects.get(worker_id="w1").last_seen_at
    worker_beat_record(kind="worker", worker_id="w1", started_at=started)
    worker_beat_stop(worker_id="w1")

    beat = WorkerBeat.objects.get(worker_id="w1")
    assert beat.last_seen_at > first and beat.started_at == started
    assert beat.stopped_at is not None
    assert worker_beats_alive(kind="worker", now=timezone.now()) == []


def test_alive_means_seen_within_a_lease_and_not_stopped():
    _beat("fresh", seen_ago=1)
    _beat("late", seen_ago=LEASE + 5)
    _beat("stopped", seen_ago=1, stopped=True)
    _beat("watchdog", seen_ago=1, kind="watchdog")

    alive = worker_beats_alive(kind="worker", now=timezone.now())

    assert [beat.worker_id for beat in alive] == ["fresh"]


def test_old_beats_are_pruned(settings):
    settings.TOPDOG_WORKER_BEAT_KEEP_HOURS = 1
    _beat("recent", seen_ago=60)
    _beat("ancient", seen_ago=2 * 3600, stopped=True)

    assert worker_beats_prune() == 1
    assert list(WorkerBeat.objects.values_list("worker_id", flat=True)) == ["recent"]


def test_running_rows_of_dead_workers_are_failed_and_the_others_kept():
    _beat("alive", seen_ago=LEASE)  # late but within two leases
    _beat("silent", seen_ago=2 * LEASE + 5)
    _beat("stopped", seen_ago=1, stopped=True)
    kept = [
        _task(worker_ids=["alive"], started_ago=600),
        _task(worker_ids=["no-beat-yet"], started_ago=5),  # a worker without beat, recent
        _task(status="SUCCESSFUL", worker_ids=["silent"]),
        _task(status="READY"),
    ]
    dead = [
        _task(worker_ids=["alive", "silent"], started_ago=600),  # claimed last by "silent"
        _task(worker_ids=["stopped"], started_ago=5),
        _task(worker_ids=["never-beat"], started_ago=2 * LEASE + 5),
    ]

    failed = task_results_of_dead_workers_fail()

    assert sorted(failed) == sorted(str(row.pk) for row in dead)
    for row in dead:
        row.refresh_from_db()
        assert row.status == "FAILED" and row.finished_at is not None
        assert row.exception_class_path == "workflows.workers.WorkerLost"
        assert row.worker_ids[-1] in row.traceback
        assert import_string(row.exception_class_path) is WorkerLost
    assert [DBTaskResult.objects.get(pk=row.pk).status for row in kept] == [
        "RUNNING",
        "RUNNING",
        "SUCCESSFUL",
        "READY",
    ]
    assert task_results_of_dead_workers_fail() == []  # nothing twice


def test_a_worker_fails_only_its_own_running_rows():
    mine = _task(worker_ids=["other", "me"])
    theirs = _task(worker_ids=["me", "other"])

    assert task_results_of_worker_fail(worker_id="me", reason="it crashed") == [str(mine.pk)]
    assert DBTaskResult.objects.get(pk=theirs.pk).status == "RUNNING"
    assert "it crashed" in DBTaskResult.objects.get(pk=mine.pk).traceback


def test_the_queue_counts_tasks_ready_now_and_the_oldest_age():
    now = timezone.now()
    _task(status="READY", enqueued_ago=90)
    _task(status="READY", enqueued_ago=10)
    future = _task(status="READY")
    DBTaskResult.objects.filter(pk=future.pk).update(run_after=now + timedelta(hours=1))
    _task(worker_ids=["w"])

    queue = task_queue_summary(now=now)

    assert (queue.queued, queue.running) == (2, 1)
    assert 89 <= queue.oldest_queued_age_seconds <= 91
    DBTaskResult.objects.all().delete()
    assert task_queue_summary(now=now).oldest_queued_age_seconds == 0.0
