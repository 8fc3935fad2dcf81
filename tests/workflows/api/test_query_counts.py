"""Pinned query counts: one for authentication, then the selector's one query."""

import pytest

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
