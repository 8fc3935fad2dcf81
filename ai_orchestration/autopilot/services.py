"""Writes on autopilot runs: start, cancel, resume at a gate, stop, reap, finish.

Every status change is booked under the run's row lock; its `ai.run` frame goes after
commit (`frames.run_frame_send`), and so does the task that works the run's next phase
(`run_enqueue_after_commit`).
"""

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string
from rest_framework.exceptions import ValidationError

from ai_orchestration.autopilot.frames import run_frame_send
from ai_orchestration.autopilot.selectors import (
    RUN_TASK_PATHS,
    run_active_for_workflow,
    run_ids_with_pending_task,
)
from ai_orchestration.models import AIRun
from workflows.check_runs import check_runs_reap
from workflows.errors import ActionForbidden, TransitionConflict
from workflows.listeners import TransitionCommitted
from workflows.models import Workflow
from workflows.models_catalog import UnknownModel, model_resolve
from workflows.request_ids import request_id_current
from workflows.services import Actor, transition_check, workflow_lock
from workflows.states import MemberRole, State, Transition
from workflows.work_items import work_items_claim, work_items_reap

logger = logging.getLogger(__name__)

# The task that works a run (tasks.py). It calls the reaper, and the reaper queues it, so
# it is looked up by its dotted path when a run is queued, as the task worker does.
RUN_TASK_PATH = RUN_TASK_PATHS[0]
ITEM_TASK_PATH = "ai_orchestration.autopilot.tasks.work_item_run_task"
# A run's stop reason while other workers hold its workflow's work items.
WAITING_FOR_ITEMS = "working on work items"


class RunConflict(TransitionConflict):
    """A run cannot start or be cancelled in the workflow's current situation."""


def autopilot_start(
    *, workflow_id: Any, actor: Actor, scope: str = AIRun.Scope.WORKFLOW, model_name: str = ""
) -> AIRun:
    """Queue an autopilot run for the workflow's current phase (or all that remain)."""
    with transaction.atomic():
        workflow, member_role = workflow_lock(workflow_id=workflow_id, actor=actor)
        transition_check(workflow, member_role, Transition.COMPLETE)
        active = run_active_for_workflow(workflow_id=workflow.id)
        if active is not None:
            raise RunConflict(
                f"run {active.id} is already {active.status} on this workflow; cancel it first",
                current_state=workflow.state,
                allowed=[],
            )
        if model_name:
            try:
                model_name = model_resolve(model_name).name
            except UnknownModel as exc:
                raise ValidationError({"model": [str(exc)]}) from None
        run = AIRun.objects.create(
            workflow=workflow,
            scope=scope,
            phase=workflow.state,
            model_name=model_name,
            request_id=request_id_current(),
            created_by=actor.user,
        )
        run_enqueue_after_commit(run.id)
        run_frame_send(run)
    return run


def autopilot_cancel(*, run_id: Any, actor: Actor) -> AIRun:
    """Cancel a run: at once if it is not running, between chunks if it is."""
    with transaction.atomic():
        run = AIRun.objects.select_for_update().select_related("workflow").get(pk=run_id)
        _, member_role = workflow_lock(workflow_id=run.workflow_id, actor=actor)
        if member_role == MemberRole.VIEWER:
            raise ActionForbidden("cancelling a run needs project role owner or developer")
        if not run.is_active:
            raise RunConflict(
                f"run is {run.status}; only a queued, running or waiting run can be cancelled",
                current_state=run.workflow.state,
                allowed=[],
            )
        if run.status == AIRun.Status.RUNNING:
            run.cancel_requested = True
            run.save(update_fields=["cancel_requested"])
        else:
            run_finish(run, AIRun.Status.CANCELLED, stop_reason=f"cancelled by {actor.name}")
    return run


def autopilot_resume_after_approval(*, workflow_id: Any) -> None:
    """A gate was approved or rejected: wake the run that was waiting there."""
    with transaction.atomic():
        run = (
            AIRun.objects.select_for_update()
            .filter(workflow_id=workflow_id, status=AIRun.Status.WAITING)
            .first()
        )
        if run is None:
            return
        if run.scope == AIRun.Scope.PHASE and run.phases_completed:
            # Its phase was done and waited for the gate: the run works no other.
            run_finish(run, AIRun.Status.COMPLETED, stop_reason="phase done")
            return
        run.status = AIRun.Status.QUEUED
        run.stop_reason = ""
        run.save(update_fields=["status", "stop_reason"])
        run_enqueue_after_commit(run.id)


