"""The IDE's exact contract as the original seed documents it (issue 13, items 1 and 2).

Before: `"model": "gpt-4"` was a 400 (`"gpt-4" is not a valid choice.`), the seed's
DISCOVERY result was a 400 that did not show the expected shape, get-ai-prompt answered
`gpt-4o` for a workflow opened with "gpt-4", an unknown project was a bare 404 and the
IDE paths were 404 with a trailing slash.
"""

import pytest

from tests.factories import MembershipFactory, ProjectFactory, evidence, workflow_for
from workflows.models import PhaseResult, Workflow
from workflows.services import Actor, workflow_phase_complete
from workflows.states import MemberRole

pytestmark = pytest.mark.django_db

SEED_REQUIREMENTS = {
    "description": "Build a todo app with user authentication",
    "features": ["user registration", "todo CRUD"],
    "tech_stack": "React + Node.js",
}
SEED_AI_RESPONSE = "# Requirements\n\n1. Users can register\n2. Users can manage todos"
SEED_DISCOVERY = {
    "discovered_requirements": ["Users can register", "Users can create, edit and delete todos"],
    "user_feedback": "Looks good, proceed",
    "status": "complete",
}


def test_the_seeds_four_calls_verbatim(api, project):
    # initialize with the seed's body, model "gpt-4"
    opened = api.post(
        "/api/ai-workflows/initialize",
        {
            "project_id": project.slug,
            "build_id": "build_456",
            "user_id": "user_789",
            "requirements": SEED_REQUIREMENTS,
            "model": "gpt-4",
        },
        format="json",
    )
    assert opened.status_code == 201, opened.json()
    body = opened.json()
    assert set(body) >= {"workflow_id", "initial_state", "system_prompt", "next_action"}
    assert body["initial_state"] == "DISCOVERY"
    assert "Build a todo app" in body["system_prompt"]
    workflow_id = body["workflow_id"]

    # get-ai-prompt: the model the workflow asked for, and the service's sampling defaults
    prompt = api.post(f"/api/ai-workflows/get-ai-prompt/{workflow_id}")
    assert prompt.status_code == 200, prompt.json()
    payload = prompt.json()
    assert set(payload) == {"model", "messages", "temperature", "max_tokens"}
    assert payload["model"] == "gpt-4"
    assert (payload["temperature"], payload["max_tokens"]) == (0.2, 4096)
    assert payload["messages"][0]["role"] == "system"

    # complete-phase with the seed's DISCOVERY result
    done = api.post(
        "/api/ai-workflows/complete-phase",
        {
            "workflow_id": workflow_id,
            "ai_response": SEED_AI_RESPONSE,
            "phase_result": SEED_DISCOVERY,
        },
        format="json",
    )
    assert done.status_code == 200, done.json()
    moved = done.json()
    assert set(moved) >= {
        "workflow_id",
        "previous_state",
        "new_state",
        "next_role",
        "next_action",
        "is_complete",
    }
    assert (moved["previous_state"], moved["new_state"]) == ("DISCOVERY", "PLANNING")
    assert (moved["next_role"], moved["is_complete"]) == ("Q_ASSISTANT", False)

    # status
    status = api.get(f"/api/ai-workflows/status/{workflow_id}")
    assert status.status_code == 200
    state = status.json()
    assert set(state) >= {
        "workflow_id",
        "current_state",
        "progress",
        "completed_phases",
        "next_role",
        "is_complete",
    }
    assert (state["current_state"], state["completed_phases"]) == ("PLANNING", ["DISCOVERY"])
    assert state["progress"] == pytest.approx(1 / 6, abs=1e-4)


def test_the_seed_discovery_is_stored_mapped_with_nothing_dropped(api, project, user):
    workflow = workflow_for(project, user, model_name="gpt-4")

    api.post(
        "/api/ai-workflows/complete-phase",
        {
            "workflow_id": str(workflow.id),
            "ai_response": SEED_AI_RESPONSE,
            "phase_result": {
                **SEED_DISCOVERY,
                "discovered_requirements": [
                    "Users can register",
                    {"description": "Todos are private", "priority": "high"},
                    {"id": "R1", "description": "Has an id already", "acceptance_criteria": ["x"]},
                ],
            },
        },
        format="json",
    )

    result = PhaseResult.objects.get(workflow=workflow, phase="DISCOVERY").result
    assert [r["id"] for r in result["requirements"]] == ["R2", "R3", "R1"]
    assert result["requirements"][0] == {
        "id": "R2",
        "description": "Users can register",
        "priority": "must",
        "acceptance_criteria": ["A reviewer confirms: Users can register"],
    }
    assert result["requirements"][1]["priority"] == "must"  # "high"
    assert result["document"] == SEED_AI_RESPONSE
    assert result["extra"] == {"user_feedback": "Looks good, proceed", "status": "complete"}


