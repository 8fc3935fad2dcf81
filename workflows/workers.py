"""Task workers and watchdogs: their beats, the task rows they leave behind, the queue.

Every task worker (`manage.py task_worker`, `serve`'s workers) and every watchdog
writes a `WorkerBeat` row every TOPDOG_WORKER_BEAT_SECONDS. A task worker's id is the
`--worker-id` it gives `db_worker`, which appends it to each task row it claims
(`DBTaskResult.worker_ids`), so a running task row names the beat of its worker.

A worker is *alive* while its beat is at most one lease period
(TOPDOG_AUTOPILOT_LEASE_SECONDS) old and it has not stopped; it is *dead* once its
beat is more than two lease periods old, or it stopped. The watchdog fails the task
rows a dead worker left RUNNING (`task_results_of_dead_workers_fail`), so none stays
RUNNING for good; the autopilot's reaper then re-queues the run whose lease expired.
"""

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from traceback import format_exception
from typing import Any

from django.conf import settings
from django.db.models import Count, Max, Min
from django.utils import timezone
from django_tasks import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from workflows.models import WorkerBeat


class WorkerLost(Exception):
    """What a task row whose worker died is failed with (its `exception_class_path`)."""


def lease_period() -> timedelta:
    return timedelta(seconds=settings.TOPDOG_AUTOPILOT_LEASE_SECONDS)


def worker_id_new(*, prefix: str) -> str:
    """A new worker id, unique across hosts and restarts, within db_worker's 64 characters."""
    tail = f"-{os.getpid()}-{secrets.token_hex(3)}"
    return f"{prefix}-{socket.gethostname()}"[: 64 - len(tail)] + tail


# --- beats ------------------------------------------------------------------------------


def worker_beat_record(*, kind: str, worker_id: str, started_at: datetime) -> None:
    """Say that `worker_id` (this process) is alive now: one UPDATE, or the first INSERT."""
    now = timezone.now()
    seen = WorkerBeat.objects.filter(worker_id=worker_id).update(last_seen_at=now, stopped_at=None)
    if not seen:
        WorkerBeat.objects.create(
            worker_id=worker_id,
            kind=kind,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            started_at=started_at,
            last_seen_at=now,
        )


def worker_beat_stop(*, worker_id: str) -> None:
    """Record that `worker_id` stopped cleanly."""
    now = timezone.now()
    WorkerBeat.objects.filter(worker_id=worker_id).update(last_seen_at=now, stopped_at=now)


def worker_beats_prune(*, now: datetime | None = None) -> int:
    """Delete beats not seen for TOPDOG_WORKER_BEAT_KEEP_HOURS; returns how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.TOPDOG_WORKER_BEAT_KEEP_HOURS)
    deleted, _ = WorkerBeat.objects.filter(last_seen_at__lt=cutoff).delete()
    return deleted


def worker_beats_alive(*, kind: str, now: datetime, limit: int = 100) -> list[WorkerBeat]:
    """Processes of `kind` seen within one lease period that have not stopped, newest first."""
    return list(
        WorkerBeat.objects.filter(
            kind=kind, stopped_at__isnull=True, last_seen_at__gte=now - lease_period()
        ).order_by("-last_seen_at")[:limit]
    )


def worker_last_seen(*, kind: str) -> datetime | None:
    """When a process of `kind` (alive, dead or stopped) was last seen; None: never."""
    return WorkerBeat.objects.filter(kind=kind).aggregate(last=Max("last_seen_at"))["last"]


# --- task rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskQueue:
    queued: int
    oldest_queued_age_seconds: float
    running: int


def task_queue_summary(*, now: datetime) -> TaskQueue:
    """Tasks ready to run now, the age of the oldest of them, and tasks running."""
    ready = DBTaskResult.objects.ready().aggregate(n=Count("id"), oldest=Min("enqueued_at"))
    oldest = ready["oldest"]
    return TaskQueue(
        queued=ready["n"],
        oldest_queued_age_seconds=round(max(0.0, (now - oldest).total_seconds()), 3)
        if oldest
        else 0.0,
        running=DBTaskResult.objects.running().count(),
    )


def task_results_of_worker_fail(*, worker_id: str, reason: str) -> list[str]:
    """Fail the task rows `worker_id` holds RUNNING (its worker knows none is running)."""
    now = timezone.now()
    return [
        str(row.pk)
        for row in _running_rows()
        if _holder(row) == worker_id and _fail(row, now=now, reason=reason)
    ]


def task_results_of_dead_workers_fail(*, now: datetime | None = None) -> list[str]:
    """Fail the RUNNING task rows whose worker is dead (no beat for two lease periods, or
    stopped; a worker with no beat at all, two lease periods after the task started).
    Returns their ids."""
    now = now or timezone.now()
    cutoff = now - 2 * lease_period()
    beats = {
        beat.worker_id: beat
        for beat in WorkerBeat.objects.filter(kind=WorkerBeat.Kind.WORKER).only(
            "worker_id", "last_seen_at", "stopped_at"
        )
    }
    failed = []
    for row in _running_rows():
        reason = _death(row, beats.get(_holder(row)), cutoff)
        if reason and _fail(row, now=now, reason=reason):
            failed.append(str(row.pk))
    return failed


def _running_rows() -> Any:
    return DBTaskResult.objects.running().only("id", "worker_ids", "started_at")


def _holder(row: DBTaskResult) -> str:
    """The worker that claimed the row last (db_worker appends its id on each claim)."""
    return row.worker_ids[-1] if row.worker_ids else ""


def _death(row: DBTaskResult, beat: WorkerBeat | None, cutoff: datetime) -> str:
    """Why the row's worker is dead, or "" while it may still be alive."""
    holder = _holder(row) or "(none)"
    if beat is None:
        if row.started_at and row.started_at >= cutoff:
            return ""
        return f"its worker {holder} has no beat (it is not a task_worker, or was pruned)"
    if beat.stopped_at is not None:
        return f"its worker {holder} stopped at {beat.stopped_at:%Y-%m-%d %H:%M:%S} UTC"
    if beat.last_seen_at >= cutoff:
        return ""
    return f"its worker {holder} was last seen at {beat.last_seen_at:%Y-%m-%d %H:%M:%S} UTC"


def _fail(row: DBTaskResult, *, now: datetime, reason: str) -> bool:
    """Fail the row unless it moved on meanwhile (finished, or claimed again)."""
    error = WorkerLost(f"{reason}; the task was running and is marked failed")
    return bool(
        DBTaskResult.objects.filter(
            pk=row.pk, status=TaskResultStatus.RUNNING, started_at=row.started_at
        ).update(
            status=TaskResultStatus.FAILED,
            finished_at=now,
            return_value=None,
            exception_class_path=f"{WorkerLost.__module__}.{WorkerLost.__qualname__}",
            traceback="".join(format_exception(error)),
        )
    )
