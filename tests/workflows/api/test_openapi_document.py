"""What /api/schema/ says (issue 13, item 3).

Before: `phase_result` was `{}`, lists were documented as arrays though they answer
pages, and only the success status of each operation was listed.
"""

import pytest
from drf_spectacular.generators import SchemaGenerator

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def document():
    return SchemaGenerator().get_schema(request=None, public=True)


def _json_schema(operation, status):
    return operation["responses"][status]["content"]["application/json"]["schema"]


def _component(document, ref):
    return document["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]


def test_phase_result_is_one_of_the_phases_evidence(document):
    body = document["paths"]["/api/ai-workflows/complete-phase"]["post"]["requestBody"]
    request = _component(document, body["content"]["application/json"]["schema"])
    phase_result = _component(document, request["properties"]["phase_result"]["allOf"][0])

    variants = [ref["$ref"].rsplit("/", 1)[1] for ref in phase_result["oneOf"]]
    assert variants == [
        "DiscoveryEvidenceRequest",
        "PlanningEvidenceRequest",
        "ImplementationEvidenceRequest",
        "TestingEvidenceRequest",
        "VerificationEvidenceRequest",
        "DeploymentEvidenceRequest",
        "DiscoverySeedEvidenceRequest",
    ]
    testing = document["components"]["schemas"]["TestingEvidenceRequest"]
    assert sorted(testing["required"]) == ["quality_score", "verdict"]
    examples = body["content"]["application/json"]["examples"]
    assert "DISCOVERY(seedIDE)" in examples
    assert examples["DISCOVERY(seedIDE)"]["value"]["phase_result"]["status"] == "complete"


@pytest.mark.parametrize(
    "path",
    [
        "/api/projects/",
        "/api/workflows/",
        "/api/workflows/{workflow_id}/handoffs/",
        "/api/workflows/{workflow_id}/messages/",
        "/api/workflows/{workflow_id}/phase-results/",
        "/api/workflows/{workflow_id}/checks/",
        "/api/workflows/{workflow_id}/runs/",
    ],
)
def test_lists_are_documented_as_the_pages_they_answer(document, path):
    page = _component(document, _json_schema(document["paths"][path]["get"], "200"))

    assert set(page["properties"]) == {"next", "previous", "results"}
    assert page["properties"]["results"]["type"] == "array"
    assert page["properties"]["next"]["nullable"] is True


def test_events_are_documented_as_their_own_page(document):
    operation = document["paths"]["/api/workflows/{workflow_id}/events/"]["get"]
    page = _component(document, _json_schema(operation, "200"))

    assert set(page["properties"]) == {"workflow_id", "last_seq", "next_after", "next", "results"}


def test_every_operation_lists_its_error_answers_with_the_error_body(document):
    complete = document["paths"]["/api/ai-workflows/complete-phase"]["post"]["responses"]
    status = document["paths"]["/api/ai-workflows/status/{workflow_id}"]["get"]["responses"]
    health = document["paths"]["/api/health/"]["get"]["responses"]

    assert sorted(complete) == [
        "200", "400", "401", "403", "404", "409", "413", "414", "415", "422", "429", "502", "503",
    ]  # fmt: skip
    assert sorted(status) == ["200", "401", "404", "414", "429", "503"]
    assert "401" not in health  # needs no credentials
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["detail"]
    assert _json_schema({"responses": complete}, "409") == {"$ref": "#/components/schemas/Error"}


def test_the_ide_paths_are_documented_once_as_the_seed_spells_them(document):
    ide = sorted(path for path in document["paths"] if path.startswith("/api/ai-workflows/"))

    assert ide == [
        "/api/ai-workflows/complete-phase",
        "/api/ai-workflows/get-ai-prompt/{workflow_id}",
        "/api/ai-workflows/initialize",
        "/api/ai-workflows/status/{workflow_id}",
    ]


def test_model_names_are_documented_with_their_accepted_forms(document):
    body = document["paths"]["/api/ai-workflows/initialize"]["post"]["requestBody"]
    request = _component(document, body["content"]["application/json"]["schema"])
    model = request["properties"]["model"]

    seeds = ["GPT4", "GPT35", "CLAUDE", "LOCAL", "OFFLINE"]
    assert {"enum": [*seeds, *(seed.lower() for seed in seeds)]} in model["anyOf"]
    assert "provider:model" in model["description"]
