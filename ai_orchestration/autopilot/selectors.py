"""Reads of autopilot runs."""

import uuid
from datetime import datetime
from typing import Any

from django.db.models import Count, Min, Q, QuerySet
from django_tasks_db.models import DBTaskResult

from ai_orchestration.models import AIRun
from workflows.errors import WorkflowNotFound
from workflows.models import Workflow


def run_list_for_workflow(*, workflow: Workflow) -> QuerySet[AIRun]:
    """The workflow's runs (the caller orders and pages them)."""
    return AIRun.objects.filter(workflow=workflow)


def run_get_for_workflow(*, workflow: Workflow, run_id: Any) -> AIRun:
    """The run `run_id` of `workflow`; WorkflowNotFound if it has none such."""
    try:
        pk = uuid.UUID(str(run_id))
    except ValueError as exc:
        raise WorkflowNotFound("run not found") from exc
    run = AIRun.objects.filter(pk=pk, workflow=workflow).first()
    if run is None:
        raise WorkflowNotFound("run not found")
    return run


def run_get(*, run_id: Any) -> AIRun:
    """The run `run_id` as stored now."""
    return AIRun.objects.get(pk=run_id)


def run_active_for_workflow(*, workflow_id: Any) -> AIRun | None:
    """The workflow's queued, running or waiting run, if it has one (at most one)."""
    return AIRun.objects.filter(workflow_id=workflow_id, status__in=AIRun.ACTIVE).first()


def runs_lease_summary(*, now: datetime) -> dict[str, Any]:
    """Running runs, how many of them have an expired lease, and the oldest expiry."""
    expired = Q(lease_expires_at__lt=now)
    return AIRun.objects.filter(status=AIRun.Status.RUNNING).aggregate(
        running=Count("id"),
        expired_leases=Count("id", filter=expired),
        oldest_expiry=Min("lease_expires_at", filter=expired),
    )


# The task that works a run (tasks.py), under its path and the one rows queued before the
# autopilot became a package carry.
RUN_TASK_PATHS = (
    "ai_orchestration.autopilot.tasks.autopilot_run_task",
    "ai_orchestration.autopilot.autopilot_run_task",
)


def run_ids_with_pending_task() -> set[str]:
    """Ids of the runs that have a task ready or running (a few rows: the queue)."""
    rows = DBTaskResult.objects.filter(
        status__in=["READY", "RUNNING"], task_path__in=RUN_TASK_PATHS
    ).values_list("args_kwargs", flat=True)
    return {str(args_kwargs["args"][0]) for args_kwargs in rows if args_kwargs.get("args")}
