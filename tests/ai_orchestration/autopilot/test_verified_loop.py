"""The autopilot on the offline provider runs the change set's tests for real: a red
first attempt goes back to IMPLEMENTATION with the real failures, the next one is green."""

import pytest

from ai_orchestration.autopilot.runner import autopilot_step
from ai_orchestration.autopilot.services import autopilot_start
from ai_orchestration.context import prompt_request_build
from ai_orchestration.models import AIRun
from tests.factories import workflow_for
from workflows.check_runs import check_run_for_testing
from workflows.models import CheckRun, Handoff, PhaseResult, WorkItem
from workflows.services import Actor

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _heartbeat_after_the_step(settings):
    """The heartbeat's own connection cannot see the run inside the test's transaction, so
    a beat during a sandboxed step (slow on a loaded machine) would count the lease as
    lost; here it beats only after any step."""
    settings.TOPDOG_AUTOPILOT_HEARTBEAT_SECONDS = 120


def run_to_end(run_id) -> None:
    for _ in range(50):
        if not autopilot_step(run_id=run_id, worker_id="test-worker"):
            return
    raise AssertionError("the run did not stop")


def test_red_run_regresses_with_the_real_failure_and_the_next_attempt_is_green(
    sandbox, no_repository, user, django_capture_on_commit_callbacks
):
    # given a request whose first implementation has a bug its own test catches
    workflow = workflow_for(no_repository, user, description="[fail first] Add dark mode.")

    # when the autopilot works the whole workflow
    with django_capture_on_commit_callbacks(execute=True):
        run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    with django_capture_on_commit_callbacks(execute=True):
        run_to_end(run.id)

    # then it completes after one regression
    workflow.refresh_from_db()
    run.refresh_from_db()
    assert (workflow.state, run.status) == ("COMPLETE", AIRun.Status.COMPLETED), run.error
    assert workflow.regression_count == 1
    assert workflow.tests_verified is True

    # and both change sets were really tested: the first red, the second green
    tests = list(CheckRun.objects.filter(workflow=workflow, kind="test").order_by("created_at"))
    assert [(t.attempt, t.status) for t in tests] == [(1, "failed"), (2, "passed")]
    # (the offline plan's two chains: the switch with two tests, the description with one)
    assert (tests[0].tests_run, tests[0].tests_failed) == (3, 2)
    assert (tests[1].tests_run, tests[1].tests_failed) == (3, 0)
    assert all(t.isolated and t.backend == "bubblewrap" for t in tests)

    # and the reports carry the measurement, the regression the real failure
    reports = [r.result for r in PhaseResult.objects.filter(workflow=workflow, phase="TESTING")]
    assert [(r["verdict"], r["verified"], r["tests_failed"]) for r in reports] == [
        ("fail", True, 2),
        ("pass", True, 0),
    ]
    regression = Handoff.objects.get(workflow=workflow, kind="regression")
    failing_test = tests[0].failures[0]["name"]
    assert failing_test in regression.feedback
    assert str(tests[0].id) == reports[0]["check_run_id"]

    # and only the switch's chain was redone: the description's items kept their results
    items = {item.key: item.executions for item in WorkItem.objects.filter(workflow=workflow)}
    assert items == {"W1": 2, "W2": 2, "W3": 1, "W4": 1}


def test_the_auditor_prompt_shows_the_diff_and_the_run(
    sandbox, no_repository, user, django_capture_on_commit_callbacks
):
    workflow = workflow_for(no_repository, user, description="[fail first] Add dark mode.")
    with django_capture_on_commit_callbacks(execute=True):
        run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    # DISCOVERY, PLANNING, IMPLEMENTATION: one phase per run
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            run_to_end(run.id)
            run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user), scope="phase")
    workflow.refresh_from_db()
    assert workflow.state == "TESTING"
    # the tests run first, as the autopilot does
    check = check_run_for_testing(
        workflow=workflow, actor=Actor.of(user), should_stop=lambda: False
    )

    prompt = prompt_request_build(workflow=workflow)

    review = "\n".join(m["content"] for m in prompt.messages)
    assert "diff --git a/src/" in review
    assert str(check.id) in review
    assert "FAILED" in review and check.failures[0]["name"] in review
