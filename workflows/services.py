"""Business writes on workflows.

Every transition goes through one runner, `_transition_run`: lock the workflow row
(`select_for_update`; SQLite takes its write lock at BEGIN IMMEDIATE), check what the
caller asked against the state it finds, change the workflow in memory, then write the
state change together with exactly one Handoff and the next gapless WorkflowEvents, and
only after commit broadcast them and announce the transition to the registered
listeners (`workflows.listeners`). Either all of that commits or none of it does.

What a phase result leads to (advance, hold at a gate, regress, fail at the regression
limit) is decided by `phase_outcome_decide`, a pure function of the evidence and the
project's settings.
"""

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django_fsm import ConcurrentTransition
from rest_framework.exceptions import ValidationError

from workflows.broadcast import workflow_events_broadcast
from workflows.errors import (
    ActionForbidden,
    ProjectNotFound,
    TransitionConflict,
    WorkflowNotFound,
)
from workflows.evidence import (
    canonical_json,
    evidence_artifacts,
    evidence_summary,
    evidence_validate,
    findings_feedback,
    sha256_text,
)
from workflows.listeners import TransitionCommitted, transition_committed_announce
from workflows.models import (
    Handoff,
    Membership,
    Message,
    PhaseResult,
    Project,
    RoleContext,
    Workflow,
    WorkflowEvent,
    WorkItem,
)
from workflows.models_catalog import UnknownModel, model_resolve, model_settings_for
from workflows.prompts import prompt_render, prompt_template_active
from workflows.request_ids import request_id_current
from workflows.selectors import workflow_uuid
from workflows.states import (
    NEXT_STATE,
    REGRESSION_TARGETS,
    TRANSITION_MEMBER_ROLES,
    EventType,
    HandoffKind,
    MemberRole,
    Role,
    Sender,
    State,
    Transition,
)
from workflows.verification import evidence_verify, syntax_check_row, work_item_files_verify
from workflows.work_items import (
    named_paths,
    plan_check,
    work_items_cancel,
    work_items_current,
    work_items_from_plan,
    work_items_merged,
    work_items_promote,
    work_items_reset,
    work_items_settle,
    work_items_unbooked_usage,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    """Who asked for a change: a user, or the service itself (autopilot, admin scripts)."""

    user: AbstractBaseUser | None
    name: str

    @classmethod
    def of(cls, user: AbstractBaseUser) -> "Actor":
        return cls(user=user, name=user.get_username())

    @classmethod
    def system(cls, name: str = "system") -> "Actor":
        return cls(user=None, name=name)


@dataclass(frozen=True)
class CallUsage:
    """What a model call that produced a phase result cost (recorded on its Message)."""

    provider: str = ""
    model: str = ""
    prompt_version: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)


@dataclass(frozen=True)
class TransitionOutcome:
    workflow: Workflow
    previous_state: str
    handoff: Handoff | None
    phase_result: PhaseResult | None = None


# --- what a phase result leads to: pure, no database -----------------------------------


class OutcomeKind(StrEnum):
    ADVANCE = "advance"
    HOLD = "hold"
    REGRESS = "regress"
    FAIL = "fail"


@dataclass(frozen=True)
class PhaseOutcome:
    """Where a phase result (or a regression asked for) takes the workflow: `target` is
    the state it moves to (the same phase when held at a gate)."""

    kind: OutcomeKind
    target: str
    feedback: str = ""


def phase_outcome_decide(
    *,
    phase: str,
    evidence: dict,
    gates: Sequence[str],
    threshold: float,
    regression_count: int,
    regression_limit: int,
) -> PhaseOutcome:
    """What validated `evidence` of `phase` leads to under the project's settings.

    A failing test report, a rejected verification or a score below `threshold` sends
    the work back (or fails the workflow once it has used its regressions); otherwise a
    phase in `gates` waits for approval, and any other moves on."""
    target, feedback = _regression_asked(phase, evidence, threshold)
    if target is not None:
        return regression_outcome(
            target=target,
            feedback=feedback,
            regression_count=regression_count,
            regression_limit=regression_limit,
        )
    if phase in gates:
        return PhaseOutcome(OutcomeKind.HOLD, phase)
    return PhaseOutcome(OutcomeKind.ADVANCE, NEXT_STATE[phase])


def regression_outcome(
    *, target: str, feedback: str, regression_count: int, regression_limit: int
) -> PhaseOutcome:
    """A regression to `target`, or a failure when the limit is used up."""
    if regression_count >= regression_limit:
        return PhaseOutcome(OutcomeKind.FAIL, State.FAILED, feedback)
    return PhaseOutcome(OutcomeKind.REGRESS, target, feedback)


