"""Project membership decides everything; outsiders cannot tell a workflow exists."""

import uuid

import pytest
from rest_framework.test import APIClient

from tests.factories import MembershipFactory, evidence, workflow_for
from workflows.models import Handoff, WorkflowEvent
from workflows.states import MemberRole

pytestmark = pytest.mark.django_db


def _endpoints(workflow_id):
    return [
        ("get", f"/api/ai-workflows/status/{workflow_id}", None),
        ("post", f"/api/ai-workflows/get-ai-prompt/{workflow_id}", None),
        (
            "post",
            "/api/ai-workflows/complete-phase",
            {
                "workflow_id": str(workflow_id),
                "ai_response": "x",
                "phase_result": evidence("DISCOVERY"),
            },
        ),
        ("get", f"/api/workflows/{workflow_id}/", None),
        ("post", f"/api/workflows/{workflow_id}/transitions/", {"transition": "cancel"}),
        ("post", f"/api/workflows/{workflow_id}/cancel/", {}),
        ("get", f"/api/workflows/{workflow_id}/events/", None),
        ("get", f"/api/workflows/{workflow_id}/handoffs/", None),
        ("get", f"/api/workflows/{workflow_id}/messages/", None),
        ("get", f"/api/workflows/{workflow_id}/phase-results/", None),
    ]


def test_stranger_gets_404_on_every_workflow_endpoint_and_changes_nothing(
    stranger_api, project, user
):
    workflow = workflow_for(project, user)
    for method, url, body in _endpoints(workflow.id):
        response = getattr(stranger_api, method)(url, body, format="json")
        assert response.status_code == 404, (method, url, response.status_code)
        assert response.json() == {"detail": "workflow not found"}
    workflow.refresh_from_db()
    assert workflow.state == "DISCOVERY"
    assert Handoff.objects.filter(workflow=workflow).count() == 0
    assert WorkflowEvent.objects.filter(workflow=workflow).count() == 1


@pytest.mark.parametrize("workflow_id", [uuid.uuid4(), "not-a-uuid"])
def test_unknown_workflow_looks_exactly_like_a_strangers(api, project, workflow_id):
    for method, url, body in _endpoints(workflow_id):
        response = getattr(api, method)(url, body, format="json")
        if body and "workflow_id" in body and workflow_id == "not-a-uuid":
            # a malformed id in a body is a field error, not a lookup
            assert response.status_code == 400
            assert "workflow_id" in response.json()["errors"]
            continue
        assert response.status_code == 404, (method, url)
        assert response.json() == {"detail": "workflow not found"}


def test_stranger_sees_no_projects_or_workflows_in_lists(stranger_api, project, user):
    workflow_for(project, user)
    assert stranger_api.get("/api/workflows/").json()["results"] == []
    assert stranger_api.get("/api/projects/").json()["results"] == []
    assert stranger_api.get(f"/api/projects/{project.slug}/").status_code == 404
    response = stranger_api.post(
        "/api/ai-workflows/initialize",
        {"project_id": project.slug, "requirements": {"description": "x"}},
        format="json",
    )
    assert response.status_code == 404


def test_anonymous_requests_are_401(project, user):
    workflow = workflow_for(project, user)
    client = APIClient()
    for method, url, body in _endpoints(workflow.id):
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 401, (method, url)
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token td_not-a-real-token")
    assert bad.get(f"/api/workflows/{workflow.id}/").status_code == 401


def test_viewer_can_read_but_not_act(project, user):
    viewer = MembershipFactory(project=project, role=MemberRole.VIEWER).user
    workflow = workflow_for(project, user)
    client = APIClient()
    client.force_authenticate(viewer)
    detail = client.get(f"/api/workflows/{workflow.id}/")
    assert detail.status_code == 200
    assert detail.json()["available_transitions"] == []
    response = client.post(
        f"/api/workflows/{workflow.id}/transitions/", {"transition": "cancel"}, format="json"
    )
    assert response.status_code == 403
    assert "developer or owner" in response.json()["detail"]


def test_developer_cannot_approve_or_fail(project, user):
    developer = MembershipFactory(project=project, role=MemberRole.DEVELOPER).user
    workflow = workflow_for(project, user)
    client = APIClient()
    client.force_authenticate(developer)
    assert client.get(f"/api/workflows/{workflow.id}/").json()["available_transitions"] == [
        "complete",
        "cancel",
    ]
    response = client.post(
        f"/api/workflows/{workflow.id}/transitions/",
        {"transition": "fail", "reason": "x"},
        format="json",
    )
    assert response.status_code == 403


def test_session_authentication_works_for_logged_in_users(client, project, user):
    workflow = workflow_for(project, user)
    client.force_login(user)
    assert client.get(f"/api/ai-workflows/status/{workflow.id}").status_code == 200
