"""Business writes on workflows.

Every service that moves a workflow follows one shape: lock the workflow row
(`select_for_update`; SQLite takes its write lock at BEGIN IMMEDIATE), check what the
caller asked against the state it finds, write the state change together with exactly
one Handoff and the next gapless WorkflowEvents, and only after commit broadcast them.
Either all of that commits or none of it does.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Model, QuerySet
from django_fsm import ConcurrentTransition

from ai_orchestration.prompts import (
    PROMPT_TEMPLATES_ACTIVE,
    prompt_render,
    prompt_template_active,
)
from topdog.compiled import (
    CompiledQuery,
    NextPk,
    Update,
    UpdateMissed,
    Upsert,
    model_insert,
    models_write,
)
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
from workflows.models import (
    Handoff,
    Membership,
    Message,
    PhaseResult,
    Project,
    RoleContext,
    Workflow,
    WorkflowEvent,
)
from workflows.selectors import MEMBER_USER_ID, WORKFLOW_ID, workflow_uuid
from workflows.states import (
    REGRESSION_TARGETS,
    TRANSITION_MEMBER_ROLES,
    EventType,
    HandoffKind,
    MemberRole,
    Sender,
    State,
    Transition,
)
from workflows.verification import evidence_verify, syntax_check_row


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


# --- helpers ---------------------------------------------------------------------------


def _locked(*, as_member: bool, reserve_phase_result: bool) -> CompiledQuery:
    """The workflow row to lock, with its project (not locked), compiled once.

    The state is read twice: `stored_state` is what the row holds until this transaction
    writes it, and the write is guarded on it (see _save). As a member, the user's
    project role comes with it (no row: not a member). `reserved_phase_result_id` is an
    id for a phase result this transaction will write (None where the database has no
    sequences; see NextPk)."""

    def build(workflow_id: Any, user_id: Any = None) -> QuerySet[Workflow]:
        queryset = (
            Workflow.objects.select_related("project")
            .select_for_update(of=("self",))
            .filter(pk=workflow_id)
            .annotate(stored_state=F("state"))
        )
        if as_member:
            queryset = queryset.filter(project__memberships__user_id=user_id).annotate(
                member_role=F("project__memberships__role")
            )
        if reserve_phase_result:
            queryset = queryset.annotate(reserved_phase_result_id=NextPk(PhaseResult))
        return queryset

    params = {"workflow_id": WORKFLOW_ID}
    if as_member:
        params["user_id"] = MEMBER_USER_ID
    return CompiledQuery(build, **params)


# Every transition starts with one of these reads, by (as a member, reserving a phase
# result id).
_LOCKS = {
    (as_member, reserve): _locked(as_member=as_member, reserve_phase_result=reserve)
    for as_member in (True, False)
    for reserve in (True, False)
}


def workflow_lock(
    *, workflow_id: Any, actor: Actor, reserve_phase_result: bool = False
) -> tuple[Workflow, str | None]:
    """The workflow row, locked, with its project, and the actor's project role (None for
    system actors). A workflow the user's projects do not hold is WorkflowNotFound.

    The same round trip reads the active prompt templates (`workflow.active_templates`,
    by role), which a transition into a new role renders, and with `reserve_phase_result`
    takes an id for the phase result the caller will write
    (`workflow.reserved_phase_result_id`, None on SQLite)."""
    workflow_id = workflow_uuid(workflow_id)
    # The project and template rows are read with the lock (one round trip on
    # PostgreSQL) but not locked: what a transition reads of them (gates, threshold,
    # models, prompts) may change concurrently without making the transition wrong.
    as_member = actor.user is not None
    values = {"workflow_id": workflow_id}
    if as_member:
        values["user_id"] = actor.user.pk
    lock = (_LOCKS[as_member, reserve_phase_result], values)
    found, templates = CompiledQuery.instances_together(lock, (PROMPT_TEMPLATES_ACTIVE, {}))
    if not found:
        raise WorkflowNotFound()
    workflow = found[0]
    workflow.active_templates = {template.role: template for template in templates}
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


def _event(workflow: Workflow, actor: Actor, type_: str, data: dict) -> WorkflowEvent:
    return WorkflowEvent(
        workflow=workflow,
        seq=workflow.next_event_seq(),
        type=type_,
        data=data,
        actor=actor.user,
        actor_name=actor.name,
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


def _role_context_row(workflow: Workflow) -> Upsert | None:
    """The RoleContext of the role that now owns the workflow, its system prompt rendered."""
    if workflow.current_role is None:
        return None
    # Read with the lock; initialize (nothing to lock) or a role without an active
    # template (restored from the shipped default) reads it here.
    template = getattr(workflow, "active_templates", {}).get(workflow.current_role)
    if template is None:
        template = prompt_template_active(role=workflow.current_role)
    model_name = workflow.project.model_for(workflow.current_role, workflow.model_name)
    model_settings = {
        "model_name": model_name,
        **settings.TOPDOG_MODELS[model_name],
        "temperature": settings.TOPDOG_DEFAULT_TEMPERATURE,
        "max_tokens": settings.TOPDOG_DEFAULT_MAX_TOKENS,
    }
    return Upsert(
        RoleContext(
            workflow=workflow,
            role=workflow.current_role,
            system_prompt=prompt_render(
                body=template.body,
                workflow=workflow,
                role=workflow.current_role,
                state=workflow.state,
            ),
            prompt_template=template,
            prompt_version=template.sha256,
            model_settings=model_settings,
        ),
        unique_fields=("workflow", "role"),
        update_fields=(
            "system_prompt",
            "prompt_template",
            "prompt_version",
            "model_settings",
            "updated_at",
        ),
    )


def _save(
    workflow: Workflow,
    events: Iterable[WorkflowEvent],
    handoff: Handoff | None = None,
    *,
    role_entered: bool = False,
    new_rows: Iterable[Model] = (),
) -> None:
    """Write the workflow and its new rows (`new_rows` not yet inserted, the role context
    of a role it has just entered, events, handoff) in one batch; broadcast the events
    after commit.

    A locked workflow's UPDATE is guarded on the state it was locked in, as
    ConcurrentTransitionMixin guards its save: a row found in another state is a
    ConcurrentTransition and the transaction rolls back whole."""
    events = list(events)
    if workflow._state.adding:
        head: Workflow | Update = workflow
    else:
        head = Update(workflow, Workflow.MUTABLE_FIELDS, where={"state": workflow.stored_state})
    role_context = _role_context_row(workflow) if role_entered else None
    new_rows = [row for row in new_rows if row._state.adding]
    rows = [head, *new_rows, role_context, *events, handoff]
    try:
        models_write([row for row in rows if row is not None])
    except UpdateMissed as exc:
        raise ConcurrentTransition(
            f"workflow {workflow.pk} left {workflow.stored_state} while it was locked"
        ) from exc
    workflow.stored_state = workflow.state
    # The mixin's own save does this: later saves of this instance guard on the new state.
    workflow._update_initial_state()
    transaction.on_commit(partial(workflow_events_broadcast, events=events), robust=True)


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
    model_name = model_name or settings.TOPDOG_DEFAULT_MODEL
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
        _save(workflow, [event], role_entered=True)
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
    with transaction.atomic():
        workflow, member_role = workflow_lock(
            workflow_id=workflow_id, actor=actor, reserve_phase_result=True
        )
        if expected_state is not None and expected_state != workflow.state:
            allowed = available_transitions(workflow, member_role)
            raise TransitionConflict(
                f"workflow is in {workflow.state}, not {expected_state}: the phase was "
                f"completed by another request; fetch the status and continue from there",
                current_state=workflow.state,
                allowed=allowed,
            )
        transition_check(workflow, member_role, Transition.COMPLETE)
        phase, role = workflow.state, workflow.current_role
        evidence = evidence_validate(phase=phase, data=result)
        evidence, change_set_checked = evidence_verify(
            workflow=workflow, phase=phase, evidence=evidence
        )
        if phase == State.TESTING:
            workflow.tests_verified = evidence["verified"]

        regress_to, feedback = _regression_asked(
            phase, evidence, workflow.project.quality_threshold
        )
        gated = regress_to is None and workflow.project.has_gate(phase)
        attempt = workflow.next_attempt(phase)
        phase_result = PhaseResult(
            pk=workflow.reserved_phase_result_id,
            workflow=workflow,
            phase=phase,
            attempt=attempt,
            status=PhaseResult.Status.PENDING_APPROVAL if gated else PhaseResult.Status.ACCEPTED,
            ai_response=ai_response,
            result=evidence,
            artifacts=evidence_artifacts(phase=phase, result=evidence),
            content_hash=sha256_text(canonical_json(evidence)),
            created_by=actor.user,
        )
        if phase_result.pk is None:
            # No id reserved (SQLite): insert it now for its id. Otherwise it is written
            # with the rest, and the events and handoff refer to its reserved id.
            model_insert(phase_result)
        usage = usage or CallUsage()
        message = Message(
            workflow=workflow,
            seq=workflow.next_message_seq(),
            role=role,
            sender=Sender.ASSISTANT,
            phase=phase,
            content=ai_response or canonical_json(evidence),
            provider=usage.provider,
            model=usage.model,
            prompt_version=usage.prompt_version,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=usage.cost_usd,
        )
        workflow.input_tokens += usage.input_tokens
        workflow.output_tokens += usage.output_tokens
        workflow.cost_usd += usage.cost_usd
        events = [
            _event(
                workflow,
                actor,
                EventType.PHASE_COMPLETED,
                {
                    "phase": phase,
                    "role": role,
                    "attempt": attempt,
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
        ]
        handoff = None
        summary = evidence_summary(phase=phase, result=evidence)
        if regress_to is not None:
            handoff, event = _regress(
                workflow,
                actor,
                target=regress_to,
                reason=f"{phase} sent the work back: {summary}",
                feedback=feedback,
                phase_result=phase_result,
            )
            events.append(event)
        elif gated:
            workflow.hold_for_approval()
            events.append(
                _event(
                    workflow,
                    actor,
                    EventType.APPROVAL_REQUESTED,
                    {"phase": phase, "phase_result_id": phase_result.pk},
                )
            )
        else:
            workflow.advance()
            handoff, event = _handoff(
                workflow,
                actor,
                kind=HandoffKind.FORWARD,
                from_state=phase,
                from_role=role,
                summary=summary,
                phase_result=phase_result,
            )
            events.append(event)
        _save(
            workflow,
            events,
            handoff,
            role_entered=workflow.state != phase,
            new_rows=[phase_result, message],
        )
        if change_set_checked is not None:
            syntax_check_row(
                workflow=workflow,
                phase_result=phase_result,
                verdict=change_set_checked,
                actor_name=actor.name,
            ).save()
    return TransitionOutcome(workflow, phase, handoff, phase_result)


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


def _regress(
    workflow: Workflow,
    actor: Actor,
    *,
    target: str,
    reason: str,
    feedback: str,
    phase_result: PhaseResult | None = None,
) -> tuple[Handoff, WorkflowEvent]:
    """Send the work back to `target`, or fail the workflow if it is out of regressions."""
    from_state, from_role = workflow.state, workflow.current_role
    if workflow.regression_count >= workflow.regression_limit:
        workflow.fail(
            reason=f"regression limit of {workflow.regression_limit} reached; last: {reason}"
        )
        return _handoff(
            workflow,
            actor,
            kind=HandoffKind.FAIL,
            from_state=from_state,
            from_role=from_role,
            reason=workflow.terminal_reason,
            feedback=feedback,
            phase_result=phase_result,
        )
    if target == State.PLANNING:
        workflow.regress_to_planning()
    else:
        workflow.regress_to_implementation()
    return _handoff(
        workflow,
        actor,
        kind=HandoffKind.REGRESSION,
        from_state=from_state,
        from_role=from_role,
        reason=reason,
        feedback=feedback,
        summary=f"Sent back from {from_state}: {reason}",
        phase_result=phase_result,
    )


def workflow_event_record(*, workflow_id: Any, actor: Actor, type_: str, data: dict) -> None:
    """Append an event that moves nothing (e.g. a failed release), with the next seq."""
    with transaction.atomic():
        workflow, _ = workflow_lock(workflow_id=workflow_id, actor=Actor.system())
        _save(workflow, [_event(workflow, actor, type_, data)])


def workflow_regress(
    *, workflow_id: Any, target: str | None, reason: str, feedback: str, actor: Actor
) -> TransitionOutcome:
    """Send the work back from TESTING or VERIFICATION, with feedback for the next role."""
    with transaction.atomic():
        workflow, member_role = workflow_lock(workflow_id=workflow_id, actor=actor)
        transition_check(workflow, member_role, Transition.REGRESS)
        targets = REGRESSION_TARGETS[workflow.state]
        target = target or targets[0]
        if target not in targets:
            raise TransitionConflict(
                f"workflow is in {workflow.state}; it can go back to {', '.join(targets)}, "
                f"not {target}",
                current_state=workflow.state,
                allowed=available_transitions(workflow, member_role),
            )
        previous = workflow.state
        handoff, event = _regress(workflow, actor, target=target, reason=reason, feedback=feedback)
        _save(workflow, [event], handoff, role_entered=True)
    return TransitionOutcome(workflow, previous, handoff)


def workflow_approve(*, workflow_id: Any, actor: Actor, comment: str = "") -> TransitionOutcome:
    """Let a gated phase's stored result through to the next phase."""
    with transaction.atomic():
        workflow, member_role = workflow_lock(workflow_id=workflow_id, actor=actor)
        transition_check(workflow, member_role, Transition.APPROVE)
        previous, role = workflow.state, workflow.current_role
        pending = _pending_result(workflow)
        pending.status = PhaseResult.Status.ACCEPTED
        pending.save(update_fields=["status"])
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
        _save(workflow, [event], handoff, role_entered=True)
        transaction.on_commit(partial(_autopilot_resume, workflow.id), robust=True)
    return TransitionOutcome(workflow, previous, handoff, pending)


