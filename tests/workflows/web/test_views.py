"""The dashboard pages through Django's test client: access, scoping, content, queries."""

import json
import uuid
from decimal import Decimal

import pytest
from django.conf import settings
from django.test import Client

from tests.factories import MembershipFactory, ProjectFactory, UserFactory, evidence, workflow_for
from workflows.models import Workflow
from workflows.services import Actor, workflow_approve, workflow_phase_complete, workflow_reject
from workflows.web.selectors import workflow_record_get

pytestmark = pytest.mark.django_db


def complete(workflow, user, phase, **overrides):
    return workflow_phase_complete(
        workflow_id=workflow.id,
        ai_response=f"{phase} done",
        result=evidence(phase, **overrides),
        actor=Actor.of(user),
    )


def page_url(workflow) -> str:
    return f"/dashboard/workflows/{workflow.id}/"


@pytest.fixture
def browser(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def regressed(project, user):
    """A workflow that went forward to TESTING, failed its tests and went back."""
    workflow = workflow_for(project, user, description="Export invoices as CSV")
    for phase in ("DISCOVERY", "PLANNING", "IMPLEMENTATION"):
        complete(workflow, user, phase)
    complete(
        workflow,
        user,
        "TESTING",
        verdict="fail",
        quality_score=0.3,
        findings=[
            {"severity": "major", "message": "CSV header misses the VAT column", "path": "a.py"}
        ],
    )
    Workflow.objects.filter(pk=workflow.pk).update(
        input_tokens=12345, output_tokens=678, cost_usd=Decimal("0.4321")
    )
    return workflow


@pytest.mark.parametrize("path", ["/dashboard/", f"/dashboard/workflows/{uuid.uuid4()}/"])
def test_pages_send_anonymous_visitors_to_sign_in(client, path):
    response = client.get(path)

    assert response.status_code == 302
    assert response["Location"].startswith(settings.LOGIN_URL)
    assert "next=" in response["Location"]


def test_root_redirects_to_the_board(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"


def test_sign_in_page_logs_in_and_lands_on_the_board(client, user):
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b'name="username"' in page.content
    # with no ?next= the form still sends the user to the board, whatever
    # LOGIN_REDIRECT_URL says
    assert b'name="next" value="/dashboard/"' in page.content

    response = client.post(
        "/accounts/login/",
        {"username": "alice", "password": "pw-for-tests-1", "next": "/dashboard/"},
    )

    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200


def test_board_embeds_only_the_users_workflows(browser, project, user):
    mine = workflow_for(project, user, description="Mine to see")
    other = ProjectFactory(slug="elsewhere")
    MembershipFactory(project=other, user=UserFactory(username="bob"))
    workflow_for(other, other.members.get(), description="Not for alice")

    response = browser.get("/dashboard/")

    assert response.status_code == 200
    snapshot = json.loads(_embedded(response))
    assert [summary["id"] for summary in snapshot] == [str(mine.id)]
    html = response.content.decode()
    for column in ("DISCOVERY", "PLANNING", "IMPLEMENTATION", "TESTING", "VERIFICATION"):
        assert f'data-column="{column}"' in html
    assert 'data-column="DONE"' in html
    assert "dashboard/board.js" in html


def _embedded(response) -> str:
    html = response.content.decode()
    start = html.index('<script id="board-snapshot" type="application/json">')
    start = html.index(">", start) + 1
    return html[start : html.index("</script>", start)]


def test_another_projects_workflow_is_404(browser, stranger):
    other = ProjectFactory(slug="theirs")
    MembershipFactory(project=other, user=stranger)
    theirs = workflow_for(other, stranger)

    assert browser.get(page_url(theirs)).status_code == 404
    assert browser.get(f"/dashboard/workflows/{uuid.uuid4()}/").status_code == 404
    assert browser.get("/dashboard/workflows/not-a-uuid/").status_code == 404


def test_workflow_page_shows_timeline_evidence_regressions_and_totals(browser, regressed):
    response = browser.get(page_url(regressed))

    assert response.status_code == 200
    html = response.content.decode()
    # the timeline: every handoff, newest first, with its feedback
    assert "Handoff Discovery → Planning" in html
    assert "Handoff Implementation → Testing" in html
    assert "Regression Testing → Implementation" in html
    assert html.index("Regression Testing → Implementation") < html.index(
        "Handoff Discovery → Planning"
    )
    # the regression with the findings as feedback for the next role
    assert "CSV header misses the VAT column" in html
    assert "<strong>1 regression</strong> (1 of 3 allowed" in html
    # evidence of each phase: requirements, plan, change set, test report
    assert "What must be true" in html
    assert "src/app.py" in html
    assert "quality score <strong>0.30</strong>" in html
    # the conversation per role
    assert 'id="conversation-q_assistant"' in html
    assert 'id="conversation-test_auditor"' in html
    assert "TESTING done" in html
    # token and cost totals
    assert "12345" in html and "678" in html and "13023" in html
    assert "$0.4321" in html
    # the live stream resumes after the last rendered event
    last_seq = Workflow.objects.get(pk=regressed.pk).last_event_seq
    assert f'data-last-seq="{last_seq}"' in html


def test_workflow_page_escapes_user_text(browser, project, user):
    workflow = workflow_for(project, user, description="<script>alert(1)</script> in title")

    html = browser.get(page_url(workflow)).content.decode()

    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_workflow_page_marks_awaiting_approval(browser, project, user):
    project.approval_gates = ["DISCOVERY"]
    project.save()
    workflow = workflow_for(project, user)
    complete(workflow, user, "DISCOVERY")

    html = browser.get(page_url(workflow)).content.decode()

    assert "Awaiting approval" in html
    assert "waits for approval" in html


@pytest.mark.parametrize("loops", [0, 2])
def test_workflow_page_query_count_does_not_grow_with_history(
    browser, project, user, loops, django_assert_max_num_queries
):
    """Session + user for the login, the workflow, then one query per section (the work
    item graph is one)."""
    project.regression_limit = 5
    project.save()
    workflow = workflow_for(project, user)
    for phase in ("DISCOVERY", "PLANNING", "IMPLEMENTATION"):
        complete(workflow, user, phase)
    for _ in range(loops):
        complete(
            workflow,
            user,
            "TESTING",
            verdict="fail",
            quality_score=0.2,
            findings=[{"severity": "minor", "message": "again"}],
        )
        complete(workflow, user, "IMPLEMENTATION")

    with django_assert_max_num_queries(10):
        response = browser.get(page_url(workflow))

    assert response.status_code == 200
    assert response.content.decode().count('data-testid="handoff"') == 3 + 2 * loops


def test_board_query_count_does_not_grow_with_workflows(
    browser, project, user, django_assert_max_num_queries
):
    for n in range(6):
        workflow_for(project, user, description=f"feature {n}")

    with django_assert_max_num_queries(4):
        response = browser.get("/dashboard/")

    assert response.status_code == 200
    assert len(response.context["summaries"]) == 6


def test_workflow_record_is_seven_queries_whatever_the_history(
    regressed, user, django_assert_num_queries
):
    with django_assert_num_queries(7):
        record = workflow_record_get(user=user, workflow_id=regressed.id)

    assert [h.kind for h in record.handoffs] == ["forward", "forward", "forward", "regression"]
    assert len(record.events) == record.workflow.last_event_seq
    assert {c.role for c in record.role_contexts} >= {"Q_ASSISTANT", "TEST_AUDITOR"}
    assert [c.kind for c in record.check_runs] == ["syntax"]


def test_workflow_page_shows_usage_by_role_and_phase(client, project, user):
    from ai_orchestration.autopilot.runner import autopilot_step
    from ai_orchestration.autopilot.services import autopilot_start
    from tests.factories import workflow_for
    from workflows.services import Actor

    workflow = workflow_for(project, user)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    while autopilot_step(run_id=run.id, worker_id="t"):
        pass
    client.force_login(user)
    html = client.get(f"/dashboard/workflows/{workflow.id}/").content.decode()
    assert 'data-testid="usage"' in html
    assert "role: Code Writer" in html and "phase: Deployment" in html


# --- runs, actions and the regression count ------------------------------------------------


def test_regressions_agree_everywhere_and_rejections_are_told_apart(browser, project, user):
    # given: one regression (TESTING failed) and one rejection at a gate
    project.approval_gates = ["IMPLEMENTATION"]
    project.save()
    workflow = workflow_for(project, user)
    for phase in ("DISCOVERY", "PLANNING", "IMPLEMENTATION"):
        complete(workflow, user, phase)
    workflow_reject(workflow_id=workflow.id, actor=Actor.of(user), feedback="Split the commit")
    complete(workflow, user, "IMPLEMENTATION")
    workflow_approve(workflow_id=workflow.id, actor=Actor.of(user))
    complete(workflow, user, "TESTING", verdict="fail", quality_score=0.3)
    workflow.refresh_from_db()
    assert workflow.regression_count == 1

    html = browser.get(page_url(workflow)).content.decode()

    # then: the header, the facts and the tab's note all say 1 regression...
    assert 'data-testid="regression-badge"' in html and ">1 regression</span>" in html
    assert "1 of 3 allowed</dd>" in html
    assert "<strong>1 regression</strong> (1 of 3 allowed" in html
    # ...and the tab, named for all it lists, counts the rejection too, labelled apart
    assert 'data-testid="send-back-count">2</span>' in html
    assert "1 rejection at a gate (not counted toward the limit)" in html
    assert "Split the commit" in html


def test_the_page_sets_the_csrf_cookie_and_links_the_runs_api(browser, project, user):
    workflow = workflow_for(project, user)

    response = browser.get(page_url(workflow))

    assert "csrftoken" in response.cookies
    html = response.content.decode()
    assert f'data-runs-url="/api/workflows/{workflow.id}/runs/"' in html
    assert f'data-transitions-url="/api/workflows/{workflow.id}/transitions/"' in html
    assert 'data-testid="start-run"' in html


@pytest.mark.parametrize(
    ("role", "start", "gate", "can_run"),
    [("owner", False, True, "1"), ("developer", False, False, "1"), ("viewer", False, False, "0")],
)
def test_gate_buttons_follow_the_members_role(client, project, role, start, gate, can_run):
    # given: a workflow waiting at the DISCOVERY gate, seen by a member with `role`
    project.approval_gates = ["DISCOVERY"]
    project.save()
    owner = UserFactory()
    MembershipFactory(project=project, user=owner)
    workflow = workflow_for(project, owner)
    complete(workflow, owner, "DISCOVERY")
    member = UserFactory()
    MembershipFactory(project=project, user=member, role=role)
    client.force_login(member)

    html = client.get(page_url(workflow)).content.decode()

    assert ('data-testid="start-run"' in html) is start  # at a gate nothing can start
    assert ('data-action="approve"' in html) is gate
    assert ('data-action="reject"' in html) is gate
    assert f'data-can-run="{can_run}"' in html


def test_an_open_workflow_offers_start_to_developers_not_viewers(client, project):
    developer, viewer = UserFactory(), UserFactory()
    MembershipFactory(project=project, user=developer, role="developer")
    MembershipFactory(project=project, user=viewer, role="viewer")
    workflow = workflow_for(project, developer)

    client.force_login(developer)
    assert 'data-testid="start-run"' in client.get(page_url(workflow)).content.decode()
    client.force_login(viewer)
    html = client.get(page_url(workflow)).content.decode()
    assert 'data-testid="start-run"' not in html
    assert "you can follow runs here but not start or cancel them" in html


def test_the_runs_api_needs_the_csrf_token_with_a_session(project, user):
    # given: a signed-in browser session that enforces CSRF, as a real browser's does
    workflow = workflow_for(project, user)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    url = f"/api/workflows/{workflow.id}/runs/"
    page = browser.get(page_url(workflow))
    token = page.cookies["csrftoken"].value

    without = browser.post(url, {}, content_type="application/json")
    with_token = browser.post(url, {}, content_type="application/json", HTTP_X_CSRFTOKEN=token)

    assert without.status_code == 403
    assert "CSRF" in without.json()["detail"]
    assert with_token.status_code == 202
    assert with_token.json()["status"] == "queued"
    assert browser.get(url).json()["results"][0]["id"] == with_token.json()["id"]
