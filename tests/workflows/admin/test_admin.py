import hashlib
import re

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.factories import MembershipFactory, ProjectFactory, UserFactory, evidence, workflow_for
from workflows.models import (
    ApiToken,
    CheckRun,
    Handoff,
    Membership,
    Message,
    PhaseResult,
    PromptTemplate,
    WorkflowEvent,
    WorkItem,
)
from workflows.services import Actor, workflow_phase_complete
from workflows.states import HandoffKind, MemberRole, Role, State

pytestmark = pytest.mark.django_db


# --- helpers ---------------------------------------------------------------------------


def complete(workflow, user, *phases):
    """Complete `phases` in order through the real service, as `user`."""
    for phase in phases:
        workflow_phase_complete(
            workflow_id=workflow.pk,
            ai_response=f"{phase} done",
            result=evidence(phase),
            actor=Actor.of(user),
        )
    workflow.refresh_from_db()
    return workflow


def change_url(workflow):
    return reverse("admin:workflows_workflow_change", args=[workflow.pk])


def transition_url(workflow, action):
    return reverse("admin:workflows_workflow_transition", args=[workflow.pk, action])


def message_texts(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def trail_counts(workflow):
    return (
        Handoff.objects.filter(workflow=workflow).count(),
        WorkflowEvent.objects.filter(workflow=workflow).count(),
    )


@pytest.fixture
def admin_owner(admin_user, project):
    """The admin user is an owner of `project`, so the services let it act there."""
    MembershipFactory(project=project, user=admin_user, role=MemberRole.OWNER)
    return admin_user


@pytest.fixture
def workflow(project, user):
    return workflow_for(project, user)


@pytest.fixture
def gated_workflow(project, user):
    """A workflow whose DISCOVERY result waits for approval."""
    project.approval_gates = [State.DISCOVERY]
    project.save()
    return complete(workflow_for(project, user), user, State.DISCOVERY)


# --- workflow list and page ------------------------------------------------------------


def test_site_header_names_the_audit_site(admin_client):
    response = admin_client.get(reverse("admin:index"))

    assert response.status_code == 200
    assert "TopDog audit" in response.content.decode()


def test_changelist_lists_workflows_with_their_state(admin_client, workflow):
    response = admin_client.get(reverse("admin:workflows_workflow_changelist"))

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [workflow]
    body = response.content.decode()
    assert workflow.title in body
    assert "DISCOVERY" in body


def test_change_page_shows_the_trail_inlines_in_order(admin_client, workflow, user):
    complete(workflow, user, State.DISCOVERY, State.PLANNING)

    response = admin_client.get(change_url(workflow))

    assert response.status_code == 200
    inlines = response.context["inline_admin_formsets"]
    assert [inline.opts.model for inline in inlines] == [
        Handoff,
        WorkflowEvent,
        Message,
        PhaseResult,
        WorkItem,
        CheckRun,
    ]
    handoffs, events, messages_, results, items, checks = (
        [form.instance for form in inline.formset.forms] for inline in inlines
    )
    assert [h.event_seq for h in handoffs] == [3, 5]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [m.seq for m in messages_] == [1, 2]
    assert [r.phase for r in results] == [State.DISCOVERY, State.PLANNING]
    assert [i.key for i in items] == ["W1", "W2"]  # the plan's work items
    assert checks == []  # nothing was built yet, so nothing was checked
    assert all(
        not inline.has_add_permission
        and not inline.has_change_permission
        and not inline.has_delete_permission
        for inline in inlines
    )
    body = response.content.decode()
    assert "phase.completed" in body
    assert 'name="_save"' not in body  # the workflow itself is never edited by hand


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=PLANNING", {"planning"}),
        ("state__exact=DISCOVERY", {"discovery", "other"}),
        ("current_role__exact=Q_ASSISTANT", {"discovery", "planning", "other"}),
        ("awaiting_approval__exact=1", set()),
        ("q=build-42", {"planning"}),
        ("q=discovery", {"discovery"}),
    ],
)
def test_changelist_filters_and_search(admin_client, project, user, query, expected):
    workflow_for(project, user, description="discovery one")
    planning = workflow_for(project, user, description="planning one", build_id="build-42")
    complete(planning, user, State.DISCOVERY)
    other_project = ProjectFactory()
    MembershipFactory(project=other_project, user=user)
    workflow_for(other_project, user, description="other one")

    response = admin_client.get(f"{reverse('admin:workflows_workflow_changelist')}?{query}")

    assert response.status_code == 200
    titles = {w.title.split()[0] for w in response.context["cl"].result_list}
    assert titles == expected


