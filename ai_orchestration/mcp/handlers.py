"""What each MCP tool, resource and prompt does, synchronously: the REST endpoint's input
serializer, the same selector or service, and the body its output serializer renders.

Each function takes the authenticated user and the arguments and returns what the REST
endpoint would answer; domain errors propagate, for server.py to map them as the REST
API does. No business logic lives here.
"""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.http import QueryDict
from rest_framework import serializers

from ai_orchestration.api import GetAiPromptApi, RunStartSerializer
from ai_orchestration.autopilot.frames import run_summary
from ai_orchestration.autopilot.selectors import run_get, run_get_for_workflow
from ai_orchestration.autopilot.services import autopilot_cancel, autopilot_start
from ai_orchestration.context import prompt_request_next
from ai_orchestration.review_context import change_set_diff
from workflows import selectors
from workflows.api.base import (
    ProjectOutputSerializer,
    WorkflowDetailSerializer,
    WorkflowSummarySerializer,
)
from workflows.api.checks import CheckRunOutputSerializer
from workflows.api.filters import WorkflowFilter
from workflows.api.ide import (
    CompletePhaseApi,
    InitializeApi,
    initialize_answer,
    phase_complete_answer,
    status_answer,
)
from workflows.api.resources import (
    EventOutputSerializer,
    PhaseResultOutputSerializer,
    TransitionInputSerializer,
    WorkflowCancelApi,
)
from workflows.check_runs import check_run_request
from workflows.errors import WorkflowNotFound
from workflows.prompts import prompt_render, prompt_template_active
from workflows.services import (
    Actor,
    TransitionOutcome,
    workflow_approve,
    workflow_cancel,
    workflow_reject,
)
from workflows.states import PHASE_ROLE, PHASES, Transition


def _valid(serializer_class: type[serializers.Serializer], data: dict) -> dict:
    serializer = serializer_class(data={k: v for k, v in data.items() if v is not None})
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def projects_list(*, user: AbstractBaseUser, limit: int) -> dict:
    projects = list(selectors.project_list_for_user(user=user).order_by("slug")[: limit + 1])
    return {
        "results": ProjectOutputSerializer(projects[:limit], many=True).data,
        "has_more": len(projects) > limit,
    }


def workflows_list(
    *, user: AbstractBaseUser, project: str | None, state: list[str], limit: int
) -> dict:
    """The REST list's filters (`WorkflowFilter`), newest first, at most `limit`."""
    params = QueryDict(mutable=True)
    if project:
        params["project"] = project
    params.setlist("state", state)
    queryset = selectors.workflow_list_for_user(user=user)
    filterset = WorkflowFilter(params, queryset=queryset)
    if not filterset.is_valid():
        raise serializers.ValidationError(filterset.errors)
    workflows = list(filterset.qs.order_by("-created_at", "-id")[: limit + 1])
    return {
        "results": WorkflowSummarySerializer(workflows[:limit], many=True).data,
        "has_more": len(workflows) > limit,
    }


def workflow_open(*, user: AbstractBaseUser, **arguments: Any) -> dict:
    """POST /api/ai-workflows/initialize."""
    data = _valid(InitializeApi.InitializeInputSerializer, arguments)
    return initialize_answer(user=user, data=data)


def status_get(*, user: AbstractBaseUser, workflow_id: str) -> dict:
    """GET /api/ai-workflows/status/<id>."""
    return status_answer(user=user, workflow_id=workflow_id)


def prompt_next(*, user: AbstractBaseUser, workflow_id: str) -> dict:
    """POST /api/ai-workflows/get-ai-prompt/<id>."""
    workflow = selectors.workflow_get_for_user(user=user, workflow_id=workflow_id)
    prompt = prompt_request_next(workflow=workflow)
    return GetAiPromptApi.GetAiPromptOutputSerializer(prompt.as_payload()).data


def phase_complete(*, user: AbstractBaseUser, **arguments: Any) -> dict:
    """POST /api/ai-workflows/complete-phase."""
    data = _valid(CompletePhaseApi.CompletePhaseInputSerializer, arguments)
    return phase_complete_answer(user=user, data=data)


def _transitioned(user: AbstractBaseUser, outcome: TransitionOutcome) -> dict:
    """The body of POST /api/workflows/<id>/transitions/: the workflow as it now stands."""
    workflow = selectors.workflow_get_for_user(user=user, workflow_id=outcome.workflow.id)
    body = dict(WorkflowDetailSerializer(workflow).data)
    body["previous_state"] = outcome.previous_state
    body["handoff_id"] = outcome.handoff.pk if outcome.handoff else None
    return body


