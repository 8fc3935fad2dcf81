"""Real races: threads with their own database connections hit one workflow at once.

These run against whichever database the suite uses. PostgreSQL serialises the racers on
the workflow row's `select_for_update` lock; SQLite on the write lock every transaction
takes at BEGIN IMMEDIATE (settings: transaction_mode IMMEDIATE, timeout 20). Either way
the losers must see the winner's committed state and get a TransitionConflict.

Transactional tests flush the database after themselves, so the data migration's prompt
templates (every workflow needs its role's active one) may be gone when these start; the
`prompt_templates` fixture puts the shipped defaults back. (`serialized_rollback` would
do the same but breaks on content types re-created by an earlier flush.)
"""

import threading
from collections.abc import Callable

import pytest
from django.db import connection

from tests.factories import MembershipFactory, ProjectFactory, UserFactory, evidence, workflow_for
from workflows.default_prompts import DEFAULT_PROMPTS
from workflows.errors import TransitionConflict
from workflows.models import Handoff, Message, PhaseResult, PromptTemplate, Workflow, WorkflowEvent
from workflows.services import (
    Actor,
    workflow_cancel,
    workflow_phase_complete,
)
from workflows.states import PHASES, EventType, HandoffKind, State

THREADS = 20
BARRIER_TIMEOUT = 30

race_db = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def prompt_templates(transactional_db):
    """The shipped role prompts, as the data migration loads them, if a flush removed them."""
    for role, body in DEFAULT_PROMPTS.items():
        if not PromptTemplate.objects.filter(role=role, active=True).exists():
            PromptTemplate.objects.create(
                role=role, version=1, body=body, sha256=PromptTemplate.digest(body), active=True
            )


def race(calls: list[Callable[[], object]]) -> list[object]:
    """Run `calls` in threads released together; each result is "ok" or the exception."""
    barrier = threading.Barrier(len(calls), timeout=BARRIER_TIMEOUT)
    outcomes: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            barrier.wait()
            calls[index]()
            outcomes[index] = "ok"
        except Exception as exc:  # collected and asserted on by the test
            outcomes[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=BARRIER_TIMEOUT * 2)
    assert not any(thread.is_alive() for thread in threads), "a racer hung"
    return outcomes


def owner_and_workflow():
    user = UserFactory()
    project = ProjectFactory()
    MembershipFactory(project=project, user=user)
    return user, workflow_for(project, user)


def gapless_seqs(workflow_id) -> list[int]:
    seqs = list(
        WorkflowEvent.objects.filter(workflow_id=workflow_id)
        .order_by("seq")
        .values_list("seq", flat=True)
    )
    assert seqs == list(range(1, len(seqs) + 1))
    assert Workflow.objects.get(pk=workflow_id).last_event_seq == len(seqs)
    return seqs


@race_db
def test_twenty_concurrent_completes_of_one_phase_exactly_one_wins():
    # given
    user, workflow = owner_and_workflow()
    actor = Actor.of(user)

    def complete_discovery(i: int) -> Callable[[], object]:
        return lambda: workflow_phase_complete(
            workflow_id=workflow.pk,
            ai_response=f"racer {i}",
            result=evidence(State.DISCOVERY),
            actor=actor,
            expected_state=State.DISCOVERY,
        )

    # when
    outcomes = race([complete_discovery(i) for i in range(THREADS)])

    # then: one winner, nineteen conflicts that name the state the winner left behind
    winners = [o for o in outcomes if o == "ok"]
    conflicts = [o for o in outcomes if isinstance(o, TransitionConflict)]
    assert len(winners) == 1, outcomes
    assert len(conflicts) == THREADS - 1, outcomes
    assert {c.current_state for c in conflicts} == {State.PLANNING}

    after = Workflow.objects.get(pk=workflow.pk)
    assert after.state == State.PLANNING
    assert Handoff.objects.filter(workflow=after).count() == 1
    assert PhaseResult.objects.filter(workflow=after).count() == 1
    assert Message.objects.filter(workflow=after).count() == 1
    assert gapless_seqs(after.pk) == [1, 2, 3]
    assert list(
        WorkflowEvent.objects.filter(workflow=after).order_by("seq").values_list("type", flat=True)
    ) == [EventType.WORKFLOW_CREATED, EventType.PHASE_COMPLETED, EventType.TRANSITIONED]