def test_changelist_filters_by_project_date_and_full_id(admin_client, project, user):
    mine = workflow_for(project, user)
    other_project = ProjectFactory()
    MembershipFactory(project=other_project, user=user)
    other = workflow_for(other_project, user)
    url = reverse("admin:workflows_workflow_changelist")
    today = timezone.now()

    by_project = admin_client.get(f"{url}?project__id__exact={other_project.pk}")
    by_id = admin_client.get(f"{url}?q={mine.pk}")
    by_day = admin_client.get(
        f"{url}?created_at__year={today.year}&created_at__month={today.month}"
        f"&created_at__day={today.day}"
    )
    by_old_year = admin_client.get(f"{url}?created_at__year={today.year - 5}")

    assert list(by_project.context["cl"].result_list) == [other]
    assert list(by_id.context["cl"].result_list) == [mine]
    assert set(by_day.context["cl"].result_list) == {mine, other}
    assert list(by_old_year.context["cl"].result_list) == []


def test_changelist_query_count_does_not_grow_with_rows(
    admin_client, project, user, django_assert_max_num_queries
):
    url = reverse("admin:workflows_workflow_changelist")
    workflow_for(project, user)
    with django_assert_max_num_queries(12) as few:
        admin_client.get(url)
    for _ in range(5):
        workflow_for(project, user)

    with django_assert_max_num_queries(len(few.captured_queries)):
        response = admin_client.get(url)

    assert len(response.context["cl"].result_list) == 6


def test_workflow_admin_is_read_only(admin_client, workflow):
    add = admin_client.get(reverse("admin:workflows_workflow_add"))
    change = admin_client.post(change_url(workflow), {"title": "renamed"})
    delete = admin_client.post(reverse("admin:workflows_workflow_delete", args=[workflow.pk]))

    assert (add.status_code, change.status_code, delete.status_code) == (403, 403, 403)
    workflow.refresh_from_db()
    assert workflow.title != "renamed"
    changelist = admin_client.get(reverse("admin:workflows_workflow_changelist"))
    assert changelist.context["action_form"] is None


# --- transition buttons ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "awaiting", "buttons"),
    [
        (State.DISCOVERY, False, ["cancel", "fail"]),
        (State.DISCOVERY, True, ["approve", "reject", "cancel", "fail"]),
        (State.TESTING, False, ["regress", "cancel", "fail"]),
        (State.CANCELLED, False, []),
    ],
)
def test_change_page_offers_only_the_available_transitions(
    admin_client, admin_owner, project, user, state, awaiting, buttons
):
    if awaiting:
        project.approval_gates = [State.DISCOVERY]
        project.save()
    workflow = workflow_for(project, user)
    if state == State.TESTING:
        complete(workflow, user, State.DISCOVERY, State.PLANNING, State.IMPLEMENTATION)
    elif state == State.CANCELLED:
        admin_client.post(transition_url(workflow, "cancel"), {"reason": "stop"})
    elif awaiting:
        complete(workflow, user, State.DISCOVERY)

    response = admin_client.get(change_url(workflow))

    assert response.status_code == 200
    assert [b["action"] for b in response.context["transition_buttons"]] == buttons
    body = response.content.decode()
    for action in ["approve", "reject", "cancel", "fail", "regress"]:
        assert (transition_url(workflow, action) in body) == (action in buttons)


def test_transition_buttons_post_with_a_csrf_token(admin_client, admin_owner, gated_workflow):
    response = admin_client.get(change_url(gated_workflow))

    body = response.content.decode()
    form = re.search(
        rf'<form method="post" action="{re.escape(transition_url(gated_workflow, "approve"))}"'
        r".*?</form>",
        body,
        re.S,
    )
    assert form is not None
    assert "csrfmiddlewaretoken" in form.group(0)


