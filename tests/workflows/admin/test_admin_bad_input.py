"""Hostile input in the admin: NUL in changelist filters, malformed secrets (issue 12 B).

Before: `?state=%00` (and current_role, kind, type, from_state, to_state) raised
DataError on PostgreSQL ("text fields cannot contain NUL") -> 500; a secret with a
trailing newline was stripped silently and one with a control or non-ASCII character
was stored as typed, to fail later at the provider.
"""

import pytest
from django.urls import reverse

from tests.factories import ProjectFactory, workflow_for
from workflows.models import Project

pytestmark = pytest.mark.django_db

NUL_QUERIES = [
    ("workflows_workflow", "q=%00"),
    ("workflows_workflow", "state=%00"),
    ("workflows_workflow", "state__exact=%00"),
    ("workflows_workflow", "current_role=%00"),
    ("workflows_workflow", "project__id__exact=%00"),
    ("workflows_workflow", "awaiting_approval__exact=%00"),
    ("workflows_workflow", "created_at__gte=%00"),
    ("workflows_workflow", "o=%00"),
    ("workflows_workflow", "%00=1"),
    ("workflows_handoff", "q=%00"),
    ("workflows_handoff", "kind=%00"),
    ("workflows_handoff", "from_state=%00"),
    ("workflows_handoff", "to_state__exact=%00"),
    ("workflows_handoff", "workflow__project__id__exact=%00"),
    ("workflows_workflowevent", "q=%00"),
    ("workflows_workflowevent", "type=%00"),
    ("workflows_project", "q=%00"),
    ("workflows_apitoken", "q=%00"),
]


@pytest.mark.parametrize(("model", "query"), NUL_QUERIES)
def test_nul_in_changelist_filters_or_search_is_never_a_500(
    admin_client, project, user, model, query
):
    workflow_for(project, user)
    admin_client.raise_request_exception = False
    url = reverse(f"admin:{model}_changelist")

    response = admin_client.get(f"{url}?{query}")

    # the admin's answer to an invalid lookup: back to the list with ?e=1
    assert response.status_code == 302, response.status_code
    assert response["Location"].endswith("?e=1")
    assert admin_client.get(f"{url}?e=1").status_code == 200


def test_ordinary_filters_still_work(admin_client, project, user):
    workflow_for(project, user)
    url = reverse("admin:workflows_workflow_changelist")
    response = admin_client.get(f"{url}?state=DISCOVERY&q=dark")
    assert response.status_code == 200
    assert "Add dark mode" in response.content.decode()


def _project_form(**secrets):
    return {
        "slug": "shop",
        "name": "Shop",
        "repository": "acme/shop",
        "default_branch": "main",
        "regression_limit": "2",
        "quality_threshold": "0.5",
        "role_models": "{}",
        "max_work_items": "50",
        "work_item_concurrency": "2",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        **secrets,
    }


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("sk-key-with-newline-0123\n", "whitespace"),
        (" sk-leading-space-0123", "whitespace"),
        ("sk-inner space-0123", "whitespace"),
        ("sk-bell\x07-0123456", "control character"),
        ("sk-caf\u00e9-0123456789", "non-ASCII"),
        ("\u201csk-smart-quoted-0123\u201d", "non-ASCII"),
    ],
)
@pytest.mark.parametrize(
    "field", ["openai_api_key", "anthropic_api_key", "github_token", "git_remote_token"]
)
def test_admin_refuses_malformed_secrets_without_echoing_them(admin_client, field, value, problem):
    response = admin_client.post(
        reverse("admin:workflows_project_add"), _project_form(**{field: value})
    )

    assert response.status_code == 200  # the form again, with the error
    errors = response.context["adminform"].form.errors
    assert problem in " ".join(errors[field])
    if value.strip():
        assert value.strip() not in response.content.decode()
    assert not Project.objects.filter(slug="shop").exists()


def test_admin_keeps_a_stored_secret_when_the_field_is_left_blank(admin_client):
    project = ProjectFactory(openai_api_key="sk-stored-0123456789")
    data = _project_form()
    data.update(slug=project.slug, name=project.name)
    response = admin_client.post(reverse("admin:workflows_project_change", args=[project.pk]), data)
    assert response.status_code == 302
    project.refresh_from_db()
    assert project.openai_api_key == "sk-stored-0123456789"