@race_db
def test_cancel_racing_complete_of_the_last_phase_exactly_one_wins():
    # given: in DEPLOYMENT both complete and cancel end the workflow, so only one can commit
    user, workflow = owner_and_workflow()
    actor = Actor.of(user)
    for phase in PHASES[:-1]:
        workflow_phase_complete(
            workflow_id=workflow.pk, ai_response="", result=evidence(phase), actor=actor
        )
    assert Workflow.objects.get(pk=workflow.pk).state == State.DEPLOYMENT
    handoffs_before = Handoff.objects.filter(workflow_id=workflow.pk).count()
    half = THREADS // 2

    def complete() -> object:
        return workflow_phase_complete(
            workflow_id=workflow.pk,
            ai_response="released",
            result=evidence(State.DEPLOYMENT),
            actor=actor,
            expected_state=State.DEPLOYMENT,
        )

    def cancel() -> object:
        return workflow_cancel(workflow_id=workflow.pk, actor=actor, reason="stop")

    # when: completers and cancellers interleaved
    outcomes = race([complete if i % 2 else cancel for i in range(half * 2)])

    # then
    winners = [i for i, o in enumerate(outcomes) if o == "ok"]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, TransitionConflict) for o in outcomes if o != "ok"), outcomes
    after = Workflow.objects.get(pk=workflow.pk)
    new_handoffs = list(Handoff.objects.filter(workflow=after).order_by("event_seq"))[
        handoffs_before:
    ]
    assert len(new_handoffs) == 1
    if winners[0] % 2:
        assert after.state == State.COMPLETE
        assert new_handoffs[0].kind == HandoffKind.FORWARD
        assert PhaseResult.objects.filter(workflow=after, phase=State.DEPLOYMENT).count() == 1
    else:
        assert after.state == State.CANCELLED
        assert new_handoffs[0].kind == HandoffKind.CANCEL
        assert not PhaseResult.objects.filter(workflow=after, phase=State.DEPLOYMENT).exists()
    assert {o.current_state for o in outcomes if o != "ok"} == {after.state}
    gapless_seqs(after.pk)


@race_db
def test_cancel_racing_complete_of_an_early_phase_leaves_a_consistent_log():
    # given: in DISCOVERY a complete and a cancel can both commit, in either order
    user, workflow = owner_and_workflow()
    actor = Actor.of(user)

    # when
    outcomes = race(
        [
            lambda: workflow_phase_complete(
                workflow_id=workflow.pk,
                ai_response="",
                result=evidence(State.DISCOVERY),
                actor=actor,
                expected_state=State.DISCOVERY,
            ),
            lambda: workflow_cancel(workflow_id=workflow.pk, actor=actor, reason="stop"),
        ]
    )

    # then: the cancel always commits; the complete only if it went first, and the
    # handoffs chain without a gap
    complete_outcome, cancel_outcome = outcomes
    assert cancel_outcome == "ok", outcomes
    after = Workflow.objects.get(pk=workflow.pk)
    assert after.state == State.CANCELLED
    handoffs = list(
        Handoff.objects.filter(workflow=after)
        .order_by("event_seq")
        .values_list("from_state", "to_state")
    )
    if complete_outcome == "ok":
        assert handoffs == [
            (State.DISCOVERY, State.PLANNING),
            (State.PLANNING, State.CANCELLED),
        ]
    else:
        assert isinstance(complete_outcome, TransitionConflict), outcomes
        assert handoffs == [(State.DISCOVERY, State.CANCELLED)]
    gapless_seqs(after.pk)