TRANSITIONS = [
    # (gates, phases completed first, action, form data, new state, handoff kind, recorded)
    pytest.param(
        [State.DISCOVERY],
        [State.DISCOVERY],
        "approve",
        {},
        State.PLANNING,
        HandoffKind.APPROVAL,
        {"reason": "approved"},
        id="approve",
    ),
    pytest.param(
        [State.DISCOVERY],
        [State.DISCOVERY],
        "approve",
        {"comment": "looks right"},
        State.PLANNING,
        HandoffKind.APPROVAL,
        {"reason": "looks right"},
        id="approve-with-comment",
    ),
    pytest.param(
        [State.DISCOVERY],
        [State.DISCOVERY],
        "reject",
        {"feedback": "cover the mobile layout too"},
        State.DISCOVERY,
        HandoffKind.REJECTION,
        {"feedback": "cover the mobile layout too"},
        id="reject",
    ),
    pytest.param(
        [],
        [],
        "cancel",
        {"reason": "duplicate request"},
        State.CANCELLED,
        HandoffKind.CANCEL,
        {"reason": "duplicate request"},
        id="cancel",
    ),
    pytest.param(
        [],
        [State.DISCOVERY],
        "fail",
        {"reason": "repository archived"},
        State.FAILED,
        HandoffKind.FAIL,
        {"reason": "repository archived"},
        id="fail",
    ),
    pytest.param(
        [],
        [State.DISCOVERY, State.PLANNING, State.IMPLEMENTATION, State.TESTING],
        "regress",
        {"target": State.PLANNING, "reason": "wrong approach", "feedback": "use the cache"},
        State.PLANNING,
        HandoffKind.REGRESSION,
        {"reason": "wrong approach", "feedback": "use the cache"},
        id="regress",
    ),
]


@pytest.mark.parametrize(
    ("gates", "phases", "action", "data", "new_state", "kind", "recorded"), TRANSITIONS
)
def test_transition_goes_through_the_service_as_the_admin_user(
    admin_client, admin_owner, project, user, gates, phases, action, data, new_state, kind, recorded
):
    project.approval_gates = gates
    project.save()
    workflow = complete(workflow_for(project, user), user, *phases)
    previous_state = workflow.state
    before_seq = workflow.last_event_seq

    response = admin_client.post(transition_url(workflow, action), data)

    assert response.status_code == 302
    assert response["Location"] == change_url(workflow)
    workflow.refresh_from_db()
    assert workflow.state == new_state
    assert not workflow.awaiting_approval
    handoff = Handoff.objects.filter(workflow=workflow).latest("event_seq")
    assert handoff.kind == kind
    assert (handoff.from_state, handoff.to_state) == (previous_state, new_state)
    assert handoff.actor == admin_owner
    assert handoff.actor_name == "admin"
    assert {field: getattr(handoff, field) for field in recorded} == recorded
    event = WorkflowEvent.objects.get(workflow=workflow, seq=handoff.event_seq)
    assert handoff.event_seq == before_seq + 1 == workflow.last_event_seq
    assert (event.actor, event.actor_name) == (admin_owner, "admin")
    assert any(m.startswith(f"{action.title()}") for m in message_texts(response))
    assert LogEntry.objects.filter(object_id=str(workflow.pk), user=admin_owner).exists()


def test_transition_form_page_renders_for_actions_that_need_text(
    admin_client, admin_owner, project, user
):
    workflow = complete(
        workflow_for(project, user),
        user,
        State.DISCOVERY,
        State.PLANNING,
        State.IMPLEMENTATION,
        State.TESTING,
    )

    response = admin_client.get(transition_url(workflow, "regress"))

    assert response.status_code == 200
    form = response.context["form"]
    assert [value for value, _ in form.fields["target"].choices] == [
        State.IMPLEMENTATION,
        State.PLANNING,
    ]
    assert "csrfmiddlewaretoken" in response.content.decode()


def test_regress_past_the_limit_fails_and_says_so(admin_client, admin_owner, project, user):
    project.regression_limit = 0
    project.save()
    workflow = complete(
        workflow_for(project, user), user, State.DISCOVERY, State.PLANNING, State.IMPLEMENTATION
    )

    response = admin_client.post(
        transition_url(workflow, "regress"),
        {"target": State.IMPLEMENTATION, "reason": "flaky", "feedback": "fix the flake"},
    )

    workflow.refresh_from_db()
    assert workflow.state == State.FAILED
    assert Handoff.objects.filter(workflow=workflow).latest("event_seq").kind == HandoffKind.FAIL
    assert any("Regression limit of 0 reached" in m for m in message_texts(response))


