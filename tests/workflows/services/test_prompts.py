"""Role prompt templates: shipped versions, publishing, what a workflow records and sends.

Assertions look only for the values the service injects (state, requirements, feedback),
never for the prompts' wording.
"""

import hashlib
import threading
import time

import pytest
from django.conf import settings
from django.db import connection, transaction

from ai_orchestration.context import prompt_request_build
from tests.conftest import on_postgres
from tests.factories import MembershipFactory, ProjectFactory, evidence, workflow_for
from workflows.models import PromptTemplate, RoleContext, Workflow
from workflows.prompts import prompt_template_active, prompt_template_publish
from workflows.services import (
    Actor,
    workflow_phase_complete,
    workflow_regress,
    workflow_reject,
)
from workflows.states import Role, State

S = State
DESCRIPTION = "Add a dark mode switch to the settings page"
CUSTOM_BODY = "Custom $role prompt. Phase: $state. Requirements:\n$requirements"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fresh(workflow_id) -> Workflow:
    return Workflow.objects.get(pk=workflow_id)


def complete(workflow_id, actor: Actor, **overrides):
    phase = fresh(workflow_id).state
    return workflow_phase_complete(
        workflow_id=workflow_id,
        ai_response=f"{phase} evidence",
        result=evidence(phase, **overrides),
        actor=actor,
    )


def drive_to(workflow_id, target: str, actor: Actor) -> None:
    while fresh(workflow_id).state != target:
        complete(workflow_id, actor)


def role_context(workflow_id, role: str) -> RoleContext:
    return RoleContext.objects.get(workflow_id=workflow_id, role=role)


# --- templates -------------------------------------------------------------------------


@pytest.mark.django_db
def test_migration_loaded_an_active_version_1_per_role():
    active = list(PromptTemplate.objects.filter(active=True))

    assert len(active) == 5
    assert {t.role for t in active} == set(Role)
    for template in active:
        assert template.version == 1
        assert template.body.strip()
        assert template.sha256 == sha256(template.body)


def test_publish_creates_the_next_version_and_deactivates_the_old(user):
    # given
    v1 = prompt_template_active(role=Role.CODE_WRITER)
    others_before = set(
        PromptTemplate.objects.filter(active=True)
        .exclude(role=Role.CODE_WRITER)
        .values_list("pk", flat=True)
    )

    # when
    v2 = prompt_template_publish(
        role=Role.CODE_WRITER, body=CUSTOM_BODY, actor=user, note="shorter"
    )

    # then
    assert (v2.version, v2.active, v2.sha256) == (2, True, sha256(CUSTOM_BODY))
    assert v2.created_by == user
    v1.refresh_from_db()
    assert v1.active is False
    assert prompt_template_active(role=Role.CODE_WRITER) == v2
    assert PromptTemplate.objects.filter(role=Role.CODE_WRITER, active=True).count() == 1
    assert PromptTemplate.objects.filter(role=Role.CODE_WRITER).count() == 2
    assert (
        set(
            PromptTemplate.objects.filter(active=True)
            .exclude(role=Role.CODE_WRITER)
            .values_list("pk", flat=True)
        )
        == others_before
    )

    # and once more
    v3 = prompt_template_publish(role=Role.CODE_WRITER, body=CUSTOM_BODY + "!", actor=None)
    v2.refresh_from_db()
    assert (v3.version, v2.active) == (3, False)


# --- what a workflow records -----------------------------------------------------------


def test_role_context_records_the_template_active_when_the_role_was_entered(user, project):
    # given
    actor = Actor.of(user)
    q_v1 = prompt_template_active(role=Role.Q_ASSISTANT)
    writer_v1 = prompt_template_active(role=Role.CODE_WRITER)
    workflow = workflow_for(project, user, description=DESCRIPTION)
    assert role_context(workflow.pk, Role.Q_ASSISTANT).prompt_version == q_v1.sha256

    # when: CODE_WRITER gets a new version before the workflow reaches it
    writer_v2 = prompt_template_publish(role=Role.CODE_WRITER, body=CUSTOM_BODY, actor=user)
    drive_to(workflow.pk, S.IMPLEMENTATION, actor)

    # then
    writer = role_context(workflow.pk, Role.CODE_WRITER)
    assert writer.prompt_version == writer_v2.sha256 != writer_v1.sha256
    assert writer.prompt_template == writer_v2
    assert "Phase: IMPLEMENTATION" in writer.system_prompt
    assert DESCRIPTION in writer.system_prompt
    assert role_context(workflow.pk, Role.Q_ASSISTANT).prompt_version == q_v1.sha256

    # when: a newer version is published while the role already works
    writer_v3 = prompt_template_publish(role=Role.CODE_WRITER, body=CUSTOM_BODY + " v3", actor=user)

    # then: the role keeps the version it started with
    assert role_context(workflow.pk, Role.CODE_WRITER).prompt_version == writer_v2.sha256

    # when: the work comes back to the role after a regression, the role is entered anew
    drive_to(workflow.pk, S.TESTING, actor)
    assert role_context(workflow.pk, Role.TEST_AUDITOR).prompt_version == (
        prompt_template_active(role=Role.TEST_AUDITOR).sha256
    )
    workflow_regress(workflow_id=workflow.pk, target=None, reason="r", feedback="f", actor=actor)

    # then
    assert role_context(workflow.pk, Role.CODE_WRITER).prompt_version == writer_v3.sha256


# --- the request a role sends ----------------------------------------------------------