def _regression_asked(phase: str, evidence: dict, threshold: float) -> tuple[str | None, str]:
    """Where the evidence sends the work back to (and the feedback), or (None, "")."""
    if phase == State.TESTING:
        if evidence["verdict"] == "fail":
            return State.IMPLEMENTATION, findings_feedback(evidence["findings"])
        if evidence["quality_score"] < threshold:
            return State.IMPLEMENTATION, _below_threshold(
                "quality score", evidence["quality_score"], threshold, evidence["findings"]
            )
    if phase == State.VERIFICATION:
        if evidence["verdict"] == "reject":
            return evidence["regress_to"], findings_feedback(evidence["findings"])
        if evidence["score"] < threshold:
            return State.IMPLEMENTATION, _below_threshold(
                "verification score", evidence["score"], threshold, evidence["findings"]
            )
    return None, ""


def _below_threshold(what: str, score: float, threshold: float, findings: list[dict]) -> str:
    head = f"- [major] {what} {score:.2f} is below the project's threshold {threshold:.2f}"
    rest = findings_feedback(findings)
    return f"{head}\n{rest}" if rest else head


# --- locking and checking --------------------------------------------------------------


def workflow_lock(*, workflow_id: Any, actor: Actor) -> tuple[Workflow, str | None]:
    """The workflow row, locked, with its project, and the actor's project role (None for
    system actors). A workflow the user's projects do not hold is WorkflowNotFound.

    The project row is not locked: what a transition reads of it (gates, threshold,
    models) may change concurrently without making the transition wrong."""
    queryset = (
        Workflow.objects.select_related("project")
        .select_for_update(of=("self",))
        .filter(pk=workflow_uuid(workflow_id))
    )
    if actor.user is not None:
        queryset = queryset.filter(project__memberships__user=actor.user).annotate(
            member_role=F("project__memberships__role")
        )
    try:
        workflow = queryset.get()
    except Workflow.DoesNotExist as exc:
        raise WorkflowNotFound() from exc
    return workflow, getattr(workflow, "member_role", None)


def available_transitions(workflow: Workflow, member_role: str | None) -> list[str]:
    """The transitions `member_role` may ask for now (None: a system actor, all of them)."""
    names = {
        "advance": Transition.COMPLETE,
        "hold_for_approval": Transition.COMPLETE,
        "regress_to_implementation": Transition.REGRESS,
        "regress_to_planning": Transition.REGRESS,
        "approve": Transition.APPROVE,
        "reject": Transition.REJECT,
        "cancel": Transition.CANCEL,
        "fail": Transition.FAIL,
    }
    possible = {names[t.name] for t in workflow.get_available_state_transitions()}
    return [
        str(t)
        for t in Transition
        if t in possible and (member_role is None or member_role in TRANSITION_MEMBER_ROLES[t])
    ]


def transition_check(workflow: Workflow, member_role: str | None, wanted: str) -> None:
    """Raise unless `member_role` may ask for `wanted` and the state allows it now."""
    if member_role is not None and member_role not in TRANSITION_MEMBER_ROLES[wanted]:
        allowed = sorted(r.value for r in MemberRole if r in TRANSITION_MEMBER_ROLES[wanted])
        raise ActionForbidden(
            f"'{wanted}' needs project role {' or '.join(allowed)}; you are {member_role}"
        )
    allowed = available_transitions(workflow, None)
    if wanted not in allowed:
        raise TransitionConflict(
            _conflict_message(workflow, wanted, allowed),
            current_state=workflow.state,
            allowed=allowed,
        )


def _conflict_message(workflow: Workflow, wanted: str, allowed: list[str]) -> str:
    where = f"workflow is in {workflow.state}"
    if workflow.awaiting_approval:
        where += " awaiting approval"
    if not allowed:
        return f"{where}; it is finished and allows no transitions"
    return f"{where}; '{wanted}' is not allowed; allowed: {', '.join(allowed)}"


def _expected_state_check(workflow: Workflow, member_role: str | None, expected: str) -> None:
    """A workflow found in another state than the caller saw: someone else moved it."""
    if expected != workflow.state:
        raise TransitionConflict(
            f"workflow is in {workflow.state}, not {expected}: the phase was "
            f"completed by another request; fetch the status and continue from there",
            current_state=workflow.state,
            allowed=available_transitions(workflow, member_role),
        )


# --- the one transition runner ---------------------------------------------------------


@dataclass
class _Change:
    """What a transition did to the locked workflow, for the runner to write."""

    events: list[WorkflowEvent]
    handoff: Handoff | None = None
    phase_result: PhaseResult | None = None
    messages: list[Message] = field(default_factory=list)


# Changes the locked workflow (with the caller's project role) and says what it did.
_Apply = Callable[[Workflow, str | None], _Change]


