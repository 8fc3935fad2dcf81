"""The IDE drives the plan item by item: list, an item's prompt, an item's completion."""

import pytest

from tests.factories import evidence, workflow_for
from workflows.models import WorkflowEvent, WorkItem
from workflows.services import Actor, workflow_phase_complete

pytestmark = pytest.mark.django_db

# W1 src/app.py, then W2 tests/test_app.py (the shipped PLANNING example)


@pytest.fixture
def workflow(project, user):
    workflow = workflow_for(project, user)
    for phase in ("DISCOVERY", "PLANNING"):
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="", result=evidence(phase), actor=Actor.of(user)
        )
    return workflow


def url(workflow, tail=""):
    return f"/api/workflows/{workflow.id}/work-items/{tail}"


def files(path, content='"""ok."""\n'):
    return {"files": [{"path": path, "action": "create", "content": content}]}


def test_the_list_shows_the_current_plan_paginated(api, workflow):
    first = api.get(url(workflow), {"page_size": 1})
    second = api.get(first.json()["next"])

    assert first.status_code == 200
    assert [i["key"] for i in first.json()["results"]] == ["W1"]
    assert [i["key"] for i in second.json()["results"]] == ["W2"]
    w1 = first.json()["results"][0]
    assert (w1["status"], w1["files"], w1["depends_on"]) == ("ready", ["src/app.py"], [])
    assert second.json()["results"][0]["status"] == "pending"


def test_a_ready_item_has_a_prompt_and_a_pending_one_is_409(api, workflow):
    ready = api.post(url(workflow, "W1/prompt/"))
    pending = api.post(url(workflow, "W2/prompt/"))
    unknown = api.post(url(workflow, "W9/prompt/"))

    assert ready.status_code == 200
    text = "\n".join(m["content"] for m in ready.json()["messages"])
    assert "work item W1" in text and "src/app.py" in text
    assert pending.status_code == 409 and "W2 is pending" in pending.json()["detail"]
    assert unknown.status_code == 404


def test_the_dependents_prompt_carries_the_files_of_what_it_depends_on(api, workflow):
    api.post(
        url(workflow, "W1/complete/"), files("src/app.py", "MARKER_FROM_W1 = 1\n"), format="json"
    )

    prompt = api.post(url(workflow, "W2/prompt/"))

    assert "MARKER_FROM_W1" in "\n".join(m["content"] for m in prompt.json()["messages"])


def test_completing_items_one_by_one_completes_the_phase(api, workflow):
    first = api.post(url(workflow, "W1/complete/"), files("src/app.py"), format="json")
    last = api.post(url(workflow, "W2/complete/"), files("tests/test_app.py"), format="json")

    assert first.status_code == 200
    assert (first.json()["ready"], first.json()["phase_completed"]) == (["W2"], False)
    assert last.status_code == 200
    assert (last.json()["state"], last.json()["phase_completed"]) == ("TESTING", True)
    assert last.json()["next_action"]["phase"] == "TESTING"


def test_an_item_with_a_file_outside_its_own_is_400(api, workflow):
    response = api.post(url(workflow, "W1/complete/"), files("src/other.py"), format="json")

    assert response.status_code == 400
    assert "src/other.py is not one of the work item's files" in str(response.json())
    assert WorkItem.objects.get(workflow=workflow, key="W1").status == "ready"


def test_an_item_completion_honours_the_idempotency_key(api, workflow):
    body = files("src/app.py")
    first = api.post(url(workflow, "W1/complete/"), body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    again = api.post(url(workflow, "W1/complete/"), body, format="json", HTTP_IDEMPOTENCY_KEY="k1")

    assert first.status_code == again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    finished = WorkflowEvent.objects.filter(workflow=workflow, type="work_item.finished")
    assert finished.count() == 1


def test_a_viewer_cannot_complete_an_item(api, workflow, user):
    workflow.project.memberships.filter(user=user).update(role="viewer")

    response = api.post(url(workflow, "W1/complete/"), files("src/app.py"), format="json")

    assert response.status_code == 403
