"""The autopilot with a real SDK against a loopback fake model: loops, faults, no traces."""

import json
import time

import pytest

from ai_orchestration.autopilot.runner import autopilot_step
from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.models import AIRun
from tests.ai_orchestration.fakes import cut_after, hang, ok, status
from tests.factories import evidence, workflow_for
from workflows.models import Handoff, Message, PhaseResult, Workflow
from workflows.services import Actor, workflow_phase_complete

pytestmark = pytest.mark.django_db

API_KEY = "sk-test-autopilot-0123456789"


@pytest.fixture
def openai_at_fake(settings, fake_openai):
    providers = {name: dict(config) for name, config in settings.TOPDOG_PROVIDERS.items()}
    providers["openai"].update(base_url=fake_openai.base_url, api_key=API_KEY, timeout=1)
    settings.TOPDOG_PROVIDERS = providers
    settings.TOPDOG_LLM_DEADLINE_SECONDS = 3
    return fake_openai


def item_answer(path: str, message: str = "feat: the item") -> dict:
    """A work item's answer: its one file."""
    return {
        "commit_message": message,
        "files": [{"path": path, "action": "create", "content": '"""Done."""\n'}],
    }


def _run(workflow, user, scope="workflow") -> AIRun:
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope=scope)
    steps = 0
    while autopilot_step(run_id=run.id, worker_id="test"):
        steps += 1
        assert steps < 30
    run.refresh_from_db()
    return run


def _at(workflow, user, phase):
    for done in ("DISCOVERY", "PLANNING", "IMPLEMENTATION", "TESTING", "VERIFICATION"):
        if done == phase:
            return workflow
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="", result=evidence(done), actor=Actor.of(user)
        )
    return workflow


def test_failed_test_report_loops_back_with_findings_then_completes(openai_at_fake, project, user):
    # given a model whose first test report fails
    workflow = workflow_for(project, user, model_name="GPT4")
    failing = evidence(
        "TESTING",
        verdict="fail",
        quality_score=0.4,
        findings=[{"severity": "major", "message": "FINDING-42 toggle has no test"}],
    )
    openai_at_fake.script(
        ok(json=evidence("DISCOVERY")),
        ok(json=evidence("PLANNING")),
        # the plan's two items (W1 src/app.py, then W2 tests/test_app.py), one call each
        ok(json=item_answer("src/app.py")),
        ok(json=item_answer("tests/test_app.py")),
        ok(json=failing),
        # the finding names no file: both items are redone
        ok(json=item_answer("src/app.py", "fix: test the toggle")),
        ok(json=item_answer("tests/test_app.py", "fix: test the toggle")),
        ok(json=evidence("TESTING")),
        ok(json=evidence("VERIFICATION")),
        ok(json=evidence("DEPLOYMENT")),
    )

    # when the autopilot runs the workflow
    run = _run(workflow, user)

    # then it went back to IMPLEMENTATION once, with the findings in the CODE_WRITER's
    # context, and then completed
    workflow.refresh_from_db()
    assert workflow.state == "COMPLETE", run.error
    assert workflow.regression_count == 1
    regression = Handoff.objects.get(workflow=workflow, kind="regression")
    assert (regression.from_state, regression.to_state) == ("TESTING", "IMPLEMENTATION")
    second_round_first_item = openai_at_fake.requests[5].json
    prompt_text = json.dumps(second_round_first_item["messages"])
    assert "FINDING-42" in prompt_text
    assert run.phases_completed == 8
    assert run.attempts == 10
    assert workflow.input_tokens > 0 and workflow.output_tokens > 0
    assert openai_at_fake.requests[0].header("authorization") == f"Bearer {API_KEY}"


def test_score_below_the_project_threshold_regresses(openai_at_fake, project, user):
    project.quality_threshold = 0.8
    project.save()
    workflow = _at(workflow_for(project, user, model_name="GPT4"), user, "TESTING")
    openai_at_fake.script(ok(json=evidence("TESTING", verdict="pass", quality_score=0.55)))
    run = _run(workflow, user, scope="phase")
    workflow.refresh_from_db()
    assert workflow.state == "IMPLEMENTATION"
    feedback = Handoff.objects.get(workflow=workflow, kind="regression").feedback
    assert "0.55" in feedback and "0.80" in feedback
    assert run.status == AIRun.Status.COMPLETED


@pytest.mark.parametrize(
    ("behaviours", "expected_error"),
    [
        ([status(500)] * 10, "500"),
        ([hang(5)] * 10, "deadline"),
        ([cut_after(3, text='{"document": "partial')] * 10, "streaming"),
        ([status(401)], "API key"),
        ([ok(text="not json at all"), ok(text="still not json")], "invalid twice"),
    ],
    ids=["5xx", "hang", "stream-cut", "401", "invalid-json"],
)
def test_a_failing_model_fails_the_run_and_leaves_no_trace(
    openai_at_fake, project, user, behaviours, expected_error
):
    workflow = workflow_for(project, user, model_name="GPT4")
    messages_before = Message.objects.filter(workflow=workflow).count()
    openai_at_fake.script(*behaviours)

    started = time.monotonic()
    run = _run(workflow, user, scope="phase")
    elapsed = time.monotonic() - started

    assert run.status == AIRun.Status.FAILED
    assert expected_error.lower() in run.error.lower()
    assert API_KEY not in run.error
    assert elapsed < 8  # one overall deadline of 3 s, plus the invalid-answer retry
    workflow = Workflow.objects.get(pk=workflow.pk)
    assert workflow.state == "DISCOVERY"
    assert Message.objects.filter(workflow=workflow).count() == messages_before
    assert not PhaseResult.objects.filter(workflow=workflow).exists()
    assert run.attempts == len(openai_at_fake.requests)


def test_rate_limit_is_waited_out_and_counted(openai_at_fake, project, user):
    workflow = workflow_for(project, user, model_name="GPT4")
    openai_at_fake.script(status(429, headers={"retry-after": "1"}), ok(json=evidence("DISCOVERY")))
    started = time.monotonic()
    run = _run(workflow, user, scope="phase")
    assert time.monotonic() - started >= 1.0
    assert run.status == AIRun.Status.COMPLETED
    assert run.attempts == 2
    message = Message.objects.get(workflow=workflow, sender="assistant")
    assert message.provider == "openai" and message.model == "gpt-4o"
    assert message.output_tokens > 0


def test_invalid_evidence_is_retried_once_with_the_errors(openai_at_fake, project, user):
    workflow = workflow_for(project, user, model_name="GPT4")
    openai_at_fake.script(
        ok(json={"document": "x", "requirements": []}), ok(json=evidence("DISCOVERY"))
    )
    run = _run(workflow, user, scope="phase")
    assert run.status == AIRun.Status.COMPLETED
    retry_messages = openai_at_fake.requests[1].json["messages"]
    assert "requirements" in retry_messages[-1]["content"]
    assert Workflow.objects.get(pk=workflow.pk).state == "PLANNING"


def test_budget_cap_stops_before_the_call(openai_at_fake, project, user):
    from decimal import Decimal

    project.budget_usd = Decimal("0.0001")
    project.save()
    workflow = workflow_for(project, user, model_name="GPT4")
    run = _run(workflow, user)
    assert run.status == AIRun.Status.STOPPED
    assert "budget" in run.stop_reason
    assert openai_at_fake.requests == []
    assert Workflow.objects.get(pk=workflow.pk).state == "DISCOVERY"