def _transition_run(
    *,
    workflow_id: Any,
    actor: Actor,
    wanted: str,
    apply: _Apply,
    expected_state: str | None = None,
) -> TransitionOutcome:
    """Lock → check → change → write (workflow, handoff, events) → on commit: broadcast
    and announce the transition to the listeners. All of it in one transaction."""
    with transaction.atomic():
        workflow, member_role = workflow_lock(workflow_id=workflow_id, actor=actor)
        if expected_state is not None:
            _expected_state_check(workflow, member_role, expected_state)
        transition_check(workflow, member_role, wanted)
        previous = workflow.state
        change = apply(workflow, member_role)
        _write(workflow, change, locked_state=previous)
        fact = TransitionCommitted(
            workflow_id=workflow.id,
            kind=wanted,
            from_state=previous,
            to_state=workflow.state,
            awaiting_approval=workflow.awaiting_approval,
            actor_name=actor.name,
        )
        transaction.on_commit(partial(transition_committed_announce, fact), robust=True)
    return TransitionOutcome(workflow, previous, change.handoff, change.phase_result)


def _write(workflow: Workflow, change: _Change, *, locked_state: str | None) -> None:
    """Save the workflow, then its new rows (one insert per model); broadcast the events
    after commit. A role the workflow has just entered gets its RoleContext (upserted).

    The save is guarded by ConcurrentTransitionMixin on the state the workflow was loaded
    in: a row found in another state is a ConcurrentTransition, and the transaction
    rolls back whole."""
    if locked_state is None:
        workflow.save(force_insert=True)
    else:
        try:
            workflow.save(update_fields=Workflow.MUTABLE_FIELDS)
        except ConcurrentTransition as exc:
            raise ConcurrentTransition(
                f"workflow {workflow.pk} left {locked_state} while it was locked"
            ) from exc
    if workflow.state != locked_state:
        _role_context_upsert(workflow)
    if change.messages:
        Message.objects.bulk_create(change.messages)
    WorkflowEvent.objects.bulk_create(change.events)
    if change.handoff is not None:
        Handoff.objects.bulk_create([change.handoff])
    transaction.on_commit(partial(workflow_events_broadcast, events=change.events), robust=True)


def _role_context_upsert(workflow: Workflow) -> None:
    """The RoleContext of the role that now owns the workflow, its system prompt rendered."""
    role = workflow.current_role
    if role is None:
        return
    # Only the entered role's template is read, and only when a role is entered (not at
    # the end, not by the lock's other users). It is not locked: a prompt published
    # meanwhile is the next transition's.
    template = prompt_template_active(role=role)
    model_settings = model_settings_for(
        name=workflow.model_name, role_setting=workflow.project.role_setting(role)
    )
    context = RoleContext(
        workflow=workflow,
        role=role,
        system_prompt=prompt_render(
            body=template.body, workflow=workflow, role=role, state=workflow.state
        ),
        prompt_template=template,
        prompt_version=template.sha256,
        model_settings=model_settings,
    )
    RoleContext.objects.bulk_create(
        [context],
        update_conflicts=True,
        unique_fields=["workflow", "role"],
        update_fields=[
            "system_prompt",
            "prompt_template",
            "prompt_version",
            "model_settings",
            "updated_at",
        ],
    )


def _event(workflow: Workflow, actor: Actor, type_: str, data: dict) -> WorkflowEvent:
    return WorkflowEvent(
        workflow=workflow,
        seq=workflow.next_event_seq(),
        type=type_,
        data=data,
        actor=actor.user,
        actor_name=actor.name,
        request_id=request_id_current(),
    )


def _handoff(
    workflow: Workflow,
    actor: Actor,
    *,
    kind: str,
    from_state: str,
    from_role: str | None,
    reason: str = "",
    feedback: str = "",
    summary: str = "",
    phase_result: PhaseResult | None = None,
) -> tuple[Handoff, WorkflowEvent]:
    """The Handoff row of a transition that has just happened, and its event."""
    event = _event(
        workflow,
        actor,
        EventType.TRANSITIONED,
        {
            "kind": kind,
            "from_state": from_state,
            "to_state": workflow.state,
            "from_role": from_role,
            "to_role": workflow.current_role,
            "reason": reason,
            "feedback": feedback,
            "regression_count": workflow.regression_count,
            "awaiting_approval": workflow.awaiting_approval,
        },
    )
    handoff = Handoff(
        workflow=workflow,
        kind=kind,
        from_role=from_role,
        to_role=workflow.current_role,
        from_state=from_state,
        to_state=workflow.state,
        actor=actor.user,
        actor_name=actor.name,
        reason=reason,
        feedback=feedback,
        summary=summary,
        phase_result=phase_result,
        event_seq=event.seq,
    )
    return handoff, event