@pytest.mark.parametrize(
    ("action", "data"),
    [
        ("approve", {}),
        ("reject", {"feedback": "no"}),
        ("regress", {"target": State.IMPLEMENTATION, "reason": "r", "feedback": "f"}),
    ],
)
def test_disallowed_transition_shows_the_service_error_and_writes_nothing(
    admin_client, admin_owner, workflow, action, data
):
    before = trail_counts(workflow)

    response = admin_client.post(transition_url(workflow, action), data, follow=True)

    assert response.status_code == 200
    assert response.redirect_chain == [(change_url(workflow), 302)]
    errors = [str(m) for m in response.context["messages"] if m.level_tag == "error"]
    assert len(errors) == 1
    assert "workflow is in DISCOVERY" in errors[0]
    assert f"'{action}' is not allowed" in errors[0]
    workflow.refresh_from_db()
    assert workflow.state == State.DISCOVERY
    assert workflow.last_event_seq == 1
    assert trail_counts(workflow) == before


def test_finished_workflow_refuses_every_transition(admin_client, admin_owner, workflow):
    admin_client.post(transition_url(workflow, "cancel"), {"reason": "stop"})
    before = trail_counts(workflow)

    response = admin_client.post(transition_url(workflow, "fail"), {"reason": "again"})

    errors = message_texts(response)
    assert any("finished and allows no transitions" in m for m in errors)
    workflow.refresh_from_db()
    assert workflow.state == State.CANCELLED
    assert trail_counts(workflow) == before


def test_project_role_is_still_enforced(admin_client, admin_user, project, gated_workflow):
    Membership.objects.create(project=project, user=admin_user, role=MemberRole.DEVELOPER)
    before = trail_counts(gated_workflow)

    response = admin_client.post(transition_url(gated_workflow, "approve"))

    assert any("needs project role owner" in m for m in message_texts(response))
    gated_workflow.refresh_from_db()
    assert gated_workflow.awaiting_approval
    assert trail_counts(gated_workflow) == before


def test_admin_outside_the_project_is_told_to_join_it(admin_client, workflow):
    before = trail_counts(workflow)

    response = admin_client.post(transition_url(workflow, "cancel"), {"reason": "x"})

    assert any("not a member of project demo" in m for m in message_texts(response))
    workflow.refresh_from_db()
    assert workflow.state == State.DISCOVERY
    assert trail_counts(workflow) == before


def test_invalid_form_is_shown_again_and_writes_nothing(admin_client, admin_owner, gated_workflow):
    before = trail_counts(gated_workflow)

    response = admin_client.post(transition_url(gated_workflow, "reject"), {"feedback": "  "})

    assert response.status_code == 200
    assert "feedback" in response.context["form"].errors
    assert trail_counts(gated_workflow) == before


def test_get_of_an_unavailable_action_redirects_with_an_error(admin_client, admin_owner, workflow):
    response = admin_client.get(transition_url(workflow, "reject"))

    assert response.status_code == 302
    assert any("'reject' is not available" in m for m in message_texts(response))


def test_unknown_action_is_404(admin_client, admin_owner, workflow):
    response = admin_client.post(transition_url(workflow, "complete"))

    assert response.status_code == 404


def staff(username, *codenames):
    account = UserFactory(username=username, is_staff=True)
    account.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return account


def test_transitions_need_the_change_workflow_permission(client, project, workflow):
    viewer = staff("auditor", "view_workflow")
    MembershipFactory(project=project, user=viewer, role=MemberRole.OWNER)
    client.force_login(viewer)

    page = client.get(change_url(workflow))
    posted = client.post(transition_url(workflow, "cancel"), {"reason": "x"})

    assert page.status_code == 200
    assert "transition_panel" not in page.context
    assert posted.status_code == 403
    workflow.refresh_from_db()
    assert workflow.state == State.DISCOVERY


def test_staff_with_change_workflow_can_transition(client, project, workflow):
    operator = staff("operator", "view_workflow", "change_workflow")
    MembershipFactory(project=project, user=operator, role=MemberRole.OWNER)
    client.force_login(operator)

    response = client.post(transition_url(workflow, "fail"), {"reason": "stuck"})

    assert response.status_code == 302
    handoff = Handoff.objects.get(workflow=workflow, kind=HandoffKind.FAIL)
    assert (handoff.actor, handoff.actor_name) == (operator, "operator")


