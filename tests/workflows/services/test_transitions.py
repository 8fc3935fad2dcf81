"""Every (state, transition) pair of the workflow state machine, driven through the services.

States are reached by calling the real services, never by writing the protected state
field. The expected outcomes below are written out by hand from the designed state machine
(workflows/states.py; docs/architecture.md, "Where to add a phase"), so a change
to the FSM that the design does not allow fails here.
"""

import uuid

import pytest
from django.db import transaction
from rest_framework.exceptions import ValidationError

from tests.factories import (
    MembershipFactory,
    ProjectFactory,
    UserFactory,
    evidence,
    workflow_for,
)
from workflows.errors import ActionForbidden, TransitionConflict, WorkflowNotFound
from workflows.models import Handoff, Message, PhaseResult, RoleContext, Workflow, WorkflowEvent
from workflows.services import (
    Actor,
    available_transitions,
    workflow_approve,
    workflow_cancel,
    workflow_fail,
    workflow_phase_complete,
    workflow_regress,
    workflow_reject,
)
from workflows.states import (
    PHASE_ROLE,
    PHASES,
    EventType,
    HandoffKind,
    MemberRole,
    Role,
    State,
    Transition,
)

S = State
AWAITING = "awaiting approval"

# The table's rows: every working phase, each phase again waiting at its approval gate,
# and the three terminal states.
STATE_CASES: list[tuple[str, bool]] = [
    *((phase, False) for phase in PHASES),
    *((phase, True) for phase in PHASES),
    (S.COMPLETE, False),
    (S.FAILED, False),
    (S.CANCELLED, False),
]

# The table's columns.
COMPLETE = "complete"
REGRESS_IMPLEMENTATION = "regress to IMPLEMENTATION"
REGRESS_PLANNING = "regress to PLANNING"
APPROVE = "approve"
REJECT = "reject"
CANCEL = "cancel"
FAIL = "fail"
TRANSITIONS = [
    COMPLETE,
    REGRESS_IMPLEMENTATION,
    REGRESS_PLANNING,
    APPROVE,
    REJECT,
    CANCEL,
    FAIL,
]
TRANSITION_NAME = {
    COMPLETE: Transition.COMPLETE,
    REGRESS_IMPLEMENTATION: Transition.REGRESS,
    REGRESS_PLANNING: Transition.REGRESS,
    APPROVE: Transition.APPROVE,
    REJECT: Transition.REJECT,
    CANCEL: Transition.CANCEL,
    FAIL: Transition.FAIL,
}
HANDOFF_KIND = {
    COMPLETE: HandoffKind.FORWARD,
    REGRESS_IMPLEMENTATION: HandoffKind.REGRESSION,
    REGRESS_PLANNING: HandoffKind.REGRESSION,
    APPROVE: HandoffKind.APPROVAL,
    REJECT: HandoffKind.REJECTION,
    CANCEL: HandoffKind.CANCEL,
    FAIL: HandoffKind.FAIL,
}
_STOP = {CANCEL: S.CANCELLED, FAIL: S.FAILED}