def test_prompt_request_starts_with_the_system_prompt_with_state_and_requirements(user, project):
    # given
    workflow = workflow_for(project, user, description=DESCRIPTION)

    # when
    request = prompt_request_build(workflow=fresh(workflow.pk))

    # then
    first, *rest = request.messages
    assert first["role"] == "system"
    assert S.DISCOVERY in first["content"]
    assert DESCRIPTION in first["content"]
    assert all(m["role"] != "system" for m in rest)
    assert rest, "the phase instruction follows the system prompt"
    assert request.prompt_version == prompt_template_active(role=Role.Q_ASSISTANT).sha256
    assert request.model == settings.TOPDOG_MODELS[workflow.model_name]["model"]
    assert request.as_payload()["messages"] == request.messages


def test_prompt_request_system_prompt_follows_the_state(user, project):
    # given: the same role in its second phase
    workflow = workflow_for(project, user, description=DESCRIPTION)
    complete(workflow.pk, Actor.of(user))

    # when
    request = prompt_request_build(workflow=fresh(workflow.pk))

    # then
    system = request.messages[0]
    assert system["role"] == "system"
    assert S.PLANNING in system["content"]
    assert DESCRIPTION in system["content"]


def test_prompt_request_includes_the_latest_feedback_after_a_regression(user, project):
    # given: tests failed and the work went back to the code writer
    actor = Actor.of(user)
    workflow = workflow_for(project, user, description=DESCRIPTION)
    drive_to(workflow.pk, S.TESTING, actor)
    complete(
        workflow.pk,
        actor,
        verdict="fail",
        findings=[{"severity": "major", "message": "toggle state is never persisted"}],
        quality_score=0.3,
    )
    assert fresh(workflow.pk).state == S.IMPLEMENTATION

    # when
    request = prompt_request_build(workflow=fresh(workflow.pk))

    # then
    assert request.messages[0]["role"] == "system"
    assert S.IMPLEMENTATION in request.messages[0]["content"]
    assert DESCRIPTION in request.messages[0]["content"]
    assert any("toggle state is never persisted" in m["content"] for m in request.messages[1:])


def test_prompt_request_includes_feedback_of_a_rejection_at_a_gate(user):
    # given
    project = ProjectFactory(approval_gates=[S.DISCOVERY])
    MembershipFactory(project=project, user=user)
    actor = Actor.of(user)
    workflow = workflow_for(project, user, description=DESCRIPTION)
    complete(workflow.pk, actor)
    workflow_reject(workflow_id=workflow.pk, actor=actor, feedback="R1 must cover mobile too")

    # when
    request = prompt_request_build(workflow=fresh(workflow.pk))

    # then
    assert any("R1 must cover mobile too" in m["content"] for m in request.messages[1:])


def test_prompt_request_trimmed_to_the_budget_keeps_system_prompt_and_latest_feedback(
    user, project
):
    # given: a code writer with history, sent back with feedback
    actor = Actor.of(user)
    workflow = workflow_for(project, user, description=DESCRIPTION)
    drive_to(workflow.pk, S.IMPLEMENTATION, actor)
    complete(workflow.pk, actor)
    workflow_regress(
        workflow_id=workflow.pk,
        target=None,
        reason="coverage",
        feedback="add a test for the saved preference",
        actor=actor,
    )
    workflow = fresh(workflow.pk)
    full = prompt_request_build(workflow=workflow)
    assert not full.trimmed

    # when: no room beyond the reply itself
    trimmed = prompt_request_build(workflow=workflow, context_tokens=full.max_tokens + 1)

    # then
    assert trimmed.trimmed
    assert len(trimmed.messages) < len(full.messages)
    assert trimmed.messages[0] == full.messages[0]
    assert any("add a test for the saved preference" in m["content"] for m in trimmed.messages)


def test_there_is_no_prompt_for_a_finished_workflow(user, project):
    workflow = workflow_for(project, user)
    drive_to(workflow.pk, S.COMPLETE, Actor.of(user))

    with pytest.raises(ValueError, match="COMPLETE"):
        prompt_request_build(workflow=fresh(workflow.pk))


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_two_workers_restoring_a_missing_default_at_once_get_the_same_template():
    # given no template of the role at all (as after a flush), and worker A restoring it
    # in a transaction that has not committed yet
    PromptTemplate.objects.filter(role=Role.CODE_WRITER).delete()
    restored, go_on = threading.Event(), threading.Event()
    got: dict[str, object] = {}

    def worker(name: str, hold: bool) -> None:
        try:
            with transaction.atomic():
                got[name] = prompt_template_active(role=Role.CODE_WRITER)
                if hold:
                    restored.set()
                    go_on.wait(10)
        except Exception as exc:  # reported below
            got[name] = exc
        finally:
            connection.close()

    a = threading.Thread(target=worker, args=("a", True))
    a.start()
    assert restored.wait(10)
    # when worker B restores it too (its insert waits for A's) and A then commits
    b = threading.Thread(target=worker, args=("b", False))
    b.start()
    _wait_for_a_lock_wait()
    go_on.set()
    a.join(10)
    b.join(10)

    # then both have the one restored version
    assert isinstance(got["a"], PromptTemplate), got["a"]
    assert isinstance(got["b"], PromptTemplate), got["b"]
    assert got["a"].pk == got["b"].pk
    assert PromptTemplate.objects.filter(role=Role.CODE_WRITER).count() == 1


def _wait_for_a_lock_wait(timeout: float = 10.0) -> None:
    """Until some backend of this database waits for a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
        time.sleep(0.02)
    raise AssertionError("no backend came to wait for the lock")