def phase_approve(*, user: AbstractBaseUser, workflow_id: str, comment: str) -> dict:
    data = _valid(TransitionInputSerializer, {"transition": Transition.APPROVE, "reason": comment})
    outcome = workflow_approve(
        workflow_id=workflow_id, actor=Actor.of(user), comment=data.get("reason", "")
    )
    return _transitioned(user, outcome)


def phase_reject(*, user: AbstractBaseUser, workflow_id: str, feedback: str) -> dict:
    data = _valid(
        TransitionInputSerializer, {"transition": Transition.REJECT, "feedback": feedback}
    )
    outcome = workflow_reject(
        workflow_id=workflow_id, actor=Actor.of(user), feedback=data["feedback"]
    )
    return _transitioned(user, outcome)


def workflow_stop(*, user: AbstractBaseUser, workflow_id: str, reason: str) -> dict:
    """POST /api/workflows/<id>/cancel/."""
    data = _valid(WorkflowCancelApi.CancelInputSerializer, {"reason": reason})
    outcome = workflow_cancel(
        workflow_id=workflow_id, actor=Actor.of(user), reason=data.get("reason", "")
    )
    return _transitioned(user, outcome)


def autopilot_begin(
    *, user: AbstractBaseUser, workflow_id: str, scope: str | None, model: str | None
) -> dict:
    """POST /api/workflows/<id>/runs/."""
    data = _valid(RunStartSerializer, {"scope": scope, "model": model})
    run = autopilot_start(
        workflow_id=workflow_id,
        actor=Actor.of(user),
        scope=data["scope"],
        model_name=data.get("model", ""),
    )
    return run_summary(run_get(run_id=run.id))


def run_stop(*, user: AbstractBaseUser, workflow_id: str, run_id: str) -> dict:
    """POST /api/workflows/<id>/runs/<run_id>/cancel/."""
    workflow = selectors.workflow_get_for_user(user=user, workflow_id=workflow_id)
    run = run_get_for_workflow(workflow=workflow, run_id=run_id)
    run = autopilot_cancel(run_id=run.id, actor=Actor.of(user))
    return run_summary(run_get(run_id=run.id))


def events_list(*, user: AbstractBaseUser, workflow_id: str, after: int, limit: int) -> dict:
    """GET /api/workflows/<id>/events/ (without `next`, a URL: ask again with `next_after`)."""
    workflow = selectors.workflow_get_for_user(user=user, workflow_id=workflow_id)
    events = list(selectors.workflow_events(workflow=workflow, after=after)[:limit])
    last = events[-1].seq if events else after
    return {
        "workflow_id": str(workflow.id),
        "last_seq": workflow.last_event_seq,
        "next_after": last if last < workflow.last_event_seq else None,
        "results": EventOutputSerializer(events, many=True).data,
    }


def checks_run(*, user: AbstractBaseUser, workflow_id: str) -> dict:
    """POST /api/workflows/<id>/checks/ (a test run of the current change set)."""
    run = check_run_request(workflow_id=workflow_id, actor=Actor.of(user))
    return CheckRunOutputSerializer(run).data


# --- resources and prompts ---------------------------------------------------------------


def evidence_get(*, user: AbstractBaseUser, workflow_id: str, phase: str) -> dict:
    """The latest result submitted for `phase` (any status), as its REST detail renders it."""
    workflow = selectors.workflow_get_for_user(user=user, workflow_id=workflow_id)
    if phase not in PHASES:
        raise WorkflowNotFound(f"no phase {phase!r}; the phases are {', '.join(PHASES)}")
    result = selectors.workflow_phase_results(workflow=workflow).filter(phase=phase).last()
    if result is None:
        raise WorkflowNotFound(f"no {phase} result has been submitted yet")
    return PhaseResultOutputSerializer(result).data


def diff_get(*, user: AbstractBaseUser, workflow_id: str) -> str:
    """The change set under work as a unified diff, as the auditors are shown it."""
    workflow = selectors.workflow_get_for_user(user=user, workflow_id=workflow_id)
    diff = change_set_diff(workflow=workflow)
    if diff is None:
        raise WorkflowNotFound("no change set: no IMPLEMENTATION result has been accepted yet")
    return diff


def system_prompt_get(*, user: AbstractBaseUser, role: str, workflow_id: str) -> str:
    """The role's active system prompt; rendered for the workflow when one is named."""
    template = prompt_template_active(role=role)
    if not workflow_id:
        return template.body
    workflow = selectors.workflow_get_for_user(user=user, workflow_id=workflow_id)
    # The phase the role works in: the current one if it is the role's, else its first.
    owned = [phase for phase in PHASES if PHASE_ROLE[phase] == role]
    state = workflow.state if workflow.state in owned else owned[0]
    return prompt_render(body=template.body, workflow=workflow, role=role, state=state)
