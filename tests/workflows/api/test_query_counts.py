"""Pinned query counts: one for authentication, then the selector's one query."""

from contextlib import nullcontext

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

    # then: authentication; the locked workflow (with its project); the phase result
    # first (the event and handoff refer to its id); the guarded workflow UPDATE; the
    # entered role's active template, for its role context; then one statement per model
    # for the new rows.
    assert response.status_code == 200, response.json()
    statements = [q["sql"] for q in captured if "SAVEPOINT" not in q["sql"]]
    assert [_shape(sql) for sql in statements] == [
        ("SELECT", "workflows_apitoken"),
        ("SELECT", "workflows_workflow"),
        ("INSERT", "workflows_phaseresult"),
        ("UPDATE", "workflows_workflow"),
        ("SELECT", "ai_orchestration_prompttemplate"),
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


# --- statements a transition leaves out when there is nothing to do ---------------------


def _walk_to(workflow, user, last: str) -> None:
    for phase in ("DISCOVERY", "PLANNING", "IMPLEMENTATION", "TESTING", "VERIFICATION"):
        if phase == last:
            return
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="ok", result=evidence(phase), actor=Actor.of(user)
        )


def _complete_captured(workflow, user, phase: str, after_commit=None) -> list[tuple[str, str]]:
    return [_shape(sql) for sql in _complete_statements(workflow, user, phase, after_commit)]


def _complete_statements(workflow, user, phase: str, after_commit=None) -> list[str]:
    with CaptureQueriesContext(connection) as captured, after_commit or nullcontext():
        workflow_phase_complete(
            workflow_id=workflow.id, ai_response="ok", result=evidence(phase), actor=Actor.of(user)
        )
    return [
        q["sql"]
        for q in captured
        if q["sql"].split(None, 1)[0] in ("SELECT", "INSERT", "UPDATE", "DELETE")
    ]


def test_a_first_plan_has_no_earlier_items_to_supersede(workflows, user):
    # given: a workflow in PLANNING for the first time
    workflow = workflows[0]

    # when
    shapes = _complete_captured(workflow, user, "PLANNING")

    # then: its items are inserted; no UPDATE looks for a previous plan's
    assert ("INSERT", "workflows_workitem") in shapes
    assert ("UPDATE", "workflows_workitem") not in shapes


def test_the_last_phase_reads_no_prompt_template(project, user):
    # given: a workflow in DEPLOYMENT
    workflow = workflow_for(project, user)
    _walk_to(workflow, user, "DEPLOYMENT")

    # when: it completes (no role owns a COMPLETE workflow, so no role context is written)
    shapes = _complete_captured(workflow, user, "DEPLOYMENT")

    # then
    assert ("SELECT", "ai_orchestration_prompttemplate") not in shapes
    assert ("INSERT", "workflows_rolecontext") not in shapes
    assert ("UPDATE", "workflows_workflow") in shapes


def test_implementation_done_with_no_run_waiting_is_one_read_after_commit(
    project, user, django_capture_on_commit_callbacks
):
    # given: a workflow in IMPLEMENTATION that no autopilot run waits on
    workflow = workflow_for(project, user)
    _walk_to(workflow, user, "IMPLEMENTATION")

    # when: it completes, and what runs after its commit runs
    statements = _complete_statements(
        workflow, user, "IMPLEMENTATION", django_capture_on_commit_callbacks(execute=True)
    )

    # then: the autopilot's listener looks once for a run waiting on the items, and
    # locks nothing
    runs = [sql for sql in statements if _shape(sql) == ("SELECT", "ai_orchestration_airun")]
    assert len(runs) == 1
    assert "FOR UPDATE" not in runs[0]


def test_testing_reads_its_test_run_without_the_change_set_row(project, user):
    # given: a workflow in TESTING
    workflow = workflow_for(project, user)
    _walk_to(workflow, user, "TESTING")

    # when
    shapes = _complete_captured(workflow, user, "TESTING")

    # then: one read finds the current change set's latest test run (the change set's id
    # is a subquery; its row, every file's content, is not loaded)
    assert shapes.count(("SELECT", "workflows_checkrun")) == 1
    assert ("SELECT", "workflows_phaseresult") not in shapes


def test_a_whole_change_set_settles_each_item_in_one_update(project, user):
    # given: a workflow in IMPLEMENTATION with its plan's items, none done
    from workflows.work_items import work_items_current

    workflow = workflow_for(project, user)
    _walk_to(workflow, user, "IMPLEMENTATION")
    items = work_items_current(workflow_id=workflow.id)
    assert items.count() >= 2

    # when: complete-phase brings the whole change set
    shapes = _complete_captured(workflow, user, "IMPLEMENTATION")

    # then: each item is done and its usage booked, by one UPDATE each
    assert shapes.count(("UPDATE", "workflows_workitem")) == items.count()
    assert {(item.status, item.usage_booked) for item in items} == {("done", True)}