def _autopilot_resume(workflow_id: Any) -> None:
    from ai_orchestration.autopilot import autopilot_resume_after_approval

    autopilot_resume_after_approval(workflow_id=workflow_id)


def workflow_reject(*, workflow_id: Any, actor: Actor, feedback: str) -> TransitionOutcome:
    """Turn down a gated phase's result; the same role redoes the phase with `feedback`."""
    with transaction.atomic():
        workflow, member_role = workflow_lock(workflow_id=workflow_id, actor=actor)
        transition_check(workflow, member_role, Transition.REJECT)
        previous, role = workflow.state, workflow.current_role
        pending = _pending_result(workflow)
        pending.status = PhaseResult.Status.REJECTED
        pending.save(update_fields=["status"])
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
        _save(workflow, [event], handoff)
        transaction.on_commit(partial(_autopilot_resume, workflow.id), robust=True)
    return TransitionOutcome(workflow, previous, handoff, pending)


def _pending_result(workflow: Workflow) -> PhaseResult:
    return (
        PhaseResult.objects.filter(
            workflow=workflow, phase=workflow.state, status=PhaseResult.Status.PENDING_APPROVAL
        )
        .order_by("-attempt")
        .first()
    )


def workflow_cancel(*, workflow_id: Any, actor: Actor, reason: str = "") -> TransitionOutcome:
    """Stop a workflow for good at the caller's request."""
    return _terminate(workflow_id, actor, Transition.CANCEL, reason or "cancelled")