# (state, awaiting approval) -> {allowed transition: state it leads to}. Anything not
# listed must raise TransitionConflict and write nothing.
ALLOWED: dict[tuple[str, bool], dict[str, str]] = {
    (S.DISCOVERY, False): {COMPLETE: S.PLANNING, **_STOP},
    (S.PLANNING, False): {COMPLETE: S.IMPLEMENTATION, **_STOP},
    (S.IMPLEMENTATION, False): {COMPLETE: S.TESTING, **_STOP},
    (S.TESTING, False): {
        COMPLETE: S.VERIFICATION,
        REGRESS_IMPLEMENTATION: S.IMPLEMENTATION,
        **_STOP,
    },
    (S.VERIFICATION, False): {
        COMPLETE: S.DEPLOYMENT,
        REGRESS_IMPLEMENTATION: S.IMPLEMENTATION,
        REGRESS_PLANNING: S.PLANNING,
        **_STOP,
    },
    (S.DEPLOYMENT, False): {COMPLETE: S.COMPLETE, **_STOP},
    (S.DISCOVERY, True): {APPROVE: S.PLANNING, REJECT: S.DISCOVERY, **_STOP},
    (S.PLANNING, True): {APPROVE: S.IMPLEMENTATION, REJECT: S.PLANNING, **_STOP},
    (S.IMPLEMENTATION, True): {APPROVE: S.TESTING, REJECT: S.IMPLEMENTATION, **_STOP},
    (S.TESTING, True): {APPROVE: S.VERIFICATION, REJECT: S.TESTING, **_STOP},
    (S.VERIFICATION, True): {APPROVE: S.DEPLOYMENT, REJECT: S.VERIFICATION, **_STOP},
    (S.DEPLOYMENT, True): {APPROVE: S.COMPLETE, REJECT: S.DEPLOYMENT, **_STOP},
    (S.COMPLETE, False): {},
    (S.FAILED, False): {},
    (S.CANCELLED, False): {},
}


def _case_id(case: tuple[str, bool]) -> str:
    state, awaiting = case
    return f"{state} {AWAITING}" if awaiting else str(state)


# --- helpers ---------------------------------------------------------------------------


def fresh(workflow_id) -> Workflow:
    return Workflow.objects.get(pk=workflow_id)


def complete(workflow_id, actor: Actor, **overrides):
    """Complete the workflow's current phase with valid evidence."""
    phase = fresh(workflow_id).state
    return workflow_phase_complete(
        workflow_id=workflow_id,
        ai_response=f"{phase} evidence",
        result=evidence(phase, **overrides),
        actor=actor,
    )


def drive_to(workflow_id, target: str, actor: Actor) -> None:
    """Complete phases forward until the workflow is in `target`."""
    for _ in range(len(PHASES)):
        if fresh(workflow_id).state == target:
            return
        complete(workflow_id, actor)
    assert fresh(workflow_id).state == target


def build(case: tuple[str, bool], user) -> Workflow:
    """A workflow in `case`, reached only through the services. `user` is its project owner."""
    state, awaiting = case
    project = ProjectFactory(approval_gates=[state] if awaiting else [])
    MembershipFactory(project=project, user=user, role=MemberRole.OWNER)
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    if state == S.COMPLETE:
        drive_to(workflow.pk, S.COMPLETE, actor)
    elif state == S.FAILED:
        drive_to(workflow.pk, S.IMPLEMENTATION, actor)
        workflow_fail(workflow_id=workflow.pk, actor=actor, reason="provider kept failing")
    elif state == S.CANCELLED:
        drive_to(workflow.pk, S.TESTING, actor)
        workflow_cancel(workflow_id=workflow.pk, actor=actor, reason="no longer needed")
    else:
        drive_to(workflow.pk, state, actor)
        if awaiting:
            complete(workflow.pk, actor)
    workflow = fresh(workflow.pk)
    assert (workflow.state, workflow.awaiting_approval) == case
    return workflow


def attempt(transition: str, workflow: Workflow, actor: Actor):
    """Ask for `transition` through its service."""
    workflow_id = workflow.pk
    if transition == COMPLETE:
        # Evidence of the phase the workflow is in (any valid evidence for terminal ones).
        phase = workflow.state if workflow.state in PHASES else S.DISCOVERY
        return workflow_phase_complete(
            workflow_id=workflow_id, ai_response="done", result=evidence(phase), actor=actor
        )
    if transition in (REGRESS_IMPLEMENTATION, REGRESS_PLANNING):
        target = S.IMPLEMENTATION if transition == REGRESS_IMPLEMENTATION else S.PLANNING
        return workflow_regress(
            workflow_id=workflow_id,
            target=target,
            reason="the change misses R1",
            feedback="cover R1's acceptance criterion",
            actor=actor,
        )
    if transition == APPROVE:
        return workflow_approve(workflow_id=workflow_id, actor=actor, comment="looks right")
    if transition == REJECT:
        return workflow_reject(workflow_id=workflow_id, actor=actor, feedback="name the owner")
    if transition == CANCEL:
        return workflow_cancel(workflow_id=workflow_id, actor=actor, reason="changed plans")
    if transition == FAIL:
        return workflow_fail(workflow_id=workflow_id, actor=actor, reason="gave up")
    raise AssertionError(transition)