def test_non_staff_cannot_reach_transitions(client, user, workflow):
    client.force_login(user)

    response = client.post(transition_url(workflow, "cancel"), {"reason": "x"})

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
    workflow.refresh_from_db()
    assert workflow.state == State.DISCOVERY


def test_transition_post_without_csrf_token_is_refused(admin_owner, workflow):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_owner)

    response = client.post(transition_url(workflow, "cancel"), {"reason": "x"})

    assert response.status_code == 403
    workflow.refresh_from_db()
    assert workflow.state == State.DISCOVERY


# --- the append-only audit log ---------------------------------------------------------


@pytest.fixture
def trail(project, user):
    workflow = complete(workflow_for(project, user), user, State.DISCOVERY)
    return (
        workflow,
        Handoff.objects.get(workflow=workflow),
        WorkflowEvent.objects.get(workflow=workflow, seq=1),
    )


@pytest.mark.parametrize("model_name", ["handoff", "workflowevent"])
def test_audit_rows_cannot_be_added_changed_or_deleted(admin_client, trail, model_name):
    _, handoff, event = trail
    row = handoff if model_name == "handoff" else event
    add_url = reverse(f"admin:workflows_{model_name}_add")
    row_change_url = reverse(f"admin:workflows_{model_name}_change", args=[row.pk])
    delete_url = reverse(f"admin:workflows_{model_name}_delete", args=[row.pk])

    assert admin_client.get(add_url).status_code == 403
    assert admin_client.post(add_url, {}).status_code == 403
    assert admin_client.post(row_change_url, {"actor_name": "someone"}).status_code == 403
    assert admin_client.get(delete_url).status_code == 403
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert type(row).objects.filter(pk=row.pk).exists()
    viewed = admin_client.get(row_change_url)
    assert viewed.status_code == 200
    assert 'name="_save"' not in viewed.content.decode()


@pytest.mark.parametrize("model_name", ["handoff", "workflowevent"])
def test_audit_changelists_have_no_bulk_delete(admin_client, trail, model_name):
    url = reverse(f"admin:workflows_{model_name}_changelist")

    response = admin_client.get(url)
    bulk = admin_client.post(
        url, {"action": "delete_selected", "_selected_action": ["1"], "post": "yes"}
    )

    assert response.status_code == 200
    assert response.context["action_form"] is None
    assert "delete_selected" not in response.content.decode()
    assert bulk.status_code in (200, 302)
    assert Handoff.objects.count() == 1
    assert WorkflowEvent.objects.count() == 3


def test_handoff_changelist_filters_and_search(admin_client, trail, project, user):
    _, handoff, _ = trail
    other_project = ProjectFactory()
    MembershipFactory(project=other_project, user=user)
    other = complete(workflow_for(other_project, user), user, State.DISCOVERY)
    url = reverse("admin:workflows_handoff_changelist")

    forward = admin_client.get(f"{url}?kind__exact=forward")
    cancel = admin_client.get(f"{url}?kind__exact=cancel")
    by_project = admin_client.get(f"{url}?workflow__project__id__exact={project.pk}")
    by_workflow_id = admin_client.get(f"{url}?q={other.pk}")
    by_actor = admin_client.get(f"{url}?q=alice")

    assert len(forward.context["cl"].result_list) == 2
    assert list(cancel.context["cl"].result_list) == []
    assert list(by_project.context["cl"].result_list) == [handoff]
    assert [h.workflow_id for h in by_workflow_id.context["cl"].result_list] == [other.pk]
    assert len(by_actor.context["cl"].result_list) == 2


def test_event_changelist_filters_by_type_and_project(admin_client, trail, project):
    url = reverse("admin:workflows_workflowevent_changelist")

    created = admin_client.get(f"{url}?type__exact=workflow.created")
    by_project = admin_client.get(f"{url}?workflow__project__id__exact={project.pk}")
    today = admin_client.get(f"{url}?created_at__year={timezone.now().year}")

    assert [e.seq for e in created.context["cl"].result_list] == [1]
    assert len(by_project.context["cl"].result_list) == 3
    assert len(today.context["cl"].result_list) == 3


