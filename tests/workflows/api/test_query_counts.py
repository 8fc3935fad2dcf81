"""Pinned query counts: one for authentication, then the selector's one query."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories import evidence, workflow_for
from workflows.services import Actor, workflow_phase_complete

pytestmark = pytest.mark.django_db


@pytest.fixture
def workflows(project, user):
    created = [workflow_for(project, user, description=f"feature {n}") for n in range(5)]
    workflow_phase_complete(
        workflow_id=created[0].id,
        ai_response="ok",
        result=evidence("DISCOVERY"),
        actor=Actor.of(user),
    )
    return created


@pytest.fixture
def warm_api(api, workflows):
    """A client whose token has been used once (so last_used_at needs no write)."""
    api.get(f"/api/ai-workflows/status/{workflows[0].id}")
    return api


def test_status_is_two_queries(warm_api, workflows, django_assert_num_queries):
    with django_assert_num_queries(2):
        response = warm_api.get(f"/api/ai-workflows/status/{workflows[0].id}")
    assert response.status_code == 200


def test_detail_is_two_queries(warm_api, workflows, django_assert_num_queries):
    with django_assert_num_queries(2):
        response = warm_api.get(f"/api/workflows/{workflows[0].id}/")
    assert response.status_code == 200
    assert response.json()["available_transitions"]


@pytest.mark.parametrize("count", [5, 40])
def test_list_is_two_queries_whatever_the_page_size(
    warm_api, project, user, count, django_assert_num_queries
):
    for n in range(count - 5):
        workflow_for(project, user, description=f"extra {n}")
    with django_assert_num_queries(2):
        response = warm_api.get("/api/workflows/")
    assert response.status_code == 200
    assert len(response.json()["results"]) == count


def test_events_page_is_three_queries(warm_api, workflows, django_assert_num_queries):
    with django_assert_num_queries(3):
        response = warm_api.get(f"/api/workflows/{workflows[0].id}/events/?after=1")
    assert [e["seq"] for e in response.json()["results"]] == [2, 3]


def test_complete_phase_is_nine_statements(warm_api, workflows):
    # when
    with CaptureQueriesContext(connection) as captured:
        response = warm_api.post(
            "/api/ai-workflows/complete-phase",
            {
                "workflow_id": str(workflows[1].id),
                "ai_response": "ok",
                "phase_result": evidence("DISCOVERY"),
            },
            format="json",
        )

    # then: authentication; the locked workflow (with its project) and the active
    # templates; the phase result first (the event and handoff refer to its id); the
    # guarded workflow UPDATE; then one statement per model for the new rows.
    assert response.status_code == 200, response.json()
    statements = [q["sql"] for q in captured if "SAVEPOINT" not in q["sql"]]
    assert [_shape(sql) for sql in statements] == [
        ("SELECT", "workflows_apitoken"),
        ("SELECT", "workflows_workflow"),
        ("SELECT", "ai_orchestration_prompttemplate"),
        ("INSERT", "workflows_phaseresult"),
        ("UPDATE", "workflows_workflow"),
        ("INSERT", "workflows_rolecontext"),
        ("INSERT", "workflows_message"),
        ("INSERT", "workflows_workflowevent"),
        ("INSERT", "workflows_handoff"),
    ], statements
    assert "FOR UPDATE" in statements[1] or connection.vendor != "postgresql"


def _shape(sql: str) -> tuple[str, str]:
    """A statement's verb and the table it reads or writes first."""
    verb = sql.split(None, 1)[0]
    if verb == "SELECT":
        table = sql.split(" FROM ", 1)[1].split()[0]
    else:  # UPDATE "table" SET ..., INSERT INTO "table" ...
        table = sql.split()[1 if verb == "UPDATE" else 2]
    return verb, table.strip('"')
