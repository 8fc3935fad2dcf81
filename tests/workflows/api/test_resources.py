import pytest

from tests.factories import MembershipFactory, ProjectFactory, evidence, workflow_for
from workflows.services import Actor, workflow_phase_complete

pytestmark = pytest.mark.django_db


def test_workflow_list_filters_by_project_state_and_role(api, project, user):
    other = ProjectFactory(slug="other")
    MembershipFactory(project=other, user=user)
    moved = workflow_for(project, user, description="moved")
    workflow_for(project, user, description="stays")
    workflow_for(other, user, description="elsewhere")
    workflow_phase_complete(
        workflow_id=moved.id, ai_response="", result=evidence("DISCOVERY"), actor=Actor.of(user)
    )

    def titles(query):
        response = api.get(f"/api/workflows/?{query}")
        assert response.status_code == 200, response.json()
        return sorted(w["title"] for w in response.json()["results"])

    assert titles("project=demo") == ["moved", "stays"]
    assert titles(f"project={other.id}") == ["elsewhere"]
    assert titles("state=PLANNING") == ["moved"]
    assert titles("state=PLANNING&state=DISCOVERY&project=demo") == ["moved", "stays"]
    assert titles("current_role=Q_ASSISTANT&q=else") == ["elsewhere"]
    assert api.get("/api/workflows/?state=NOPE").status_code == 400


def test_workflow_list_cursor_pagination_walks_every_row_once(api, project, user):
    for n in range(7):
        workflow_for(project, user, description=f"w{n}")
    seen, url = [], "/api/workflows/?page_size=3"
    while url:
        body = api.get(url).json()
        seen += [w["id"] for w in body["results"]]
        url = body["next"]
    assert len(seen) == 7 == len(set(seen))


def test_events_after_seq_and_audit_lists(api, project, user):
    workflow = workflow_for(project, user)
    workflow_phase_complete(
        workflow_id=workflow.id, ai_response="r", result=evidence("DISCOVERY"), actor=Actor.of(user)
    )
    events = api.get(f"/api/workflows/{workflow.id}/events/").json()
    assert [e["seq"] for e in events["results"]] == [1, 2, 3]
    assert events["last_seq"] == 3
    later = api.get(f"/api/workflows/{workflow.id}/events/?after=2").json()
    assert [e["type"] for e in later["results"]] == ["workflow.transitioned"]
    assert later["results"][0]["data"]["to_state"] == "PLANNING"
    assert api.get(f"/api/workflows/{workflow.id}/events/?after=-1").status_code == 400
    assert api.get(f"/api/workflows/{workflow.id}/events/?limit=1").json()["next_after"] == 1

    handoffs = api.get(f"/api/workflows/{workflow.id}/handoffs/").json()["results"]
    assert [(h["from_role"], h["to_role"], h["actor"]) for h in handoffs] == [
        ("Q_ASSISTANT", "Q_ASSISTANT", "alice")
    ]
    messages = api.get(f"/api/workflows/{workflow.id}/messages/?role=Q_ASSISTANT").json()
    assert [m["content"] for m in messages["results"]] == ["r"]
    none = api.get(f"/api/workflows/{workflow.id}/messages/?role=CODE_WRITER").json()
    assert none["results"] == []
    assert api.get(f"/api/workflows/{workflow.id}/messages/?role=BOSS").status_code == 400
    results = api.get(f"/api/workflows/{workflow.id}/phase-results/").json()["results"]
    assert results[0]["phase"] == "DISCOVERY"
    assert results[0]["artifacts"][0]["name"] == "requirements.md"


def test_transitions_endpoint_conflict_says_current_state_and_what_is_allowed(api, project, user):
    workflow = workflow_for(project, user)
    response = api.post(
        f"/api/workflows/{workflow.id}/transitions/",
        {"transition": "approve"},
        format="json",
    )
    assert response.status_code == 409
    body = response.json()
    assert body["current_state"] == "DISCOVERY"
    assert body["allowed_transitions"] == ["complete", "cancel", "fail"]
    assert "allowed: complete, cancel, fail" in body["detail"]


def test_cancel_endpoint_and_then_everything_is_409(api, project, user):
    workflow = workflow_for(project, user)
    response = api.post(f"/api/workflows/{workflow.id}/cancel/", {"reason": "dup"}, format="json")
    assert response.status_code == 200
    assert response.json()["state"] == "CANCELLED"
    assert response.json()["terminal_reason"] == "dup"
    again = api.post(f"/api/workflows/{workflow.id}/cancel/", {}, format="json")
    assert again.status_code == 409
    assert again.json()["current_state"] == "CANCELLED"


def test_complete_with_stale_phase_is_409_not_400(api, project, user):
    workflow = workflow_for(project, user)
    body = {
        "workflow_id": str(workflow.id),
        "ai_response": "x",
        "phase_result": evidence("DISCOVERY"),
        "phase": "DISCOVERY",
    }
    assert api.post("/api/ai-workflows/complete-phase", body, format="json").status_code == 200
    late = api.post("/api/ai-workflows/complete-phase", body, format="json")
    assert late.status_code == 409
    assert late.json()["current_state"] == "PLANNING"


def test_projects_create_list_and_owner_only_update(api, user):
    created = api.post(
        "/api/projects/",
        {"slug": "shop", "name": "Shop", "repository": "acme/shop", "approval_gates": ["TESTING"]},
        format="json",
    )
    assert created.status_code == 201, created.json()
    assert created.json()["member_role"] == "owner"
    assert [p["slug"] for p in api.get("/api/projects/").json()["results"]] == ["shop"]
    bad = api.post(
        "/api/projects/",
        {"slug": "shop", "name": "Again", "repository": "https://evil.example/x"},
        format="json",
    )
    assert bad.status_code == 400
    assert set(bad.json()["errors"]) == {"slug", "repository"}
    patched = api.patch("/api/projects/shop/", {"regression_limit": 1}, format="json")
    assert patched.json()["regression_limit"] == 1


def test_health_reports_each_dependency(client, db):
    response = client.get("/api/health/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] and body["channel_layer"]["ok"] and body["task_backend"]["ok"]
    assert body["llm_providers"]["offline"] is True
    assert body["task_backend"]["backend"] == "DatabaseBackend"
    assert body["task_backend"]["queued"] == 0
    assert body["sandbox"] == {**body["sandbox"], "ok": True, "backend": "off", "works": False}


def test_openapi_schema_and_docs_are_served(client, db):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        "/api/ai-workflows/initialize",
        "/api/ai-workflows/complete-phase",
        "/api/ai-workflows/status/{workflow_id}",
        "/api/ai-workflows/get-ai-prompt/{workflow_id}",
    ):
        assert path in paths
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content