def test_audit_log_is_visible_to_staff_who_may_view_workflows(client, trail):
    auditor = staff("auditor", "view_workflow")
    client.force_login(auditor)

    handoffs = client.get(reverse("admin:workflows_handoff_changelist"))
    events = client.get(reverse("admin:workflows_workflowevent_changelist"))

    assert (handoffs.status_code, events.status_code) == (200, 200)
    nobody = staff("intern")
    client.force_login(nobody)
    assert client.get(reverse("admin:workflows_handoff_changelist")).status_code == 403


# --- projects and API tokens -----------------------------------------------------------


def test_settings_add_pages_render(admin_client):
    for name in (
        "workflows_project_add",
        "workflows_apitoken_add",
        "workflows_prompttemplate_add",
    ):
        assert admin_client.get(reverse(f"admin:{name}")).status_code == 200, name


def test_project_admin_saves_gates_and_members(admin_client, user):
    response = admin_client.post(
        reverse("admin:workflows_project_add"),
        {
            "slug": "shop",
            "name": "Shop",
            "repository": "acme/shop",
            "default_branch": "main",
            "approval_gates": [State.VERIFICATION, State.DISCOVERY],
            "regression_limit": "2",
            "quality_threshold": "0.5",
            "role_models": "{}",
            "max_work_items": "20",
            "work_item_concurrency": "3",
            "openai_api_key": "sk-admin-typed-key-123",
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
            "memberships-0-user": str(user.pk),
            "memberships-0-role": MemberRole.VIEWER,
        },
    )

    assert response.status_code == 302, response.context and response.context["errors"]
    project = ProjectFactory._meta.model.objects.get(slug="shop")
    assert project.approval_gates == [State.DISCOVERY, State.VERIFICATION]
    assert project.regression_limit == 2
    assert project.quality_threshold == 0.5
    assert (project.max_work_items, project.work_item_concurrency) == (20, 3)
    assert project.openai_api_key == "sk-admin-typed-key-123"
    assert list(project.memberships.values_list("user__username", "role")) == [
        ("alice", MemberRole.VIEWER)
    ]
    page = admin_client.get(reverse("admin:workflows_project_change", args=[project.pk]))
    assert page.status_code == 200
    assert "memberships-0-role" in page.content.decode()


def test_api_token_is_shown_once_and_only_its_digest_is_stored(admin_client, user):
    response = admin_client.post(
        reverse("admin:workflows_apitoken_add"), {"user": str(user.pk), "name": "laptop"}
    )

    assert response.status_code == 200
    body = response.content.decode()
    raw = re.search(r"<code>(td_[A-Za-z0-9_\-]+)</code>", body).group(1)
    token = ApiToken.objects.get(user=user)
    assert token.digest == hashlib.sha256(raw.encode()).hexdigest()
    assert token.hint == raw[:8]
    assert token.name == "laptop"
    assert raw not in {token.digest, token.hint, token.name}
    # the message was used up by this page: it is not parked in a cookie or the session
    assert raw not in str(response.cookies)
    assert raw not in str(dict(admin_client.session))
    assert not LogEntry.objects.filter(object_repr__contains=raw).exists()

    for url in (
        reverse("admin:workflows_apitoken_changelist"),
        reverse("admin:workflows_apitoken_change", args=[token.pk]),
    ):
        later = admin_client.get(url).content.decode()
        assert raw not in later
        assert token.digest not in later
        assert f"{token.hint}…" in later


def test_api_token_user_cannot_be_changed(admin_client, user, stranger):
    raw_token_owner = ApiToken.objects.create(user=user, digest="d" * 64, hint="td_abcde")

    admin_client.post(
        reverse("admin:workflows_apitoken_change", args=[raw_token_owner.pk]),
        {"user": str(stranger.pk), "name": "renamed"},
    )

    raw_token_owner.refresh_from_db()
    assert (raw_token_owner.user, raw_token_owner.name) == (user, "renamed")
    assert raw_token_owner.digest == "d" * 64


# --- prompt templates ------------------------------------------------------------------