def snapshot(workflow_id) -> dict:
    """Everything a transition could write, read back from the database."""
    workflow = fresh(workflow_id)
    return {
        "workflow": (
            workflow.state,
            workflow.current_role,
            workflow.last_phase,
            workflow.awaiting_approval,
            workflow.regression_count,
            workflow.terminal_reason,
            workflow.last_event_seq,
            workflow.last_message_seq,
            workflow.completed_at,
            workflow.updated_at,
        ),
        "handoffs": list(
            Handoff.objects.filter(workflow_id=workflow_id).values_list("pk", flat=True)
        ),
        "events": list(
            WorkflowEvent.objects.filter(workflow_id=workflow_id).values_list("seq", "type")
        ),
        "phase_results": list(
            PhaseResult.objects.filter(workflow_id=workflow_id).values_list("pk", "status")
        ),
        "messages": list(
            Message.objects.filter(workflow_id=workflow_id).values_list("pk", flat=True)
        ),
        "role_contexts": list(
            RoleContext.objects.filter(workflow_id=workflow_id).values_list(
                "role", "prompt_version", "updated_at"
            )
        ),
    }


def assert_gapless(workflow_id) -> list[WorkflowEvent]:
    events = list(WorkflowEvent.objects.filter(workflow_id=workflow_id).order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert fresh(workflow_id).last_event_seq == len(events)
    return events


class _Rollback(Exception):
    pass


def succeeds(transition: str, workflow_id, actor: Actor) -> bool:
    """Whether `transition` commits now; its writes are rolled back either way."""
    try:
        with transaction.atomic():
            attempt(transition, fresh(workflow_id), actor)
            raise _Rollback
    except _Rollback:
        return True
    except TransitionConflict:
        return False


# --- the table -------------------------------------------------------------------------


@pytest.mark.parametrize("transition", TRANSITIONS)
@pytest.mark.parametrize("case", STATE_CASES, ids=_case_id)
def test_every_state_and_transition(user, case, transition):
    # given
    state, _ = case
    workflow = build(case, user)
    before = snapshot(workflow.pk)
    handoff_ids = set(before["handoffs"])
    target = ALLOWED[case].get(transition)

    if target is None:
        # when
        with pytest.raises(TransitionConflict) as excinfo:
            attempt(transition, workflow, Actor.of(user))

        # then: nothing at all was written
        assert excinfo.value.current_state == state
        assert state in str(excinfo.value)
        assert snapshot(workflow.pk) == before
        return

    # when
    outcome = attempt(transition, workflow, Actor.of(user))

    # then: the state moved as the design says
    after = fresh(workflow.pk)
    assert outcome.previous_state == state
    assert after.state == target
    assert after.awaiting_approval is False
    assert after.current_role == PHASE_ROLE.get(target)
    expected_regressions = before["workflow"][4] + (transition.startswith("regress") and 1)
    assert after.regression_count == expected_regressions

    # exactly one Handoff, describing this move
    new_handoffs = list(Handoff.objects.filter(workflow=after).exclude(pk__in=handoff_ids))
    assert len(new_handoffs) == 1
    handoff = new_handoffs[0]
    assert handoff.kind == HANDOFF_KIND[transition]
    assert (handoff.from_state, handoff.to_state) == (state, target)
    assert (handoff.from_role, handoff.to_role) == (PHASE_ROLE[state], PHASE_ROLE.get(target))
    assert handoff.actor == user

    # events carry the next gapless seqs and the handoff points at its event
    events = assert_gapless(workflow.pk)
    new_events = events[before["workflow"][6] :]
    expected_types = [EventType.TRANSITIONED]
    if transition == COMPLETE:
        expected_types.insert(0, EventType.PHASE_COMPLETED)
    assert [e.type for e in new_events] == expected_types
    assert handoff.event_seq == new_events[-1].seq
    assert new_events[-1].data["to_state"] == target

    # the phase results changed only as the transition implies
    results = dict(PhaseResult.objects.filter(workflow=after).values_list("pk", "status"))
    old_results = dict(before["phase_results"])
    if transition == COMPLETE:
        [new_pk] = set(results) - set(old_results)
        assert results[new_pk] == PhaseResult.Status.ACCEPTED
        assert handoff.phase_result_id == new_pk
    elif transition in (APPROVE, REJECT):
        assert set(results) == set(old_results)
        pending = [pk for pk, s in old_results.items() if s == PhaseResult.Status.PENDING_APPROVAL]
        assert len(pending) == 1
        wanted = (
            PhaseResult.Status.ACCEPTED if transition == APPROVE else PhaseResult.Status.REJECTED
        )
        assert results[pending[0]] == wanted
        assert handoff.phase_result_id == pending[0]
    else:
        # cancel/fail withdraw a result that was waiting at a gate; nothing else changes
        withdrawn = {
            pk: PhaseResult.Status.WITHDRAWN
            for pk, s in old_results.items()
            if s == PhaseResult.Status.PENDING_APPROVAL
        }
        assert results == {**old_results, **withdrawn}


@pytest.mark.parametrize("case", STATE_CASES, ids=_case_id)
def test_available_transitions_match_what_succeeds(user, case):
    # given
    workflow = build(case, user)
    actor = Actor.of(user)

    # when
    succeeded = {str(TRANSITION_NAME[t]) for t in TRANSITIONS if succeeds(t, workflow.pk, actor)}

    # then
    workflow = fresh(workflow.pk)
    expected = {str(TRANSITION_NAME[t]) for t in ALLOWED[case]}
    assert succeeded == expected
    assert set(available_transitions(workflow, MemberRole.OWNER)) == succeeded
    assert set(available_transitions(workflow, None)) == succeeded
    assert set(available_transitions(workflow, MemberRole.DEVELOPER)) == succeeded & {
        Transition.COMPLETE,
        Transition.REGRESS,
        Transition.CANCEL,
    }
    assert available_transitions(workflow, MemberRole.VIEWER) == []


# --- regressions -----------------------------------------------------------------------


def test_failing_test_report_regresses_to_implementation_with_findings_as_feedback(user, project):
    # given
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    drive_to(workflow.pk, S.TESTING, actor)
    findings = [
        {"severity": "major", "message": "dark mode toggle is untested", "path": "src/app.py"},
        {"severity": "minor", "message": "no test for the saved preference"},
    ]

    # when
    outcome = complete(workflow.pk, actor, verdict="fail", findings=findings, quality_score=0.3)

    # then
    after = fresh(workflow.pk)
    assert after.state == S.IMPLEMENTATION
    assert after.current_role == Role.CODE_WRITER
    assert after.regression_count == 1
    handoff = Handoff.objects.filter(workflow=after).latest("event_seq")
    assert handoff == outcome.handoff
    assert handoff.kind == HandoffKind.REGRESSION
    assert (handoff.from_state, handoff.to_state) == (S.TESTING, S.IMPLEMENTATION)
    assert "src/app.py: dark mode toggle is untested" in handoff.feedback
    assert "no test for the saved preference" in handoff.feedback
    assert handoff.phase_result.phase == S.TESTING
    assert handoff.phase_result.result["verdict"] == "fail"
    assert after.requirements == {"description": "Add dark mode to settings"}
    assert_gapless(workflow.pk)


def test_verification_reject_with_regress_to_planning_goes_to_planning(user, project):
    # given
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    drive_to(workflow.pk, S.VERIFICATION, actor)

    # when
    complete(
        workflow.pk,
        actor,
        verdict="reject",
        findings=[{"severity": "critical", "message": "the plan ignores R1"}],
        score=0.2,
        regress_to=S.PLANNING,
    )

    # then
    after = fresh(workflow.pk)
    assert after.state == S.PLANNING
    assert after.current_role == Role.Q_ASSISTANT
    assert after.regression_count == 1
    handoff = Handoff.objects.filter(workflow=after).latest("event_seq")
    assert (handoff.kind, handoff.from_state, handoff.to_state) == (
        HandoffKind.REGRESSION,
        S.VERIFICATION,
        S.PLANNING,
    )
    assert "the plan ignores R1" in handoff.feedback


def test_verification_reject_without_regress_to_goes_to_implementation(user, project):
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    drive_to(workflow.pk, S.VERIFICATION, actor)

    complete(
        workflow.pk,
        actor,
        verdict="reject",
        findings=[{"severity": "major", "message": "R1 is not met"}],
        score=0.4,
    )

    assert fresh(workflow.pk).state == S.IMPLEMENTATION


def test_regression_limit_turns_the_fourth_regression_into_failed(user, project):
    # given: three regressions, each by a different route
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    assert workflow.regression_limit == 3
    failing_report = {
        "verdict": "fail",
        "findings": [{"severity": "major", "message": "tests fail"}],
        "quality_score": 0.1,
    }
    drive_to(workflow.pk, S.TESTING, actor)
    complete(workflow.pk, actor, **failing_report)  # 1: failing test report
    drive_to(workflow.pk, S.VERIFICATION, actor)
    complete(
        workflow.pk,
        actor,
        verdict="reject",
        findings=[{"severity": "major", "message": "wrong"}],
        score=0.1,
        regress_to=S.PLANNING,
    )  # 2: verification rejection
    drive_to(workflow.pk, S.TESTING, actor)
    workflow_regress(
        workflow_id=workflow.pk, target=None, reason="manual", feedback="again", actor=actor
    )  # 3: explicit regression
    assert (fresh(workflow.pk).state, fresh(workflow.pk).regression_count) == (
        S.IMPLEMENTATION,
        3,
    )
    drive_to(workflow.pk, S.TESTING, actor)
    handoffs_before = Handoff.objects.filter(workflow_id=workflow.pk).count()

    # when: the fourth
    outcome = complete(workflow.pk, actor, **failing_report)

    # then
    after = fresh(workflow.pk)
    assert after.state == S.FAILED
    assert after.current_role is None
    assert after.regression_count == 3
    assert "regression limit of 3" in after.terminal_reason
    assert Handoff.objects.filter(workflow=after).count() == handoffs_before + 1
    assert outcome.handoff.kind == HandoffKind.FAIL
    assert (outcome.handoff.from_state, outcome.handoff.to_state) == (S.TESTING, S.FAILED)
    assert "tests fail" in outcome.handoff.feedback
    assert_gapless(workflow.pk)


def test_explicit_regression_past_the_limit_fails_the_workflow(user):
    # given: a project that allows a single regression
    project = ProjectFactory(regression_limit=1)
    MembershipFactory(project=project, user=user)
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    drive_to(workflow.pk, S.VERIFICATION, actor)
    workflow_regress(
        workflow_id=workflow.pk, target=S.PLANNING, reason="1", feedback="", actor=actor
    )
    drive_to(workflow.pk, S.VERIFICATION, actor)

    # when
    workflow_regress(
        workflow_id=workflow.pk, target=S.PLANNING, reason="2", feedback="", actor=actor
    )

    # then
    after = fresh(workflow.pk)
    assert (after.state, after.regression_count) == (S.FAILED, 1)


def test_regress_to_a_target_the_phase_cannot_reach_is_a_conflict(user, project):
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    drive_to(workflow.pk, S.TESTING, actor)
    before = snapshot(workflow.pk)

    with pytest.raises(TransitionConflict) as excinfo:
        workflow_regress(
            workflow_id=workflow.pk, target=S.DISCOVERY, reason="x", feedback="", actor=actor
        )

    assert excinfo.value.current_state == S.TESTING
    assert snapshot(workflow.pk) == before


# --- approval gates --------------------------------------------------------------------


def test_complete_at_a_gate_stores_the_result_and_waits(user):
    # given
    project = ProjectFactory(approval_gates=[S.PLANNING])
    MembershipFactory(project=project, user=user)
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    drive_to(workflow.pk, S.PLANNING, actor)
    handoffs_before = Handoff.objects.filter(workflow_id=workflow.pk).count()

    # when
    outcome = complete(workflow.pk, actor)

    # then: the state waits, the result is pending, approval is asked for
    after = fresh(workflow.pk)
    assert (after.state, after.awaiting_approval) == (S.PLANNING, True)
    assert outcome.phase_result.status == PhaseResult.Status.PENDING_APPROVAL
    assert Handoff.objects.filter(workflow=after).count() == handoffs_before
    events = assert_gapless(workflow.pk)
    assert [e.type for e in events[-2:]] == [
        EventType.PHASE_COMPLETED,
        EventType.APPROVAL_REQUESTED,
    ]


def test_reject_at_a_gate_keeps_the_phase_and_rejects_the_result(user):
    # given
    project = ProjectFactory(approval_gates=[S.DISCOVERY])
    MembershipFactory(project=project, user=user)
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    first = complete(workflow.pk, actor).phase_result

    # when
    outcome = workflow_reject(workflow_id=workflow.pk, actor=actor, feedback="split R1 in two")

    # then
    after = fresh(workflow.pk)
    assert (after.state, after.awaiting_approval) == (S.DISCOVERY, False)
    assert after.current_role == Role.Q_ASSISTANT
    first.refresh_from_db()
    assert first.status == PhaseResult.Status.REJECTED
    assert outcome.handoff.kind == HandoffKind.REJECTION
    assert outcome.handoff.feedback == "split R1 in two"
    assert (outcome.handoff.from_state, outcome.handoff.to_state) == (S.DISCOVERY, S.DISCOVERY)

    # and the role redoes the phase: a second attempt, which approval lets through
    second = complete(workflow.pk, actor).phase_result
    assert (second.attempt, second.status) == (2, PhaseResult.Status.PENDING_APPROVAL)
    workflow_approve(workflow_id=workflow.pk, actor=actor)
    second.refresh_from_db()
    first.refresh_from_db()
    assert second.status == PhaseResult.Status.ACCEPTED
    assert first.status == PhaseResult.Status.REJECTED
    assert fresh(workflow.pk).state == S.PLANNING
    assert_gapless(workflow.pk)


# --- who may ask -----------------------------------------------------------------------


def test_viewer_may_not_complete_a_phase(user, project):
    # given
    viewer = UserFactory(username="victor")
    MembershipFactory(project=project, user=viewer, role=MemberRole.VIEWER)
    workflow = workflow_for(project, user)
    before = snapshot(workflow.pk)

    # when / then
    with pytest.raises(ActionForbidden):
        complete(workflow.pk, Actor.of(viewer))
    assert snapshot(workflow.pk) == before


@pytest.mark.parametrize("transition", [APPROVE, REJECT, FAIL])
def test_developer_may_not_decide_gates_or_fail(user, transition):
    # given
    project = ProjectFactory(approval_gates=[S.DISCOVERY])
    MembershipFactory(project=project, user=user)
    developer = UserFactory(username="devon")
    MembershipFactory(project=project, user=developer, role=MemberRole.DEVELOPER)
    workflow = workflow_for(project, user)
    complete(workflow.pk, Actor.of(user))
    before = snapshot(workflow.pk)

    # when / then
    with pytest.raises(ActionForbidden):
        attempt(transition, fresh(workflow.pk), Actor.of(developer))
    assert snapshot(workflow.pk) == before


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_non_member_gets_not_found(user, project, stranger, transition):
    # given: a workflow where every transition but regress is allowed for its owner
    project.approval_gates = [S.TESTING]
    project.save()
    workflow = workflow_for(project, user)
    drive_to(workflow.pk, S.TESTING, Actor.of(user))
    before = snapshot(workflow.pk)

    # when / then
    with pytest.raises(WorkflowNotFound):
        attempt(transition, fresh(workflow.pk), Actor.of(stranger))
    assert snapshot(workflow.pk) == before


def test_unknown_workflow_is_not_found(user, project):
    for workflow_id in (uuid.uuid4(), "not-a-uuid"):
        with pytest.raises(WorkflowNotFound):
            workflow_cancel(workflow_id=workflow_id, actor=Actor.of(user))


# --- evidence and stale requests -------------------------------------------------------


def test_invalid_evidence_moves_nothing(user, project):
    workflow = workflow_for(project, user)
    before = snapshot(workflow.pk)

    with pytest.raises(ValidationError) as excinfo:
        workflow_phase_complete(
            workflow_id=workflow.pk,
            ai_response="oops",
            result=evidence(S.DISCOVERY, requirements=[]),
            actor=Actor.of(user),
        )

    assert "requirements" in excinfo.value.detail["phase_result"]
    assert snapshot(workflow.pk) == before


def test_complete_with_a_stale_expected_state_is_a_conflict(user, project):
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    complete(workflow.pk, actor)
    before = snapshot(workflow.pk)

    with pytest.raises(TransitionConflict) as excinfo:
        workflow_phase_complete(
            workflow_id=workflow.pk,
            ai_response="late",
            result=evidence(S.DISCOVERY),
            actor=actor,
            expected_state=S.DISCOVERY,
        )

    assert excinfo.value.current_state == S.PLANNING
    assert Transition.COMPLETE in excinfo.value.allowed
    assert snapshot(workflow.pk) == before


def test_a_row_that_left_its_locked_state_fails_the_transition_whole(user, project, monkeypatch):
    # given: something writes the row behind the lock's back while the phase completes
    # (only a raw UPDATE can; every service takes the lock first)
    from django_fsm import ConcurrentTransition

    from workflows import services

    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    before = snapshot(workflow.pk)
    validate = services.evidence_validate

    def validate_then_move_the_row(**kwargs):
        Workflow.objects.filter(pk=workflow.pk).update(state=S.CANCELLED)
        return validate(**kwargs)

    monkeypatch.setattr(services, "evidence_validate", validate_then_move_the_row)

    # when / then: the guarded write misses, as ConcurrentTransitionMixin's save would
    with pytest.raises(ConcurrentTransition, match="left DISCOVERY while it was locked"):
        complete(workflow.pk, actor)

    # and nothing of it was kept, not even the raw update made inside its transaction
    assert snapshot(workflow.pk) == before


def test_the_returned_workflow_saves_against_its_new_state(user, project):
    # given: a workflow a service has just moved
    outcome = complete(workflow_for(project, user).pk, Actor.of(user))
    workflow = outcome.workflow
    assert workflow.state == S.PLANNING

    # when: the returned instance is saved again (ConcurrentTransitionMixin guards it)
    workflow.title = "Renamed"
    workflow.save(update_fields=["title"])

    # then: the guard used the state the row holds now, not the one it was locked in
    assert fresh(workflow.pk).title == "Renamed"


def test_the_table_covers_every_state_and_transition():
    """Guard: a new State or Transition must get a row or column here."""
    assert {state for state, _ in STATE_CASES} == set(State)
    assert {TRANSITION_NAME[t] for t in TRANSITIONS} == set(Transition)
    assert set(ALLOWED) == set(STATE_CASES)
