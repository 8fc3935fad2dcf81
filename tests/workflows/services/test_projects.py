"""Project create and update as services: validated, locked, in a transaction, audited;
and the API, the admin, `manage.py topdog` and serve's bootstrap use them."""

import json
import logging

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.urls import reverse

from ai_orchestration.management.commands.serve import bootstrap_demo
from tests.factories import ProjectFactory, UserFactory
from workflows.models import Membership, Project
from workflows.services import Actor, project_create, project_update
from workflows.states import MemberRole

pytestmark = pytest.mark.django_db


def entries(project: Project) -> list[tuple[int, list]]:
    """(action flag, change message) of the project's admin history, oldest first."""
    return [
        (entry.action_flag, json.loads(entry.change_message or "[]"))
        for entry in LogEntry.objects.filter(object_id=str(project.pk)).order_by("id")
    ]


def test_create_makes_the_owner_a_member_and_records_who(user):
    project = project_create(
        slug="shop", name="Shop", actor=Actor.of(user), owner=user, approval_gates=["TESTING"]
    )

    assert Project.objects.get(slug="shop").approval_gates == ["TESTING"]
    assert Membership.objects.get(project=project).user == user
    assert Membership.objects.get(project=project).role == MemberRole.OWNER
    assert entries(project) == [(ADDITION, [{"added": {}}])]
    assert LogEntry.objects.get(object_id=str(project.pk)).user == user


def test_create_validates_as_the_model_does_and_writes_nothing_when_invalid(user):
    with pytest.raises(ValidationError) as raised:
        project_create(slug="shop", name="Shop", actor=Actor.of(user), approval_gates=["NOPE"])

    assert "approval_gates" in raised.value.message_dict
    assert not Project.objects.exists()
    assert not LogEntry.objects.exists()


def test_only_project_settings_are_accepted(user):
    with pytest.raises(TypeError, match="members"):
        project_create(slug="shop", name="Shop", actor=Actor.of(user), members=[user])


def test_update_writes_and_records_only_what_changed_never_a_value(user, caplog):
    project = ProjectFactory(slug="shop", regression_limit=3)

    with caplog.at_level(logging.INFO, logger="workflows.services"):
        changed = project_update(
            project=project,
            actor=Actor.of(user),
            regression_limit=3,
            name="Web shop",
            github_token="ghp-secret-value-0123456789",
        )

    assert changed == ["name", "github_token"]
    stored = Project.objects.get(pk=project.pk)
    assert (stored.name, stored.github_token) == ("Web shop", "ghp-secret-value-0123456789")
    assert project.name == "Web shop"  # the caller's instance follows
    assert entries(project) == [(CHANGE, [{"changed": {"fields": ["name", "github_token"]}}])]
    assert "secret-value" not in caplog.text + LogEntry.objects.get().change_message
    assert "project shop changed name, github_token by alice" in caplog.text


def test_an_update_that_changes_nothing_records_nothing(user):
    project = ProjectFactory(slug="shop", name="Shop")

    assert project_update(project=project, actor=Actor.of(user), name="Shop") == []
    assert entries(project) == []


def test_an_invalid_update_changes_nothing(user):
    project = ProjectFactory(slug="shop", quality_threshold=0.5)

    with pytest.raises(ValidationError):
        project_update(project=project, actor=Actor.of(user), quality_threshold=2.0, name="X")

    assert Project.objects.values_list("quality_threshold", "name").get() == (0.5, project.name)
    assert entries(project) == []


# --- the callers ------------------------------------------------------------------------


def test_the_api_creates_and_updates_through_the_services(api, user):
    created = api.post("/api/projects/", {"slug": "shop", "name": "Shop"}, format="json")
    api.patch("/api/projects/shop/", {"regression_limit": 1}, format="json")

    assert created.status_code == 201, created.json()
    project = Project.objects.get(slug="shop")
    assert entries(project) == [
        (ADDITION, [{"added": {}}]),
        (CHANGE, [{"changed": {"fields": ["regression_limit"]}}]),
    ]


def test_the_admin_creates_through_the_service_once_with_its_members(admin_client, admin_user):
    from tests.workflows.admin.test_admin_bad_input import _project_form

    alice = UserFactory(username="alice")
    form = {
        **_project_form(),
        "memberships-TOTAL_FORMS": "1",
        "memberships-0-user": str(alice.pk),
        "memberships-0-role": MemberRole.DEVELOPER,
    }

    response = admin_client.post(reverse("admin:workflows_project_add"), form)

    assert response.status_code == 302, response.content.decode()[:2000]
    project = Project.objects.get(slug="shop")
    assert [(m.user, m.role) for m in project.memberships.all()] == [(alice, "developer")]
    # one addition, by the service; the admin adds no second one
    assert entries(project) == [(ADDITION, [{"added": {}}])]
    assert LogEntry.objects.get().user == admin_user


def test_the_admin_change_records_fields_once_and_the_inline_separately(admin_client):
    from tests.workflows.admin.test_admin_bad_input import _project_form

    project = ProjectFactory(slug="shop", name="Shop", repository="acme/shop")
    alice = UserFactory(username="alice")
    form = {
        **_project_form(),
        "regression_limit": "5",
        "memberships-TOTAL_FORMS": "1",
        "memberships-0-user": str(alice.pk),
        "memberships-0-role": MemberRole.DEVELOPER,
    }

    response = admin_client.post(reverse("admin:workflows_project_change", args=[project.pk]), form)

    assert response.status_code == 302, response.content.decode()[:2000]
    fields, inline = entries(project)
    assert fields[0] == CHANGE and "regression_limit" in fields[1][0]["changed"]["fields"]
    assert inline[1][0]["added"]["name"] == "membership"


def test_the_command_creates_then_updates_through_the_services(caplog):
    with caplog.at_level(logging.INFO, logger="workflows.services"):
        call_command("topdog", "project", "add", "shop", "--name", "Shop")
        call_command("topdog", "project", "add", "shop", "--name", "Web shop")

    assert Project.objects.get(slug="shop").name == "Web shop"
    assert "project shop created by manage.py topdog" in caplog.text
    assert "project shop changed name by manage.py topdog" in caplog.text


def test_the_bootstrap_creates_the_demo_project_through_the_service():
    made = bootstrap_demo(password="a-long-enough-password")

    project = Project.objects.get(slug=made.project_slug)
    assert Membership.objects.get(project=project).role == MemberRole.OWNER
    assert entries(project) == [(ADDITION, [{"added": {}}])]
