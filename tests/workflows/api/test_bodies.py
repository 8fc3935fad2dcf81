"""Bodies are rendered by the serializers that document them, and the two ways to open a
workflow (the IDE's initialize, `POST /api/workflows/`) are one create path."""

import pytest
from rest_framework import serializers

from tests.factories import MembershipFactory, ProjectFactory, evidence
from workflows.api.ide import CompletePhaseApi, InitializeApi, StatusApi
from workflows.models import WorkflowEvent
from workflows.states import MemberRole

pytestmark = pytest.mark.django_db

MARK = "rendered-by"


def mark(monkeypatch, serializer_class: type[serializers.Serializer]) -> None:
    """Make `serializer_class` add `rendered-by: <its name>` to what it renders."""
    plain = serializer_class.to_representation

    def to_representation(self, instance):
        return {**plain(self, instance), MARK: serializer_class.__name__}

    monkeypatch.setattr(serializer_class, "to_representation", to_representation)


@pytest.fixture
def marked(monkeypatch):
    return lambda serializer_class: mark(monkeypatch, serializer_class)


def test_the_ide_bodies_come_from_their_output_serializers(api, project, marked):
    # given: each documented serializer marks what it renders
    for serializer_class in (
        InitializeApi.InitializeOutputSerializer,
        CompletePhaseApi.CompletePhaseOutputSerializer,
        StatusApi.StatusOutputSerializer,
    ):
        marked(serializer_class)

    # when
    opened = api.post(
        "/api/ai-workflows/initialize",
        {"project_id": str(project.id), "requirements": {"description": "Add dark mode"}},
        format="json",
    ).json()
    completed = api.post(
        "/api/ai-workflows/complete-phase",
        {
            "workflow_id": opened["workflow_id"],
            "ai_response": "ok",
            "phase_result": evidence("DISCOVERY"),
        },
        format="json",
    ).json()
    status = api.get(f"/api/ai-workflows/status/{opened['workflow_id']}").json()

    # then
    assert opened[MARK] == "InitializeOutputSerializer"
    assert completed[MARK] == "CompletePhaseOutputSerializer"
    assert status[MARK] == "StatusOutputSerializer"
    assert (completed["new_state"], status["current_state"]) == ("PLANNING", "PLANNING")


# --- one create path ------------------------------------------------------------------

OPENERS = {
    "initialize": ("/api/ai-workflows/initialize", "project_id"),
    "workflows": ("/api/workflows/", "project"),
}


def _open(api, opener: str, project_ref: str, **extra):
    path, key = OPENERS[opener]
    body = {key: project_ref, "requirements": {"description": "Add dark mode"}, **extra}
    return api.post(path, body, format="json")


@pytest.mark.parametrize("opener", OPENERS)
def test_both_openers_create_the_same_workflow(api, project, user, opener):
    # when: opened by slug, with a model and a build id
    response = _open(api, opener, project.slug, model="GPT4", build_id="b-1")

    # then: the same rows, the same first event
    assert response.status_code == 201, response.json()
    workflow_id = response.json().get("workflow_id") or response.json()["id"]
    event = WorkflowEvent.objects.get(workflow_id=workflow_id, seq=1)
    assert event.type == "workflow.created"
    assert event.actor_name == user.username
    assert event.data["model"] == "GPT4"
    assert event.workflow.build_id == "b-1"
    assert event.workflow.created_by == user


@pytest.mark.parametrize("opener", OPENERS)
def test_both_openers_refuse_alike(api, user, stranger, opener):
    # given: a project where the user is a viewer, and one they do not belong to
    watched, foreign = ProjectFactory(slug="watched"), ProjectFactory(slug="foreign")
    MembershipFactory(project=watched, user=user, role=MemberRole.VIEWER)
    MembershipFactory(project=foreign, user=stranger)

    # when
    not_theirs = _open(api, opener, "foreign")
    only_viewing = _open(api, opener, "watched")
    unknown_model = _open(api, opener, "watched", model="GPT9")

    # then: the same answers, and nothing was created
    assert not_theirs.status_code == 404
    assert only_viewing.status_code == 403
    assert "owner or developer" in only_viewing.json()["detail"]
    assert unknown_model.status_code == 400
    assert "model" in unknown_model.json()["errors"]
    assert not WorkflowEvent.objects.exists()