def _outcome_apply(
    workflow: Workflow,
    actor: Actor,
    outcome: PhaseOutcome,
    *,
    reason: str = "",
    summary: str = "",
    phase_result: PhaseResult | None = None,
) -> tuple[Handoff | None, WorkflowEvent]:
    """Move the workflow as `outcome` says: its handoff (None when held) and event."""
    from_state, from_role = workflow.state, workflow.current_role
    if outcome.kind == OutcomeKind.HOLD:
        workflow.hold_for_approval()
        data = {"phase": from_state, "phase_result_id": phase_result.pk}
        return None, _event(workflow, actor, EventType.APPROVAL_REQUESTED, data)
    if outcome.kind == OutcomeKind.ADVANCE:
        workflow.advance()
        kind, details = HandoffKind.FORWARD, {"summary": summary}
    elif outcome.kind == OutcomeKind.REGRESS:
        if outcome.target == State.PLANNING:
            workflow.regress_to_planning()
        else:
            workflow.regress_to_implementation()
        kind = HandoffKind.REGRESSION
        details = {"reason": reason, "summary": f"Sent back from {from_state}: {reason}"}
    else:
        limit = workflow.regression_limit
        workflow.fail(reason=f"regression limit of {limit} reached; last: {reason}")
        kind, details = HandoffKind.FAIL, {"reason": workflow.terminal_reason}
    return _handoff(
        workflow,
        actor,
        kind=kind,
        from_state=from_state,
        from_role=from_role,
        feedback=outcome.feedback,
        phase_result=phase_result,
        **details,
    )


def _title(requirements: dict) -> str:
    first_line = str(requirements.get("title") or requirements["description"]).strip()
    first_line = first_line.splitlines()[0] if first_line else "Untitled"
    return first_line[:200]


# --- services --------------------------------------------------------------------------


def workflow_initialize(
    *,
    project: Project,
    requirements: dict,
    actor: Actor,
    model_name: str | None = None,
    build_id: str = "",
    external_user_id: str = "",
) -> Workflow:
    """Open a workflow in DISCOVERY for `project`, owned by Q_ASSISTANT."""
    if actor.user is not None:
        role = (
            Membership.objects.filter(project=project, user=actor.user)
            .values_list("role", flat=True)
            .first()
        )
        if role is None:
            raise ProjectNotFound()
        if role == MemberRole.VIEWER:
            raise ActionForbidden("starting a workflow needs project role owner or developer")
    try:
        model_name = model_resolve(model_name or settings.TOPDOG_DEFAULT_MODEL).name
    except UnknownModel as exc:
        raise ValidationError({"model": [str(exc)]}) from None
    with transaction.atomic():
        workflow = Workflow(
            project=project,
            created_by=actor.user,
            build_id=build_id,
            external_user_id=external_user_id,
            title=_title(requirements),
            requirements=requirements,
            model_name=model_name,
            regression_limit=project.regression_limit,
        )
        event = _event(
            workflow,
            actor,
            EventType.WORKFLOW_CREATED,
            {
                "state": workflow.state,
                "role": workflow.current_role,
                "title": workflow.title,
                "project_id": str(project.id),
                "model": model_name,
                "regression_limit": workflow.regression_limit,
            },
        )
        _write(workflow, _Change([event]), locked_state=None)
    return workflow


def workflow_phase_complete(
    *,
    workflow_id: Any,
    ai_response: str,
    result: Any,
    actor: Actor,
    expected_state: str | None = None,
    usage: CallUsage | None = None,
) -> TransitionOutcome:
    """Store the current phase's evidence and move on: forward, to a gate, or back.

    A failing test report or a rejected verification is valid evidence that regresses the
    workflow with the findings as feedback. With `expected_state`, a workflow found in
    another state (someone else completed the phase first) is a conflict, not a
    validation error.
    """

    def apply(workflow: Workflow, member_role: str | None) -> _Change:
        return _phase_complete(workflow, actor, ai_response, result, usage or CallUsage())

    return _transition_run(
        workflow_id=workflow_id,
        actor=actor,
        wanted=Transition.COMPLETE,
        apply=apply,
        expected_state=expected_state,
    )