def test_unknown_keys_of_any_phase_are_kept_under_extra(api, project, user):
    workflow = workflow_for(project, user)
    workflow_phase_complete(
        workflow_id=workflow.id, ai_response="", result=evidence("DISCOVERY"), actor=Actor.of(user)
    )

    api.post(
        "/api/ai-workflows/complete-phase",
        {
            "workflow_id": str(workflow.id),
            "ai_response": "",
            "phase_result": {**evidence("PLANNING"), "risks": ["scope creep"]},
        },
        format="json",
    )

    result = PhaseResult.objects.get(workflow=workflow, phase="PLANNING").result
    assert result["extra"] == {"risks": ["scope creep"]}


def test_invalid_evidence_answers_the_expected_shape_next_to_the_errors(api, project, user):
    workflow = workflow_for(project, user)

    response = api.post(
        "/api/ai-workflows/complete-phase",
        {"workflow_id": str(workflow.id), "ai_response": "", "phase_result": {"status": "ok"}},
        format="json",
    )

    assert response.status_code == 400
    body = response.json()
    assert "requirements" in body["errors"]["phase_result"]
    expected = body["expected"]
    assert expected["phase"] == "DISCOVERY"
    assert expected["required"] == ["document", "requirements"]
    assert expected["aliases"]["discovered_requirements"] == "requirements"
    assert expected["example"]["requirements"][0]["id"] == "R1"
    assert "DiscoveryEvidence" in expected["schema"]


def test_choice_errors_list_the_valid_values(api, project, user):
    workflow = workflow_for(project, user)
    for phase in ("DISCOVERY", "PLANNING", "IMPLEMENTATION"):
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="", result=evidence(phase), actor=Actor.of(user)
        )

    finding = api.post(
        "/api/ai-workflows/complete-phase",
        {
            "workflow_id": str(workflow.id),
            "ai_response": "",
            "phase_result": evidence(
                "TESTING", verdict="fail", findings=[{"severity": "high", "message": "x"}]
            ),
        },
        format="json",
    )
    target = api.post(
        f"/api/workflows/{workflow.id}/transitions/",
        {"transition": "regress", "target": "DISCOVERY", "reason": "redo"},
        format="json",
    )

    assert finding.status_code == 400
    severity = finding.json()["errors"]["phase_result"]["findings"]["0"]["severity"][0]
    assert severity == '"high" is not a valid choice; choose from info, minor, major, critical'
    assert target.status_code == 400
    assert target.json()["errors"]["target"] == [
        '"DISCOVERY" is not a valid choice; choose from IMPLEMENTATION, PLANNING'
    ]


@pytest.mark.parametrize(
    "model", ["gpt-4", "GPT4", "gpt-4o", "claude-3-5-sonnet", "local:llama3.1"]
)
def test_initialize_and_create_accept_every_model_form(api, project, model):
    opened = api.post(
        "/api/ai-workflows/initialize",
        {"project_id": project.slug, "requirements": {"description": "x"}, "model": model},
        format="json",
    )
    created = api.post(
        "/api/workflows/",
        {"project": project.slug, "requirements": {"description": "x"}, "model": model},
        format="json",
    )

    assert opened.status_code == 201, opened.json()
    assert created.status_code == 201, created.json()
    assert (
        Workflow.objects.get(pk=opened.json()["workflow_id"]).model_name == created.json()["model"]
    )


