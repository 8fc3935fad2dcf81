"""Test runs of a change set in the real bubblewrap sandbox, through the API."""

import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from tests.factories import MembershipFactory, UserFactory, api_token_for, evidence
from tests.workflows.checks.helpers import (
    BAD_MODULE,
    change_set,
    complete,
    workflow_in_implementation,
    workflow_in_testing,
)
from workflows.broadcast import workflow_group
from workflows.check_runs import check_run_execute, check_run_request
from workflows.models import CheckRun, WorkflowEvent
from workflows.services import Actor

pytestmark = pytest.mark.django_db


def run_queued(workflow) -> CheckRun:
    run = CheckRun.objects.get(workflow=workflow, kind="test", status="queued")
    check_run_execute(check_id=run.id)
    run.refresh_from_db()
    return run


def test_post_runs_the_tests_of_the_change_set_for_real(
    sandbox, no_repository, api, user, django_capture_on_commit_callbacks
):
    # given a workflow whose change set has a module and two tests
    workflow = workflow_in_testing(no_repository, user)

    # when the IDE asks for a test run and a worker executes it
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            f"/api/workflows/{workflow.id}/checks/", {"kind": "test"}, format="json"
        )
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "queued"
    with django_capture_on_commit_callbacks(execute=True):
        run = run_queued(workflow)

    # then pytest really ran them in the isolated sandbox, counted from its JUnit file
    assert run.status == "passed", run.output
    assert (run.backend, run.isolated, run.exit_code) == ("bubblewrap", True, 0)
    assert (run.tests_run, run.tests_failed, run.tests_errors, run.tests_skipped) == (2, 0, 0, 0)
    assert run.command == "python -m pytest -q"
    assert len(run.log_sha256) == len(run.junit_sha256) == 64
    assert "2 passed" in run.output
    assert "+def double(x):" in run.diff

    # and the event log says so, and the API lists it newest first with its fields
    types = list(
        WorkflowEvent.objects.filter(workflow=workflow, type__startswith="check.").values_list(
            "type", flat=True
        )
    )
    assert types == ["check.started", "check.finished"]
    listed = api.get(f"/api/workflows/{workflow.id}/checks/").json()["results"]
    assert listed[0]["id"] == str(run.id) and listed[0]["tests_run"] == 2
    assert listed[-1]["kind"] == "syntax"
    detail = api.get(f"/api/workflows/{workflow.id}/checks/{run.id}/").json()
    assert "double.py" in detail["diff"]