def _phase_complete(
    workflow: Workflow, actor: Actor, ai_response: str, result: Any, usage: CallUsage
) -> _Change:
    phase, role = workflow.state, workflow.current_role
    evidence = evidence_validate(phase=phase, data=result, ai_response=ai_response)
    evidence, change_set_checked = evidence_verify(
        workflow=workflow, phase=phase, evidence=evidence
    )
    if phase == State.TESTING:
        workflow.tests_verified = evidence["verified"]
    if phase == State.PLANNING:
        plan_check(workflow=workflow, evidence=evidence)
    outcome = phase_outcome_decide(
        phase=phase,
        evidence=evidence,
        gates=workflow.project.approval_gates or (),
        threshold=workflow.project.quality_threshold,
        regression_count=workflow.regression_count,
        regression_limit=workflow.regression_limit,
    )
    # Inserted first: the event and the handoff refer to its id.
    phase_result = PhaseResult.objects.create(
        workflow=workflow,
        phase=phase,
        attempt=workflow.next_attempt(phase),
        status=PhaseResult.Status.PENDING_APPROVAL
        if outcome.kind == OutcomeKind.HOLD
        else PhaseResult.Status.ACCEPTED,
        ai_response=ai_response,
        result=evidence,
        artifacts=evidence_artifacts(phase=phase, result=evidence),
        content_hash=sha256_text(canonical_json(evidence)),
        created_by=actor.user,
    )
    _work_items_follow(workflow, phase, phase_result, evidence, outcome)
    if change_set_checked is not None:
        syntax_check_row(
            workflow=workflow,
            phase_result=phase_result,
            verdict=change_set_checked,
            actor_name=actor.name,
        ).save()
    message = _message_of(workflow, role, phase, ai_response or canonical_json(evidence), usage)
    completed = _phase_completed_event(workflow, actor, phase_result, message, usage)
    summary = evidence_summary(phase=phase, result=evidence)
    handoff, moved = _outcome_apply(
        workflow,
        actor,
        outcome,
        reason=f"{phase} sent the work back: {summary}",
        summary=summary,
        phase_result=phase_result,
    )
    return _Change([completed, moved], handoff, phase_result, messages=[message])


def _work_items_follow(
    workflow: Workflow,
    phase: str,
    phase_result: PhaseResult,
    evidence: dict,
    outcome: PhaseOutcome,
) -> None:
    """The work items follow the phase result, in its transaction: a plan's items become
    the current ones; a change set settles them; findings sent back reset what they name."""
    if phase == State.PLANNING:
        work_items_from_plan(workflow=workflow, phase_result=phase_result, evidence=evidence)
    elif phase == State.IMPLEMENTATION:
        work_items_settle(workflow=workflow, evidence=evidence)
    elif outcome.kind == OutcomeKind.REGRESS and outcome.target == State.IMPLEMENTATION:
        work_items_reset(
            workflow=workflow, paths=named_paths(evidence=evidence), feedback=outcome.feedback
        )


def _message_of(
    workflow: Workflow, role: str, phase: str, content: str, usage: CallUsage
) -> Message:
    """The assistant's message of a completed phase; its cost is added to the workflow's."""
    workflow.input_tokens += usage.input_tokens
    workflow.output_tokens += usage.output_tokens
    workflow.cost_usd += usage.cost_usd
    return Message(
        workflow=workflow,
        seq=workflow.next_message_seq(),
        role=role,
        sender=Sender.ASSISTANT,
        phase=phase,
        content=content,
        provider=usage.provider,
        model=usage.model,
        prompt_version=usage.prompt_version,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=usage.cost_usd,
    )


def _phase_completed_event(
    workflow: Workflow,
    actor: Actor,
    phase_result: PhaseResult,
    message: Message,
    usage: CallUsage,
) -> WorkflowEvent:
    return _event(
        workflow,
        actor,
        EventType.PHASE_COMPLETED,
        {
            "phase": phase_result.phase,
            "role": message.role,
            "attempt": phase_result.attempt,
            "phase_result_id": phase_result.pk,
            "status": phase_result.status,
            "content_hash": phase_result.content_hash,
            "message_seq": message.seq,
            "usage": {
                "provider": usage.provider,
                "model": usage.model,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cost_usd": str(usage.cost_usd),
            },
        },
    )


def workflow_event_record(*, workflow_id: Any, actor: Actor, type_: str, data: dict) -> None:
    """Append an event that moves nothing (e.g. a failed release), with the next seq."""
    with transaction.atomic():
        workflow, _ = workflow_lock(workflow_id=workflow_id, actor=Actor.system())
        event = _event(workflow, actor, type_, data)
        _write(workflow, _Change([event]), locked_state=workflow.state)