def workflow_fail(*, workflow_id: Any, actor: Actor, reason: str) -> TransitionOutcome:
    """Mark a workflow failed, with the reason."""
    return _terminate(workflow_id, actor, Transition.FAIL, reason)


def _terminate(workflow_id: Any, actor: Actor, wanted: str, reason: str) -> TransitionOutcome:
    with transaction.atomic():
        workflow, member_role = workflow_lock(workflow_id=workflow_id, actor=actor)
        transition_check(workflow, member_role, wanted)
        previous, role = workflow.state, workflow.current_role
        if workflow.awaiting_approval:
            PhaseResult.objects.filter(
                workflow=workflow, status=PhaseResult.Status.PENDING_APPROVAL
            ).update(status=PhaseResult.Status.WITHDRAWN)
        if wanted == Transition.CANCEL:
            workflow.cancel(reason=reason)
            kind = HandoffKind.CANCEL
        else:
            workflow.fail(reason=reason)
            kind = HandoffKind.FAIL
        handoff, event = _handoff(
            workflow, actor, kind=kind, from_state=previous, from_role=role, reason=reason
        )
        _save(workflow, [event], handoff)
        transaction.on_commit(partial(_autopilot_stop, workflow.id), robust=True)
    return TransitionOutcome(workflow, previous, handoff)


def _autopilot_stop(workflow_id: Any) -> None:
    from ai_orchestration.autopilot import autopilot_stop_for_workflow

    autopilot_stop_for_workflow(workflow_id=workflow_id)