def autopilot_stop_for_workflow(*, workflow_id: Any) -> None:
    """The workflow ended (cancelled or failed): end its active run too."""
    with transaction.atomic():
        for run in AIRun.objects.select_for_update().filter(
            workflow_id=workflow_id, status__in=AIRun.ACTIVE
        ):
            if run.status == AIRun.Status.RUNNING:
                run.cancel_requested = True
                run.save(update_fields=["cancel_requested"])
            else:
                run_finish(run, AIRun.Status.CANCELLED, stop_reason="workflow ended")


def autopilot_transition_follow(fact: TransitionCommitted) -> None:
    """The autopilot's transition listener (registered in apps.py): an approved or
    rejected gate wakes the run waiting there; a cancelled or failed workflow ends its
    run."""
    if fact.kind in (Transition.APPROVE, Transition.REJECT):
        autopilot_resume_after_approval(workflow_id=fact.workflow_id)
    elif fact.kind in (Transition.CANCEL, Transition.FAIL):
        autopilot_stop_for_workflow(workflow_id=fact.workflow_id)
    elif fact.kind == Transition.COMPLETE and fact.from_state == State.IMPLEMENTATION:
        autopilot_resume_after_items(workflow_id=fact.workflow_id, new_state=fact.to_state)


def autopilot_resume_after_items(*, workflow_id: Any, new_state: str) -> None:
    """IMPLEMENTATION was completed (its last work item, or complete-phase): the run that
    waited for the items goes on with the next phase.

    Most completions have no run waiting: one unlocked read says so, without a
    transaction; a run found is locked and checked again before it is woken."""
    waiting = AIRun.objects.filter(
        workflow_id=workflow_id, status=AIRun.Status.WAITING, stop_reason=WAITING_FOR_ITEMS
    )
    if not waiting.exists():
        return
    with transaction.atomic():
        run = waiting.select_for_update().first()
        if run is None:
            return
        run.phases_completed += 1
        if run.scope == AIRun.Scope.PHASE:  # its phase is done; it works no other
            run_finish(run, AIRun.Status.COMPLETED, stop_reason="phase done")
            return
        run.status = AIRun.Status.QUEUED
        run.stop_reason = ""
        run.phase = new_state
        run.save(update_fields=["status", "stop_reason", "phase", "phases_completed"])
        run_enqueue_after_commit(run.id)
        run_frame_send(run)


def work_items_dispatch(*, run_id: Any, workflow_id: Any) -> list[int]:
    """Claim the ready items the project's concurrency allows; queue a task for each."""
    limit = (
        Workflow.objects.filter(pk=workflow_id)
        .values_list("project__work_item_concurrency", flat=True)
        .first()
    )
    if not limit:
        return []
    ids = work_items_claim(
        workflow_id=workflow_id,
        limit=limit,
        lease_seconds=settings.TOPDOG_AUTOPILOT_LEASE_SECONDS,
    )
    for item_id in ids:
        transaction.on_commit(partial(_item_enqueue, str(run_id), item_id))
    return ids


def _item_enqueue(run_id: str, item_id: int) -> None:
    import_string(ITEM_TASK_PATH).enqueue(run_id, item_id, request_id=request_id_current() or None)


def autopilot_reap(*, now: Any = None) -> list[Any]:
    """Re-queue runs whose worker died (lease expired); fail those that died too often.
    Check runs whose worker died are ended too: this is the one reaper."""
    now = now or timezone.now()
    check_runs_reap(now=now)
    _work_items_reap(now)
    expired = AIRun.objects.filter(status=AIRun.Status.RUNNING, lease_expires_at__lt=now)
    return [
        run_id
        for run_id in expired.values_list("id", flat=True)
        if _run_reap(run_id=run_id, now=now)
    ]


def autopilot_orphans_requeue(*, now: Any = None) -> list[Any]:
    """Queue again the task of queued runs that have none: its worker died after taking
    the task and before taking the run, or the queueing after a commit was lost with the
    database. A second task for one run is harmless: one claim wins, the other does
    nothing. The watchdog calls this each round."""
    now = now or timezone.now()
    quiet = now - 2 * timedelta(seconds=settings.TOPDOG_AUTOPILOT_LEASE_SECONDS)
    queued = list(
        AIRun.objects.filter(status=AIRun.Status.QUEUED, created_at__lt=quiet).values_list(
            "id", flat=True
        )
    )
    pending = run_ids_with_pending_task() if queued else set()
    return [
        run_id
        for run_id in queued
        if str(run_id) not in pending and _orphan_requeue(run_id=run_id, quiet=quiet)
    ]


