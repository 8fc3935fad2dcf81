"""The prompt builder: the budget holds, and what must never be dropped is kept."""

import pytest

from ai_orchestration.context import prompt_request_build
from ai_orchestration.tokens import MESSAGE_OVERHEAD_TOKENS, tokens_estimate
from tests.factories import evidence, workflow_for
from workflows.models import Message, Workflow
from workflows.services import Actor, workflow_phase_complete

pytestmark = pytest.mark.django_db


def _cost(messages):
    return sum(tokens_estimate(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages)


def _with_history(workflow, role, count, size=400):
    start = workflow.last_message_seq
    Message.objects.bulk_create(
        Message(
            workflow=workflow,
            seq=start + n + 1,
            role=role,
            sender="assistant" if n % 2 else "user",
            phase=workflow.state,
            content=f"message {n}: " + "x" * size,
        )
        for n in range(count)
    )
    Workflow.objects.filter(pk=workflow.pk).update(last_message_seq=start + count)
    workflow.refresh_from_db()


def test_ten_thousand_messages_fit_the_budget_and_keep_what_matters(project, user):
    # given a workflow sent back from TESTING with feedback, and 10,000 CODE_WRITER messages
    workflow = workflow_for(project, user, description="Add dark mode to settings UNIQUE-REQ")
    actor = Actor.of(user)
    for phase in ("DISCOVERY", "PLANNING", "IMPLEMENTATION"):
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="", result=evidence(phase), actor=actor
        )
    failing = evidence(
        "TESTING",
        verdict="fail",
        quality_score=0.2,
        findings=[{"severity": "major", "message": "LATEST-FEEDBACK toggle untested"}],
    )
    workflow_phase_complete(workflow_id=workflow.id, ai_response="", result=failing, actor=actor)
    workflow.refresh_from_db()
    _with_history(workflow, "CODE_WRITER", 10_000)

    # when the request is built for an 8k-token model
    request = prompt_request_build(workflow=workflow, context_tokens=8192)

    # then it fits, newest history first, with system prompt, requirements and feedback
    budget = 8192 - request.max_tokens
    assert _cost(request.messages) <= budget
    assert request.estimated_input_tokens == _cost(request.messages)
    assert request.trimmed
    assert request.messages[0]["role"] == "system"
    assert "UNIQUE-REQ" in request.messages[0]["content"]
    assert "LATEST-FEEDBACK" in request.messages[-1]["content"]
    history = [m for m in request.messages if m["content"].startswith("message ")]
    assert history, "some history fits"
    assert history[-1]["content"].startswith("message 9999:")
    numbers = [int(m["content"].split(":")[0].split()[1]) for m in history]
    assert numbers == sorted(numbers)  # oldest first, contiguous tail
    assert numbers == list(range(numbers[0], 10_000))


def test_budget_smaller_than_the_essentials_still_keeps_them(project, user):
    workflow = workflow_for(project, user, description="Tiny budget KEEP-ME")
    _with_history(workflow, "Q_ASSISTANT", 50)
    request = prompt_request_build(workflow=workflow, context_tokens=100)
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert "KEEP-ME" in request.messages[0]["content"]


def test_short_history_is_sent_whole(project, user):
    workflow = workflow_for(project, user)
    _with_history(workflow, "Q_ASSISTANT", 10, size=20)
    request = prompt_request_build(workflow=workflow)
    assert not request.trimmed
    assert len([m for m in request.messages if m["content"].startswith("message ")]) == 10


def test_query_count_does_not_grow_with_history(project, user, django_assert_max_num_queries):
    workflow = workflow_for(project, user)
    _with_history(workflow, "Q_ASSISTANT", 3000, size=2000)
    with django_assert_max_num_queries(6):
        prompt_request_build(workflow=workflow, context_tokens=16_000)