def workflow_regress(
    *, workflow_id: Any, target: str | None, reason: str, feedback: str, actor: Actor
) -> TransitionOutcome:
    """Send the work back from TESTING or VERIFICATION, with feedback for the next role."""

    def apply(workflow: Workflow, member_role: str | None) -> _Change:
        targets = REGRESSION_TARGETS[workflow.state]
        chosen = target or targets[0]
        if chosen not in targets:
            raise TransitionConflict(
                f"workflow is in {workflow.state}; it can go back to {', '.join(targets)}, "
                f"not {chosen}",
                current_state=workflow.state,
                allowed=available_transitions(workflow, member_role),
            )
        outcome = regression_outcome(
            target=chosen,
            feedback=feedback,
            regression_count=workflow.regression_count,
            regression_limit=workflow.regression_limit,
        )
        if outcome.kind == OutcomeKind.REGRESS and outcome.target == State.IMPLEMENTATION:
            # No file named: every item is redone.
            work_items_reset(workflow=workflow, paths=set(), feedback=feedback or reason)
        handoff, event = _outcome_apply(workflow, actor, outcome, reason=reason)
        return _Change([event], handoff)

    return _transition_run(
        workflow_id=workflow_id, actor=actor, wanted=Transition.REGRESS, apply=apply
    )


def workflow_approve(*, workflow_id: Any, actor: Actor, comment: str = "") -> TransitionOutcome:
    """Let a gated phase's stored result through to the next phase."""

    def apply(workflow: Workflow, member_role: str | None) -> _Change:
        previous, role = workflow.state, workflow.current_role
        pending = _pending_result_settle(workflow, PhaseResult.Status.ACCEPTED)
        workflow.approve()
        handoff, event = _handoff(
            workflow,
            actor,
            kind=HandoffKind.APPROVAL,
            from_state=previous,
            from_role=role,
            reason=comment or "approved",
            summary=evidence_summary(phase=previous, result=pending.result),
            phase_result=pending,
        )
        return _Change([event], handoff, pending)

    return _transition_run(
        workflow_id=workflow_id, actor=actor, wanted=Transition.APPROVE, apply=apply
    )


def workflow_reject(*, workflow_id: Any, actor: Actor, feedback: str) -> TransitionOutcome:
    """Turn down a gated phase's result; the same role redoes the phase with `feedback`."""

    def apply(workflow: Workflow, member_role: str | None) -> _Change:
        previous, role = workflow.state, workflow.current_role
        pending = _pending_result_settle(workflow, PhaseResult.Status.REJECTED)
        workflow.reject()
        handoff, event = _handoff(
            workflow,
            actor,
            kind=HandoffKind.REJECTION,
            from_state=previous,
            from_role=role,
            reason="rejected at the approval gate",
            feedback=feedback,
            summary=f"{previous} result rejected: {feedback}",
            phase_result=pending,
        )
        return _Change([event], handoff, pending)

    return _transition_run(
        workflow_id=workflow_id, actor=actor, wanted=Transition.REJECT, apply=apply
    )


def _pending_result_settle(workflow: Workflow, status: str) -> PhaseResult:
    """The gated phase's pending result, given its `status` (accepted or rejected)."""
    pending = (
        PhaseResult.objects.filter(
            workflow=workflow, phase=workflow.state, status=PhaseResult.Status.PENDING_APPROVAL
        )
        .order_by("-attempt")
        .first()
    )
    pending.status = status
    pending.save(update_fields=["status"])
    return pending


def workflow_cancel(*, workflow_id: Any, actor: Actor, reason: str = "") -> TransitionOutcome:
    """Stop a workflow for good at the caller's request."""
    return _terminate(workflow_id, actor, Transition.CANCEL, reason or "cancelled")


def workflow_fail(*, workflow_id: Any, actor: Actor, reason: str) -> TransitionOutcome:
    """Mark a workflow failed, with the reason."""
    return _terminate(workflow_id, actor, Transition.FAIL, reason)


def _terminate(workflow_id: Any, actor: Actor, wanted: str, reason: str) -> TransitionOutcome:
    def apply(workflow: Workflow, member_role: str | None) -> _Change:
        previous, role = workflow.state, workflow.current_role
        if workflow.awaiting_approval:
            PhaseResult.objects.filter(
                workflow=workflow, status=PhaseResult.Status.PENDING_APPROVAL
            ).update(status=PhaseResult.Status.WITHDRAWN)
        work_items_cancel(workflow=workflow)
        if wanted == Transition.CANCEL:
            workflow.cancel(reason=reason)
            kind = HandoffKind.CANCEL
        else:
            workflow.fail(reason=reason)
            kind = HandoffKind.FAIL
        handoff, event = _handoff(
            workflow, actor, kind=kind, from_state=previous, from_role=role, reason=reason
        )
        return _Change([event], handoff)

    return _transition_run(workflow_id=workflow_id, actor=actor, wanted=wanted, apply=apply)


# --- work items ------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkItemCompleted:
    item: WorkItem
    promoted: list[str]
    # The phase's transition, when this was the last item (None otherwise).
    phase: TransitionOutcome | None = None


def _item_event(workflow: Workflow, actor: Actor, type_: str, item: WorkItem, **data) -> None:
    """Record a work item's event under the workflow's lock (broadcast after commit)."""
    payload = {"key": item.key, "item_id": item.pk, "status": item.status, **data}
    event = _event(workflow, actor, type_, payload)
    _write(workflow, _Change([event]), locked_state=workflow.state)