def _orphan_requeue(*, run_id: Any, quiet: Any) -> bool:
    with transaction.atomic():
        run = (
            AIRun.objects.select_for_update(skip_locked=True)
            .filter(pk=run_id, status=AIRun.Status.QUEUED)
            .first()
        )
        if run is None or (run.heartbeat_at and run.heartbeat_at >= quiet):
            return False
        logger.warning("run %s is queued with no task (lost with its worker)", run.id)
        return _run_recover(run, giving_up=lambda: "its task was lost too often; giving up")


def _work_items_reap(now: Any) -> None:
    """Items whose worker died are ready again, and dispatched if a run is on them."""
    for workflow_id in work_items_reap(
        now=now, max_recoveries=settings.TOPDOG_AUTOPILOT_MAX_RECOVERIES
    ):
        run = run_active_for_workflow(workflow_id=workflow_id)
        if run is not None:
            logger.warning("work items of workflow %s lost their worker; re-queueing", workflow_id)
            work_items_dispatch(run_id=run.id, workflow_id=workflow_id)


def _run_reap(*, run_id: Any, now: Any) -> bool:
    """Re-queue (True) or give up on one expired run, unless another reaper has it."""
    with transaction.atomic():
        run = (
            AIRun.objects.select_for_update(skip_locked=True)
            .filter(pk=run_id, status=AIRun.Status.RUNNING, lease_expires_at__lt=now)
            .first()
        )
        if run is None:
            return False
        logger.warning("run %s lost its worker %s", run.id, run.worker_id)
        return _run_recover(
            run,
            giving_up=lambda: (
                f"its worker stopped {run.recoveries + 1} times (last seen "
                f"{run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC); giving up"
            ),
        )


def _run_recover(run: AIRun, *, giving_up: Callable[[], str]) -> bool:
    """Queue the locked `run` again with a new task (True), or fail it with the error
    `giving_up()` once it was recovered TOPDOG_AUTOPILOT_MAX_RECOVERIES times."""
    if run.recoveries >= settings.TOPDOG_AUTOPILOT_MAX_RECOVERIES:
        run_finish(run, AIRun.Status.FAILED, error=giving_up())
        return False
    run.status = AIRun.Status.QUEUED
    run.worker_id = ""
    run.lease_token = None  # the old holder is fenced off from here on
    run.recoveries += 1
    run.save(update_fields=["status", "worker_id", "lease_token", "recoveries"])
    run_enqueue_after_commit(run.id)
    return True


def run_finish(run: AIRun, status: str, *, error: str = "", stop_reason: str = "") -> None:
    """End `run` (locked by the caller) with `status`."""
    run.status = status
    run.error = error or run.error
    run.stop_reason = (stop_reason or run.stop_reason)[:200]
    run.finished_at = timezone.now()
    run.worker_id = ""
    run.lease_token = None
    run.save()
    run_frame_send(run)


def run_finish_by_id(
    run_id: Any,
    status: str,
    *,
    error: str = "",
    stop_reason: str = "",
    lease_token: uuid.UUID | None = None,
) -> bool:
    """Lock the run and end it with `status`. A worker passes its `lease_token`: a run
    that is no longer its own (re-queued, taken by another worker, ended) is left alone.
    False when refused."""
    with transaction.atomic():
        run = AIRun.objects.select_for_update().get(pk=run_id)
        if lease_token is not None and not run_held(run, lease_token):
            logger.warning(
                "run %s: a stale worker's %s was refused (the run is %s, lease taken over)",
                run.id,
                status,
                run.status,
            )
            return False
        run_finish(run, status, error=error, stop_reason=stop_reason)
    return True


def run_held(run: AIRun, lease_token: uuid.UUID) -> bool:
    """`run` (read under its row lock) is running under the lease `lease_token`."""
    return run.status == AIRun.Status.RUNNING and run.lease_token == lease_token


def run_enqueue_after_commit(run_id: Any) -> None:
    """Queue the task that works the run's next phase, once the transaction commits."""
    transaction.on_commit(partial(_run_enqueue, str(run_id)))


def _run_enqueue(run_id: str) -> None:
    import_string(RUN_TASK_PATH).enqueue(run_id, request_id=request_id_current() or None)