def test_an_unknown_model_is_a_400_listing_the_accepted_forms(api, project, user):
    workflow = workflow_for(project, user)
    answers = [
        api.post(
            "/api/ai-workflows/initialize",
            {"project_id": project.slug, "requirements": {"description": "x"}, "model": "llama3"},
            format="json",
        ),
        api.post(
            "/api/workflows/",
            {"project": project.slug, "requirements": {"description": "x"}, "model": "llama3"},
            format="json",
        ),
        api.post(f"/api/workflows/{workflow.id}/runs/", {"model": "llama3"}, format="json"),
    ]

    for answer in answers:
        assert answer.status_code == 400, answer.json()
        message = answer.json()["errors"]["model"][0]
        assert message.startswith('"llama3" is not a model TopDog knows; use a seed name (GPT4')
        assert "provider:model" in message


def test_role_settings_of_the_project_set_the_prompts_model_and_sampling(api, project, user):
    changed = api.patch(
        f"/api/projects/{project.slug}/",
        {
            "role_models": {
                "Q_ASSISTANT": {
                    "model": "claude-3-5-sonnet",
                    "temperature": 0.7,
                    "max_tokens": 2000,
                },
                "CODE_WRITER": "local:llama3.1",
            }
        },
        format="json",
    )
    assert changed.status_code == 200, changed.json()
    assert changed.json()["role_models"]["CODE_WRITER"] == "local:llama3.1"
    project.refresh_from_db()
    workflow = workflow_for(project, user, model_name="gpt-4")

    discovery = api.post(f"/api/ai-workflows/get-ai-prompt/{workflow.id}").json()
    for phase in ("DISCOVERY", "PLANNING"):
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="", result=evidence(phase), actor=Actor.of(user)
        )
    implementation = api.post(f"/api/ai-workflows/get-ai-prompt/{workflow.id}").json()

    assert (discovery["model"], discovery["temperature"], discovery["max_tokens"]) == (
        "claude-3-5-sonnet",
        0.7,
        2000,
    )
    assert (implementation["model"], implementation["temperature"]) == ("llama3.1", 0.2)
    # llama3.1's window is TOPDOG_LOCAL_CONTEXT_TOKENS (8192): max_tokens is half of it
    assert implementation["max_tokens"] == 4096


def test_bad_role_settings_are_refused_per_role(api, project):
    response = api.patch(
        f"/api/projects/{project.slug}/",
        {"role_models": {"TEST_AUDITOR": {"temperature": 9}, "CODE_WRITER": "nope"}},
        format="json",
    )

    assert response.status_code == 400
    errors = response.json()["errors"]["role_models"]
    assert errors["TEST_AUDITOR"] == ["temperature must be between 0 and 2.0"]
    assert "not a model TopDog knows" in errors["CODE_WRITER"][0]


def test_an_unknown_project_says_which_you_can_use_and_how_to_create_one(api, project, user):
    other = ProjectFactory(slug="other")
    MembershipFactory(project=other, user=user, role=MemberRole.VIEWER)
    ProjectFactory(slug="not-mine")

    for path, body in (
        (
            "/api/ai-workflows/initialize",
            {"project_id": "nope", "requirements": {"description": "x"}},
        ),
        ("/api/workflows/", {"project": "nope", "requirements": {"description": "x"}}),
    ):
        response = api.post(path, body, format="json")

        assert response.status_code == 404
        answer = response.json()
        assert answer["projects"] == ["demo", "other"]
        assert answer["detail"] == (
            "project 'nope' not found; projects you can use: demo, other; "
            "create one with POST /api/projects/"
        )
        assert answer["create"]["method"] == "POST"
        assert answer["create"]["url"] == "/api/projects/"


@pytest.mark.parametrize("slash", ["", "/"])
def test_the_ide_paths_answer_with_and_without_a_trailing_slash(api, project, slash):
    opened = api.post(
        f"/api/ai-workflows/initialize{slash}",
        {"project_id": project.slug, "requirements": {"description": "x"}},
        format="json",
    )
    assert opened.status_code == 201, opened.content
    workflow_id = opened.json()["workflow_id"]

    prompt = api.post(f"/api/ai-workflows/get-ai-prompt/{workflow_id}{slash}")
    done = api.post(
        f"/api/ai-workflows/complete-phase{slash}",
        {"workflow_id": workflow_id, "ai_response": "", "phase_result": SEED_DISCOVERY},
        format="json",
    )
    status = api.get(f"/api/ai-workflows/status/{workflow_id}{slash}")

    assert [prompt.status_code, done.status_code, status.status_code] == [200, 200, 200]
    assert status.json()["current_state"] == "PLANNING"