def test_a_failing_run_binds_the_testing_report(sandbox, no_repository, api, user):
    # given a change set whose test fails, measured in the sandbox
    workflow = workflow_in_testing(no_repository, user, change_set(module=BAD_MODULE))
    api.post(f"/api/workflows/{workflow.id}/checks/", {"kind": "test"}, format="json")
    run = run_queued(workflow)
    assert run.status == "failed"
    assert (run.tests_run, run.tests_failed) == (2, 1)
    assert run.failures[0]["name"] == "test_double"
    assert "assert 6 == 4" in run.failures[0]["text"]

    # when the auditor claims a pass, or figures that disagree, it is refused
    url = "/api/ai-workflows/complete-phase"
    body = {"workflow_id": str(workflow.id), "ai_response": ""}
    passed = evidence("TESTING", tests_run=2, tests_failed=1)
    response = api.post(url, {**body, "phase_result": passed}, format="json")
    assert response.status_code == 400
    assert "a pass needs a green run" in str(response.json()["errors"])
    wrong = evidence("TESTING", verdict="fail", tests_run=5, tests_failed=0)
    wrong["findings"] = [{"severity": "major", "message": "broken"}]
    response = api.post(url, {**body, "phase_result": wrong}, format="json")
    assert response.status_code == 400
    assert "measured tests_run=2" in str(response.json()["errors"])

    # then a fail without figures is stored with the measured ones, verified
    honest = {"verdict": "fail", "quality_score": 0.2, "findings": wrong["findings"]}
    response = api.post(url, {**body, "phase_result": honest}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["new_state"] == "IMPLEMENTATION"
    stored = workflow.phase_results.get(phase="TESTING").result
    assert stored["verified"] is True and stored["check_run_id"] == str(run.id)
    assert (stored["tests_run"], stored["tests_failed"]) == (2, 1)


def test_without_a_run_the_report_says_it_is_unverified(api, project, user):
    workflow = workflow_in_testing(project, user)
    complete(workflow, user, evidence("TESTING"))
    stored = workflow.phase_results.get(phase="TESTING").result
    assert stored["verified"] is False and stored["check_run_id"] is None
    page = api.get(f"/api/workflows/{workflow.id}/").json()
    assert page["tests_verified"] is False


def test_one_active_run_per_workflow_and_roles(sandbox, no_repository, api, user):
    workflow = workflow_in_testing(no_repository, user)
    first = api.post(f"/api/workflows/{workflow.id}/checks/", {"kind": "test"}, format="json")
    assert first.status_code == 202
    again = api.post(f"/api/workflows/{workflow.id}/checks/", {"kind": "test"}, format="json")
    assert again.status_code == 409
    assert "already queued or running" in again.json()["detail"]
    # a viewer reads but may not run; a stranger sees nothing
    viewer = UserFactory(username="vera")
    MembershipFactory(project=no_repository, user=viewer, role="viewer")
    api.credentials(HTTP_AUTHORIZATION=f"Token {api_token_for(viewer)}")
    assert api.get(f"/api/workflows/{workflow.id}/checks/").status_code == 200
    assert api.post(f"/api/workflows/{workflow.id}/checks/", {}, format="json").status_code == 403
    stranger = UserFactory(username="sam")
    api.credentials(HTTP_AUTHORIZATION=f"Token {api_token_for(stranger)}")
    assert api.get(f"/api/workflows/{workflow.id}/checks/").status_code == 404


def test_nothing_to_test_and_sandbox_off_are_409(api, project, user):
    workflow = workflow_in_implementation(project, user)
    response = api.post(f"/api/workflows/{workflow.id}/checks/", {"kind": "test"}, format="json")
    assert response.status_code == 409
    assert "sandbox is off" in response.json()["detail"]


def test_cancel_stops_a_running_test(
    sandbox, no_repository, api, user, django_capture_on_commit_callbacks
):
    slow = "import time\n\n\ndef test_slow():\n    time.sleep(30)\n"
    workflow = workflow_in_testing(no_repository, user, change_set(test=slow))
    api.post(f"/api/workflows/{workflow.id}/checks/", {"kind": "test"}, format="json")
    run = CheckRun.objects.get(workflow=workflow, kind="test")
    # the cancel lands while the run executes (the sandbox polls for it)
    CheckRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    with django_capture_on_commit_callbacks(execute=True):
        check_run_execute(check_id=run.id)
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert run.duration_ms < 10_000


def test_output_streams_live_and_secrets_are_scrubbed(
    sandbox, no_repository, user, django_capture_on_commit_callbacks
):
    # given a project token that a test prints (a test cannot read it: it is written here)
    no_repository.github_token = "tok_live_abcdefghijklmnop1234"
    no_repository.save()
    leaky = (
        "def test_leak():\n"
        "    print('token tok_live_abcdefghijklmnop1234 here', flush=True)\n"
        "    assert False\n"
    )
    workflow = workflow_in_testing(no_repository, user, change_set(test=leaky))
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(workflow_group(workflow.id), channel)

    check_run_request(workflow_id=workflow.id, actor=Actor.of(user))
    run = run_queued(workflow)

    assert run.status == "failed"
    assert "tok_live_abcdefghijklmnop1234" not in run.output + str(run.failures)
    assert "[redacted]" in run.output
    frames = []
    while True:
        try:
            frames.append(async_to_sync(_receive)(layer, channel))
        except TimeoutError:
            break
    lines = [
        line for f in frames if f["frame"]["type"] == "check.output" for line in f["frame"]["lines"]
    ]
    assert lines, frames
    assert not any("tok_live_abcdefghijklmnop1234" in line for line in lines)


async def _receive(layer, channel):
    return await asyncio.wait_for(layer.receive(channel), timeout=0.5)


def test_setup_runs_once_per_set_of_dependency_files(sandbox, no_repository, user):
    # given a setup step that installs a tool into /deps
    no_repository.setup_command = (
        "mkdir -p /deps/bin && printf '#!/bin/sh\\necho tool-ok\\n' > /deps/bin/tool "
        "&& chmod +x /deps/bin/tool"
    )
    no_repository.test_command = "tool && python -m pytest -q"
    no_repository.save()
    files = change_set(**{"requirements.txt": "# none\n"})
    workflow = workflow_in_testing(no_repository, user, files)

    # when the tests run twice with the same dependency files
    for _ in range(2):
        check_run_request(workflow_id=workflow.id, actor=Actor.of(user))
        run = run_queued(workflow)
        assert run.status == "passed", run.output + run.reason
        assert "tool-ok" in run.output

    # then the setup ran once
    assert CheckRun.objects.filter(workflow=workflow, kind="setup").count() == 1
