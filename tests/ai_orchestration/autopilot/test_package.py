"""The autopilot package: task paths that queued rows name, and frames sent after commit."""

import pytest
from django.db import transaction
from django.utils.module_loading import import_string
from django_tasks_db.models import DBTaskResult

from ai_orchestration.autopilot import frames
from ai_orchestration.autopilot.services import RUN_TASK_PATH, autopilot_cancel, autopilot_start
from ai_orchestration.autopilot.tasks import autopilot_run_task
from ai_orchestration.models import AIRun
from tests.factories import workflow_for
from workflows.services import Actor


def test_new_rows_name_the_task_where_it_lives():
    assert autopilot_run_task.module_path == RUN_TASK_PATH
    assert import_string(RUN_TASK_PATH) is autopilot_run_task


@pytest.mark.django_db
def test_rows_queued_under_the_old_module_path_still_resolve_to_the_task():
    """Rows queued before autopilot.py became a package name the old path."""
    row = DBTaskResult(
        task_path="ai_orchestration.autopilot.autopilot_run_task",
        priority=0,
        queue_name="default",
        backend_name="default",
    )

    assert row.task.func is autopilot_run_task.func


@pytest.fixture
def sent(monkeypatch):
    frames_sent: list[dict] = []
    monkeypatch.setattr(
        frames,
        "workflow_live_frame_send",
        lambda *, workflow_id, frame: frames_sent.append(frame),
    )
    return frames_sent


def test_a_run_frame_goes_only_after_commit(
    project, user, sent, django_capture_on_commit_callbacks
):
    workflow = workflow_for(project, user)

    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
        raise RuntimeError("rolled back")

    assert sent == []
    assert not AIRun.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
        assert sent == []  # inside the transaction: not yet
    with django_capture_on_commit_callbacks(execute=True):
        autopilot_cancel(run_id=run.id, actor=Actor.of(user))
        assert [frame["run"]["status"] for frame in sent] == ["queued"]

    assert [frame["run"]["status"] for frame in sent] == ["queued", "cancelled"]
    assert {frame["type"] for frame in sent} == {"ai.run"}


def test_run_bodies_and_frames_come_from_one_serializer(
    api, project, user, sent, monkeypatch, django_capture_on_commit_callbacks
):
    # given: the run serializer marks what it renders
    from ai_orchestration.autopilot.serializers import RunOutputSerializer
    from tests.workflows.api.test_bodies import MARK, mark

    mark(monkeypatch, RunOutputSerializer)
    workflow = workflow_for(project, user)

    # when: a run is started over the API (its ai.run frame goes after commit) and listed
    with django_capture_on_commit_callbacks(execute=True):
        started = api.post(f"/api/workflows/{workflow.id}/runs/", {}, format="json")
    listed = api.get(f"/api/workflows/{workflow.id}/runs/").json()["results"]

    # then: the API's bodies and the frame are the same rendering
    assert started.status_code == 202, started.json()
    assert started.json()[MARK] == listed[0][MARK] == "RunOutputSerializer"
    assert [frame["run"] for frame in sent] == [started.json()]
