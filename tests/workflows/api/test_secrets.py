"""Project secrets: write-only in the API, ciphertext in the database."""

import json

import pytest
from django.db import connection

from workflows.models import Project

pytestmark = pytest.mark.django_db

KEY = "sk-test-0123456789abcdefSECRETVALUE"


def test_secret_is_write_only_and_encrypted_at_rest(api, project, caplog):
    response = api.patch(f"/api/projects/{project.slug}/", {"openai_api_key": KEY}, format="json")
    assert response.status_code == 200
    assert KEY not in response.content.decode()
    assert response.json()["secrets"] == {
        "openai_api_key": True,
        "anthropic_api_key": False,
        "github_token": False,
        "git_remote_token": False,
    }
    assert KEY not in api.get(f"/api/projects/{project.slug}/").content.decode()
    assert KEY not in api.get("/api/projects/").content.decode()

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT openai_api_key FROM workflows_project WHERE id = %s",
            [project.pk.hex if connection.vendor == "sqlite" else project.pk],
        )
        raw = cursor.fetchone()[0]
    assert raw.startswith("enc1:")
    assert KEY not in raw
    assert Project.objects.get(pk=project.pk).openai_api_key == KEY
    assert KEY not in caplog.text


def test_empty_string_removes_the_secret(api, project):
    project.anthropic_api_key = KEY
    project.save()
    response = api.patch(f"/api/projects/{project.slug}/", {"anthropic_api_key": ""}, format="json")
    assert response.json()["secrets"]["anthropic_api_key"] is False
    assert Project.objects.get(pk=project.pk).anthropic_api_key == ""


def test_admin_form_never_renders_the_secret(admin_client, project):
    project.openai_api_key = KEY
    project.save()
    page = admin_client.get(f"/admin/workflows/project/{project.pk}/change/")
    assert page.status_code == 200
    assert KEY not in page.content.decode()
    assert "Stored (encrypted)" in page.content.decode()


def test_project_ai_settings_round_trip(api, project):
    response = api.patch(
        f"/api/projects/{project.slug}/",
        {"quality_threshold": 0.7, "budget_usd": "1.50", "role_models": {"CODE_WRITER": "CLAUDE"}},
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["quality_threshold"], body["budget_usd"], body["role_models"]) == (
        0.7,
        "1.5000",
        {"CODE_WRITER": "CLAUDE"},
    )
    bad = api.patch(
        f"/api/projects/{project.slug}/", {"role_models": {"BOSS": "GPT4"}}, format="json"
    )
    assert bad.status_code == 400
    assert json.dumps(bad.json()).count("unknown roles") == 1