def test_editing_a_prompt_template_publishes_a_new_version(admin_client, admin_user):
    v1 = PromptTemplate.objects.get(role=Role.CODE_WRITER, version=1)
    before = {f.attname: getattr(v1, f.attname) for f in PromptTemplate._meta.concrete_fields}

    response = admin_client.post(
        reverse("admin:workflows_prompttemplate_change", args=[v1.pk]),
        {"body": "You write code for $project.", "note": "shorter", "_continue": "1"},
    )

    v2 = PromptTemplate.objects.get(role=Role.CODE_WRITER, version=2)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:workflows_prompttemplate_change", args=[v2.pk])
    assert (v2.body, v2.active, v2.note, v2.created_by) == (
        "You write code for $project.",
        True,
        "shorter",
        admin_user,
    )
    assert v2.sha256 == hashlib.sha256(v2.body.encode()).hexdigest()
    v1.refresh_from_db()
    after = {f.attname: getattr(v1, f.attname) for f in PromptTemplate._meta.concrete_fields}
    assert after == {**before, "active": False}
    assert any("Published CODE_WRITER v2" in m for m in message_texts(response))


def test_change_form_says_that_saving_publishes(admin_client):
    v1 = PromptTemplate.objects.get(role=Role.CODE_WRITER, version=1)

    response = admin_client.get(reverse("admin:workflows_prompttemplate_change", args=[v1.pk]))

    assert response.status_code == 200
    assert "publishes this text as a new version" in response.content.decode()


def test_saving_an_unchanged_active_template_publishes_nothing(admin_client):
    v1 = PromptTemplate.objects.get(role=Role.TEST_AUDITOR, version=1)

    admin_client.post(
        reverse("admin:workflows_prompttemplate_change", args=[v1.pk]),
        {"body": v1.body, "note": ""},
    )

    assert PromptTemplate.objects.filter(role=Role.TEST_AUDITOR).count() == 1
    v1.refresh_from_db()
    assert v1.active


def test_saving_an_old_version_republishes_it(admin_client, admin_user):
    v1 = PromptTemplate.objects.get(role=Role.RELEASE_MANAGER, version=1)
    url = reverse("admin:workflows_prompttemplate_change", args=[v1.pk])
    admin_client.post(url, {"body": "something else", "note": "try"})

    admin_client.post(url, {"body": v1.body, "note": "roll back"})

    v3 = PromptTemplate.objects.get(role=Role.RELEASE_MANAGER, active=True)
    assert (v3.version, v3.body, v3.sha256) == (3, v1.body, v1.sha256)


def test_adding_a_prompt_template_publishes_the_next_version(admin_client):
    response = admin_client.post(
        reverse("admin:workflows_prompttemplate_add"),
        {"role": Role.Q_ASSISTANT, "body": "Ask good questions.", "note": "new"},
    )

    assert response.status_code == 302
    active = PromptTemplate.objects.get(role=Role.Q_ASSISTANT, active=True)
    assert (active.version, active.body) == (2, "Ask good questions.")


def test_prompt_templates_cannot_be_deleted(admin_client):
    v1 = PromptTemplate.objects.get(role=Role.CODE_WRITER, version=1)

    response = admin_client.post(
        reverse("admin:workflows_prompttemplate_delete", args=[v1.pk]), {"post": "yes"}
    )
    changelist = admin_client.get(reverse("admin:workflows_prompttemplate_changelist"))

    assert response.status_code == 403
    assert PromptTemplate.objects.filter(pk=v1.pk).exists()
    assert changelist.context["action_form"] is None
    assert v1.sha256[:12] in changelist.content.decode()


def test_workflow_page_shows_usage_by_role_and_phase_and_runs_are_listed(
    admin_client, project, user
):
    from ai_orchestration.autopilot.runner import autopilot_step
    from ai_orchestration.autopilot.services import autopilot_start
    from workflows.services import Actor

    workflow = workflow_for(project, user)
    run = autopilot_start(workflow_id=workflow.id, actor=Actor.of(user))
    while autopilot_step(run_id=run.id, worker_id="t"):
        pass
    page = admin_client.get(reverse("admin:workflows_workflow_change", args=[workflow.pk]))
    html = page.content.decode()
    assert "role: CODE_WRITER" in html and "phase: DEPLOYMENT" in html
    runs = admin_client.get(reverse("admin:ai_orchestration_airun_changelist"))
    assert runs.status_code == 200
    assert str(run.id) in runs.content.decode()
    assert admin_client.get(reverse("admin:ai_orchestration_airun_add")).status_code == 403
