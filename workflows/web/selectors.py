"""Reads for the dashboard pages, composed from the workflow selectors."""

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from workflows import selectors
from workflows.models import (
    CheckRun,
    Handoff,
    Message,
    PhaseResult,
    RoleContext,
    Workflow,
    WorkflowEvent,
)


@dataclass(frozen=True)
class WorkflowRecord:
    """Everything the workflow page shows, read in a fixed number of queries."""

    workflow: Workflow
    events: list[WorkflowEvent]
    handoffs: list[Handoff]
    messages: list[Message]
    phase_results: list[PhaseResult]
    role_contexts: list[RoleContext]
    check_runs: list[CheckRun]


def workflow_record_get(*, user: AbstractBaseUser, workflow_id: Any) -> WorkflowRecord:
    """One workflow the user may see with its full audit trail; WorkflowNotFound otherwise.

    Seven queries whatever the length of the history: the workflow, then one each for
    events, handoffs, messages, phase results, role contexts and check runs.
    """
    workflow = selectors.workflow_get_for_user(user=user, workflow_id=workflow_id)
    return WorkflowRecord(
        workflow=workflow,
        events=list(selectors.workflow_events(workflow=workflow)),
        handoffs=list(selectors.workflow_handoffs(workflow=workflow)),
        messages=list(selectors.workflow_messages(workflow=workflow)),
        phase_results=list(selectors.workflow_phase_results(workflow=workflow)),
        role_contexts=list(RoleContext.objects.filter(workflow=workflow).order_by("created_at")),
        check_runs=list(selectors.workflow_check_runs(workflow=workflow).defer("diff")),
    )
