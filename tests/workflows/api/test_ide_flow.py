"""The IDE contract (initialize, get-ai-prompt, complete-phase, status), over HTTP, end to end."""

import pytest

from tests.factories import evidence
from workflows.models import Handoff, Message, PhaseResult, WorkflowEvent
from workflows.states import PHASES

pytestmark = pytest.mark.django_db


def test_full_ide_flow_reaches_complete(api, project):
    # given a workflow opened through initialize
    response = api.post(
        "/api/ai-workflows/initialize",
        {
            "project_id": str(project.id),
            "build_id": "build-7",
            "user_id": "ide-user-1",
            "requirements": {"description": "Add dark mode to settings", "priority": "high"},
            "model": "GPT4",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    workflow_id = body["workflow_id"]
    assert body["initial_state"] == "DISCOVERY"
    assert "Add dark mode to settings" in body["system_prompt"]
    assert body["next_action"]["type"] == "call_model"

    # when each phase fetches its prompt and completes with valid evidence
    for index, phase in enumerate(PHASES):
        prompt = api.post(f"/api/ai-workflows/get-ai-prompt/{workflow_id}")
        assert prompt.status_code == 200, prompt.json()
        payload = prompt.json()
        assert set(payload) == {"model", "messages", "temperature", "max_tokens"}
        assert payload["model"] == "gpt-4o"
        assert payload["messages"][0]["role"] == "system"
        assert phase in payload["messages"][0]["content"]

        done = api.post(
            "/api/ai-workflows/complete-phase",
            {
                "workflow_id": workflow_id,
                "ai_response": f"{phase} done",
                "phase_result": evidence(phase),
            },
            format="json",
        )
        assert done.status_code == 200, done.json()
        result = done.json()
        assert result["previous_state"] == phase
        expected_next = PHASES[index + 1] if index + 1 < len(PHASES) else "COMPLETE"
        assert result["new_state"] == expected_next
        assert result["is_complete"] is (expected_next == "COMPLETE")

        status = api.get(f"/api/ai-workflows/status/{workflow_id}").json()
        assert status["current_state"] == expected_next
        assert status["completed_phases"] == list(PHASES[: index + 1])

    # then status says COMPLETE with full progress, and everything was audited
    status = api.get(f"/api/ai-workflows/status/{workflow_id}").json()
    assert status == {
        "workflow_id": workflow_id,
        "current_state": "COMPLETE",
        "progress": 1.0,
        "completed_phases": list(PHASES),
        "next_role": None,
        "is_complete": True,
        "awaiting_approval": False,
        "regression_count": 0,
    }
    assert Handoff.objects.filter(workflow_id=workflow_id, kind="forward").count() == 6
    assert PhaseResult.objects.filter(workflow_id=workflow_id).count() == 6
    assert Message.objects.filter(workflow_id=workflow_id, sender="assistant").count() == 6
    seqs = list(WorkflowEvent.objects.filter(workflow_id=workflow_id).values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert api.post(f"/api/ai-workflows/get-ai-prompt/{workflow_id}").status_code == 409


def test_initialize_accepts_project_slug_and_defaults_model(api, project, settings):
    response = api.post(
        "/api/ai-workflows/initialize",
        {"project_id": project.slug, "requirements": {"description": "x"}},
        format="json",
    )
    assert response.status_code == 201
    prompt = api.post(f"/api/ai-workflows/get-ai-prompt/{response.json()['workflow_id']}").json()
    assert prompt["model"] == settings.TOPDOG_MODELS[settings.TOPDOG_DEFAULT_MODEL]["model"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"requirements": {"description": "x"}}, "project_id"),
        ({"project_id": "demo"}, "requirements"),
        ({"project_id": "demo", "requirements": {"description": "  "}}, "requirements"),
        ({"project_id": "demo", "requirements": "just text"}, "requirements"),
        ({"project_id": "demo", "requirements": {"description": "x"}, "model": "GPT9"}, "model"),
    ],
)
def test_initialize_rejects_bad_input_with_field_errors(api, project, body, field):
    response = api.post("/api/ai-workflows/initialize", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert field in response.json()["detail"]


def test_invalid_evidence_is_400_and_state_does_not_move(api, project):
    workflow_id = _start(api, project)
    _complete(api, workflow_id, "DISCOVERY")
    cyclic = {
        "work_items": [
            {"id": "W1", "title": "a", "files": ["a.py"], "depends_on": ["W2"]},
            {"id": "W2", "title": "b", "files": ["b.py"], "depends_on": ["W1"]},
        ]
    }
    response = api.post(
        "/api/ai-workflows/complete-phase",
        {"workflow_id": workflow_id, "ai_response": "plan", "phase_result": cyclic},
        format="json",
    )
    assert response.status_code == 400
    message = str(response.json()["errors"]["phase_result"]["work_items"])
    assert "W1 -> W2 -> W1" in message
    status = api.get(f"/api/ai-workflows/status/{workflow_id}").json()
    assert status["current_state"] == "PLANNING"
    assert PhaseResult.objects.filter(workflow_id=workflow_id, phase="PLANNING").count() == 0


def test_failed_test_report_sends_work_back_with_feedback_in_next_prompt(api, project):
    workflow_id = _start(api, project)
    for phase in ("DISCOVERY", "PLANNING", "IMPLEMENTATION"):
        _complete(api, workflow_id, phase)
    failing = evidence(
        "TESTING",
        verdict="fail",
        findings=[{"severity": "major", "message": "no test for the toggle", "path": "ui.py"}],
        quality_score=0.3,
    )
    response = _complete(api, workflow_id, "TESTING", failing)
    assert response["new_state"] == "IMPLEMENTATION"
    assert response["next_role"] == "CODE_WRITER"
    prompt = api.post(f"/api/ai-workflows/get-ai-prompt/{workflow_id}").json()
    assert "no test for the toggle" in prompt["messages"][-1]["content"]
    status = api.get(f"/api/ai-workflows/status/{workflow_id}").json()
    assert status["completed_phases"] == ["DISCOVERY", "PLANNING"]
    assert status["regression_count"] == 1


def test_gate_holds_until_approved_over_the_transitions_endpoint(api, project):
    project.approval_gates = ["PLANNING"]
    project.save()
    workflow_id = _start(api, project)
    _complete(api, workflow_id, "DISCOVERY")
    held = _complete(api, workflow_id, "PLANNING")
    assert held["new_state"] == "PLANNING"
    assert held["awaiting_approval"] is True
    assert held["next_action"]["type"] == "await_approval"
    assert api.post(f"/api/ai-workflows/get-ai-prompt/{workflow_id}").status_code == 409

    detail = api.get(f"/api/workflows/{workflow_id}/").json()
    assert detail["available_transitions"] == ["approve", "reject", "cancel", "fail"]
    approved = api.post(
        f"/api/workflows/{workflow_id}/transitions/", {"transition": "approve"}, format="json"
    )
    assert approved.status_code == 200, approved.json()
    assert approved.json()["state"] == "IMPLEMENTATION"
    assert approved.json()["previous_state"] == "PLANNING"


def _start(api, project) -> str:
    response = api.post(
        "/api/ai-workflows/initialize",
        {"project_id": str(project.id), "requirements": {"description": "Add dark mode"}},
        format="json",
    )
    assert response.status_code == 201
    return response.json()["workflow_id"]


def _complete(api, workflow_id, phase, result=None) -> dict:
    response = api.post(
        "/api/ai-workflows/complete-phase",
        {
            "workflow_id": workflow_id,
            "ai_response": "ok",
            "phase_result": result or evidence(phase),
            "phase": phase,
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    return response.json()


def test_bodies_match_their_documented_serializer(api, project):
    # given: status and complete-phase are rendered by the serializers OpenAPI documents
    # them with (tests/workflows/api/test_bodies.py checks that they are)
    from workflows.api.ide import CompletePhaseApi, StatusApi

    workflow_id = api.post(
        "/api/ai-workflows/initialize",
        {"project_id": str(project.id), "requirements": {"description": "Add dark mode"}},
        format="json",
    ).json()["workflow_id"]

    # when
    completed = api.post(
        "/api/ai-workflows/complete-phase",
        {"workflow_id": workflow_id, "ai_response": "ok", "phase_result": evidence("DISCOVERY")},
        format="json",
    ).json()
    status = api.get(f"/api/ai-workflows/status/{workflow_id}").json()

    # then: the same fields, and what the serializer would have rendered
    for body, serializer in (
        (completed, CompletePhaseApi.CompletePhaseOutputSerializer),
        (status, StatusApi.StatusOutputSerializer),
    ):
        assert set(body) == set(serializer().fields)
        assert serializer(data=body).is_valid(), body
    assert (completed["workflow_id"], status["workflow_id"]) == (workflow_id, workflow_id)
    assert (completed["previous_state"], completed["new_state"]) == ("DISCOVERY", "PLANNING")
    assert status["completed_phases"] == ["DISCOVERY"]
    assert status["awaiting_approval"] is False