def _item_locked(workflow: Workflow, member_role: str | None, key: str) -> WorkItem:
    """The current plan's item `key` of a workflow in IMPLEMENTATION, locked."""
    transition_check(workflow, member_role, Transition.COMPLETE)
    if workflow.state != State.IMPLEMENTATION:
        raise TransitionConflict(
            f"workflow is in {workflow.state}; work items are worked in IMPLEMENTATION",
            current_state=workflow.state,
            allowed=available_transitions(workflow, member_role),
        )
    item = work_items_current(workflow_id=workflow.id).filter(key=key).select_for_update().first()
    if item is None:
        raise WorkflowNotFound(f"work item {key!r} is not in the workflow's current plan")
    return item


def work_item_start(
    *, workflow_id: Any, item_id: Any, worker_id: str, actor: Actor
) -> uuid.UUID | None:
    """A worker takes a claimed item; its `work_item.started` event. Returns the lease
    token this take issues (the holder's proof for its later writes); None: not theirs."""
    from_claim = WorkItem.Status.RUNNING
    with transaction.atomic():
        workflow, _ = workflow_lock(workflow_id=workflow_id, actor=actor)
        item = (
            WorkItem.objects.select_for_update()
            .filter(pk=item_id, status=from_claim, worker_id="", superseded=False)
            .first()
        )
        if item is None or workflow.state != State.IMPLEMENTATION:
            return None
        now = timezone.now()
        item.worker_id = worker_id
        item.lease_token = uuid.uuid4()
        item.started_at = item.heartbeat_at = now
        item.attempt += 1
        item.executions += 1
        item.save()
        _item_event(
            workflow,
            actor,
            EventType.WORK_ITEM_STARTED,
            item,
            attempt=item.attempt,
            worker=worker_id,
        )
    return item.lease_token


def work_item_complete(
    *,
    workflow_id: Any,
    key: str,
    ai_response: str,
    files: Any,
    actor: Actor,
    usage: CallUsage | None = None,
    message: str = "",
    lease_token: uuid.UUID | None = None,
) -> WorkItemCompleted:
    """Store an item's files (a change set within its declared files that passes the
    static checks) and mark it done; its dependents whose dependencies are all done
    become ready. The last item completes IMPLEMENTATION with the merged change set, in
    the same transaction, through `workflow_phase_complete`.

    A worker completes only the item it holds: `lease_token` must be the item's current
    token, checked under the item's row lock (a worker whose lease was taken over is
    refused). Anyone else (the IDE) completes a ready or running one."""
    usage = usage or CallUsage()
    with transaction.atomic():
        workflow, member_role = workflow_lock(workflow_id=workflow_id, actor=actor)
        item = _item_locked(workflow, member_role, key)
        holder_ok = lease_token is None or (
            item.status == WorkItem.Status.RUNNING and item.lease_token == lease_token
        )
        if item.status not in (WorkItem.Status.READY, WorkItem.Status.RUNNING) or not holder_ok:
            raise TransitionConflict(
                f"work item {key} is {item.status}"
                + (" and no longer this worker's (lease taken over)" if not holder_ok else "")
                + "; only a ready or running item can be completed",
                current_state=workflow.state,
                allowed=available_transitions(workflow, member_role),
            )
        changes = work_item_files_verify(files=files, allowed=item.files)
        item.status = WorkItem.Status.DONE
        item.result_files = changes
        item.result_sha256 = sha256_text(canonical_json(changes))
        item.result_message = (message or item.title)[:5000]
        item.ai_response = ai_response
        item.error = ""
        item.worker_id = ""
        item.lease_token = None
        item.lease_expires_at = None
        item.finished_at = timezone.now()
        item.input_tokens += usage.input_tokens
        item.output_tokens += usage.output_tokens
        item.cost_usd += usage.cost_usd
        item.save()
        promoted = work_items_promote(workflow_id=workflow.id)
        _item_event(
            workflow,
            actor,
            EventType.WORK_ITEM_FINISHED,
            item,
            sha256=item.result_sha256,
            files=[change["path"] for change in changes],
            ready=promoted,
        )
        phase = None
        if (
            not work_items_current(workflow_id=workflow.id)
            .exclude(status=WorkItem.Status.DONE)
            .exists()
        ):
            phase = _items_phase_complete(workflow, actor)
    return WorkItemCompleted(item, promoted, phase)


