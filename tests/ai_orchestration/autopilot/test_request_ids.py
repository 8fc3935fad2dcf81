"""X-Request-ID is carried from the request that starts a run into its tasks, the
run record, the events the worker writes, and a check run's record."""

import pytest
from django_tasks_db.models import DBTaskResult

from ai_orchestration.inprocess_worker import worker_run
from ai_orchestration.models import AIRun
from tests.factories import workflow_for
from tests.workflows.checks.helpers import workflow_in_testing
from workflows.models import CheckRun, Workflow, WorkflowEvent

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_run_started_with_a_request_id_carries_it_into_tasks_and_events(api, project, user):
    # given: a workflow created by an earlier request
    workflow = workflow_for(project, user)
    events_before = set(
        WorkflowEvent.objects.filter(workflow=workflow).values_list("seq", flat=True)
    )

    # when: the autopilot is started by a request with an id, and a worker runs it
    response = api.post(
        f"/api/workflows/{workflow.id}/runs/", {}, format="json", HTTP_X_REQUEST_ID="req-run-7"
    )
    assert response.status_code == 202, response.content
    assert response.json()["request_id"] == "req-run-7"
    queued = DBTaskResult.objects.get()
    assert queued.task_result.kwargs == {"request_id": "req-run-7"}
    worker_run(interval=0.05, batch=True, verbosity=0)

    # then: the run, every task it queued and every event its worker wrote carry the id
    run = AIRun.objects.get(workflow=workflow)
    assert run.status == AIRun.Status.COMPLETED
    assert run.request_id == "req-run-7"
    tasks = DBTaskResult.objects.all()
    assert tasks.count() >= 6
    assert {t.task_result.kwargs.get("request_id") for t in tasks} == {"req-run-7"}
    written = WorkflowEvent.objects.filter(workflow=workflow).exclude(seq__in=events_before)
    assert written.count() >= 6
    assert set(written.values_list("request_id", flat=True)) == {"req-run-7"}
    assert Workflow.objects.get(pk=workflow.pk).state == "COMPLETE"
    # and the events API shows it
    page = api.get(f"/api/workflows/{workflow.id}/events/").json()
    assert {e["request_id"] for e in page["results"] if e["seq"] not in events_before} == {
        "req-run-7"
    }


def test_an_event_written_by_a_request_carries_its_id(api, project, user):
    workflow = workflow_for(project, user)
    response = api.post(
        f"/api/workflows/{workflow.id}/cancel/",
        {"reason": "not needed"},
        format="json",
        HTTP_X_REQUEST_ID="req-cancel-1",
    )
    assert response.status_code == 200, response.content
    last = WorkflowEvent.objects.filter(workflow=workflow).order_by("-seq").first()
    assert last.request_id == "req-cancel-1"


def test_a_check_run_records_the_request_that_asked_for_it(
    sandbox, no_repository, api, user, django_capture_on_commit_callbacks
):
    workflow = workflow_in_testing(no_repository, user)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            f"/api/workflows/{workflow.id}/checks/",
            {"kind": "test"},
            format="json",
            HTTP_X_REQUEST_ID="req-check-3",
        )
    assert response.status_code == 202, response.content
    assert response.json()["request_id"] == "req-check-3"
    run = CheckRun.objects.get(workflow=workflow, kind="test")
    assert run.request_id == "req-check-3"
    (task,) = DBTaskResult.objects.filter(task_path__endswith="check_run_task")
    assert task.task_result.kwargs == {"request_id": "req-check-3"}
