"""Every list is paginated with a cap; big fields are whole only on detail endpoints
(issue 12 C).

Before: projects, handoffs, messages and phase results returned every row in one
answer, each with its full text (a workflow with a few hundred model calls answered
megabytes); checks were cut at 100 with no way to the rest, and carried the whole
output tail of every run.
"""

import pytest

from tests.factories import MembershipFactory, ProjectFactory, workflow_for
from workflows.models import CheckRun, Handoff, Message, PhaseResult
from workflows.states import MemberRole

pytestmark = pytest.mark.django_db


def follow(api, url):
    """Every item of a cursor-paginated list, and the number of pages."""
    items, pages = [], 0
    while url:
        response = api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) >= {"next", "previous", "results"}
        items += body["results"]
        pages += 1
        url = body["next"]
    return items, pages


def messages_for(workflow, count, content="hi"):
    Message.objects.bulk_create(
        Message(
            workflow=workflow,
            seq=seq,
            role="Q_ASSISTANT",
            sender="ai",
            phase="DISCOVERY",
            content=content,
        )
        for seq in range(1, count + 1)
    )


def test_messages_come_in_pages_of_50_that_follow_next(api, project, user):
    workflow = workflow_for(project, user)
    messages_for(workflow, 120)

    items, pages = follow(api, f"/api/workflows/{workflow.id}/messages/")

    assert pages == 3
    assert [m["seq"] for m in items] == list(range(1, 121))
    assert (
        len(api.get(f"/api/workflows/{workflow.id}/messages/?page_size=500").json()["results"])
        == 120
    )
    sized = api.get(f"/api/workflows/{workflow.id}/messages/?page_size=7").json()
    assert len(sized["results"]) == 7 and sized["next"]


def test_page_size_is_capped_at_200(api, project, user):
    workflow = workflow_for(project, user)
    messages_for(workflow, 230)
    body = api.get(f"/api/workflows/{workflow.id}/messages/?page_size=1000").json()
    assert len(body["results"]) == 200
    assert body["next"]


def test_a_long_message_is_a_preview_in_the_list_and_whole_in_its_detail(api, project, user):
    workflow = workflow_for(project, user)
    messages_for(workflow, 2, content="x" * 5000)
    Message.objects.filter(workflow=workflow, seq=2).update(content="short")

    listed = api.get(f"/api/workflows/{workflow.id}/messages/").json()["results"]

    assert len(listed[0]["content"]) == 2000 and listed[0]["truncated"] is True
    assert listed[1]["content"] == "short" and listed[1]["truncated"] is False
    detail = api.get(listed[0]["url"])
    assert detail.status_code == 200
    assert detail.json()["content"] == "x" * 5000
    assert api.get(f"/api/workflows/{workflow.id}/messages/99/").status_code == 404
    assert api.get(f"/api/workflows/{workflow.id}/messages/abc/").status_code == 404


def test_a_big_phase_result_is_a_preview_in_the_list_and_whole_in_its_detail(
    api, stranger_api, project, user
):
    workflow = workflow_for(project, user)
    big = {"document": "d" * 10_000, "requirements": [{"id": "R1", "description": "x"}]}
    result = PhaseResult.objects.create(
        workflow=workflow,
        phase="DISCOVERY",
        attempt=1,
        status="accepted",
        ai_response="a" * 3000,
        result=big,
        artifacts=[{"name": "requirements.md", "sha256": "0" * 64, "size": 10_000}],
        content_hash="0" * 64,
    )

    listed = api.get(f"/api/workflows/{workflow.id}/phase-results/").json()["results"]

    (item,) = listed
    assert "result" not in item
    assert len(item["result_preview"]) == 2000 and item["result_preview"].startswith('{"document"')
    assert len(item["ai_response"]) == 2000 and item["truncated"] is True
    assert item["artifacts"][0]["name"] == "requirements.md"
    detail = api.get(item["url"]).json()
    assert detail["result"] == big and detail["ai_response"] == "a" * 3000
    assert stranger_api.get(item["url"]).status_code == 404
    other = workflow_for(project, user)
    assert api.get(f"/api/workflows/{other.id}/phase-results/{result.pk}/").status_code == 404


def test_handoffs_are_paginated(api, project, user):
    workflow = workflow_for(project, user)
    Handoff.objects.bulk_create(
        Handoff(
            workflow=workflow,
            kind="approval",
            from_state="DISCOVERY",
            to_state="PLANNING",
            actor_name="alice",
            event_seq=seq,
        )
        for seq in range(1, 61)
    )
    items, pages = follow(api, f"/api/workflows/{workflow.id}/handoffs/")
    assert pages == 2
    assert [h["event_seq"] for h in items] == list(range(1, 61))


def test_projects_are_paginated(api, user, project):
    for n in range(59):
        MembershipFactory(
            project=ProjectFactory(slug=f"p-{n:02d}"), user=user, role=MemberRole.VIEWER
        )
    items, pages = follow(api, "/api/projects/")
    assert pages == 2
    assert [p["slug"] for p in items] == sorted(["demo", *(f"p-{n:02d}" for n in range(59))])


def test_check_runs_list_has_no_diff_and_the_tail_of_the_output(api, project, user):
    workflow = workflow_for(project, user)
    output = "".join(f"line {n}\n" for n in range(2000))
    run = CheckRun.objects.create(
        workflow=workflow, attempt=1, kind="test", output=output, diff="+x\n" * 1000
    )

    (item,) = api.get(f"/api/workflows/{workflow.id}/checks/").json()["results"]

    assert "diff" not in item
    assert len(item["output"]) == 2000 and output.endswith(item["output"])
    assert item["truncated"] is True
    detail = api.get(item["url"]).json()
    assert detail["output"] == output and detail["diff"] == run.diff


def test_events_carry_a_next_link_like_the_other_lists(api, project, user):
    workflow = workflow_for(project, user)
    api.post(f"/api/workflows/{workflow.id}/cancel/", {}, format="json")
    first = api.get(f"/api/workflows/{workflow.id}/events/?limit=1").json()
    assert first["next_after"] == 1
    assert "after=1" in first["next"] and "limit=1" in first["next"]
    rest = api.get(first["next"]).json()
    assert rest["results"][0]["seq"] == 2
    last = api.get(f"/api/workflows/{workflow.id}/events/").json()
    assert last["next"] is None and last["next_after"] is None
