"""Secrets with whitespace, control or non-ASCII characters are refused at input (issue 12 B).

Before: DRF trimmed leading/trailing whitespace silently (a pasted newline vanished) and
stored inner spaces, control characters and non-ASCII as typed; they failed later, at
the provider or in git, far from the form that took them.
"""

import pytest

from integrations.secrets import secret_value_problem
from workflows.models import Project

pytestmark = pytest.mark.django_db

FIELDS = ["openai_api_key", "anthropic_api_key", "github_token", "git_remote_token"]
BAD = [
    ("sk-trailing-newline-0123\n", "whitespace"),
    ("sk-trailing-crlf-0123\r\n", "whitespace"),
    ("\tsk-leading-tab-0123", "whitespace"),
    ("sk-inner space-0123", "whitespace"),
    ("sk-nbsp\u00a0inside-0123", "whitespace"),
    ("   ", "whitespace"),
    ("sk-escape\x1b-0123456", "control character"),
    ("sk-delete\x7f-0123456", "control character"),
    ("sk-\u00fcml\u00e4ut-0123456", "non-ASCII"),
    ("sk-zero\u200bwidth-0123", "non-ASCII"),
]


@pytest.mark.parametrize(("value", "problem"), BAD)
@pytest.mark.parametrize("field", FIELDS)
def test_malformed_secret_is_400_naming_the_problem_not_the_value(
    api, project, field, value, problem
):
    response = api.patch(f"/api/projects/{project.slug}/", {field: value}, format="json")

    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body["errors"]
    assert problem in " ".join(body["errors"][field])
    if value.strip():
        assert value.strip() not in response.content.decode()
    project.refresh_from_db()
    assert getattr(project, field) == ""


def test_secret_problems_on_create_too(api, project):
    response = api.post(
        "/api/projects/",
        {"slug": "shop", "name": "Shop", "github_token": "ghp_abc def"},
        format="json",
    )
    assert response.status_code == 400
    assert "github_token" in response.json()["errors"]
    assert not Project.objects.filter(slug="shop").exists()


def test_a_well_formed_secret_is_stored_and_empty_still_removes_it(api, project):
    key = "sk-proj-AbC_123.xyz~-+/=0123456789"
    assert (
        api.patch(
            f"/api/projects/{project.slug}/", {"openai_api_key": key}, format="json"
        ).status_code
        == 200
    )
    project.refresh_from_db()
    assert project.openai_api_key == key
    assert (
        api.patch(
            f"/api/projects/{project.slug}/", {"openai_api_key": ""}, format="json"
        ).status_code
        == 200
    )
    project.refresh_from_db()
    assert project.openai_api_key == ""


def test_the_message_says_where_but_never_echoes():
    problem = secret_value_problem("abcdef\ngh")
    assert "character 7 of 9" in problem
    assert "abc" not in problem
    assert secret_value_problem("ghp_0123456789abcdef") is None
