"""The after-commit listener registry: what layers above the core learn of a transition."""

import logging

import pytest
from django.db import transaction

from ai_orchestration.autopilot.services import autopilot_transition_follow
from tests.factories import workflow_for
from workflows.listeners import (
    TransitionCommitted,
    transition_listener_register,
    transition_listener_unregister,
    transition_listeners,
)
from workflows.services import Actor, workflow_cancel
from workflows.states import State, Transition


@pytest.fixture
def heard():
    facts: list[TransitionCommitted] = []
    transition_listener_register(facts.append)
    yield facts
    transition_listener_unregister(facts.append)


def test_the_ai_layer_listens_from_its_app_config():
    assert autopilot_transition_follow in transition_listeners()


def test_a_committed_transition_is_announced_after_commit(
    project, user, heard, django_capture_on_commit_callbacks
):
    workflow = workflow_for(project, user)

    with django_capture_on_commit_callbacks(execute=True):
        workflow_cancel(workflow_id=workflow.id, actor=Actor.of(user), reason="not needed")
        assert heard == []  # not before commit

    assert heard == [
        TransitionCommitted(
            workflow_id=workflow.id,
            kind=Transition.CANCEL,
            from_state=State.DISCOVERY,
            to_state=State.CANCELLED,
            awaiting_approval=False,
            actor_name="alice",
        )
    ]


def test_a_rolled_back_transition_is_not_announced(
    project, user, heard, django_capture_on_commit_callbacks
):
    workflow = workflow_for(project, user)

    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        workflow_cancel(workflow_id=workflow.id, actor=Actor.of(user))
        raise RuntimeError("rolled back")

    assert heard == []
    workflow.refresh_from_db()
    assert workflow.state == State.DISCOVERY


def test_a_failing_listener_is_logged_and_the_others_still_hear(
    project, user, heard, caplog, django_capture_on_commit_callbacks
):
    def broken(fact: TransitionCommitted) -> None:
        raise ValueError("listener bug")

    transition_listener_register(broken)
    transition_listener_register(heard.append)  # already registered: stays where it was
    later: list[TransitionCommitted] = []
    transition_listener_register(later.append)
    workflow = workflow_for(project, user)
    try:
        with (
            caplog.at_level(logging.ERROR, logger="workflows.listeners"),
            django_capture_on_commit_callbacks(execute=True),
        ):
            outcome = workflow_cancel(workflow_id=workflow.id, actor=Actor.of(user))
    finally:
        transition_listener_unregister(broken)
        transition_listener_unregister(later.append)

    assert outcome.workflow.state == State.CANCELLED
    assert [fact.kind for fact in heard] == [Transition.CANCEL]
    assert [fact.kind for fact in later] == [Transition.CANCEL]
    assert "listener bug" in caplog.text
    assert "broken" in caplog.text
