"""Reads of autopilot runs."""

import uuid
from typing import Any

from django.db.models import QuerySet

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
