"""Replaying a workflow's event log from seq 1 reproduces the workflow's state."""

from collections.abc import Callable
from types import SimpleNamespace

import pytest

from tests.factories import MembershipFactory, ProjectFactory, evidence, workflow_for
from workflows.models import Workflow, WorkflowEvent
from workflows.replay import workflow_replay
from workflows.services import (
    Actor,
    workflow_approve,
    workflow_cancel,
    workflow_fail,
    workflow_phase_complete,
    workflow_regress,
    workflow_reject,
)
from workflows.states import EventType, Role, State

S = State
Step = Callable[[object, Actor], object]


def complete(**overrides) -> Step:
    def step(workflow_id, actor):
        phase = Workflow.objects.get(pk=workflow_id).state
        return workflow_phase_complete(
            workflow_id=workflow_id,
            ai_response=f"{phase} done",
            result=evidence(phase, **overrides),
            actor=actor,
        )

    return step


def failing_report() -> Step:
    return complete(
        verdict="fail",
        findings=[{"severity": "major", "message": "the toggle test fails"}],
        quality_score=0.2,
    )


def verification_reject(regress_to: str) -> Step:
    return complete(
        verdict="reject",
        findings=[{"severity": "critical", "message": "R1 is not met"}],
        score=0.1,
        regress_to=regress_to,
    )


def regress(target: str | None) -> Step:
    return lambda workflow_id, actor: workflow_regress(
        workflow_id=workflow_id, target=target, reason="off track", feedback="redo", actor=actor
    )


def approve() -> Step:
    return lambda workflow_id, actor: workflow_approve(workflow_id=workflow_id, actor=actor)


def reject() -> Step:
    return lambda workflow_id, actor: workflow_reject(
        workflow_id=workflow_id, actor=actor, feedback="be more specific"
    )


def cancel() -> Step:
    return lambda workflow_id, actor: workflow_cancel(workflow_id=workflow_id, actor=actor)


def fail() -> Step:
    return lambda workflow_id, actor: workflow_fail(
        workflow_id=workflow_id, actor=actor, reason="budget spent"
    )


def to_testing() -> list[Step]:
    return [complete(), complete(), complete()]


def events_of(workflow_id) -> list[WorkflowEvent]:
    return list(WorkflowEvent.objects.filter(workflow_id=workflow_id).order_by("seq"))


def assert_replay_matches(workflow_id) -> None:
    workflow = Workflow.objects.get(pk=workflow_id)
    replayed = workflow_replay(events_of(workflow_id))
    assert (
        replayed.state,
        replayed.current_role,
        replayed.awaiting_approval,
        replayed.regression_count,
        replayed.last_seq,
    ) == (
        workflow.state,
        workflow.current_role,
        workflow.awaiting_approval,
        workflow.regression_count,
        workflow.last_event_seq,
    )


# Each scenario: approval gates, the steps, and the (state, role, awaiting, regressions)
# it must end in. The replay is checked after every step, not only at the end.
SCENARIOS: dict[str, tuple[list[str], list[Step], tuple]] = {
    "complete": (
        [],
        [complete() for _ in range(6)],
        (S.COMPLETE, None, False, 0),
    ),
    "regressions": (
        [],
        [
            *to_testing(),
            failing_report(),  # TESTING -> IMPLEMENTATION
            complete(),
            complete(),
            verification_reject(S.PLANNING),  # VERIFICATION -> PLANNING
            complete(),
            complete(),
            regress(None),  # TESTING -> IMPLEMENTATION
            complete(),
            complete(),
        ],
        (S.VERIFICATION, Role.VERIFICATION_AUDITOR, False, 3),
    ),
    "gates approve and reject": (
        [S.DISCOVERY, S.TESTING],
        [
            complete(),  # DISCOVERY awaits approval
            reject(),
            complete(),
            approve(),  # -> PLANNING
            complete(),
            complete(),
            complete(),  # TESTING awaits approval
        ],
        (S.TESTING, Role.TEST_AUDITOR, True, 0),
    ),
    "gate approved to the end": (
        [S.DEPLOYMENT],
        [complete() for _ in range(6)] + [approve()],
        (S.COMPLETE, None, False, 0),
    ),
    "cancelled while awaiting approval": (
        [S.PLANNING],
        [complete(), complete(), cancel()],
        (S.CANCELLED, None, False, 0),
    ),
    "cancelled after a regression": (
        [],
        [*to_testing(), regress(S.IMPLEMENTATION), cancel()],
        (S.CANCELLED, None, False, 1),
    ),
    "failed": (
        [],
        [complete(), complete(), fail()],
        (S.FAILED, None, False, 0),
    ),
    "failed at the regression limit": (
        [],
        [
            *to_testing(),
            failing_report(),
            complete(),
            failing_report(),
            complete(),
            failing_report(),
            complete(),
            failing_report(),  # the fourth: FAILED
        ],
        (S.FAILED, None, False, 3),
    ),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_replay_reproduces_the_workflow(user, name):
    # given
    gates, steps, expected = SCENARIOS[name]
    project = ProjectFactory(approval_gates=gates)
    MembershipFactory(project=project, user=user)
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    assert_replay_matches(workflow.pk)

    # when / then: after every step
    for step in steps:
        step(workflow.pk, actor)
        assert_replay_matches(workflow.pk)

    # and the end state is the one the scenario is about
    replayed = workflow_replay(events_of(workflow.pk))
    assert (
        replayed.state,
        replayed.current_role,
        replayed.awaiting_approval,
        replayed.regression_count,
    ) == expected


def test_replay_detects_a_gap(user, project):
    # given
    actor = Actor.of(user)
    workflow = workflow_for(project, user)
    for step in to_testing():
        step(workflow.pk, actor)
    events = events_of(workflow.pk)
    assert len(events) > 4

    # when / then: a missing event in the middle
    with pytest.raises(ValueError, match="gap"):
        workflow_replay(events[:3] + events[4:])
    # a log that does not start at seq 1
    with pytest.raises(ValueError, match="gap"):
        workflow_replay(events[1:])
    # a repeated event
    with pytest.raises(ValueError, match="gap"):
        workflow_replay(events[:3] + events[2:])


def test_replay_rejects_a_transition_from_a_state_the_log_is_not_in():
    created = SimpleNamespace(
        seq=1,
        type=EventType.WORKFLOW_CREATED,
        data={"state": S.DISCOVERY, "role": Role.Q_ASSISTANT},
    )
    jump = SimpleNamespace(
        seq=2,
        type=EventType.TRANSITIONED,
        data={
            "from_state": S.TESTING,
            "to_state": S.VERIFICATION,
            "to_role": Role.VERIFICATION_AUDITOR,
            "awaiting_approval": False,
            "regression_count": 0,
        },
    )

    with pytest.raises(ValueError, match="TESTING"):
        workflow_replay([created, jump])