def _items_phase_complete(workflow: Workflow, actor: Actor) -> TransitionOutcome:
    """IMPLEMENTATION completed by its items' merged change set, as complete-phase would;
    the items' usage not yet booked goes on its message."""
    booked = work_items_unbooked_usage(workflow_id=workflow.id)
    model_name = workflow.project.model_for(Role.CODE_WRITER, workflow.model_name)
    catalog = settings.TOPDOG_MODELS.get(model_name, {})
    called = booked["input_tokens"] + booked["output_tokens"] > 0
    merged = work_items_merged(workflow=workflow)
    return workflow_phase_complete(
        workflow_id=workflow.id,
        ai_response=f"{merged['commit_message']}\n\n{merged['notes']}",
        result=merged,
        actor=actor,
        expected_state=State.IMPLEMENTATION,
        usage=CallUsage(
            provider=catalog.get("provider", "") if called else "",
            model=catalog.get("model", "") if called else "",
            input_tokens=booked["input_tokens"],
            output_tokens=booked["output_tokens"],
            cost_usd=booked["cost_usd"],
        ),
    )


def work_item_fail(
    *,
    workflow_id: Any,
    item_id: Any,
    lease_token: uuid.UUID,
    error: str,
    actor: Actor,
    usage: CallUsage | None = None,
    final: bool,
) -> bool:
    """An attempt at the item failed: its `work_item.failed` event; the worker tries again
    (the item stays its own) unless `final`, which fails the item. False: not the
    holder's (`lease_token` is not the item's current one)."""
    usage = usage or CallUsage()
    with transaction.atomic():
        workflow, _ = workflow_lock(workflow_id=workflow_id, actor=actor)
        item = (
            WorkItem.objects.select_for_update()
            .filter(pk=item_id, status=WorkItem.Status.RUNNING, lease_token=lease_token)
            .first()
        )
        if item is None:
            return False
        item.error = error[:10_000]
        item.input_tokens += usage.input_tokens
        item.output_tokens += usage.output_tokens
        item.cost_usd += usage.cost_usd
        if final:
            item.status = WorkItem.Status.FAILED
            item.worker_id = ""
            item.lease_token = None
            item.lease_expires_at = None
            item.finished_at = timezone.now()
        else:
            item.attempt += 1
        item.save()
        _item_event(
            workflow,
            actor,
            EventType.WORK_ITEM_FAILED,
            item,
            attempt=item.attempt - (0 if final else 1),
            error=error[:2000],
            final=final,
        )
    return True


# --- projects --------------------------------------------------------------------------

# What project_create and project_update may set: every field a person edits.
PROJECT_FIELDS = frozenset(
    field.name
    for field in Project._meta.concrete_fields
    if field.editable and not field.primary_key
)


def project_create(
    *,
    slug: str,
    name: str,
    actor: Actor,
    owner: AbstractBaseUser | None = None,
    **settings: Any,
) -> Project:
    """Create a project, validated as the model validates it; `owner` (if given) becomes
    its owner member. Audited like a project change (`project_audit`)."""
    _project_fields_check(settings)
    project = Project(slug=slug, name=name, **settings)
    project.full_clean()
    with transaction.atomic():
        project.save(force_insert=True)
        if owner is not None:
            Membership.objects.create(project=project, user=owner, role=MemberRole.OWNER)
        project_audit(project=project, actor=actor, added=True, fields=[])
    return project


def project_update(*, project: Project, actor: Actor, **changes: Any) -> list[str]:
    """Set `changes` on `project` under its row lock: only the fields whose stored value
    differs are validated and written. Returns their names (audited if any)."""
    _project_fields_check(changes)
    with transaction.atomic():
        stored = Project.objects.select_for_update().get(pk=project.pk)
        changed = [name for name, value in changes.items() if getattr(stored, name) != value]
        if not changed:
            return []
        for name in changed:
            setattr(stored, name, changes[name])
        stored.full_clean(exclude=sorted(PROJECT_FIELDS - set(changed)))
        stored.save(update_fields=changed)
        project_audit(project=stored, actor=actor, added=False, fields=changed)
    for name in changed:  # the caller's instance follows, once it is stored
        setattr(project, name, changes[name])
    return changed


def project_audit(*, project: Project, actor: Actor, added: bool, fields: list[str]) -> None:
    """Record a project's creation or change: in the admin's history of the project (when
    a person made it) and in the log. Field names only: never a value (secrets)."""
    what = "created" if added else f"changed {', '.join(fields)}"
    logger.info("project %s %s by %s", project.slug, what, actor.name)
    if actor.user is None:
        return
    message = [{"added": {}}] if added else [{"changed": {"fields": fields}}]
    LogEntry.objects.log_actions(
        actor.user.pk,
        [project],
        ADDITION if added else CHANGE,
        message,
        single_object=True,
    )


def _project_fields_check(fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - PROJECT_FIELDS)
    if unknown:
        raise TypeError(f"not project settings: {', '.join(unknown)}")
